"""Analytic FLOPs of one MoCADiT forward (2 FLOPs per multiply-add; matmuls and attention only)."""
from __future__ import annotations

import math

from .config import WHOLE_CLIP, MoCAConfig


def latent_grid(frames: int, height: int, width: int, config: MoCAConfig) -> tuple[int, int, int]:
    """Video frames and pixels -> the DiT token grid (T latent frames, h, w) for Wan 2.1 (4x time, 8x space)."""
    pt, ph, pw = config.patch_size
    T = (frames - 1) // 4 + 1
    return math.ceil(T / pt), math.ceil(height / 8 / ph), math.ceil(width / 8 / pw)


def backbone_flops(config: MoCAConfig, grid, text_len: int = 512) -> float:
    c = config
    T, h, w = grid
    L, D, Lc = T * h * w, c.dim, text_len
    per_block = (8 * L * D * D              # self-attention q, k, v, o
                 + 4 * L * L * D            # QK^T and AV
                 + 4 * L * D * D            # cross-attention q, o
                 + 4 * Lc * D * D           # cross-attention k, v over the text
                 + 4 * L * Lc * D           # cross-attention QK^T, AV
                 + 4 * L * D * c.ffn_dim)   # FFN
    embed = 2 * L * c.in_dim * math.prod(c.patch_size) * D + 2 * Lc * (c.text_dim * D + D * D) \
        + 2 * L * D * c.out_dim * math.prod(c.patch_size)
    return c.num_layers * per_block + embed


def moca_flops(config: MoCAConfig, grid, num_id_tokens: int | None = None) -> float:
    """Added FLOPs of the MoCA layers (all experts enabled) for one forward, term by term as `taca.py`,
    `router.py` and `htp.py` compute them (tests/test_core_flops.py checks this against torch's FLOP counter)."""
    from .taca import TIME_FREQ_DIM
    c = config
    T, h, w = grid
    N, L, D, a, d, E = h * w, T * h * w, c.dim, c.moca_dim, c.id_dim, c.num_experts
    M = c.num_id_tokens if num_id_tokens is None else num_id_tokens
    if c.identity_attention == "single":                   # one plain cross-attention (identity_xattn.py)
        per_layer = 2 * L * D * a + 2 * M * d * 2 * a + 4 * L * M * a + 2 * L * a * D
        return c.num_layers * per_layer
    windows = [1 if s == WHOLE_CLIP else math.ceil(T / s) for s in c.scales]   # the whole clip is one window
    Tq = sum(windows)
    if c.summary_source == "query":                         # lean: summaries from the pooled queries (a -> d)
        summaries = 2 * Tq * a * d
    else:                                                   # pool the frame summaries, then D -> d
        summaries = 2 * Tq * T * D + 2 * Tq * D * d
    r = c.expert_kv_rank
    if r:                                                   # lean: shared K/V + each expert's rank-r correction
        kv = 2 * (M + Tq) * d * 2 * a + 2 * (M + Tq) * d * E * r + sum(2 * (M + W) * r * 2 * a for W in windows)
    else:
        kv = 2 * (M + Tq) * d * E * 2 * a                   # per-expert K and V
    per_layer = (2 * L * D * a             # shared Q projection (once, before pooling)
                 + 2 * Tq * T * N * a      # pooling every scale (one einsum over time)
                 + 2 * Tq * TIME_FREQ_DIM * (a + d)   # window-centre embeddings (queries, summaries)
                 + 2 * L * D * E           # router: LN(x) per token
                 + 2 * D * E               # router: time projection, once per sample (Wan 2.1's vec)
                 + summaries               # window summaries -> tokens
                 + kv
                 + sum(4 * W * N * (M + W) * a for W in windows)   # attention: each expert's windows, M + W keys
                 + 2 * E * L * a           # router mix
                 + 2 * L * a * D)          # output projection
    return c.num_layers * per_layer


def overhead(config: MoCAConfig, frames: int = 81, height: int = 480, width: int = 832) -> dict:
    grid = latent_grid(frames, height, width, config)
    base, moca = backbone_flops(config, grid), moca_flops(config, grid)
    return {"grid": grid, "tokens": math.prod(grid), "backbone_tflops": base / 1e12,
            "moca_tflops": moca / 1e12, "ratio": moca / base}
