"""The first stages of the Wan 2.1 VAE decoder, with the Wan VAE's parameter names: LVPL's default
latent-space feature extractor.

Built from `moca_model.wan_vae`'s pieces (the full VAE lives there), keeping only what the loss needs:
`conv2.*` (the 1x1 conv applied to a latent before decoding), `decoder.conv1.*`, `decoder.middle.{0,1,2}.*`
and `decoder.upsamples.{0,1,2}.*`, so a Wan 2.1 VAE file loads with `load_wan_vae_decoder_stages(module, path)`
(or `WanVAEDecoderStages.from_wan_vae(path)`, which reads the base width from the weights: 96 for Wan's own
VAE, less for the toy one); tests use random init.

Wan decodes one latent frame at a time with a cache of the last two input frames per causal conv, which
equals running each causal 3-D conv over the whole sequence with two zero frames in front; that is what the
wan_vae pieces do. Stages (features returned after each one that is requested):
  "conv1"  -> [B, 4*dim, T, h, w]   decoder.conv1
  "middle" -> [B, 4*dim, T, h, w]   ResidualBlock, per-frame AttentionBlock, ResidualBlock
  "up0"    -> [B, 4*dim, T, h, w]   decoder.upsamples.0..2: the residual blocks at latent resolution
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

from ..latents import denormalize_latent
from ..wan_vae import CausalConv3d, ResidualBlock, middle_block, strip_vae_prefix, wan_vae_config_from_state_dict

STAGES = ("conv1", "middle", "up0")


class _Decoder(nn.Module):
    """The head of wan_vae.Decoder3d: conv1, middle, and the first `num_up_blocks` residual blocks."""

    def __init__(self, dim, z_dim, num_up_blocks):
        super().__init__()
        top = dim * 4                                                      # dims[0] = dim * dim_mult[-1]
        self.conv1 = CausalConv3d(z_dim, top, 3, padding=1)
        self.middle = middle_block(top)
        self.upsamples = nn.Sequential(*(ResidualBlock(top, top) for _ in range(num_up_blocks)))


class WanVAEDecoderStages(nn.Module):
    """Frozen feature extractor: model-space latents [B, 16, T, h, w] -> list of feature maps, one per stage."""

    def __init__(self, dim: int = 96, z_dim: int = 16, stages=("conv1", "middle", "up0"), checkpoint: bool = False):
        super().__init__()
        unknown = [s for s in stages if s not in STAGES]
        if unknown or not stages:
            raise ValueError(f"Wan VAE decoder stages {unknown or '[]'} unknown; choose from {STAGES}")
        self.dim = dim
        self.stages = tuple(stages)
        self.checkpoint = checkpoint
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = _Decoder(dim, z_dim, num_up_blocks=3 if "up0" in self.stages else 0)
        self.requires_grad_(False)
        self.eval()

    @classmethod
    def from_wan_vae(cls, source, stages=STAGES, checkpoint: bool = False) -> "WanVAEDecoderStages":
        """Built at the base width of the Wan 2.1 VAE weights in `source` (path or state dict) and loaded."""
        sd, what = _read(source)
        cfg = wan_vae_config_from_state_dict(sd, what)
        return load_wan_vae_decoder_stages(cls(cfg["dim"], cfg["z_dim"], stages, checkpoint), sd)

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


def _read(source) -> tuple[dict, str]:
    from ..checkpoint import read_safetensors
    if isinstance(source, (str, Path)):
        return strip_vae_prefix(read_safetensors(source)[0]), Path(source).name
    return strip_vae_prefix(dict(source)), "the VAE state dict"


def load_wan_vae_decoder_stages(module: WanVAEDecoderStages, source) -> WanVAEDecoderStages:
    """Copy the needed tensors from a Wan 2.1 VAE file (or state dict) into `module`; other keys are ignored.
    Accepts the `first_stage_model.` / `vae.` prefixes some repackagings add."""
    from ..checkpoint import CheckpointError
    sd, what = _read(source)
    if any(k.startswith("decoder.conv_in.") or k.startswith("decoder.up_blocks.") for k in sd):
        raise CheckpointError(f"{what} is a diffusers-layout VAE; LVPL needs the original Wan 2.1 VAE file "
                              "(ComfyUI models/vae/wan_2.1_vae.safetensors)")
    want = module.state_dict()
    missing = sorted(k for k in want if k not in sd)
    misshaped = sorted(f"{k}: file {list(sd[k].shape)} vs model {list(want[k].shape)}"
                       for k in want if k in sd and sd[k].shape != want[k].shape)
    if missing or misshaped:
        width = f" (the file's is {sd['decoder.head.0.gamma'].shape[0]})" if "decoder.head.0.gamma" in sd else ""
        raise CheckpointError(
            f"{what} is not a Wan 2.1 VAE with base width {module.dim}{width}: "
            f"missing {missing[:6]}{' ...' if len(missing) > 6 else ''}, mis-shaped {misshaped[:4]}. "
            "Use wan_2.1_vae.safetensors (the Wan 2.2 VAE has a different latent space), or build the "
            "extractor with WanVAEDecoderStages.from_wan_vae(path), which reads the width from the file.")
    with torch.no_grad():
        for k, v in want.items():
            v.copy_(sd[k].to(v.dtype))
    return module
