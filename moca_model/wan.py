"""The Wan 2.1 T2V backbone pieces, with Wan 2.1's parameter names.

A faithful, compact re-implementation of Wan-Video/Wan2.1 `wan/modules/model.py` (T2V only) so that a
Wan 2.1 checkpoint (original or ComfyUI repackaged) loads strictly. Layer classes come from an injectable
`operations` namespace (default `torch.nn`), so ComfyUI's casting ops can be passed in.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange


def sinusoidal_embedding_1d(dim: int, position: torch.Tensor) -> torch.Tensor:
    """Wan's timestep embedding: [cos, sin] of position * 10000^(-i/half). position [B] -> [B, dim]."""
    half = dim // 2
    position = position.float()
    freqs = torch.pow(10000, -torch.arange(half, device=position.device, dtype=torch.float32).div(half))
    sinusoid = torch.outer(position, freqs)
    return torch.cat([torch.cos(sinusoid), torch.sin(sinusoid)], dim=1)


@lru_cache(maxsize=16)
def rope_frequencies(head_dim: int, grid: tuple[int, int, int], device=None, theta: float = 10000.0):
    """3-axis RoPE angles for a (T, h, w) token grid, as Wan splits them: the head dim is shared
    [d - 4(d//6), 2(d//6), 2(d//6)] between time, height and width. Returns (cos, sin), each [L, d/2].
    Cached per grid and device: every sampling step and training step at one size reuses them."""
    with torch.inference_mode(False):   # cached: must stay usable outside inference mode (training)
        d = head_dim
        axes = (d - 4 * (d // 6), 2 * (d // 6), 2 * (d // 6))
        angles = []
        for axis, (size, axis_dim) in enumerate(zip(grid, axes)):
            omega = 1.0 / theta ** (torch.arange(0, axis_dim, 2, dtype=torch.float64, device=device) / axis_dim)
            pos = torch.arange(size, dtype=torch.float64, device=device)
            ang = torch.outer(pos, omega)                                    # [size, axis_dim/2]
            shape = [1, 1, 1, ang.shape[-1]]
            shape[axis] = size
            angles.append(ang.view(shape).expand(*grid, ang.shape[-1]))
        ang = torch.cat(angles, dim=-1).reshape(-1, d // 2)                  # [L, d/2]
        return torch.cos(ang).float(), torch.sin(ang).float()


def apply_rope(x: torch.Tensor, freqs) -> torch.Tensor:
    """Rotate adjacent channel pairs. x [B, L, H, d]; freqs (cos, sin) [L, d/2]."""
    cos, sin = freqs
    xf = x.float().unflatten(-1, (-1, 2))                                 # [B, L, H, d/2, 2]
    x0, x1 = xf[..., 0], xf[..., 1]
    cos, sin = cos[None, :, None], sin[None, :, None]
    out = torch.stack([x0 * cos - x1 * sin, x0 * sin + x1 * cos], dim=-1)
    return out.flatten(-2).type_as(x)


def attention(q, k, v, heads: int, mask=None) -> torch.Tensor:
    """Multi-head SDPA on [B, L, heads*d] tensors (or [B, L, heads, d])."""
    q, k, v = (t if t.ndim == 4 else t.unflatten(-1, (heads, -1)) for t in (q, k, v))
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=mask)
    return out.transpose(1, 2).flatten(2)


class RMSNorm(nn.RMSNorm):
    """nn.RMSNorm whose weight follows the input's dtype, as ComfyUI's operations cast it. Under bf16 autocast
    (the trainers on a CPU) the input is bf16 and the weight fp32, which sends torch.rms_norm to its slow
    unfused path."""

    def forward(self, x):
        w = self.weight.to(x.dtype) if self.weight is not None else None
        return F.rms_norm(x, self.normalized_shape, w, self.eps)


def rms_norm_class(operations):
    """The RMSNorm to build: ours for plain torch.nn, else the given operations' (ComfyUI's ops)."""
    return RMSNorm if operations is nn else operations.RMSNorm


class WanSelfAttention(nn.Module):
    def __init__(self, dim, num_heads, qk_norm=True, eps=1e-6, operations=nn, device=None, dtype=None):
        super().__init__()
        self.num_heads = num_heads
        kw = dict(device=device, dtype=dtype)
        self.q = operations.Linear(dim, dim, **kw)
        self.k = operations.Linear(dim, dim, **kw)
        self.v = operations.Linear(dim, dim, **kw)
        self.o = operations.Linear(dim, dim, **kw)
        self.norm_q = rms_norm_class(operations)(dim, eps=eps, elementwise_affine=True, **kw) if qk_norm else nn.Identity()
        self.norm_k = rms_norm_class(operations)(dim, eps=eps, elementwise_affine=True, **kw) if qk_norm else nn.Identity()

    def forward(self, x, freqs):                                          # x [B, L, C]
        q = apply_rope(self.norm_q(self.q(x)).unflatten(-1, (self.num_heads, -1)), freqs)
        k = apply_rope(self.norm_k(self.k(x)).unflatten(-1, (self.num_heads, -1)), freqs)
        v = self.v(x).unflatten(-1, (self.num_heads, -1))
        return self.o(attention(q, k, v, self.num_heads))


class WanT2VCrossAttention(WanSelfAttention):
    def forward(self, x, context):                                        # x [B, L, C], context [B, Lc, C]
        q = self.norm_q(self.q(x))
        k = self.norm_k(self.k(context))
        return self.o(attention(q, k, self.v(context), self.num_heads))


class WanAttentionBlock(nn.Module):
    """Self-attention (adaLN-modulated, RoPE), text cross-attention, FFN; modulation [1, 6, C]."""

    def __init__(self, dim, ffn_dim, num_heads, qk_norm=True, cross_attn_norm=True, eps=1e-6,
                 operations=nn, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.norm1 = operations.LayerNorm(dim, eps, elementwise_affine=False, **kw)
        self.self_attn = WanSelfAttention(dim, num_heads, qk_norm, eps, operations, **kw)
        self.norm3 = operations.LayerNorm(dim, eps, elementwise_affine=True, **kw) if cross_attn_norm else nn.Identity()
        self.cross_attn = WanT2VCrossAttention(dim, num_heads, qk_norm, eps, operations, **kw)
        self.norm2 = operations.LayerNorm(dim, eps, elementwise_affine=False, **kw)
        self.ffn = nn.Sequential(operations.Linear(dim, ffn_dim, **kw), nn.GELU(approximate="tanh"),
                                 operations.Linear(ffn_dim, dim, **kw))
        self.modulation = nn.Parameter(torch.empty(1, 6, dim, **kw))

    def forward(self, x, e0, freqs, context):
        """x [B, L, C]; e0 [B, 1, 6, C] time modulation; context [B, Lc, C]."""
        e = (self.modulation.to(x.dtype).unsqueeze(0) + e0.to(x.dtype)).unbind(2)   # 6 x [B, 1, C]
        y = self.self_attn(torch.addcmul(e[0], self.norm1(x), 1 + e[1]), freqs)
        x = torch.addcmul(x, y, e[2])
        x = x + self.cross_attn(self.norm3(x), context)
        y = self.ffn(torch.addcmul(e[3], self.norm2(x), 1 + e[4]))
        return torch.addcmul(x, y, e[5])


class Head(nn.Module):
    def __init__(self, dim, out_dim, patch_size, eps=1e-6, operations=nn, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.norm = operations.LayerNorm(dim, eps, elementwise_affine=False, **kw)
        self.head = operations.Linear(dim, math.prod(patch_size) * out_dim, **kw)
        self.modulation = nn.Parameter(torch.empty(1, 2, dim, **kw))

    def forward(self, x, e):                                              # x [B, L, C], e [B, 1, C]
        e = (self.modulation.to(x.dtype).unsqueeze(0) + e.to(x.dtype).unsqueeze(2)).unbind(2)
        return self.head(torch.addcmul(e[0], self.norm(x), 1 + e[1]))


def pad_to_patch_size(x: torch.Tensor, patch_size) -> torch.Tensor:
    """Pad [B, C, T, H, W] up to a multiple of the patch size, circularly (as ComfyUI's Wan does)."""
    pad = ()
    for i, p in enumerate(patch_size):
        pad = (0, (p - x.shape[i + 2] % p) % p) + pad
    if not any(pad):
        return x
    return F.pad(x, pad, mode="circular")


def unpatchify(x: torch.Tensor, grid, patch_size, out_dim) -> torch.Tensor:
    """[B, L, out_dim * prod(patch)] -> [B, out_dim, T*pt, h*ph, w*pw]."""
    t, h, w = grid
    pt, ph, pw = patch_size
    return rearrange(x, "b (t h w) (pt ph pw c) -> b c (t pt) (h ph) (w pw)",
                     t=t, h=h, w=w, pt=pt, ph=ph, pw=pw, c=out_dim)
