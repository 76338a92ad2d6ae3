"""Likeness score: ArcFace cosine similarity of each video frame's face to an identity.

Frames without a face are reported as such (``None``) and left out of the statistics - never scored 0.
Identity stability over time is the spread (std) of the per-frame scores and their drift (first quarter
minus last quarter of the clip): ``spread`` / ``drift`` here, shared with the toy benchmark
(``moca_model.toy.metrics``), so a number means the same on Wan videos and on toy clips.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from . import align as A
from .analyzer import order_faces
from .errors import FaceOptionError
from .images import load_images
from .threads import single_thread

LIKENESS_SELECT = ("largest", "best")


def spread(values) -> float:
    """Standard deviation of per-frame scores (lower = steadier identity); 0 for fewer than 2 values."""
    v = np.asarray(values, np.float64)
    return float(v.std()) if v.size >= 2 else 0.0


def drift(values) -> float:
    """Mean of the first quarter of ``values`` minus the mean of the last quarter (at least one value each;
    0 for fewer than 2 values). Positive when the score falls over the clip."""
    v = np.asarray(values, np.float64)
    if v.size < 2:
        return 0.0
    q = max(1, v.size // 4)
    return float(v[:q].mean() - v[-q:].mean())


@dataclass
class LikenessReport:
    """Per-frame cosine similarity (``None`` = no face) and statistics over the frames with a face."""

    scores: list  # float | None per frame
    mean: float | None
    min: float | None
    p10: float | None  # 10th percentile (linear interpolation)
    n_frames: int
    n_no_face: int
    no_face_frames: list = field(default_factory=list)
    boxes: list = field(default_factory=list)  # [x1, y1, x2, y2] | None per frame

    @property
    def stability(self) -> float | None:
        """Spread (std) of the scores of the frames with a face (None when no frame has one)."""
        vals = [s for s in self.scores if s is not None]
        return spread(vals) if vals else None

    @property
    def drift(self) -> float | None:
        """First-quarter minus last-quarter mean over the frames with a face, in frame order (None: no face)."""
        vals = [s for s in self.scores if s is not None]
        return drift(vals) if vals else None

    def as_dict(self) -> dict:
        return {"scores": self.scores, "mean": self.mean, "min": self.min, "p10": self.p10,
                "stability": self.stability, "drift": self.drift,
                "n_frames": self.n_frames, "n_no_face": self.n_no_face, "no_face_frames": self.no_face_frames}

    def __getitem__(self, key):  # dict-style access for callers that prefer it
        return self.as_dict()[key]

    def scores_tensor(self) -> torch.Tensor:
        """[N] float32 with NaN where no face was found (for plots)."""
        return torch.tensor([float("nan") if s is None else s for s in self.scores], dtype=torch.float32)

    def summary(self) -> str:
        scored = self.n_frames - self.n_no_face
        if scored == 0:
            return f"likeness: no face found in any of the {self.n_frames} frames"
        s = (f"likeness: mean {self.mean:.3f}, min {self.min:.3f}, p10 {self.p10:.3f} over {scored}/{self.n_frames} "
             f"frames with a face; spread {self.stability:.3f}, drift {self.drift:+.3f} (first vs last quarter)")
        if self.n_no_face:
            shown = ", ".join(map(str, self.no_face_frames[:12])) + (" ..." if self.n_no_face > 12 else "")
            s += f"; no face in {self.n_no_face} frame(s): {shown}"
        return s

    def __str__(self) -> str:
        return self.summary()


def reference_embedding(identity) -> torch.Tensor:
    """The [512] ArcFace reference of a FaceIdentity, a MoCAIdentity, or an embedding tensor."""
    if torch.is_tensor(identity):
        ref = identity
    elif hasattr(identity, "mean_embedding"):            # MoCAIdentity
        ref = identity.mean_embedding()
        if ref is None:
            raise FaceOptionError("this identity has no ArcFace embedding, so likeness cannot be measured")
    else:
        ref = identity.embedding
    if ref.shape != (512,):
        raise FaceOptionError(f"the reference embedding must be [512], got {list(ref.shape)}")
    return ref


def likeness_scores(analyzer, frames, identity, select: str = "largest",
                    det_size: int | None = None, det_thresh: float | None = None, fallback: bool = False,
                    batch_size: int = 32, detections=None) -> LikenessReport:
    """Score every frame of ``frames`` (IMAGE [N, H, W, 3], or anything ``load_images`` accepts).

    select: ``largest`` face per frame (default) or ``best`` (the face most similar to the identity).
    ``identity``: a FaceIdentity or MoCAIdentity (its fused ArcFace embedding is the reference) or that
    embedding itself, a [512] tensor. ``fallback`` retries smaller detector sizes on frames without a face
    (slower; off by default because generated frames are usually face-sized). ``detections``: the frames' faces
    when the caller has detected them already (per frame a ``Detection`` or None; ``select="largest"`` only).
    """
    select = str(select).lower()
    if select not in LIKENESS_SELECT:
        raise FaceOptionError(f"select={select!r} is not one of {', '.join(LIKENESS_SELECT)}.")
    loaded = load_images(frames)
    ref = reference_embedding(identity).float().cpu()
    ref = ref / ref.norm().clamp_min(1e-12)
    if detections is not None and (select != "largest" or len(detections) != len(loaded)):
        raise FaceOptionError(f"detections: need one entry per frame ({len(loaded)}) and select='largest'")
    cand = []  # (frame, kps [5, 2], box)
    for i, img in enumerate(loaded):
        if detections is not None:
            cand.append([] if detections[i] is None else [detections[i]])
            continue
        faces, _ = analyzer.detect_loaded(img, det_size, det_thresh, fallback)
        faces = order_faces(faces, "largest") if select == "largest" else faces
        cand.append(faces[:1] if select == "largest" else faces)
    # align every candidate face, embed in batches
    jobs = [(i, f) for i, faces in enumerate(cand) for f in faces]
    sims = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        with single_thread(analyzer.device):
            crops = torch.cat([A.align_faces(loaded[i].data.to(analyzer.device), torch.from_numpy(f.kps)[None],
                                             analyzer.backend.rec_size)[0].cpu() for i, f in chunk])
        sims += (analyzer.embed(crops) @ ref).tolist()
    best: dict = {}
    for (i, f), s in zip(jobs, sims):
        if i not in best or s > best[i][0]:
            best[i] = (s, f)
    scores = [round(float(best[i][0]), 6) if i in best else None for i in range(len(loaded))]
    boxes = [[float(v) for v in best[i][1].box] if i in best else None for i in range(len(loaded))]
    vals = np.array([s for s in scores if s is not None], dtype=np.float64)
    no_face = [i for i, s in enumerate(scores) if s is None]
    stats = (float(vals.mean()), float(vals.min()), float(np.percentile(vals, 10))) if len(vals) else (None,) * 3
    return LikenessReport(scores, *stats, len(loaded), len(no_face), no_face, boxes)
