"""Scalar logging of a run: `out_dir/metrics.jsonl` (always) and TensorBoard (when installed and enabled).
Rank 0 only; the trainer passes a disabled logger to the other ranks. A resumed run first drops what the
interrupted one logged after its checkpoint, so every step appears once."""
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
        self._purge_step = None

    def _open(self):
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8")
        if self.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self._writer = SummaryWriter(str(self.out_dir / "tensorboard"), purge_step=self._purge_step)
            except ImportError:
                warnings.warn("TensorBoard logging needs the `tensorboard` package (pip install tensorboard); "
                              "scalars go to metrics.jsonl only", stacklevel=3)

    def resume_at(self, step: int):
        """Forget what was logged after `step` (the checkpoint a run resumes from): metrics.jsonl keeps its
        lines up to that step (a half-written last line goes too), TensorBoard hides later events."""
        if not self.enabled:
            return
        self.close()
        self._purge_step = step + 1
        path = self.out_dir / "metrics.jsonl"
        if not path.is_file():
            return
        keep = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line)["step"] <= step:
                    keep.append(line)
            except (ValueError, KeyError, TypeError):
                pass
        from ..atomic import atomic_target
        with atomic_target(path, overwrite=True) as tmp:
            Path(tmp).write_text("".join(x + "\n" for x in keep), encoding="utf-8")

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
