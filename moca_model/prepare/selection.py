"""Clip windows on face tracks (Wan's 4k + 1 frame counts) and the quality filters that drop them.

A window is ``frames`` frames at ``fps`` (resampled from the source rate) inside one track; a track gives
up to ``clips_per_track`` non-overlapping windows, spread along it. Filters, in the order a drop is counted
(a window is counted under its first failing filter; ``failed`` lists all of them):

- ``coverage``: share of window frames with a real detection (not interpolated) below ``min_coverage``;
- ``det_score``: median detection score below ``min_det_score`` (0.65 as OpenS2V);
- ``face_size``: median eye distance below ``min_eye_px`` source pixels;
- ``pose``: median |yaw| above ``max_yaw`` or median |pitch| above ``max_pitch`` degrees (landmark estimate);
- ``blur``: median sharpness (variance of the Laplacian of the aligned 112 crop) below ``min_sharpness``;
- ``motion``: face landmarks travelling more than ``max_face_speed`` eye distances per frame (tracking jumps),
  or - checked when the pixels are decoded - a mean frame difference below ``min_motion`` (a still picture).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from .tracking import FaceTrack

FILTER_ORDER = ("coverage", "det_score", "face_size", "pose", "blur", "motion")


@dataclass
class QualityFilters:
    min_coverage: float = 0.8
    min_det_score: float = 0.65
    min_eye_px: float = 16.0
    max_yaw: float = 45.0
    max_pitch: float = 40.0
    min_sharpness: float = 20.0
    max_face_speed: float = 0.5
    min_motion: float = 0.002        # mean |frame_t - frame_t-1| in 0..1 units

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class ClipWindow:
    """One candidate training clip: source frames of one track."""
    id: str
    video: str                       # video key
    shot: int
    track: int                       # index of the track in its video
    indices: list                    # source frame indices, `frames` of them
    embedding: np.ndarray            # [D] normalised mean over the window's detected frames
    quality: dict = field(default_factory=dict)
    failed: list = field(default_factory=list)
    identity: int = -1

    @property
    def dropped(self) -> str | None:
        return next((f for f in FILTER_ORDER if f in self.failed), self.failed[0] if self.failed else None)


def window_indices(first: int, last: int, src_fps: float, fps: float | None, frames: int,
                   max_windows: int) -> list:
    """Source frame index lists of non-overlapping windows of ``frames`` frames at ``fps`` in first..last."""
    if (frames - 1) % 4:
        raise ValueError(f"--frames must be 4k + 1 (Wan's VAE), got {frames}")
    step = 1.0 if not fps else src_fps / fps
    span = int(round((frames - 1) * step)) + 1
    n = (last - first + 1) // span
    if n <= 0 or max_windows <= 0:
        return []
    picks = np.linspace(0, n - 1, min(n, max_windows)).round().astype(int)
    return [[first + k * span + int(round(i * step)) for i in range(frames)] for k in sorted(set(picks.tolist()))]


def window_quality(track: FaceTrack, indices: list) -> dict:
    """Per-window statistics the filters read (medians over detected frames)."""
    pos = np.asarray(indices) - int(track.frames[0])
    det = track.detected[pos]
    d = pos[det] if det.any() else pos
    kps = track.kps[pos]
    travel = np.linalg.norm(np.diff(kps, axis=0), axis=-1).mean(-1) / np.maximum(track.eye_px[pos][1:], 1e-6)
    return {"coverage": round(float(det.mean()), 3),
            "det_score": round(float(np.median(track.scores[d])), 3),
            "eye_px": round(float(np.median(track.eye_px[d])), 1),
            "yaw": round(float(np.median(np.abs(track.pose[d, 0]))), 1),
            "pitch": round(float(np.median(np.abs(track.pose[d, 1]))), 1),
            "sharpness": round(float(np.median(track.sharpness[d])), 1),
            "face_speed": round(float(travel.max()) if len(travel) else 0.0, 3)}


def failed_filters(q: dict, f: QualityFilters) -> list:
    """Names of the filters a window's quality record fails (pixel motion is checked later)."""
    out = []
    if q["coverage"] < f.min_coverage:
        out.append("coverage")
    if q["det_score"] < f.min_det_score:
        out.append("det_score")
    if q["eye_px"] < f.min_eye_px:
        out.append("face_size")
    if q["yaw"] > f.max_yaw or q["pitch"] > f.max_pitch:
        out.append("pose")
    if q["sharpness"] < f.min_sharpness:
        out.append("blur")
    if q["face_speed"] > f.max_face_speed:
        out.append("motion")
    return out


def track_windows(video: str, track_index: int, track: FaceTrack, src_fps: float, fps: float | None,
                  frames: int, max_windows: int, filters: QualityFilters, tag: str = "") -> list:
    """Candidate ClipWindows of one track, each with its quality record and failed filters."""
    out = []
    for k, idx in enumerate(window_indices(int(track.frames[0]), int(track.frames[-1]), src_fps, fps, frames,
                                           max_windows)):
        lo, hi = idx[0] - int(track.frames[0]), idx[-1] - int(track.frames[0]) + 1
        q = window_quality(track, idx)
        out.append(ClipWindow(id=f"{video}_t{track_index:03d}_f{idx[0]:06d}" + (f"_{tag}" if tag else ""), video=video, shot=track.shot,
                              track=track_index, indices=idx, embedding=track.mean_embedding(lo, hi),
                              quality=q, failed=failed_filters(q, filters)))
    return out
