"""The MoCA layer: a residual after a DiT block, `x <- block(x); x <- x + MoCA(x, id, t)`.

Host-neutral: it uses only what a native Wan block receives (tokens `x`, the block's time modulation
`vec`) plus the identity tokens and the latent grid (T, h, w). The same code runs in `MoCADiT` and inside
ComfyUI's `patches_replace["dit"]` block patch.

With `config.identity_attention = "single"` (the benchmark's baseline, `identity_xattn.py`) the layer holds one
plain identity cross-attention instead of HTP + experts + router; the residual form and the zero-init output
projection stay.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .config import MoCAConfig
from .htp import HierarchicalTemporalPooling
from .identity_xattn import IdentityCrossAttention
from .options import ResolvedOptions
from .regions import ResolvedRegions
from .router import MoCARouter
from .taca import TemporalAwareCrossAttention


class MoCALayer(nn.Module):
    def __init__(self, config: MoCAConfig, operations=nn, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.norm = operations.LayerNorm(config.dim, config.eps, elementwise_affine=False, **kw)
        self.single = config.identity_attention == "single"
        if self.single:
            self.attn = IdentityCrossAttention(config, operations, **kw)
        else:
            self.htp = HierarchicalTemporalPooling(config.scales)
            self.experts = TemporalAwareCrossAttention(config, operations, **kw)
            self.router = MoCARouter(config.dim, config.num_experts, config.router_use_time, operations, **kw)
        self.out = operations.Linear(config.moca_dim, config.dim, **kw)               # zero-init

    def init_weights(self):
        if self.single:
            self.attn.init_weights()
        else:
            self.experts.init_weights()
            self.router.init_weights()
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, vec: torch.Tensor, identity: torch.Tensor, grid,
                opts: ResolvedOptions) -> torch.Tensor:
        """x [B, L=T*h*w, D]; vec [B, 1|L, 6, D]; identity [B|1, M, D_id] or ResolvedRegions (several people,
        moca_model/regions.py); grid (T, h, w). Returns the residual to add to x, [B, L, D]."""
        B, L, D = x.shape
        T, h, w = grid
        if L != T * h * w:
            raise ValueError(f"MoCA layer: {L} video tokens do not match the latent grid {T}x{h}x{w}")
        if isinstance(identity, ResolvedRegions):
            return self._regional(x, vec, identity, grid, opts)
        if identity.shape[0] not in (1, B):
            raise ValueError(f"MoCA layer: identity batch {identity.shape[0]} does not match the video batch {B}")
        identity = identity.expand(B, -1, -1)
        if vec.ndim == 3:                                                              # [B, 6, D] (original Wan)
            vec = vec.unsqueeze(1)

        xn = self.norm(x)                                                              # [B, L, D]
        if self.single:                                                                # one "expert": scale 1
            y = self.attn(xn, identity)                                                # [B, L, a]
            w = opts.expert_weight[0]                                                  # its gain (Expert Mixing)
            return self.out(y if w == 1.0 else y * w) * opts.strength
        plan = self.htp.plan(T, opts.experts, x.device)
        y = self.experts(xn.view(B, T, h * w, D), identity, plan)                      # [B, Tq, N, a]
        r = self.router(xn, vec, opts, plan).to(y.dtype)                               # [B, L, E_on]
        mixed = self.htp.unpool_mix(y, r.view(B, T, h * w, -1), plan)                  # [B, T, N, a]
        return self.out(mixed.reshape(B, L, -1)) * opts.strength

    def _regional(self, x, vec, regions: ResolvedRegions, grid, opts: ResolvedOptions) -> torch.Tensor:
        """sum_k w_k * MoCA(x, identity_k restricted to region k): x [B, L, D] -> [B, L, D]. The router and
        the window plan are shared; each identity runs its own cross-attention (only its tokens as keys)."""
        B, L, D = x.shape
        T, h, w = grid
        if vec.ndim == 3:
            vec = vec.unsqueeze(1)
        weights = regions.weights.to(device=x.device, dtype=x.dtype)
        if weights.shape[0] not in (1, B) or weights.shape[2:] != (T, h * w):
            raise ValueError(f"MoCA layer: region weights {list(weights.shape)} do not fit the batch {B} and "
                             f"latent grid {T}x{h}x{w}; resolve the regions on this grid")
        weights = weights.expand(B, -1, -1, -1)                                       # [B, K, T, N]
        xn = self.norm(x)                                                             # [B, L, D]
        if not self.single:
            plan = self.htp.plan(T, opts.experts, x.device)
            r = self.router(xn, vec, opts, plan).view(B, T, h * w, -1)                # [B, T, N, E_on]
        out = None
        for k, tokens in enumerate(regions.tokens):
            tokens = tokens.to(x.dtype).expand(B, -1, -1)                              # [B, M_k, D_id]
            if self.single:
                y = self.attn(xn, tokens)                                              # [B, L, a]
                g = opts.expert_weight[0]
                y = y if g == 1.0 else y * g
            else:
                yk = self.experts(xn.view(B, T, h * w, D), tokens, plan, region=weights[:, k])   # [B, Tq, N, a]
                y = self.htp.unpool_mix(yk, r.to(yk.dtype), plan).reshape(B, L, -1)   # [B, L, a]
            res = self.out(y) * weights[:, k].reshape(B, L, 1)
            out = res if out is None else out + res
        return out * opts.strength
