"""Hierarchical Temporal Pooling (HTP): average video features over time windows at several scales.

For a scale `s`, the T latent frames are cut into ceil(T/s) windows of s frames (the last one shorter:
ceil mode) and each window is averaged. Scale 0 means "the whole clip" (one window of T frames).
Pooling is linear, so it is applied as one matrix over time to *projected* queries:
pool_s(Wq x) == Wq pool_s(x). All enabled scales are stacked into one pooling matrix `P [Tq, T]`
(Tq = total number of windows; the windows of the k-th enabled expert are the rows `plan.rows[k]`), so
every expert is pooled in one einsum.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import torch
import torch.nn as nn

from .config import WHOLE_CLIP


@dataclass(frozen=True)
class WindowPlan:
    """Where every window of every enabled expert lies, for one clip length T. Made once per (T, scales,
    enabled experts, device) and cached, so a layer call builds nothing on the host."""
    T: int
    experts: tuple              # enabled expert ids (indices into config.scales), in mixing order
    rows: tuple                 # per enabled expert: (start, stop) of its windows among the Tq rows
    pool: torch.Tensor          # [Tq, T]  averaging weights (rows sum to 1)
    centre: torch.Tensor        # [Tq]     window centre, in latent frames
    unpool: torch.Tensor        # [E_on, T] row holding frame t, per enabled expert
    expert_index: torch.Tensor  # [E_on]   `experts` as a tensor (the router's index)


def window_bounds(T: int, scale: int) -> list[tuple[int, int]]:
    """[(start, stop)] frame ranges of the windows of one scale (ceil mode; 0 = whole clip)."""
    s = T if scale == WHOLE_CLIP else scale
    return [(j * s, min((j + 1) * s, T)) for j in range(math.ceil(T / s))]


@lru_cache(maxsize=64)
def _plan(T: int, scales: tuple, experts: tuple, device: torch.device) -> WindowPlan:
    pool, centre, unpool, rows = [], [], [], []
    for e in experts:
        first, frame_row = len(pool), []
        for a, b in window_bounds(T, scales[e]):
            frame_row += [len(pool)] * (b - a)
            pool.append([1.0 / (b - a) if a <= t < b else 0.0 for t in range(T)])
            centre.append((a + b - 1) / 2)
        rows.append((first, len(pool)))
        unpool.append(frame_row)
    with torch.inference_mode(False):   # cached: must stay usable outside inference mode (training)
        return WindowPlan(T, experts, tuple(rows), torch.tensor(pool, device=device),
                          torch.tensor(centre, dtype=torch.float32, device=device),
                          torch.tensor(unpool, device=device), torch.tensor(experts, device=device))


class HierarchicalTemporalPooling(nn.Module):
    """Builds window plans for the configured scales and pools / un-pools along time."""

    def __init__(self, scales: tuple):
        super().__init__()
        self.scales = tuple(scales)

    def plan(self, T: int, experts: tuple, device=None) -> WindowPlan:
        if T < 1:
            raise ValueError(f"HTP needs at least one latent frame, got T={T}")
        if not experts:
            raise ValueError("HTP: no temporal scale is enabled; enable at least one scale")
        return _plan(int(T), self.scales, tuple(experts), torch.device(device or "cpu"))

    @staticmethod
    def pool(x: torch.Tensor, plan: WindowPlan) -> torch.Tensor:
        """[B, T, ...] -> [B, Tq, ...]: every window of every enabled scale, averaged over its frames."""
        return torch.einsum("jt,bt...->bj...", plan.pool.to(x.dtype), x)

    @staticmethod
    def unpool(y: torch.Tensor, plan: WindowPlan) -> torch.Tensor:
        """[B, Tq, ...] -> [B, E_on, T, ...]: each window's value repeated over its frames, per expert."""
        return y[:, plan.unpool]

    @staticmethod
    def unpool_mix(y: torch.Tensor, weights: torch.Tensor, plan: WindowPlan) -> torch.Tensor:
        """sum_e weights[..., e] * unpool_e(y): y [B, Tq, N, a], weights [B, T, N, E_on] -> [B, T, N, a].
        One expert at a time, so the [B, E_on, T, N, a] stack is never materialised."""
        out = None
        for slot in range(weights.shape[-1]):
            rows = plan.unpool[slot]
            ye = y.index_select(1, rows)                                  # [B, T, N, a]
            w = weights[..., slot:slot + 1]
            out = ye.mul_(w) if out is None else out.addcmul_(ye, w)
        return out
