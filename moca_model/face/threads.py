"""One intra-op thread for the small CPU tensor work of the face pipeline.

Per-face warps and per-image conversions are too small to gain from OpenMP, and on a busy CPU (ComfyUI
next to onnxruntime's own thread pool, or other jobs) several OpenMP threads make them 5-20x slower
while one never does. The previous setting is restored on exit.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch


@contextmanager
def single_thread(device=None):
    """Run the block with ``torch.set_num_threads(1)`` when ``device`` is the CPU (or None)."""
    if device is not None and torch.device(device).type != "cpu":
        yield
        return
    n = torch.get_num_threads()
    if n == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(n)
