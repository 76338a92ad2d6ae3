"""What every importer shares: the clip plan it makes from a dataset's annotations, and the writer that turns
plans into our manifest (`moca_model/training/cache.py`'s format) with trimmed clips, face-mask videos and
reference face crops.

A ``ClipPlan`` names source frames only; the writer decodes each source video once, keeps the planned frames,
and writes (each file atomically; finished clips are skipped on a re-run):
    clips/<key>.mp4        the planned frames, cropped to ``crop``            [F, H, W, 3]
    masks/<key>.mp4        white = face, one mask per clip frame (when the plan has masks)
    refs/<key>_<n>.png     square face crops around the reference boxes (margin around the box)
    manifest.jsonl         {"video", "caption", "reference", "face_mask"?, "id", "identity", "reference_from"}
    import_report.json     counts: clips, skips by reason, where references and masks came from
"""
from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..atomic import atomic_target

Box = tuple  # (x1, y1, x2, y2) in pixels of the cropped frame


class DatasetLayoutError(ValueError):
    """A dataset file that cannot be read as the documented layout; the message names the file and the fix."""


@dataclass
class ReferencePlan:
    """One reference face: frame ``frame`` of ``video`` (cropped by ``crop``), face box ``box``."""
    video: Path
    frame: int
    box: Box
    crop: Box | None = None
    origin: str = "same_clip"          # "other_clip" | "other_shot_part" | "same_clip"


@dataclass
class ClipPlan:
    key: str                           # unique, safe as a file name
    video: Path
    frames: list                       # absolute frame indices in ``video`` (sorted, consecutive)
    caption: str
    identity: str                      # who the face is (the dataset's person / cluster id)
    crop: Box | None = None            # (x1, y1, x2, y2) applied to every frame first
    masks: Callable | None = None      # frame index -> [H, W] bool face mask in cropped pixels, or None
    mask_source: str = "none"          # "segmentation" | "boxes" | "none"
    references: list = field(default_factory=list)   # ReferencePlan, best first


def safe_key(text: str) -> str:
    """A file-name-safe version of a dataset key."""
    out = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(text))
    return out.strip("._")[:160] or "clip"


def box_mask(box: Box, height: int, width: int) -> np.ndarray:
    """A filled box [H, W] bool (the face region when only boxes are annotated)."""
    m = np.zeros((height, width), bool)
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    m[max(0, y1):max(0, min(height, y2)), max(0, x1):max(0, min(width, x2))] = True
    return m


def square_crop(frame: np.ndarray, box: Box, margin: float) -> np.ndarray:
    """A square crop around ``box`` widened by ``margin`` x its longer side on every side, padded with black
    where it leaves the frame (the face stays centred, as the face detector expects)."""
    x1, y1, x2, y2 = box
    side = max(x2 - x1, y2 - y1) * (1 + 2 * margin)
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    X1, Y1 = int(math.floor(cx - side / 2)), int(math.floor(cy - side / 2))
    n = max(2, int(math.ceil(side)))
    out = np.zeros((n, n, 3), np.uint8)
    H, W = frame.shape[:2]
    sx1, sy1, sx2, sy2 = max(0, X1), max(0, Y1), min(W, X1 + n), min(H, Y1 + n)
    if sx2 > sx1 and sy2 > sy1:
        out[sy1 - Y1:sy2 - Y1, sx1 - X1:sx2 - X1] = frame[sy1:sy2, sx1:sx2]
    return out


def _crop(frame: np.ndarray, crop: Box | None) -> np.ndarray:
    if crop is None:
        return frame
    x1, y1, x2, y2 = (int(v) for v in crop)
    return frame[max(0, y1):y2, max(0, x1):x2]


def read_frames(video: Path, wanted) -> tuple[dict, float]:
    """{frame index: [H, W, 3] uint8} for the wanted indices of ``video`` (decoded once, frame by frame),
    and its fps. Raises ValueError naming the file when it cannot be read or is too short."""
    from ..video import iter_video
    wanted = set(int(i) for i in wanted)
    fps, _, frames = iter_video(video)
    out, last = {}, max(wanted) if wanted else -1
    for i, f in enumerate(frames):
        if i in wanted:
            out[i] = f
        if i >= last:
            break
    missing = sorted(wanted - set(out))
    if missing:
        raise ValueError(f"{video}: has no frame {missing[0]} (the annotation asks for frames up to {last}); the "
                         "video is shorter than its annotation says - a partial download?")
    return out, fps


def _write_png(path: Path, img: np.ndarray):
    from PIL import Image
    with atomic_target(path, overwrite=True, suffix=".png") as tmp:
        Image.fromarray(img).save(tmp, format="PNG")


class ManifestWriter:
    """Writes plans to ``out`` (see the module docstring); one bad clip is listed and skipped."""

    def __init__(self, out, ref_margin: float = 0.5, overwrite: bool = False, log=print):
        self.out, self.ref_margin, self.overwrite, self.log = Path(out), float(ref_margin), overwrite, log
        self.entries: list[dict] = []
        self.skipped: list[dict] = []
        self.counts = Counter()

    def skip(self, key: str, reason: str):
        self.skipped.append({"id": key, "reason": reason})
        self.counts["skipped"] += 1
        warnings.warn(f"import: skipping {key}: {reason}", stacklevel=2)

    def write(self, plan: ClipPlan) -> dict | None:
        """Write one clip's files and remember its manifest line; None (and a skip record) on failure."""
        try:
            return self._write(plan)
        except Exception as e:                 # unreadable video, frames out of range, ...: list it, carry on
            self.skip(plan.key, f"{type(e).__name__}: {e}")
            return None

    def _write(self, plan: ClipPlan) -> dict:
        if not plan.references:
            raise ValueError("no reference face (no face or head box in its annotation)")
        clip = self.out / "clips" / f"{plan.key}.mp4"
        mask = self.out / "masks" / f"{plan.key}.mp4"
        refs = [self.out / "refs" / f"{plan.key}_{n}.png" for n in range(len(plan.references))]
        want_mask = plan.masks is not None
        done = clip.is_file() and all(r.is_file() for r in refs) and (mask.is_file() or not want_mask)
        if not done or self.overwrite:
            try:
                self._extract(plan, clip, mask if want_mask else None, refs)
            except BaseException:
                for f in [clip, mask, *refs]:          # no orphan refs / masks of a clip that was not written
                    f.unlink(missing_ok=True)
                raise
        entry = {"video": f"clips/{clip.name}", "caption": plan.caption,
                 "reference": [f"refs/{r.name}" for r in refs], "id": plan.key, "identity": plan.identity,
                 "reference_from": plan.references[0].origin}
        if want_mask:
            entry["face_mask"] = f"masks/{mask.name}"
        self.entries.append(entry)
        self.counts["clips"] += 1
        self.counts[f"references_{plan.references[0].origin}"] += 1
        self.counts[f"masks_{plan.mask_source}"] += 1
        return entry

    def _extract(self, plan: ClipPlan, clip: Path, mask: Path | None, refs: list):
        from ..video import write_video
        by_video: dict[Path, set] = {plan.video: set(plan.frames)}
        for r in plan.references:
            by_video.setdefault(r.video, set()).add(r.frame)
        frames, fps = {}, 16.0
        for video, wanted in by_video.items():
            got, f = read_frames(video, wanted)
            frames.update({(video, i): v for i, v in got.items()})
            if video == plan.video:
                fps = f
        clip_frames = np.stack([_crop(frames[(plan.video, i)], plan.crop) for i in plan.frames])   # [F, H, W, 3]
        if clip_frames.shape[1] < 16 or clip_frames.shape[2] < 16:
            raise ValueError(f"the cropped clip is {clip_frames.shape[2]}x{clip_frames.shape[1]} pixels; its crop "
                             f"{plan.crop} is wrong for this video")
        for n, (r, path) in enumerate(zip(plan.references, refs)):
            _write_png(path, square_crop(_crop(frames[(r.video, r.frame)], r.crop), r.box, self.ref_margin))
        if mask is not None:
            H, W = clip_frames.shape[1:3]
            m = np.stack([_fit(plan.masks(i), H, W) for i in plan.frames])                       # [F, H, W]
            write_video(mask, np.repeat(m[..., None], 3, -1).astype(np.uint8) * 255, fps=fps, overwrite=True)
        write_video(clip, clip_frames, fps=fps, overwrite=True)       # last: its presence marks the clip done

    def finish(self, source: dict) -> dict:
        """Write manifest.jsonl and import_report.json (atomically); returns the report."""
        self.out.mkdir(parents=True, exist_ok=True)
        with atomic_target(self.out / "manifest.jsonl", overwrite=True) as tmp:
            Path(tmp).write_text("".join(json.dumps(e, ensure_ascii=False) + "\n" for e in self.entries),
                                 encoding="utf-8")
        identities = Counter(e["identity"] for e in self.entries)
        report = {"source": source, "clips": self.counts["clips"], "skipped": len(self.skipped),
                  "identities": len(identities),
                  "references": {k[len("references_"):]: v for k, v in self.counts.items()
                                 if k.startswith("references_")},
                  "masks": {k[len("masks_"):]: v for k, v in self.counts.items() if k.startswith("masks_")},
                  "skip_reasons": dict(Counter(s["reason"].split(":")[0] for s in self.skipped)),
                  "skipped_clips": self.skipped}
        with atomic_target(self.out / "import_report.json", overwrite=True) as tmp:
            Path(tmp).write_text(json.dumps(report, indent=1, ensure_ascii=False), encoding="utf-8")
        return report


def _fit(mask, height: int, width: int) -> np.ndarray:
    """A mask [h, w] (None = no face in that frame) as [height, width] bool (cut or zero-padded)."""
    out = np.zeros((height, width), bool)
    if mask is not None:
        m = np.asarray(mask).astype(bool)
        out[:min(height, m.shape[0]), :min(width, m.shape[1])] = m[:height, :width]
    return out


def load_json(path, what: str, fix: str):
    """JSON from ``path``; DatasetLayoutError naming the file, ``what`` it should be and ``fix`` when it is not."""
    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError(f"{what} {path} does not exist. {fix}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DatasetLayoutError(f"{what} {path} is not valid JSON ({e}). {fix}") from e
