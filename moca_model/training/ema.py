"""Exponential moving average of the trainable parameters (fp32 shadow copies, updated after each step).

Warm-up: update n (from 0) uses decay min(decay, (1 + n) / (10 + n)), so the average forgets the initial
weights within the first steps instead of after ~1 / (1 - decay) of them. Without it a fresh MoCA adapter,
whose output projections start at zero, exports 0.99^50 = 61% of that zero after 50 steps at decay 0.99.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class EMA:
    def __init__(self, named_params: dict[str, nn.Parameter], decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.num_updates = 0                   # restored from the checkpoint on resume
        self.params = named_params
        self.shadow = {n: p.detach().float().clone() for n, p in named_params.items()}   # same layout as p

    def decay_at(self, n: int) -> float:
        """The decay of update n (0-based)."""
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self):
        weight = 1.0 - self.decay_at(self.num_updates)
        for n, p in self.params.items():
            self.shadow[n].lerp_(p.detach().float(), weight)
        self.num_updates += 1

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
