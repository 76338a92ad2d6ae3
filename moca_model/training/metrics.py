"""Scalar logging of a run: `out_dir/metrics.jsonl` (always) and TensorBoard (when installed and enabled).
Rank 0 only; the trainer passes a disabled logger to the other ranks."""
from __future__ import annotations

import json
import warnings
from pathlib import Path


class MetricsLog:
    def __init__(self, out_dir, tensorboard: bool, enabled: bool = True):
        self.out_dir = Path(out_dir)
        self.tensorboard, self.enabled = tensorboard, enabled
        self._file = None
        self._writer = None

    def _open(self):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8")
        if self.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._writer = SummaryWriter(str(self.out_dir / "tensorboard"))
            except ImportError:
                warnings.warn("TensorBoard logging needs the `tensorboard` package (pip install tensorboard); "
                              "scalars go to metrics.jsonl only", stacklevel=3)

    def write(self, values: dict, step: int):
        if not self.enabled:
            return
        if self._file is None:
            self._open()
        self._file.write(json.dumps({"step": step, **values}) + "\n")
        self._file.flush()
        if self._writer is not None:
            for k, v in values.items():
                self._writer.add_scalar(k, v, step)

    def close(self):
        if self._file:
            self._file.close()
            self._file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
