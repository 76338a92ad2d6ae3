"""Temporal-Aware Cross-Attention (TACA) experts.

Expert e works at temporal scale s_e. Its queries are the HTP-pooled projected video queries of its
windows, plus a sinusoidal embedding of the window-centre frame and a learned scale embedding (the
"temporal-aware" part). Its keys/values are made, with the expert's own K/V projection, from the
identity tokens and from that scale's per-window video summaries (mean over the N tokens of a window),
so the expert relates the identity to how the clip evolves. Q and O projections are shared by all
experts (O lives in the MoCA layer, after the router mix).

Every window of one expert attends to the same keys [identity tokens ; the summaries of all its windows],
so an expert is one attention call over all its windows' tokens. The experts run in a plain loop: it
measured as fast as batching every window of every expert into one padded, masked call
(scripts/bench_taca.py), which also spent work on the padding.

Lean MoCA (moca_model/variants.py) changes two things, both config fields that default to the design above:
`expert_kv_rank = r > 0` gives the experts one shared K/V projection plus a rank-r correction each
(`kv_down` shared, `kv_up.e` per expert, zero-init), and `summary_source = "query"` makes each window summary
from the window's pooled, projected queries (mean over N, then a -> D_id) instead of a D -> D_id projection
of the video tokens.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MoCAConfig
from .htp import HierarchicalTemporalPooling, WindowPlan
from .wan import rms_norm_class, sinusoidal_embedding_1d

TIME_FREQ_DIM = 64  # width of the sinusoidal window-centre embedding


class TemporalAwareCrossAttention(nn.Module):
    def __init__(self, config: MoCAConfig, operations=nn, device=None, dtype=None):
        super().__init__()
        c = config
        kw = dict(device=device, dtype=dtype)
        self.num_experts, self.heads, self.inner = c.num_experts, c.moca_heads, c.moca_dim
        self.q = operations.Linear(c.dim, c.moca_dim, **kw)                         # shared query projection
        self.rank = c.expert_kv_rank
        if self.rank:                                                                # lean: shared K/V + rank r
            self.kv = operations.Linear(c.id_dim, 2 * c.moca_dim, **kw)
            self.kv_down = operations.Linear(c.id_dim, c.num_experts * self.rank, bias=False, **kw)
            self.kv_up = nn.ModuleList(operations.Linear(self.rank, 2 * c.moca_dim, bias=False, **kw)
                                       for _ in range(c.num_experts))
        else:
            self.kv = operations.Linear(c.id_dim, c.num_experts * 2 * c.moca_dim, **kw)  # per-expert K and V
        self.norm_q = rms_norm_class(operations)(c.moca_dim, eps=c.eps, elementwise_affine=True, **kw)
        self.norm_k = rms_norm_class(operations)(c.moca_dim, eps=c.eps, elementwise_affine=True, **kw)
        self.frame_embed = operations.Linear(TIME_FREQ_DIM, c.moca_dim, **kw)        # window centre -> query
        self.scale_embed = nn.Parameter(torch.empty(c.num_experts, c.moca_dim, **kw))
        self.summary_from_query = c.summary_source == "query"
        self.summary_proj = operations.Linear(c.moca_dim if self.summary_from_query else c.dim, c.id_dim, **kw)
        self.summary_time = operations.Linear(TIME_FREQ_DIM, c.id_dim, **kw)

    def init_weights(self):
        nn.init.normal_(self.scale_embed, std=0.02)
        nn.init.ones_(self.norm_q.weight)
        nn.init.ones_(self.norm_k.weight)
        if self.rank:
            for up in self.kv_up:                       # every expert starts from the shared K/V
                nn.init.zeros_(up.weight)

    def forward(self, xn: torch.Tensor, identity: torch.Tensor, plan: WindowPlan,
                region: torch.Tensor | None = None) -> torch.Tensor:
        """xn [B, T, N, D] normalised video tokens; identity [B, M, D_id]; region [B, T, N] (0..1) or None:
        the identity's region (moca_model/regions.py) - queries pool over time and summaries average over
        tokens weighted by it, so a window's summary holds only this person.
        Returns every window's attention output, [B, Tq, N, moca_dim] (un-pool with `plan`)."""
        B, T, N, _ = xn.shape
        a, H = self.inner, self.heads
        time = sinusoidal_embedding_1d(TIME_FREQ_DIM, plan.centre).to(xn.dtype)     # [Tq, F]
        # Queries of every window of every expert: project once, pool all scales in one einsum.
        if region is None:
            q = HierarchicalTemporalPooling.pool(self.q(xn), plan) + self.frame_embed(time)[:, None]   # [B, Tq, N, a]
            # One summary token per window: the mean of its tokens, projected, plus its centre frame.
            if self.summary_from_query:                                             # lean: from the pooled queries
                summary = q.mean(dim=2)                                             # [B, Tq, a]
            else:
                summary = HierarchicalTemporalPooling.pool(xn.mean(dim=2), plan)    # [B, Tq, D]
        else:                                                                       # pool within the region
            q, summary = self._region_pool(xn, region, plan)
            fe = self.frame_embed(time)                                             # [Tq, a]
            q = q + fe[:, None]
            summary = summary + fe if self.summary_from_query else summary          # as q.mean(dim=2) above
        summary = self.summary_proj(summary) + self.summary_time(time)              # [B, Tq, D_id]
        # Every expert's K and V of the identity tokens and the summaries, one projection each (through the
        # host's casting Linear); expert e uses its slice (lean: the shared K/V plus its rank-r correction).
        kv_id, kv_sum = self.kv(identity.to(xn.dtype)), self.kv(summary)            # [B, M|Tq, E*2a] (lean: 2a)
        if self.rank:
            low_id, low_sum = (self.kv_down(t).unflatten(-1, (-1, self.rank)) for t in (identity.to(xn.dtype), summary))
        else:
            kv_id, kv_sum = kv_id.unflatten(-1, (-1, 2 * a)), kv_sum.unflatten(-1, (-1, 2 * a))   # [B, M|Tq, E, 2a]
        scale_embed = self.scale_embed.to(device=xn.device, dtype=xn.dtype)

        def heads(t):                                                # [B, L, a] -> [B, H, L, a/H]
            return t.unflatten(-1, (H, a // H)).transpose(1, 2)

        out = []
        for e, (start, stop) in zip(plan.experts, plan.rows):
            W = stop - start                                                         # windows of this expert
            q_e = self.norm_q(q[:, start:stop] + scale_embed[e])                     # [B, W, N, a]
            if self.rank:
                low = torch.cat([low_id[:, :, e], low_sum[:, start:stop, e]], dim=1)  # [B, M+W, r]
                kv = torch.cat([kv_id, kv_sum[:, start:stop]], dim=1) + self.kv_up[e](low)   # [B, M+W, 2a]
            else:
                kv = torch.cat([kv_id[:, :, e], kv_sum[:, start:stop, e]], dim=1)     # [B, M+W, 2a]
            k, v = kv.chunk(2, dim=-1)                                               # [B, M+W, a] each
            o = F.scaled_dot_product_attention(heads(q_e.reshape(B, W * N, a)), heads(self.norm_k(k)), heads(v))
            out.append(o.transpose(1, 2).reshape(B, W, N, a))
        return torch.cat(out, dim=1)                                                 # [B, Tq, N, a]

    def _region_pool(self, xn: torch.Tensor, region: torch.Tensor, plan: WindowPlan):
        """Region-weighted HTP: xn [B, T, N, D], region [B, T, N] -> pooled queries [B, Tq, N, a] (each token's
        frames weighted by its region weight; 0 where the token is outside the region in the whole window)
        and window summaries [B, Tq, a | D] (region-weighted mean over the window's tokens; 0 for a window
        the region does not touch)."""
        P = plan.pool.to(xn.dtype)                                                   # [Tq, T]
        m = region.to(xn.dtype)                                                      # [B, T, N]
        den = torch.einsum("jt,btn->bjn", P, m)                                      # [B, Tq, N]
        num_q = torch.einsum("jt,btna->bjna", P, self.q(xn) * m[..., None])           # [B, Tq, N, a]
        q = num_q / den.clamp_min(1e-6)[..., None]
        total = den.sum(dim=2).clamp_min(1e-6)[..., None]                            # [B, Tq, 1]
        if self.summary_from_query:
            summary = num_q.sum(dim=2) / total                                       # [B, Tq, a]
        else:
            summary = torch.einsum("jt,btnd->bjd", P, xn * m[..., None]) / total     # [B, Tq, D]
        return q, summary
