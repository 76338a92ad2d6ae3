"""Face tracks within a shot: detections linked frame to frame by box overlap, split where identity changes.

Every frame of a shot goes through the project's face pipeline (moca_model.face: SCRFD-contract detector,
5-landmark alignment, ArcFace-contract recogniser). A detection joins the active track whose last box it
overlaps most (IoU >= ``iou_min``); if its embedding's cosine to the track's recent mean (last
``RECENT`` detections) is below ``split_sim``, the track ends there and a new one starts (a person replaced
in the same place - e.g. a cut the shot detector missed). A track that finds no detection for more than
``max_gap`` frames ends. When the shot ends, a track that starts right where another ended (within
``max_gap`` frames, overlapping boxes) is joined back to it if their mean embeddings agree (cosine >=
``join_sim``, the identity-clustering threshold): the split was a passing dip, not another person. Before tracking, a detection that lies mostly (``OVERLAP_MAX`` of its area) inside
a higher-scoring one, or holds one mostly inside itself, is dropped: a second box on the same face (a chin or
a neck found as a face) would otherwise become a track of its own with a meaningless embedding. Missing frames inside a track are filled by linear interpolation (``detected`` is
False there), so every frame of a track has a box and landmarks for the face masks.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..face.images import load_images
from ..face.quality import eye_distance, pose_from_landmarks, sharpness

RECENT = 8
OVERLAP_MAX = 0.5


@dataclass
class FaceTrack:
    """One face followed through consecutive frames of one shot (N frames, first..last)."""
    shot: int
    frames: np.ndarray          # [N] int frame indices, consecutive
    boxes: np.ndarray           # [N, 4] float x1, y1, x2, y2 (source pixels)
    kps: np.ndarray             # [N, 5, 2] float
    scores: np.ndarray          # [N] detection score (0 where interpolated)
    detected: np.ndarray        # [N] bool
    pose: np.ndarray            # [N, 3] yaw, pitch, roll degrees (from landmarks)
    eye_px: np.ndarray          # [N] eye distance in pixels
    sharpness: np.ndarray       # [N] variance of the Laplacian of the 112 crop (0 where interpolated)
    emb: np.ndarray             # [N, D] L2-normalised embeddings (0 where interpolated)

    def __len__(self) -> int:
        return len(self.frames)

    def mean_embedding(self, lo: int | None = None, hi: int | None = None) -> np.ndarray:
        """Normalised mean embedding [D] of the detected frames in positions lo:hi."""
        sel = slice(lo, hi)
        e = self.emb[sel][self.detected[sel]]
        if not len(e):
            e = self.emb[self.detected]
        m = e.mean(0)
        return m / max(float(np.linalg.norm(m)), 1e-12)


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Boxes a [N, 4], b [M, 4] -> IoU [N, M]."""
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / np.maximum(area(a)[:, None] + area(b)[None, :] - inter, 1e-9)


def drop_overlapping(faces: list) -> list:
    """Detections (with .box, .score) without those overlapping a higher-scoring kept one by more than
    OVERLAP_MAX of the smaller box's area."""
    kept = []
    for f in sorted(faces, key=lambda f: -f.score):
        if kept:
            a, b = np.stack([k.box for k in kept]).astype(np.float64), np.asarray(f.box, np.float64)
            w = np.clip(np.minimum(a[:, 2], b[2]) - np.maximum(a[:, 0], b[0]), 0, None)
            h = np.clip(np.minimum(a[:, 3], b[3]) - np.maximum(a[:, 1], b[1]), 0, None)
            smaller = np.minimum((a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1]), (b[2] - b[0]) * (b[3] - b[1]))
            if (w * h / np.maximum(smaller, 1e-9) > OVERLAP_MAX).any():
                continue
        kept.append(f)
    return kept


def analyse_frame(analyzer, frame: np.ndarray) -> list:
    """Faces of one frame [H, W, 3] uint8 -> [dict(box, kps, score, emb, pose, eye_px, sharpness)]."""
    img = load_images(frame)[0]
    faces, _ = analyzer.detect_loaded(img, fallback=False)
    faces = drop_overlapping(faces)
    if not faces:
        return []
    kps = torch.from_numpy(np.stack([f.kps for f in faces])).float()            # [F, 5, 2]
    c112, _ = analyzer.align(img.data, kps, 64)                                   # [F, 112, 112, 3]
    emb = analyzer.embed(c112).numpy()                                            # [F, D]
    pose = pose_from_landmarks(kps).numpy()
    eye = eye_distance(kps).numpy() / img.scale
    sharp = sharpness(c112).numpy()
    inv = 1.0 / img.scale
    return [dict(box=f.box * inv, kps=f.kps * inv, score=f.score, emb=e, pose=p, eye_px=float(d), sharpness=float(s))
            for f, e, p, d, s in zip(faces, emb, pose, eye, sharp)]


class ShotTracker:
    """Online tracker for one shot: ``step(t, faces)`` per frame, then ``finish()`` -> [FaceTrack]."""

    def __init__(self, shot: int, split_sim: float, iou_min: float = 0.3, max_gap: int = 3,
                 min_detections: int = 3, join_sim: float | None = None):
        self.shot, self.split_sim, self.iou_min, self.join_sim = shot, split_sim, iou_min, join_sim
        self.max_gap, self.min_detections = max_gap, min_detections
        self.active: list = []       # lists of (t, face dict)
        self.done: list = []
        self.splits = 0              # tracks ended because the identity changed (after re-joining)
        self._split_ended: set = set()   # ids of the detection lists that a split ended

    def step(self, t: int, faces: list):
        self._expire(t)
        free = list(range(len(faces)))
        if self.active and faces:
            ov = iou(np.stack([tr[-1][1]["box"] for tr in self.active]), np.stack([f["box"] for f in faces]))
            for i, j in sorted(np.argwhere(ov >= self.iou_min).tolist(), key=lambda ij: -ov[ij[0], ij[1]]):
                tr = self.active[i]
                if j not in free or tr[-1][0] == t:
                    continue
                free.remove(j)
                recent = np.stack([f["emb"] for _, f in tr[-RECENT:]]).mean(0)
                sim = float(faces[j]["emb"] @ recent) / max(float(np.linalg.norm(recent)), 1e-12)
                if sim < self.split_sim:     # same place, another face: end the track, start another
                    self.splits += 1
                    self._split_ended.add(id(tr))
                    self.done.append(tr)
                    self.active[i] = [(t, faces[j])]
                else:
                    tr.append((t, faces[j]))
        self.active += [[(t, faces[j])] for j in free]

    def _expire(self, t: int):
        keep = []
        for tr in self.active:
            if t - tr[-1][0] > self.max_gap:
                self.done.append(tr)
            else:
                keep.append(tr)
        self.active = keep

    def finish(self) -> list:
        raw = self._rejoin(self.done + self.active) if self.join_sim is not None else self.done + self.active
        tracks = [build_track(self.shot, tr) for tr in raw if len(tr) >= self.min_detections]
        self.active, self.done, self._split_ended = [], [], set()
        return sorted(tracks, key=lambda k: (int(k.frames[0]), float(k.boxes[0, 0])))


    def _rejoin(self, raw: list) -> list:
        """Join a track to the best-matching one that ended just before it in the same place when their mean
        embeddings agree (cosine >= join_sim): the split was a passing dip (an expression, a blink), not a new
        person. The dip's own frames stay a separate (usually too short, so dropped) track."""
        raw = sorted(raw, key=lambda tr: tr[0][0])
        out = []
        for tr in raw:
            mean = _mean([f["emb"] for _, f in tr])
            near = [(float(_mean([f["emb"] for _, f in prev]) @ mean), k) for k, prev in enumerate(out)
                    if 0 < tr[0][0] - prev[-1][0] <= self.max_gap + 1
                    and iou(prev[-1][1]["box"][None], tr[0][1]["box"][None])[0, 0] >= self.iou_min]
            sim, k = max(near, default=(-1.0, -1))
            if sim < self.join_sim:
                out.append(tr)
                continue
            prev = out[k]                    # the best-matching track that ended just before, in the same place
            if id(prev) in self._split_ended:
                self.splits -= 1
                self._split_ended.discard(id(prev))
            if id(tr) in self._split_ended:
                self._split_ended.add(id(prev))
            prev.extend(tr)
        return out


def _mean(embs) -> np.ndarray:
    m = np.mean(np.stack(embs), axis=0)
    return m / max(float(np.linalg.norm(m)), 1e-12)


def build_track(shot: int, dets: list) -> FaceTrack:
    """[(t, face dict)] (increasing t, gaps allowed) -> FaceTrack with gaps interpolated."""
    ts = np.array([t for t, _ in dets])
    frames = np.arange(ts[0], ts[-1] + 1)
    detected = np.isin(frames, ts)

    def fill(key, shape):
        v = np.stack([np.asarray(f[key], np.float32).reshape(shape) for _, f in dets])     # [n, ...]
        flat = v.reshape(len(ts), -1)
        out = np.stack([np.interp(frames, ts, flat[:, c]) for c in range(flat.shape[1])], -1)
        return out.reshape((len(frames),) + shape).astype(np.float32)

    emb = np.zeros((len(frames), len(dets[0][1]["emb"])), np.float32)
    emb[detected] = np.stack([f["emb"] for _, f in dets])
    scores = np.zeros(len(frames), np.float32)
    scores[detected] = [f["score"] for _, f in dets]
    sharp = np.zeros(len(frames), np.float32)
    sharp[detected] = [f["sharpness"] for _, f in dets]
    return FaceTrack(shot=shot, frames=frames, boxes=fill("box", (4,)), kps=fill("kps", (5, 2)), scores=scores,
                     detected=detected, pose=fill("pose", (3,)), eye_px=fill("eye_px", ()), sharpness=sharp, emb=emb)
