"""The first stages of the Wan 2.1 VAE decoder, in pure PyTorch, with the Wan VAE's parameter names.

Used as LVPL's default latent-space feature extractor. Parameter names follow Wan-Video/Wan2.1
`wan/modules/vae.py` (and ComfyUI's `wan_2.1_vae.safetensors`): `conv2.*` (the 1x1 conv applied to a
latent before decoding), `decoder.conv1.*`, `decoder.middle.{0,1,2}.*`, `decoder.upsamples.{0,1,2}.*`, so
the real weights load with `load_wan_vae_decoder_stages(module, path)`; tests use random init.

Wan decodes two latent frames at a time with a cache of the last two frames per causal conv, which equals
running each causal 3-D conv over the whole sequence with two zero frames in front; that is what this does.
Stages (features returned after each one that is requested):
  "conv1"  -> [B, 4*dim, T, h, w]   decoder.conv1
  "middle" -> [B, 4*dim, T, h, w]   ResidualBlock, per-frame AttentionBlock, ResidualBlock
  "up0"    -> [B, 4*dim, T, h, w]   decoder.upsamples.0..2: the residual blocks at latent resolution
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..latents import denormalize_latent

STAGES = ("conv1", "middle", "up0")


class CausalConv3d(nn.Conv3d):
    """3-D conv that pads time on the past side only (2 * pad zero frames in front), space symmetrically."""

    def __init__(self, in_dim, out_dim, kernel_size, padding=0):
        super().__init__(in_dim, out_dim, kernel_size, padding=0)
        k = (kernel_size,) * 3 if isinstance(kernel_size, int) else tuple(kernel_size)
        p = (padding,) * 3 if isinstance(padding, int) else tuple(padding)
        self._pad = (p[2], p[2], p[1], p[1], 2 * p[0], 0)                 # F.pad order: w, h, t
        assert k[0] == 1 or 2 * p[0] == k[0] - 1, "causal conv needs 2*pad_t = k_t - 1"

    def forward(self, x):                                                  # [B, C, T, H, W]
        return super().forward(F.pad(x, self._pad))


class RMSNorm(nn.Module):
    """Wan VAE's RMS_norm: L2-normalise over channels, times sqrt(C) * gamma. gamma [C,1,1,1] or [C,1,1]."""

    def __init__(self, dim, images=True):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1) if images else (1, 1, 1))))

    def forward(self, x):
        return F.normalize(x, dim=1) * self.scale * self.gamma.to(x.dtype)


class ResidualBlock(nn.Module):
    def __init__(self, in_dim, out_dim):
        super().__init__()
        # indices match Wan's nn.Sequential: 0 norm, 1 SiLU, 2 conv, 3 norm, 4 SiLU, 5 Dropout, 6 conv
        self.residual = nn.Sequential(
            RMSNorm(in_dim, images=False), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim, images=False), nn.SiLU(), nn.Identity(), CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x):
        return self.residual(x) + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention within each frame."""

    def __init__(self, dim):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x):                                                  # [B, C, T, H, W]
        B, C, T, H, W = x.shape
        y = x.permute(0, 2, 1, 3, 4).reshape(B * T, C, H, W)
        q, k, v = self.to_qkv(self.norm(y)).flatten(2).transpose(1, 2).chunk(3, dim=-1)   # [BT, HW, C] each
        y = F.scaled_dot_product_attention(q[:, None], k[:, None], v[:, None])[:, 0]
        y = self.proj(y.transpose(1, 2).reshape(B * T, C, H, W))
        return x + y.view(B, T, C, H, W).permute(0, 2, 1, 3, 4)


class _Decoder(nn.Module):
    def __init__(self, dim, z_dim, num_up_blocks):
        super().__init__()
        top = dim * 4                                                      # dims[0] = dim * dim_mult[-1]
        self.conv1 = CausalConv3d(z_dim, top, 3, padding=1)
        self.middle = nn.Sequential(ResidualBlock(top, top), AttentionBlock(top), ResidualBlock(top, top))
        self.upsamples = nn.Sequential(*(ResidualBlock(top, top) for _ in range(num_up_blocks)))


class WanVAEDecoderStages(nn.Module):
    """Frozen feature extractor: model-space latents [B, 16, T, h, w] -> list of feature maps, one per stage."""

    def __init__(self, dim: int = 96, z_dim: int = 16, stages=("conv1", "middle", "up0"), checkpoint: bool = False):
        super().__init__()
        unknown = [s for s in stages if s not in STAGES]
        if unknown or not stages:
            raise ValueError(f"Wan VAE decoder stages {unknown or '[]'} unknown; choose from {STAGES}")
        self.stages = tuple(stages)
        self.checkpoint = checkpoint
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = _Decoder(dim, z_dim, num_up_blocks=3 if "up0" in self.stages else 0)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):
        return super().train(False)                                        # frozen: always eval

    def _run(self, z):
        feats = []
        x = self.decoder.conv1(self.conv2(denormalize_latent(z)))
        if "conv1" in self.stages:
            feats.append(x)
        if "middle" in self.stages or "up0" in self.stages:
            x = self.decoder.middle(x)
            if "middle" in self.stages:
                feats.append(x)
        if "up0" in self.stages:
            feats.append(self.decoder.upsamples(x))
        return feats

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        z = z.to(self.conv2.weight.dtype)
        if self.checkpoint and torch.is_grad_enabled() and z.requires_grad:
            from torch.utils.checkpoint import checkpoint
            return checkpoint(self._run, z, use_reentrant=False)
        return self._run(z)


def load_wan_vae_decoder_stages(module: WanVAEDecoderStages, source) -> WanVAEDecoderStages:
    """Copy the needed tensors from a Wan 2.1 VAE file (or state dict) into `module`; other keys are ignored.
    Accepts the `first_stage_model.` / `vae.` prefixes some repackagings add."""
    from ..checkpoint import CheckpointError, read_safetensors
    if isinstance(source, (str, Path)):
        sd, _ = read_safetensors(source)
        what = Path(source).name
    else:
        sd, what = dict(source), "the VAE state dict"
    for prefix in ("first_stage_model.", "vae."):
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if any(k.startswith("decoder.conv_in.") or k.startswith("decoder.up_blocks.") for k in sd):
        raise CheckpointError(f"{what} is a diffusers-layout VAE; LVPL needs the original Wan 2.1 VAE file "
                              "(ComfyUI models/vae/wan_2.1_vae.safetensors)")
    want = module.state_dict()
    missing = sorted(k for k in want if k not in sd)
    misshaped = sorted(f"{k}: file {list(sd[k].shape)} vs model {list(want[k].shape)}"
                       for k in want if k in sd and sd[k].shape != want[k].shape)
    if missing or misshaped:
        raise CheckpointError(
            f"{what} is not a Wan 2.1 VAE with base width {module.decoder.conv1.out_channels // 4}: "
            f"missing {missing[:6]}{' ...' if len(missing) > 6 else ''}, mis-shaped {misshaped[:4]}. "
            "Use wan_2.1_vae.safetensors (the Wan 2.2 VAE has a different latent space).")
    with torch.no_grad():
        for k, v in want.items():
            v.copy_(sd[k].to(v.dtype))
    return module
