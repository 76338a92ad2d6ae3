"""Temporal-Aware Cross-Attention (TACA) experts, all experts batched in one attention call.

Expert e works at temporal scale s_e. Its queries are the HTP-pooled projected video queries of its
windows, plus a sinusoidal embedding of the window-centre frame and a learned scale embedding (the
"temporal-aware" part). Its keys/values are made, with the expert's own K/V projection, from the
identity tokens and from that scale's per-window video summaries (mean over the N tokens of a window),
so the expert relates the identity to how the clip evolves. Q and O projections are shared by all
experts (O lives in the MoCA layer, after the router mix).

Batching: every window row of every enabled expert becomes one attention batch element with its own
key set [identity tokens ; summaries of its scale] (padded to the longest scale and masked), so one
`scaled_dot_product_attention` call serves all experts.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MoCAConfig
from .htp import HierarchicalTemporalPooling, WindowPlan
from .wan import sinusoidal_embedding_1d

TIME_FREQ_DIM = 64  # width of the sinusoidal window-centre embedding


class TemporalAwareCrossAttention(nn.Module):
    def __init__(self, config: MoCAConfig, operations=nn, device=None, dtype=None):
        super().__init__()
        c = config
        kw = dict(device=device, dtype=dtype)
        self.num_experts, self.heads, self.inner = c.num_experts, c.moca_heads, c.moca_dim
        self.q = operations.Linear(c.dim, c.moca_dim, **kw)                         # shared query projection
        self.kv = operations.Linear(c.id_dim, c.num_experts * 2 * c.moca_dim, **kw)  # per-expert K and V
        self.norm_q = operations.RMSNorm(c.moca_dim, eps=c.eps, elementwise_affine=True, **kw)
        self.norm_k = operations.RMSNorm(c.moca_dim, eps=c.eps, elementwise_affine=True, **kw)
        self.frame_embed = operations.Linear(TIME_FREQ_DIM, c.moca_dim, **kw)        # window centre -> query
        self.scale_embed = nn.Parameter(torch.empty(c.num_experts, c.moca_dim, **kw))
        self.summary_proj = operations.Linear(c.dim, c.id_dim, **kw)                 # window summary -> token
        self.summary_time = operations.Linear(TIME_FREQ_DIM, c.id_dim, **kw)

    def init_weights(self):
        nn.init.normal_(self.scale_embed, std=0.02)
        nn.init.ones_(self.norm_q.weight)
        nn.init.ones_(self.norm_k.weight)

    def forward(self, xn: torch.Tensor, identity: torch.Tensor, plan: WindowPlan) -> torch.Tensor:
        """xn [B, T, N, D] normalised video tokens; identity [B, M, D_id].
        Returns every window's attention output, [B, Tq, N, moca_dim] (un-pool with `plan`)."""
        B, T, N, _ = xn.shape
        M, E, a, H = identity.shape[1], self.num_experts, self.inner, self.heads
        Tq, Tmax = plan.kv_rows.shape

        time = sinusoidal_embedding_1d(TIME_FREQ_DIM, plan.centre).to(xn.dtype)     # [Tq, F]
        scale = self.scale_embed.to(device=xn.device, dtype=xn.dtype)[plan.row_expert]
        # Queries: project once, pool every scale's windows in one einsum.
        q = HierarchicalTemporalPooling.pool(self.q(xn), plan)                      # [B, Tq, N, a]
        q = self.norm_q(q + (self.frame_embed(time) + scale)[:, None])

        # Keys/values: identity tokens and window summaries through every expert's projection,
        # then each window row keeps its own expert's slice.
        summary = HierarchicalTemporalPooling.pool(xn.mean(dim=2), plan)            # [B, Tq, D]
        summary = self.summary_proj(summary) + self.summary_time(time)              # [B, Tq, D_id]
        kv_id = self.kv(identity.to(xn.dtype)).view(B, M, E, 2, a)
        kv_sum = self.kv(summary).view(B, Tq, E, 2, a)
        rows = torch.arange(Tq, device=xn.device)
        kv_sum = kv_sum[:, rows, plan.row_expert]                                   # [B, Tq, 2, a]
        kv = torch.cat([kv_id[:, :, plan.row_expert].transpose(1, 2),               # [B, Tq, M, 2, a]
                        kv_sum[:, plan.kv_rows]], dim=2)                            # [B, Tq, Tmax, 2, a]
        k, v = self.norm_k(kv[..., 0, :]), kv[..., 1, :]                            # [B, Tq, M+Tmax, a]

        mask = None
        if not bool(plan.kv_valid.all()):
            valid = torch.cat([plan.kv_valid.new_ones(Tq, M), plan.kv_valid], dim=1)  # [Tq, M+Tmax]
            mask = valid[None, :, None, None, :].expand(B, -1, -1, -1, -1).reshape(B * Tq, 1, 1, M + Tmax)

        def heads(t):                                                                # [B, Tq, L, a] -> [B*Tq, H, L, a/H]
            return t.reshape(B * Tq, t.shape[2], H, a // H).transpose(1, 2)

        out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=mask)
        return out.transpose(1, 2).reshape(B, Tq, N, a)
