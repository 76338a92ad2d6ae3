"""Evaluation metrics for generated videos: likeness, stability, drift, copy-paste, motion, bootstrap CIs.

Everything here takes REAL frames - numpy uint8 ``[T, H, W, 3]``, a ComfyUI IMAGE tensor ``[T, H, W, 3]``
float 0..1, or anything ``moca_model.face.load_images`` accepts - and any insightface-layout pack, so the
numbers mean the same on toy clips and on Wan videos. Likeness is the per-frame score of the *MoCA Identity
Score* node (``moca_model.face.likeness_scores``, called unchanged) and its stability (``spread``) and
``drift`` functions; this module only summarises them, with one difference stated everywhere it matters: a
frame in which no face is detected counts as likeness 0 (and is counted), because a generator that loses
the face must not score well by having fewer frames scored.

Likeness is judged by an *evaluation* recogniser independent of the one that conditions the model:
:func:`eval_analyzer` detects and aligns with a pack's detector and embeds with a separate ArcFace-contract
ONNX file (the toy world ships ``toy_models/eval/rec_eval.onnx`` next to the ``toyface`` pack)::

    from moca_model.toy import metrics as M
    ev = M.eval_analyzer("toy_models/insightface", "toyface", "toy_models/eval/rec_eval.onnx")
    lik = M.likeness(ev, frames, reference_image)        # LikenessStats: mean, p10, worst, stability, drift
    mot = M.motion(frames, M.detect_frames(ev, frames))  # frame_diff, kps_travel, frozen
    cp = M.pixel_copy(ev, frames, reference_image)        # max / mean SSIM and L1 of aligned face crops
    mean, lo, hi = M.bootstrap_ci([per-clip values])

Copy-paste ("how much the video copies the reference beyond identity") has three parts:

* ``pixel_copy`` (any video): SSIM / L1 similarity between each frame's aligned face crop and the
  reference's; the max over frames is high when some frame reproduces the reference photo. Identity alone
  already makes crops similar, so compare variants, or pass ``other_reference`` (another photo of the same
  person) to get ``margin_ssim`` / ``margin_l1`` = similarity to the given reference minus similarity to the other one;
* ``pose_copy`` (any video with landmarks): how close each frame's head pose and mouth shape, read from the
  5 keypoints, are to the reference's; with ``baseline_kps`` (toy world: the world's own clip of the
  prompt) also the excess over what following the prompt scores;
* ``toy_copy_paste`` (toy world, where both are known): whether the world's background / lighting
  classifiers see the *reference's* scene instead of the prompt's.

This module belongs to the toy package but imports nothing from the toy world itself, so the benchmark
can run it on real videos.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..face.analyzer import FaceAnalyzer, order_faces
from ..face.images import load_images
from ..face.likeness import drift, likeness_scores, spread   # noqa: F401  (drift: re-exported)
from ..face.quality import eye_distance, pose_from_landmarks

FROZEN_FRAME_DIFF = 1.0 / 255.0   # mean |x_t - x_{t-1}| (0..1 units) below which a clip counts as frozen
SSIM_WINDOW = 7


# ---------------------------------------------------------------------------------------------- analyzer
class _EvalRecogniserBackend:
    """A pack backend whose ``embed`` runs another ArcFace-contract ONNX file; detection is the pack's."""

    def __init__(self, base, rec_path, provider: str = "cpu"):
        from ..face import providers as prov
        from ..face.recognizer import ArcFaceOnnx
        ort = prov.import_onnxruntime()

        def factory(path, providers):
            s = ort.InferenceSession(path, providers=providers)
            return s, s

        started = prov.start(Path(rec_path), provider, factory, fixed_shape=True)
        self._base = base
        self.rec = ArcFaceOnnx(started.session, str(rec_path))
        self.rec_provider = started.active
        self.rec_size = self.rec.input_size
        self.input_mean, self.input_std = self.rec.input_mean, self.rec.input_std
        self.notes = list(base.notes) + [n for n in started.notes if n not in base.notes]

    def __getattr__(self, name):  # detector, det_provider, version, det_fixed_size ... of the pack
        return getattr(self._base, name)

    def embed(self, blob: np.ndarray) -> np.ndarray:
        return self.rec.forward(blob)


def with_recogniser(analyzer: FaceAnalyzer, rec_path, provider: str = "cpu") -> FaceAnalyzer:
    """A new analyzer that detects and aligns with ``analyzer``'s detector and embeds with ``rec_path``
    (an ArcFace-contract ONNX file: ``[N, 3, 112, 112]`` -> ``[N, D]``). The detector session is shared."""
    rec_path = Path(rec_path)
    if not rec_path.is_file():
        raise FileNotFoundError(f"evaluation recogniser {rec_path} not found")
    backend = _EvalRecogniserBackend(analyzer.backend, rec_path, provider)
    pack = dataclasses.replace(analyzer.pack, recognizer=rec_path)
    out = FaceAnalyzer(backend, pack, analyzer.det_size, analyzer.det_thresh, analyzer.device)
    out.report += f" [evaluation recogniser {rec_path.name}]"
    return out


def eval_analyzer(models_root, pack: str = "toyface", rec_path=None, provider: str = "cpu",
                  det_size: int = 640, det_thresh: float | None = None, backend: str = "onnxruntime") -> FaceAnalyzer:
    """Detector (+ alignment) of ``pack`` under ``models_root`` (insightface layout), embeddings from
    ``rec_path`` when given (else the pack's own recogniser)."""
    kw = {} if det_thresh is None else {"det_thresh": det_thresh}
    base = FaceAnalyzer.load(models_root, pack=pack, provider=provider, det_size=det_size, backend=backend, **kw)
    return with_recogniser(base, rec_path, provider) if rec_path is not None else base


# ---------------------------------------------------------------------------------------------- likeness
@dataclass
class LikenessStats:
    """Per-frame likeness (0 where no face was found) and its summary."""

    per_frame: list            # float per frame; 0.0 for frames without a face
    mean: float
    p10: float                 # 10th percentile (linear interpolation)
    worst: float               # the lowest frame
    stability: float           # std over frames (lower = steadier identity)
    drift: float               # mean of the first quarter minus mean of the last quarter (> 0: identity fades)
    n_frames: int
    n_no_face: int
    no_face_frames: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def likeness_stats(scores: Sequence) -> LikenessStats:
    """Summarise per-frame scores (``None`` = no face, counted as 0)."""
    no_face = [i for i, s in enumerate(scores) if s is None]
    v = np.array([0.0 if s is None else float(s) for s in scores], np.float64)
    if v.size == 0:
        raise ValueError("likeness_stats: no frames")
    return LikenessStats([float(x) for x in v], float(v.mean()), float(np.percentile(v, 10)), float(v.min()),
                         spread(v), drift(v), int(v.size), len(no_face), no_face)


def reference_embedding(analyzer: FaceAnalyzer, reference) -> torch.Tensor:
    """The reference as one L2-normalised embedding [D] of ``analyzer``'s recogniser.

    reference: photo(s) (anything ``load_images`` accepts; encoded with ``analyzer.encode``, largest face),
    a ``FaceIdentity``, or an embedding tensor [D]. An identity's stored embedding is only comparable when
    it came from the same recogniser - pass the photo to judge with an evaluation recogniser."""
    if isinstance(reference, torch.Tensor) and reference.ndim == 1:
        emb = reference.float()
    elif hasattr(reference, "embedding") and isinstance(getattr(reference, "embedding"), torch.Tensor):
        emb = reference.embedding.float()
    elif hasattr(reference, "mean_embedding"):
        emb = reference.mean_embedding()
        if emb is None:
            raise ValueError("reference identity has no ArcFace embedding")
        emb = emb.float()
    else:
        emb = analyzer.encode(reference).embedding.float()
    return emb.flatten() / emb.norm().clamp_min(1e-12)


def likeness(analyzer: FaceAnalyzer, frames, reference, select: str = "largest", det_size: int | None = None,
             det_thresh: float | None = None, detections: Sequence | None = None) -> LikenessStats:
    """Per-frame likeness of ``frames`` to ``reference`` (see :func:`reference_embedding`) with the scorer
    of *MoCA Identity Score*, summarised by :func:`likeness_stats` (no face = 0). ``detections``: the frames'
    largest faces from :func:`detect_frames`, when already made (the detector then runs once per frame)."""
    ref = reference_embedding(analyzer, reference)
    rep = likeness_scores(analyzer, frames, SimpleNamespace(embedding=ref), select=select, det_size=det_size,
                          det_thresh=det_thresh, detections=detections)
    return likeness_stats(rep.scores)


# ---------------------------------------------------------------------------------------------- detections
def detect_frames(analyzer: FaceAnalyzer, frames, det_size: int | None = None,
                  det_thresh: float | None = None) -> list:
    """The largest detected face (``Detection``: box, score, kps [5, 2]) of every frame, ``None`` where
    there is none. Same detector settings as :func:`likeness` (no fallback sizes)."""
    return _detect_loaded(analyzer, load_images(frames), det_size, det_thresh)


def _detect_loaded(analyzer, imgs, det_size=None, det_thresh=None, fallback: bool = False) -> list:
    out = []
    for img in imgs:
        faces, _ = analyzer.detect_loaded(img, det_size, det_thresh, fallback)
        out.append(order_faces(faces, "largest")[0] if faces else None)
    return out


def _kps(d):
    if d is None:
        return None
    k = getattr(d, "kps", d)
    return np.asarray(k, np.float64).reshape(5, 2)


# ---------------------------------------------------------------------------------------------- motion
def _as_float_frames(frames) -> torch.Tensor:
    """[T, H, W, 3] float32 0..1 from numpy uint8 / float, IMAGE tensors or anything load_images reads."""
    if isinstance(frames, np.ndarray) and frames.ndim == 4:
        t = torch.from_numpy(np.ascontiguousarray(frames))
    elif isinstance(frames, torch.Tensor) and frames.ndim == 4:
        t = frames.detach().cpu()
    else:
        return torch.stack([img.pixels.cpu() for img in load_images(frames)])
    return t.float().div(255.0) if t.dtype == torch.uint8 else t.float()


def motion(frames, detections: Sequence | None = None, frozen_below: float = FROZEN_FRAME_DIFF) -> dict:
    """How much the clip moves.

    frame_diff: mean |x_t - x_{t-1}| over pixels, channels and steps (0..1 units); per_step: the same per
    step. kps_travel: mean displacement of the 5 face keypoints per step, as a fraction of the frame width,
    over consecutive frames that both have a face (None when no such pair; needs ``detections`` from
    :func:`detect_frames`, or keypoint arrays [5, 2]). frozen: frame_diff below ``frozen_below``.
    """
    x = _as_float_frames(frames)
    if x.shape[0] < 2:
        per_step = []
    else:
        per_step = (x[1:] - x[:-1]).abs().mean(dim=(1, 2, 3)).double().tolist()
    diff = float(np.mean(per_step)) if per_step else 0.0
    travel = None
    if detections is not None:
        k = [_kps(d) for d in detections]
        steps = [np.linalg.norm(b - a, axis=1).mean() for a, b in zip(k[:-1], k[1:])
                 if a is not None and b is not None]
        travel = float(np.mean(steps) / x.shape[2]) if steps else None
    return {"frame_diff": diff, "per_step": per_step, "kps_travel": travel, "frozen": bool(diff < frozen_below)}


# ---------------------------------------------------------------------------------------------- copy-paste
def ssim(a: torch.Tensor, b: torch.Tensor, window: int = SSIM_WINDOW) -> torch.Tensor:
    """Mean SSIM of gray versions of ``a`` [N, H, W, 3] and ``b`` [N or 1, H, W, 3] (float 0..1), with a
    uniform ``window`` and the usual constants (0.01, 0.03) -> [N]."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=torch.float32)
    ga, gb = (a.float() @ w)[:, None], (b.float() @ w)[:, None]
    gb = gb.expand_as(ga)
    c1, c2 = 0.01 ** 2, 0.03 ** 2

    def pool(t):
        return F.avg_pool2d(t, window, 1)
    ma, mb = pool(ga), pool(gb)
    va, vb = pool(ga * ga) - ma * ma, pool(gb * gb) - mb * mb
    cov = pool(ga * gb) - ma * mb
    s = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma * ma + mb * mb + c1) * (va + vb + c2))
    return s.mean(dim=(1, 2, 3))


def face_crops(analyzer: FaceAnalyzer, frames, detections: Sequence | None = None, size: int = 112,
               context: bool = True, fallback: bool = False) -> list:
    """Aligned crops [size, size, 3] float 0..1 of each frame's face (None = no face). ``context``: the
    local crop of *MoCA Encode Face* (1.8x the ArcFace crop: face, hair, chin and some background around
    them), else the tight ArcFace crop."""
    from ..face import align as A
    imgs = load_images(frames)
    if detections is None:
        detections = _detect_loaded(analyzer, imgs, fallback=fallback)
    extra = (A.LOCAL_MARGIN, A.LOCAL_CENTER) if context else ()
    out = []
    for img, d in zip(imgs, detections):
        k = _kps(d)
        out.append(None if k is None else A.align_faces(img.data, torch.from_numpy(k).float()[None], size, *extra)[0][0])
    return out


def _reference_crop(analyzer, reference, size, context):
    crops = face_crops(analyzer, reference, None, size, context, fallback=True)   # like encode(): a photo
    if not crops or crops[0] is None:
        raise ValueError("pixel_copy: no face found in the reference image")
    return crops[0]


def pixel_copy(analyzer: FaceAnalyzer, frames, reference, detections: Sequence | None = None,
               other_reference=None, size: int = 112, context: bool = True) -> dict:
    """Pixel similarity of each frame's aligned face crop (with context, see :func:`face_crops`) to the
    reference photo's.

    Returns ssim_max / ssim_mean and l1sim_max / l1sim_mean (1 - mean |a - b|, colour-sensitive) over
    frames with a face, per_frame SSIM (None = no face) and, when ``other_reference`` (another photo of the
    same person) is given, ``margin_ssim`` / ``margin_l1`` = mean similarity to ``reference`` minus mean
    similarity to ``other_reference``: > 0 means the frames look more like this photo than identity alone
    explains. A video that pastes the reference scores ssim_max and l1sim_max near 1."""
    crops = face_crops(analyzer, frames, detections, size, context)
    ref = _reference_crop(analyzer, reference, size, context)
    idx = [i for i, c in enumerate(crops) if c is not None]
    per = [None] * len(crops)
    res = {"ssim_max": 0.0, "ssim_mean": 0.0, "l1sim_max": 0.0, "l1sim_mean": 0.0, "per_frame": per,
           "n_no_face": len(crops) - len(idx)}
    if other_reference is not None:
        res.update(margin_ssim=0.0, margin_l1=0.0)
    if not idx:
        return res
    stack = torch.stack([crops[i] for i in idx])

    def sims(r):
        return ssim(stack, r[None]), 1.0 - (stack - r[None]).abs().mean(dim=(1, 2, 3))
    s, l1 = sims(ref)
    for i, v in zip(idx, s.tolist()):
        per[i] = float(v)
    res.update(ssim_max=float(s.max()), ssim_mean=float(s.mean()), l1sim_max=float(l1.max()),
               l1sim_mean=float(l1.mean()))
    if other_reference is not None:
        so, lo = sims(_reference_crop(analyzer, other_reference, size, context))
        res.update(margin_ssim=float(s.mean() - so.mean()), margin_l1=float(l1.mean() - lo.mean()))
    return res


def face_geometry(kps) -> np.ndarray:
    """(yaw, pitch, roll in degrees, mouth width / eye distance) of landmarks [5, 2] or [N, 5, 2] -> [N, 4]
    (``face.quality.pose_from_landmarks``). With only 5 points, "pitch" also moves with the mouth corners
    (a smile lifts them) and the mouth ratio depends on the person: compare within one identity."""
    k = torch.as_tensor(np.asarray(kps, np.float64)).reshape(-1, 5, 2)
    pose = pose_from_landmarks(k).double()
    mouth = (k[:, 4] - k[:, 3]).norm(dim=1) / eye_distance(k).double().clamp_min(1e-6)
    return torch.cat([pose, mouth[:, None]], 1).numpy()


def _pose_sims(kps_list, ref, yaw_scale, mouth_scale):
    g = face_geometry(np.stack(kps_list))
    d = np.abs(g - ref[None])
    sim = np.exp(-0.5 * ((d[:, 0] / yaw_scale) ** 2 + (d[:, 1] / yaw_scale) ** 2 + (d[:, 3] / mouth_scale) ** 2))
    return sim, d


def pose_copy(detections: Sequence, reference_kps, baseline_kps: Sequence | None = None,
              yaw_scale: float = 10.0, mouth_scale: float = 0.08) -> dict:
    """How closely the frames' head pose and expression, as 5 keypoints show them, match the reference's.

    detections: per frame a ``Detection``, landmarks [5, 2], or None (no face). reference_kps: the
    reference face's landmarks (a ``Detection`` works too; in the toy world the renderer's annotation).
    Per frame: exp(-(dyaw/yaw_scale)^2/2 - (dpitch/yaw_scale)^2/2 - (dmouth/mouth_scale)^2/2) in 0..1,
    1 = the reference's pose and expression. Returns pose_sim (mean over frames with a face), pose_sim_max,
    mean |dyaw|, |dpitch| (degrees), |dmouth| and the reference's geometry.

    A near-frontal prompt can look like a near-frontal reference without copying it, so the absolute value
    needs a baseline: ``baseline_kps`` = landmarks per frame of what following the prompt looks like (in
    the toy world, the world's own clip of the same prompt and person) adds ``baseline_pose_sim`` and
    ``excess`` = pose_sim - baseline_pose_sim (> 0: closer to the reference than the prompt explains)."""
    ref = face_geometry(_kps(reference_kps))[0]
    k = [_kps(d) for d in detections]
    idx = [i for i, v in enumerate(k) if v is not None]
    out = {"pose_sim": 0.0, "pose_sim_max": 0.0, "dyaw": None, "dpitch": None, "dmouth": None,
           "reference": ref.tolist(), "n_no_face": len(k) - len(idx)}
    if idx:
        sim, d = _pose_sims([k[i] for i in idx], ref, yaw_scale, mouth_scale)
        out.update(pose_sim=float(sim.mean()), pose_sim_max=float(sim.max()), dyaw=float(d[:, 0].mean()),
                   dpitch=float(d[:, 1].mean()), dmouth=float(d[:, 3].mean()))
    if baseline_kps is not None:
        b = [_kps(x) for x in baseline_kps if x is not None]
        base = float(_pose_sims(b, ref, yaw_scale, mouth_scale)[0].mean()) if b else 0.0
        out.update(baseline_pose_sim=base, excess=out["pose_sim"] - base)
    return out


def toy_copy_paste(classified: dict, reference: dict, prompt: dict) -> dict:
    """Scene copying in the toy world, from the world's classifiers.

    classified: one clip's ``classify`` result ({"background": (label, probs), "lighting": ...}; probs a
    dict label -> probability). reference / prompt: {"background": name, "lighting": name} of the reference
    photo and of the prompt. For each head: ``<head>_ref_prob`` (probability of the reference's label),
    ``<head>_copied`` (argmax is the reference's label although the prompt asked for another; None when
    they are the same, so the clip cannot tell copying from following) and ``<head>_follows`` (argmax is
    the prompt's label)."""
    out = {}
    for head in ("background", "lighting"):
        if head not in classified:
            continue
        label, probs = classified[head]
        ref, want = reference.get(head), prompt.get(head)
        out[f"{head}_ref_prob"] = float(probs.get(ref, 0.0)) if ref is not None else None
        out[f"{head}_copied"] = None if ref is None or ref == want else bool(label == ref)
        out[f"{head}_follows"] = None if want is None else bool(label == want)
    return out


# ---------------------------------------------------------------------------------------------- statistics
def bootstrap_ci(values, n: int = 2000, seed: int = 0, level: float = 0.95) -> tuple:
    """(mean, lo, hi): the mean of ``values`` (NaN / None dropped) and its percentile-bootstrap interval
    from ``n`` resamples with a fixed seed. (nan, nan, nan) for no values; (v, v, v) for one."""
    v = np.array([x for x in values if x is not None], np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return (math.nan, math.nan, math.nan)
    m = float(v.mean())
    if v.size == 1:
        return (m, m, m)
    rng = np.random.Generator(np.random.PCG64(seed))
    means = np.empty(n, np.float64)
    chunk = max(1, 2_000_000 // v.size)
    for s in range(0, n, chunk):
        k = min(chunk, n - s)
        means[s:s + k] = v[rng.integers(0, v.size, size=(k, v.size))].mean(1)
    a = (1.0 - level) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return (m, float(min(lo, m)), float(max(hi, m)))


def clip_metrics(analyzer: FaceAnalyzer, frames, reference, other_reference=None, reference_kps=None,
                 baseline_kps=None) -> dict:
    """Every video-level metric of one clip in one dict (likeness, motion, pixel and pose copy).
    reference_kps: the reference face's landmarks (detected in ``reference`` when not given);
    other_reference / baseline_kps: see :func:`pixel_copy` / :func:`pose_copy`."""
    dets = detect_frames(analyzer, frames)
    out = {"likeness": likeness(analyzer, frames, reference, detections=dets).as_dict(), "motion": motion(frames, dets)}
    out["pixel_copy"] = pixel_copy(analyzer, frames, reference, dets, other_reference)
    if reference_kps is None:
        rd = _detect_loaded(analyzer, load_images(reference), fallback=True)
        reference_kps = rd[0] if rd and rd[0] is not None else None
    out["pose_copy"] = pose_copy(dets, reference_kps, baseline_kps) if reference_kps is not None else None
    return out
