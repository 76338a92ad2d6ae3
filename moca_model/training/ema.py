"""Exponential moving average of the trainable parameters (fp32 shadow copies, updated after each step)."""
from __future__ import annotations

import torch
import torch.nn as nn


class EMA:
    def __init__(self, named_params: dict[str, nn.Parameter], decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.params = named_params
        self.shadow = {n: p.detach().float().clone() for n, p in named_params.items()}   # same layout as p

    @torch.no_grad()
    def update(self):
        for n, p in self.params.items():
            self.shadow[n].lerp_(p.detach().float(), 1.0 - self.decay)

    def state_dict(self) -> dict:
        return dict(self.shadow)

    @torch.no_grad()
    def load_state_dict(self, sd: dict):
        """Full tensors by name (a checkpoint's ema.safetensors); sharded shadows (FSDP2 DTensors) take their
        own shard."""
        missing = sorted(set(self.shadow) - set(sd))
        if missing:
            raise ValueError(f"EMA state lacks {len(missing)} parameters, e.g. {missing[:4]}; "
                             "was the checkpoint made with another trainable set?")
        for n, t in self.shadow.items():
            full = sd[n]
            if hasattr(t, "device_mesh"):
                from torch.distributed.tensor import distribute_tensor
                full = distribute_tensor(full.to(t.dtype), t.device_mesh, t.placements)
            t.copy_(full)
