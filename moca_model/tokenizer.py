"""IdentityTokenizer: ArcFace embedding + face-crop VAE latent -> identity tokens [B, M, D_id].

- global: the L2-normalised 512-d ArcFace embedding -> MLP -> N_g tokens;
- local: the aligned face crop encoded by the Wan VAE ([B, 16, 1, h, w]) -> 2x2 latent patches ->
  a small perceiver resampler with N_l learned queries -> N_l tokens;
- learned type embeddings tell global from local tokens.
Several references per sample ([B, R, 512] / [B, R, 16, 1, h, w]) are fused by averaging their tokens
("mean") or by concatenating them ("concat", M grows R-fold).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .config import MoCAConfig


def sincos_2d(h: int, w: int, dim: int, device=None) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding, [h*w, dim]."""
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, device=device, dtype=torch.float32) / quarter)
    ys, xs = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float32),
                            torch.arange(w, device=device, dtype=torch.float32), indexing="ij")
    parts = [f(p.reshape(-1, 1) * omega) for p in (ys, xs) for f in (torch.sin, torch.cos)]
    emb = torch.cat(parts, dim=1)
    return F.pad(emb, (0, dim - emb.shape[1]))


class PerceiverBlock(nn.Module):
    """Latent queries attend to [inputs ; queries], then a feed-forward (Flamingo-style resampler)."""

    def __init__(self, dim: int, heads: int, operations=nn, device=None, dtype=None):
        super().__init__()
        kw = dict(device=device, dtype=dtype)
        self.heads = heads
        self.norm_x = operations.LayerNorm(dim, **kw)
        self.norm_q = operations.LayerNorm(dim, **kw)
        self.q = operations.Linear(dim, dim, bias=False, **kw)
        self.kv = operations.Linear(dim, 2 * dim, bias=False, **kw)
        self.o = operations.Linear(dim, dim, bias=False, **kw)
        self.ff = nn.Sequential(operations.LayerNorm(dim, **kw), operations.Linear(dim, 4 * dim, **kw),
                                nn.GELU(), operations.Linear(4 * dim, dim, **kw))

    def forward(self, x, lat):                                     # x [B, Lx, d], lat [B, Nl, d]
        lat_n = self.norm_q(lat)
        ctx = torch.cat([self.norm_x(x), lat_n], dim=1)
        q = self.q(lat_n).unflatten(-1, (self.heads, -1)).transpose(1, 2)
        k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2) for t in self.kv(ctx).chunk(2, dim=-1))
        att = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        lat = lat + self.o(att)
        return lat + self.ff(lat)


class IdentityTokenizer(nn.Module):
    def __init__(self, config: MoCAConfig, operations=nn, device=None, dtype=None):
        super().__init__()
        c = config
        kw = dict(device=device, dtype=dtype)
        self.num_global, self.num_local, self.id_dim = c.num_global_tokens, c.num_local_tokens, c.id_dim
        d = c.id_dim
        if self.num_global:
            self.global_mlp = nn.Sequential(operations.Linear(c.arcface_dim, 2 * d, **kw), nn.GELU(),
                                            operations.Linear(2 * d, self.num_global * d, **kw))
            self.global_norm = operations.LayerNorm(d, **kw)
        if self.num_local:
            self.patch = operations.Conv2d(c.face_latent_channels, d, kernel_size=2, stride=2, **kw)
            self.queries = nn.Parameter(torch.empty(self.num_local, d, **kw))
            heads = max(1, d // 64)
            self.resampler = nn.ModuleList(PerceiverBlock(d, heads, operations, **kw)
                                           for _ in range(c.resampler_depth))
            self.local_norm = operations.LayerNorm(d, **kw)
        self.type_embed = nn.Parameter(torch.empty(2, d, **kw))   # 0 = global, 1 = local
        # `queries` and `type_embed` are bare parameters of a non-leaf module: a host that offloads per leaf
        # module (ComfyUI's partial load) leaves them where they are, so forward casts them to the input's
        # device and dtype, as ComfyUI's own Wan blocks do with their `modulation`.

    def init_weights(self):
        nn.init.normal_(self.type_embed, std=0.02)
        if self.num_local:
            nn.init.normal_(self.queries, std=1.0 / math.sqrt(self.id_dim))

    def forward(self, arcface: torch.Tensor | None = None, face_latent: torch.Tensor | None = None,
                fusion: str = "mean") -> torch.Tensor:
        """arcface [B, 512] or [B, R, 512]; face_latent [B, 16, 1, h, w] or [B, R, 16, 1, h, w].
        Returns identity tokens [B, M, D_id] (M = N_g + N_l, times R for fusion="concat")."""
        if fusion not in ("mean", "concat"):
            raise ValueError(f"IdentityTokenizer: fusion must be 'mean' or 'concat', not {fusion!r}")
        if arcface is None and face_latent is None:
            raise ValueError("IdentityTokenizer needs an ArcFace embedding, a face-crop latent, or both")
        B = R = None
        parts = []
        dtype = self.type_embed.dtype
        if arcface is not None and self.num_global:
            if arcface.ndim == 2:
                arcface = arcface[:, None]
            if arcface.ndim != 3 or arcface.shape[-1] != self.global_mlp[0].in_features:
                raise ValueError(f"IdentityTokenizer: arcface must be [B, {self.global_mlp[0].in_features}] "
                                 f"or [B, R, {self.global_mlp[0].in_features}], got {list(arcface.shape)}")
            B, R = arcface.shape[:2]
            emb = F.normalize(arcface.float(), dim=-1).to(dtype).flatten(0, 1)            # [B*R, 512]
            g = self.global_mlp(emb).view(B * R, self.num_global, -1)
            parts.append(self.global_norm(g) + self.type_embed[0].to(device=g.device, dtype=g.dtype))
        if face_latent is not None and self.num_local:
            if face_latent.ndim == 5:
                face_latent = face_latent[:, None]
            if face_latent.ndim != 6 or face_latent.shape[2] != self.patch.in_channels:
                raise ValueError(f"IdentityTokenizer: face_latent must be [B, {self.patch.in_channels}, 1, h, w] "
                                 f"(a Wan VAE latent of the face crop), got {list(face_latent.shape)}")
            if B is not None and face_latent.shape[:2] != (B, R):
                raise ValueError(f"IdentityTokenizer: arcface has {B}x{R} references but face_latent "
                                 f"has {face_latent.shape[0]}x{face_latent.shape[1]}")
            B, R = face_latent.shape[:2]
            lat = face_latent.to(dtype).flatten(0, 1).mean(dim=2)                          # [B*R, 16, h, w]
            lat = F.pad(lat, (0, lat.shape[-1] % 2, 0, lat.shape[-2] % 2), mode="replicate")
            p = self.patch(lat)                                                            # [B*R, d, h/2, w/2]
            tokens = p.flatten(2).transpose(1, 2) + sincos_2d(*p.shape[-2:], p.shape[1], p.device).to(p.dtype)
            q = self.queries.to(device=p.device, dtype=p.dtype)[None].expand(B * R, -1, -1)
            for blk in self.resampler:
                q = blk(tokens, q)
            parts.append(self.local_norm(q) + self.type_embed[1].to(device=q.device, dtype=q.dtype))
        if not parts:
            raise ValueError("IdentityTokenizer: this adapter has no tokens for the inputs given "
                             f"(global tokens: {self.num_global}, local tokens: {self.num_local})")
        tokens = torch.cat(parts, dim=1).view(B, R, -1, self.id_dim)                        # [B, R, M, d]
        return tokens.mean(dim=1) if fusion == "mean" else tokens.flatten(1, 2)
