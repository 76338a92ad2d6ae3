"""The Wan 2.1 VAE latent space: per-channel normalisation and a cheap latent -> RGB projection.

Convention used everywhere in MoCA (DiT inputs, face-crop latents, training caches): latents are in the
*model space*, (z - mean) / std of the raw Wan 2.1 VAE latent z, exactly what ComfyUI's Wan21 latent
format feeds the diffusion model.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

LATENT_CHANNELS = 16
WAN21_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
              0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
             3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)
# Wan 2.1's latent -> RGB preview projection (the factors ComfyUI's previews use), [16, 3] and [3].
WAN21_RGB_FACTORS = (
    (-0.1299, -0.1692, 0.2932), (0.0671, 0.0406, 0.0442), (0.3568, 0.2548, 0.1747), (0.0372, 0.2344, 0.1420),
    (0.0313, 0.0189, -0.0328), (0.0296, -0.0956, -0.0665), (-0.3477, -0.4059, -0.2925), (0.0166, 0.1902, 0.1975),
    (-0.0412, 0.0267, -0.1364), (-0.1293, 0.0740, 0.1636), (0.0680, 0.3019, 0.1128), (0.0032, 0.0581, 0.0639),
    (-0.1251, 0.0927, 0.1699), (0.0060, -0.0633, 0.0005), (0.3477, 0.2275, 0.2950), (0.1984, 0.0913, 0.1861))
WAN21_RGB_BIAS = (-0.1835, -0.0868, -0.3360)


def _stats(z):
    shape = (1, LATENT_CHANNELS) + (1,) * (z.ndim - 2)
    mean = torch.tensor(WAN21_MEAN, device=z.device, dtype=z.dtype).view(shape)
    std = torch.tensor(WAN21_STD, device=z.device, dtype=z.dtype).view(shape)
    return mean, std


def normalize_latent(z: torch.Tensor) -> torch.Tensor:
    """Raw Wan VAE latent [B, 16, ...] -> model space."""
    mean, std = _stats(z)
    return (z - mean) / std


def denormalize_latent(z: torch.Tensor) -> torch.Tensor:
    """Model space [B, 16, ...] -> raw Wan VAE latent (what the VAE decoder takes)."""
    mean, std = _stats(z)
    return z * std + mean


def latent_to_rgb(z: torch.Tensor, upscale: int = 8) -> torch.Tensor:
    """Model-space latents [B, 16, T, h, w] -> frames [B, T, h*upscale, w*upscale, 3] in 0..1, with Wan 2.1's
    linear preview projection (no VAE needed; blurry but faithful in colour and layout). Like ComfyUI's
    latent previews, the projection applies to model-space latents as the sampler produces them."""
    raw = z.float()
    factors = torch.tensor(WAN21_RGB_FACTORS, device=z.device)
    bias = torch.tensor(WAN21_RGB_BIAS, device=z.device)
    rgb = torch.einsum("bcthw,cr->btrhw", raw, factors) + bias.view(1, 1, 3, 1, 1)
    B, T = rgb.shape[:2]
    rgb = rgb.flatten(0, 1)
    if upscale > 1:
        rgb = F.interpolate(rgb, scale_factor=upscale, mode="bilinear", align_corners=False)
    rgb = ((rgb + 1) / 2).clamp(0, 1)
    return rgb.view(B, T, 3, *rgb.shape[-2:]).permute(0, 1, 3, 4, 2)
