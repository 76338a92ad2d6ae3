"""Latent Video Perceptual Loss (LVPL).

Features of the predicted clean latent x0_hat and of the true latent x0 under a frozen latent-space
extractor (default: the first stages of the Wan 2.1 VAE decoder; pluggable: any module mapping
[B, 16, T, h, w] to a list of [B, C_l, T_l, h_l, w_l] maps), per sample and per channel normalised with the
statistics of the true features (detached), then

    L = sum_l w_l [ mean(W_l * mean_c (f_hat - f)^2) + temporal_weight * mean(W'_l * mean_c (d_t f_hat - d_t f)^2) ]

with W_l = face_weight * M_l + background_weight * (1 - M_l), M_l the face mask resized to layer l's grid
(no mask: W = 1 everywhere), d_t the frame difference and W' the weight of adjacent frames averaged.
Returned per sample ([B]) so the caller gates it by noise level and averages it like the flow loss.
"""
from __future__ import annotations

import importlib

import torch
import torch.nn as nn
import torch.nn.functional as F


class IdentityExtractor(nn.Module):
    """The latent itself as the only feature map (a cheap baseline and a test extractor)."""

    def forward(self, z):
        return [z]


def build_extractor(name: str, vae: str | None = None, vae_dim: int = 96, stages=("conv1", "middle", "up0"),
                    checkpoint: bool = True) -> nn.Module:
    """'wan_vae_decoder' (weights from `vae` at the width they have; random at `vae_dim` if None), 'identity',
    or 'package.module:factory' (a callable returning an nn.Module)."""
    if name == "wan_vae_decoder":
        from .wan_vae_decoder import WanVAEDecoderStages
        if vae:
            return WanVAEDecoderStages.from_wan_vae(vae, stages=tuple(stages), checkpoint=checkpoint)
        return WanVAEDecoderStages(dim=vae_dim, stages=tuple(stages), checkpoint=checkpoint)
    if name == "identity":
        return IdentityExtractor()
    if ":" in name:
        mod, fn = name.split(":", 1)
        try:
            factory = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"LVPL extractor {name!r} cannot be imported ({e})") from e
        m = factory()
        m.requires_grad_(False)
        return m
    raise ValueError(f"LVPL extractor {name!r} unknown: use 'wan_vae_decoder', 'identity' or 'module:factory'")


def _normalise(f: torch.Tensor, ref: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Per sample, per channel: (f - mean(ref)) / std(ref) over (T, h, w); stats detached."""
    dims = tuple(range(2, ref.ndim))
    mean = ref.mean(dim=dims, keepdim=True).detach()
    std = ref.std(dim=dims, keepdim=True, unbiased=False).detach()
    return (f - mean) / (std + eps)


def resize_mask(mask: torch.Tensor, size) -> torch.Tensor:
    """mask [B, T, h, w] in 0..1 -> [B, T_l, h_l, w_l] (area average; nearest in time when T changes)."""
    m = mask.float()
    if tuple(m.shape[-2:]) != tuple(size[-2:]):
        m = F.interpolate(m, size=tuple(size[-2:]), mode="area")
    if m.shape[1] != size[0]:
        m = F.interpolate(m[:, None], size=tuple(size), mode="nearest")[:, 0]
    return m


class LatentVideoPerceptualLoss(nn.Module):
    def __init__(self, extractor: nn.Module, face_weight: float = 1.0, background_weight: float = 0.25,
                 temporal_weight: float = 0.5, stage_weights=None):
        super().__init__()
        self.extractor = extractor
        self.face_weight, self.background_weight = float(face_weight), float(background_weight)
        self.temporal_weight = float(temporal_weight)
        self.stage_weights = None if stage_weights is None else [float(w) for w in stage_weights]

    def forward(self, x0_hat: torch.Tensor, x0: torch.Tensor, face_mask: torch.Tensor | None = None,
                has_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x0_hat, x0 [B, 16, T, h, w] model-space latents; face_mask [B, T, h, w] in 0..1 or None;
        has_mask [B] bool (rows without a mask get weight 1 everywhere). Returns the loss per sample, [B]."""
        with torch.no_grad():
            ref_feats = self.extractor(x0)
        feats = self.extractor(x0_hat)
        if len(feats) != len(ref_feats) or not feats:
            raise RuntimeError("LVPL extractor returned a different number of feature maps for x0_hat and x0")
        weights = self.stage_weights or [1.0 / len(feats)] * len(feats)
        total = x0.new_zeros(x0.shape[0], dtype=torch.float32)
        for w_l, f_hat, f in zip(weights, feats, ref_feats):
            f_hat, f = f_hat.float(), f.float()
            a, b = _normalise(f_hat, f), _normalise(f, f)                 # [B, C, T, h, w]
            if face_mask is None:
                wmap = torch.ones_like(a[:, 0])                            # [B, T, h, w]
            else:
                m = resize_mask(face_mask.to(a.device), a.shape[2:])
                wmap = self.face_weight * m + self.background_weight * (1 - m)
                if has_mask is not None:
                    wmap = torch.where(has_mask.to(wmap.device).view(-1, 1, 1, 1), wmap, torch.ones_like(wmap))
            d = (a - b).pow(2).mean(dim=1)                                 # [B, T, h, w]
            loss = (wmap * d).flatten(1).mean(dim=1)
            if self.temporal_weight and a.shape[2] > 1:
                dt = ((a[:, :, 1:] - a[:, :, :-1]) - (b[:, :, 1:] - b[:, :, :-1])).pow(2).mean(dim=1)
                wt = 0.5 * (wmap[:, 1:] + wmap[:, :-1])
                loss = loss + self.temporal_weight * (wt * dt).flatten(1).mean(dim=1)
            total = total + w_l * loss
        return total
