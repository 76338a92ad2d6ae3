"""Cached text conditioning: umT5 states (and their side tensors) in a safetensors file.

Encoding a prompt with Wan's umT5-XXL needs an 11 GB model; a cache file lets repeated runs (and training
data preparation) skip it. The layout mirrors a ComfyUI CONDITIONING -- a list of (tensor [1, L, 4096],
extras dict) pairs -- without importing ComfyUI: tensor extras are stored as tensors, JSON-able extras in
the header, anything else is dropped and reported.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .checkpoint import CheckpointError, atomic_save_safetensors, check_header, read_safetensors

TEXT_FORMAT = "moca-text-embeds"
TEXT_FORMAT_VERSION = 1


def save_text_embeds(path, conditioning, metadata: dict | None = None, overwrite: bool = False):
    """conditioning: [(cond [B, L, D], extras dict), ...]. Returns (path, dropped extra keys)."""
    if not isinstance(conditioning, (list, tuple)) or not conditioning:
        raise ValueError("save_text_embeds: conditioning must be a non-empty list of (tensor, dict) pairs")
    tensors, extras, dropped = {}, [], []
    for i, entry in enumerate(conditioning):
        if not isinstance(entry, (list, tuple)) or len(entry) != 2 or not torch.is_tensor(entry[0]):
            raise ValueError(f"save_text_embeds: entry {i} is not a (tensor, dict) pair")
        cond, d = entry
        tensors[f"{i}.cond"] = cond
        json_extras = {}
        for k, v in (d or {}).items():
            if torch.is_tensor(v):
                tensors[f"{i}.extra.{k}"] = v
            elif v is None or isinstance(v, (bool, int, float, str)):
                json_extras[k] = v
            else:
                dropped.append(f"{i}.{k}")
        extras.append(json_extras)
    meta = dict(metadata or {})
    meta.update({"format": TEXT_FORMAT, "format_version": str(TEXT_FORMAT_VERSION),
                 "entries": str(len(conditioning)), "extras": json.dumps(extras)})
    return atomic_save_safetensors(tensors, path, meta, overwrite=overwrite), dropped


def load_text_embeds(path) -> tuple[list, dict]:
    """Returns (conditioning list of [tensor, dict], user metadata)."""
    tensors, meta = read_safetensors(path)
    name = Path(path).name
    check_header(meta, name, TEXT_FORMAT, TEXT_FORMAT_VERSION, "MoCA text-embeds file",
                 "these files are written by MoCA Save Text Embeds")
    n = int(meta.get("entries", "0"))
    extras = json.loads(meta.get("extras", "[]"))
    out = []
    for i in range(n):
        if f"{i}.cond" not in tensors:
            raise CheckpointError(f"{name} is damaged: entry {i} has no conditioning tensor")
        d = dict(extras[i]) if i < len(extras) else {}
        prefix = f"{i}.extra."
        d.update({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
        out.append([tensors[f"{i}.cond"], d])
    user = {k: v for k, v in meta.items() if k not in ("format", "format_version", "entries", "extras")}
    return out, user
