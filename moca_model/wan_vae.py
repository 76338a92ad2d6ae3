"""The Wan 2.1 video VAE (encoder + decoder) in pure PyTorch, at any base width, with Wan's parameter names.

Architecture and names follow Wan-Video/Wan2.1 `wan/modules/vae.py` (and ComfyUI's `comfy/ldm/wan/vae.py`),
so `WanVAE(dim=96)` loads the real `wan_2.1_vae.safetensors` and a narrow `WanVAE(dim=8..32)` file is read by
ComfyUI (>= 0.3.65-ish; 0.8.0 reads the width from `decoder.head.0.gamma`) as a Wan 2.1 VAE.

    video [B, 3, 1+4k, H, W] in [-1, 1]
      encoder: conv1 -> 4 stages of residual blocks (widths dim*(1,2,4,4)), a Resample between stages
               (space /2 each; time /2 in stages 2 and 3: temperal_downsample (False, True, True))
               -> middle (res, per-frame attention, res) -> head (RMSNorm, SiLU, conv) -> [B, 32, 1+k, H/8, W/8]
      conv1 (1x1x1) -> mu, log_var (each [B, 16, 1+k, H/8, W/8]); encode() returns mu (the raw latent)
    z [B, 16, T, h, w]
      conv2 (1x1x1) -> decoder: conv1 -> middle -> 4 stages of 3 residual blocks with Resample between
               (space x2 each; time x2 in the first two) -> head -> video [B, 3, 1+4(T-1), 8h, 8w]

Time is causal everywhere: every 3-D conv sees only the current and past frames (zero frames in front).
Wan runs the encoder on the first frame alone and then on chunks of 4 frames (the decoder: one latent frame
at a time), carrying each causal conv's last two input frames from chunk to chunk. Because every layer is
causal and per-frame ops are per-frame, that equals ONE pass over the whole sequence in which
  - a causal conv pads 2 * pad_t zero frames in front,
  - a temporal downsample keeps frame 0 as is and runs its stride-2 time conv over all frames (0,1,2), (2,3,4) ...
  - a temporal upsample keeps frame 0 as is and turns each later frame into two with a causal time conv,
which is what this module does (tests/test_wan_vae.py checks it against a chunked reference and, with
COMFYUI_PATH set, against ComfyUI's own class). As in Wan, trailing frames beyond 1 + 4k are not encoded.

Latents here are *raw* (what ComfyUI's VAE Encode outputs); the DiT sees `moca_model.latents.normalize_latent`.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange

WAN21_CONFIG = dict(dim=96, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=2,
                    temperal_downsample=(False, True, True))


class CausalConv3d(nn.Conv3d):
    """3-D conv padded 2*pad_t zero frames in front (causal in time), pad_h / pad_w on both sides."""

    def __init__(self, in_dim, out_dim, kernel_size, stride=1, padding=0):
        super().__init__(in_dim, out_dim, kernel_size, stride=stride, padding=0)
        p = (padding,) * 3 if isinstance(padding, int) else tuple(padding)
        self._pad = (p[2], p[2], p[1], p[1], 2 * p[0], 0)                 # F.pad order: w, h, t

    def forward(self, x):                                                  # [B, C, T, H, W]
        return super().forward(F.pad(x, self._pad))


class RMSNorm(nn.Module):
    """Wan's RMS_norm: L2-normalise over channels, times sqrt(C) * gamma; gamma [C,1,1,1] (video) or [C,1,1]."""

    def __init__(self, dim, images=True):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim, *((1, 1) if images else (1, 1, 1))))

    def forward(self, x):                                                  # [B, C, ...]
        return F.normalize(x, dim=1) * self.scale * self.gamma.to(x.dtype)


class ResidualBlock(nn.Module):
    def __init__(self, in_dim, out_dim):
        super().__init__()
        # indices match Wan's nn.Sequential: 0 norm, 1 SiLU, 2 conv, 3 norm, 4 SiLU, 5 Dropout, 6 conv
        self.residual = nn.Sequential(
            RMSNorm(in_dim, images=False), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1),
            RMSNorm(out_dim, images=False), nn.SiLU(), nn.Identity(), CausalConv3d(out_dim, out_dim, 3, padding=1))
        self.shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x):                                                  # [B, C_in, T, H, W] -> [B, C_out, ...]
        return self.residual(x) + self.shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the H*W positions of each frame (head width = C)."""

    def __init__(self, dim):
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x):                                                  # [B, C, T, H, W]
        B, C, T, H, W = x.shape
        y = rearrange(x, "b c t h w -> (b t) c h w")
        q, k, v = rearrange(self.to_qkv(self.norm(y)), "n (three c) h w -> three n 1 (h w) c", three=3)
        y = F.scaled_dot_product_attention(q, k, v)                         # [BT, 1, HW, C]
        y = self.proj(rearrange(y, "n 1 (h w) c -> n c h w", h=H))
        return x + rearrange(y, "(b t) c h w -> b c t h w", b=B)


def middle_block(dim: int) -> nn.Sequential:
    """Encoder / decoder middle: residual block, per-frame attention, residual block (names middle.0-2)."""
    return nn.Sequential(ResidualBlock(dim, dim), AttentionBlock(dim), ResidualBlock(dim, dim))


def head_block(in_dim: int, out_dim: int) -> nn.Sequential:
    """Output head: RMSNorm, SiLU, causal 3x3x3 conv (names head.0 gamma, head.2 conv)."""
    return nn.Sequential(RMSNorm(in_dim, images=False), nn.SiLU(), CausalConv3d(in_dim, out_dim, 3, padding=1))


class Resample(nn.Module):
    """Space x2 / /2 per frame (`resample.1`, a 2-D conv), plus time x2 / /2 in the 3-D modes (`time_conv`)."""

    MODES = ("upsample2d", "upsample3d", "downsample2d", "downsample3d")

    def __init__(self, dim, mode):
        super().__init__()
        assert mode in self.MODES, mode
        self.mode = mode
        if mode.startswith("upsample"):        # nearest x2, conv to dim // 2 channels
            self.resample = nn.Sequential(nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                                          nn.Conv2d(dim, dim // 2, 3, padding=1))
        else:                                  # pad right/bottom by one, stride-2 conv
            self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        if mode == "upsample3d":               # each frame -> two frames (2*dim channels, then interleaved)
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":           # stride 2 in time, no padding
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=0)

    def _spatial(self, x):                                                 # [B, C, T, H, W] per frame
        T = x.shape[2]
        y = self.resample(rearrange(x, "b c t h w -> (b t) c h w"))
        return rearrange(y, "(b t) c h w -> b c t h w", t=T)

    def forward(self, x):
        if self.mode == "upsample3d" and x.shape[2] > 1:
            # frame 0 stays one frame; frames 1.. -> causal time conv (zero frames in front) -> two frames each
            y = rearrange(self.time_conv(x[:, :, 1:]), "b (two c) t h w -> b c (t two) h w", two=2)
            x = torch.cat([x[:, :, :1], y], dim=2)                         # [B, C, 1 + 2(T-1), H, W]
        x = self._spatial(x)
        if self.mode == "downsample3d" and x.shape[2] > 1:
            # frame 0 stays; frames (0,1,2), (2,3,4), ... -> one frame each
            x = torch.cat([x[:, :, :1], self.time_conv(x)], dim=2)        # [B, C, 1 + (T-1)//2, H, W]
        return x


class Encoder3d(nn.Module):
    def __init__(self, dim, z_dim, dim_mult=(1, 2, 4, 4), num_res_blocks=2, temperal_downsample=(False, True, True)):
        super().__init__()
        dims = [dim * u for u in (1, *dim_mult)]                           # 96: [96, 96, 192, 384, 384]
        self.conv1 = CausalConv3d(3, dims[0], 3, padding=1)
        layers = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                layers.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                layers.append(Resample(out_dim, "downsample3d" if temperal_downsample[i] else "downsample2d"))
        self.downsamples = nn.Sequential(*layers)
        self.middle = middle_block(dims[-1])
        self.head = head_block(dims[-1], z_dim)

    def forward(self, x):                       # [B, 3, 1+4k, H, W] -> [B, z_dim, 1+k, H/8, W/8]
        return self.head(self.middle(self.downsamples(self.conv1(x))))


class Decoder3d(nn.Module):
    def __init__(self, dim, z_dim, dim_mult=(1, 2, 4, 4), num_res_blocks=2, temperal_upsample=(True, True, False)):
        super().__init__()
        dims = [dim * u for u in (dim_mult[-1], *dim_mult[::-1])]          # 96: [384, 384, 384, 192, 96]
        self.conv1 = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.middle = middle_block(dims[0])
        layers = []
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0:
                in_dim = in_dim // 2                                       # the Resample before halved it
            for _ in range(num_res_blocks + 1):
                layers.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != len(dim_mult) - 1:
                layers.append(Resample(out_dim, "upsample3d" if temperal_upsample[i] else "upsample2d"))
        self.upsamples = nn.Sequential(*layers)
        self.head = head_block(dims[-1], 3)

    def forward(self, x):                       # [B, z_dim, T, h, w] -> [B, 3, 1+4(T-1), 8h, 8w]
        return self.head(self.upsamples(self.middle(self.conv1(x))))


class WanVAE(nn.Module):
    """Wan 2.1 VAE. `encode(video [B,3,T,H,W] in [-1,1]) -> mu [B,16,1+(T-1)//4,H/8,W/8]` (raw latent),
    `decode(z) -> video [B,3,1+4(T_z-1),8h,8w]` (unclamped, ~[-1,1]). H and W must be multiples of 8."""

    def __init__(self, dim=96, z_dim=16, dim_mult=(1, 2, 4, 4), num_res_blocks=2,
                 temperal_downsample=(False, True, True)):
        super().__init__()
        self.config = dict(dim=dim, z_dim=z_dim, dim_mult=tuple(dim_mult), num_res_blocks=num_res_blocks,
                           temperal_downsample=tuple(temperal_downsample))
        self.dim, self.z_dim = dim, z_dim
        self.encoder = Encoder3d(dim, z_dim * 2, dim_mult, num_res_blocks, temperal_downsample)
        self.conv1 = CausalConv3d(z_dim * 2, z_dim * 2, 1)
        self.conv2 = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder3d(dim, z_dim, dim_mult, num_res_blocks, tuple(temperal_downsample)[::-1])

    def encode_moments(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """video [B, 3, T, H, W] in [-1, 1] -> (mu, log_var), each [B, 16, 1+(T-1)//4, H/8, W/8]."""
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"WanVAE.encode takes video [B, 3, T, H, W], not {list(video.shape)}")
        if video.shape[-1] % 8 or video.shape[-2] % 8:
            raise ValueError(f"WanVAE.encode needs H and W divisible by 8, got {list(video.shape[-2:])}")
        T = 1 + 4 * ((video.shape[2] - 1) // 4)                            # Wan encodes 1 + 4k frames
        moments = self.conv1(self.encoder(video[:, :, :T].to(self.conv1.weight.dtype)))
        mu, log_var = moments.chunk(2, dim=1)
        return mu, log_var

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return self.encode_moments(video)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """raw latent z [B, 16, T, h, w] -> video [B, 3, 1 + 4(T-1), 8h, 8w]."""
        if z.ndim != 5 or z.shape[1] != self.z_dim:
            raise ValueError(f"WanVAE.decode takes latents [B, {self.z_dim}, T, h, w], not {list(z.shape)}")
        return self.decoder(self.conv2(z.to(self.conv2.weight.dtype)))

    def forward(self, video):
        return self.decode(self.encode(video))


# ---------------------------------------------------------------------------------------------- files
VAE_PREFIXES = ("first_stage_model.", "vae.")


def strip_vae_prefix(sd: dict) -> dict:
    """Drop the `first_stage_model.` / `vae.` prefix some repackagings add (keys without it are kept as is)."""
    for prefix in VAE_PREFIXES:
        if any(k.startswith(prefix) for k in sd):
            return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    return sd


def wan_vae_config_from_state_dict(sd: dict, what: str = "the VAE state dict") -> dict:
    """WanVAE kwargs read from a Wan 2.1 VAE state dict: the base width is `decoder.head.0.gamma`'s length
    (as ComfyUI reads it), z_dim is `conv2.weight`'s."""
    from .checkpoint import CheckpointError
    sd = strip_vae_prefix(sd)
    if any(k.startswith(("decoder.conv_in.", "decoder.up_blocks.")) for k in sd):
        raise CheckpointError(f"{what} is a diffusers-layout VAE; use the original Wan 2.1 VAE file "
                              "(ComfyUI models/vae/wan_2.1_vae.safetensors)")
    if "decoder.upsamples.0.upsamples.0.residual.2.weight" in sd:
        raise CheckpointError(f"{what} is a Wan 2.2 VAE (48 latent channels); MoCA uses the Wan 2.1 VAE")
    if "decoder.head.0.gamma" not in sd or "conv2.weight" not in sd:
        raise CheckpointError(f"{what} is not a Wan 2.1 VAE (no decoder.head.0.gamma / conv2.weight)")
    return dict(WAN21_CONFIG, dim=int(sd["decoder.head.0.gamma"].shape[0]), z_dim=int(sd["conv2.weight"].shape[0]))


def load_wan_vae(source, device="cpu", dtype=torch.float32) -> WanVAE:
    """A WanVAE (eval mode) from a Wan 2.1 VAE .safetensors path or state dict, at the width the weights have.
    Missing, unexpected or mis-shaped keys raise CheckpointError listing them."""
    from .checkpoint import check_state_dict, read_safetensors
    if isinstance(source, (str, Path)):
        sd, meta = read_safetensors(source)
        what = Path(source).name
    else:
        sd, meta, what = dict(source), {}, "the VAE state dict"
    sd = strip_vae_prefix(sd)
    cfg = wan_vae_config_from_state_dict(sd, what)
    with torch.device("meta"):
        vae = WanVAE(**cfg)
    check_state_dict(vae.state_dict(), sd, f"{what} (Wan 2.1 VAE, base width {cfg['dim']})")
    vae.load_state_dict({k: v.to(dtype) for k, v in sd.items()}, assign=True)
    vae.metadata = meta
    return vae.to(device).eval().requires_grad_(False)
