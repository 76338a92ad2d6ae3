"""Synthetic training shards (random latents, text states and identities) for tests and benchmarks."""
from __future__ import annotations

from pathlib import Path

import torch

from .data import write_shard


def synthetic_sample(g: torch.Generator, frames: int = 3, height: int = 8, width: int = 8, text_tokens: int = 6,
                     text_dim: int = 4096, face_size: int = 4, refs: int = 1, mask: bool = True) -> dict:
    """One sample: smooth-ish latents [16, T, h, w] with a 'face' blob that the mask marks."""
    lat = torch.randn(16, frames, height, width, generator=g) * 0.5
    lat = lat + torch.randn(16, 1, 1, 1, generator=g)                        # per-sample colour
    s = {"latents": lat, "text": torch.randn(text_tokens, text_dim, generator=g) * 0.1,
         "arcface": torch.randn(refs, 512, generator=g) if refs > 1 else torch.randn(512, generator=g),
         "face_latent": torch.randn(*((refs,) if refs > 1 else ()), 16, 1, face_size, face_size, generator=g)}
    if mask:
        m = torch.zeros(frames, height, width)
        m[:, height // 4: 3 * height // 4, width // 4: 3 * width // 4] = 1.0
        s["face_mask"] = m
    return s


def synthetic_multi_sample(g: torch.Generator, people: int = 2, frames: int = 3, height: int = 8, width: int = 8,
                           **kw) -> dict:
    """A multi-person sample (shard format version 2): person k's region is the k-th vertical strip of the
    frame (left to right), its identity random; "face_mask" is the union of the regions' middle rows."""
    s = synthetic_sample(g, frames=frames, height=height, width=width, mask=False, **kw)
    regions = torch.zeros(people, frames, height, width)
    for k in range(people):
        regions[k, :, :, k * width // people:(k + 1) * width // people] = 1.0
    s["person_mask"] = regions
    s["face_mask"] = regions.amax(0) * (torch.arange(height) >= height // 4).float()[None, :, None]
    for k in range(2, people + 1):
        s[f"person{k}.arcface"] = torch.randn(s["arcface"].shape, generator=g)
        s[f"person{k}.face_latent"] = torch.randn(s["face_latent"].shape, generator=g)
    return s


def make_synthetic_shards(out_dir, num_samples: int = 8, per_shard: int = 4, seed: int = 0, **kw) -> list[Path]:
    g = torch.Generator().manual_seed(seed)
    out_dir = Path(out_dir)
    paths = []
    for start in range(0, num_samples, per_shard):
        samples = [dict(synthetic_sample(g, **kw), caption=f"synthetic clip {i}", source=f"synthetic:{i}")
                   for i in range(start, min(num_samples, start + per_shard))]
        paths.append(write_shard(out_dir / f"shard_{start // per_shard:05d}.safetensors", samples))
    return paths


def tiny_train_config(out_dir, shards, **sections):
    """A TrainConfig for CPU tests: tiny preset, short text, small LVPL extractor, quiet. `sections` are
    merged into the defaults, e.g. optim={"max_steps": 5}."""
    from .config import TrainConfig
    d = {"out_dir": str(out_dir),
         "data": {"shards": [str(s) for s in ([shards] if isinstance(shards, (str, Path)) else shards)],
                  "batch_size": 2, "text_len": 16, "num_workers": 0},
         "optim": {"lr": 1e-3, "warmup_steps": 2, "max_steps": 8},
         "objective": {"lvpl": {"vae_dim": 8}},
         "checkpoint": {"every": 0, "keep_last": 2},
         "logging": {"every": 1, "progress": False, "tensorboard": False},
         "train": {"seed": 0}}
    for k, v in sections.items():
        if isinstance(v, dict):
            node = d.setdefault(k, {})
            for kk, vv in v.items():
                if isinstance(vv, dict) and isinstance(node.get(kk), dict):
                    node[kk] = {**node[kk], **vv}
                else:
                    node[kk] = vv
        else:
            d[k] = v
    return TrainConfig.from_dict(d)
