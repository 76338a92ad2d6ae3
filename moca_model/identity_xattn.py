"""IdentityCrossAttention: one plain cross-attention from the video tokens to the identity tokens.

The identity adapter of Lynx / ConsisID-style models, and the baseline MoCA is measured against
(`MoCAConfig.identity_attention = "single"`, variant `single_xattn`): every video token attends to the
identity tokens alone - no temporal pooling (HTP), no window summaries, no experts, no router. It keeps
MoCA's widths, Q/K normalisation and the layer's zero-init output projection, so the two differ only in
what the paper adds.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MoCAConfig
from .wan import rms_norm_class


class IdentityCrossAttention(nn.Module):
    def __init__(self, config: MoCAConfig, operations=nn, device=None, dtype=None):
        super().__init__()
        c = config
        kw = dict(device=device, dtype=dtype)
        self.heads, self.inner = c.moca_heads, c.moca_dim
        self.q = operations.Linear(c.dim, c.moca_dim, **kw)
        self.kv = operations.Linear(c.id_dim, 2 * c.moca_dim, **kw)
        self.norm_q = rms_norm_class(operations)(c.moca_dim, eps=c.eps, elementwise_affine=True, **kw)
        self.norm_k = rms_norm_class(operations)(c.moca_dim, eps=c.eps, elementwise_affine=True, **kw)

    def init_weights(self):
        nn.init.ones_(self.norm_q.weight)
        nn.init.ones_(self.norm_k.weight)

    def forward(self, xn: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
        """xn [B, L, D] normalised video tokens; identity [B, M, D_id] -> [B, L, moca_dim]."""
        B, L, _ = xn.shape
        a, H = self.inner, self.heads
        k, v = self.kv(identity.to(xn.dtype)).chunk(2, dim=-1)                      # [B, M, a] each

        def heads(t):                                                # [B, L, a] -> [B, H, L, a/H]
            return t.unflatten(-1, (H, a // H)).transpose(1, 2)
        o = F.scaled_dot_product_attention(heads(self.norm_q(self.q(xn))), heads(self.norm_k(k)), heads(v))
        return o.transpose(1, 2).reshape(B, L, a)
