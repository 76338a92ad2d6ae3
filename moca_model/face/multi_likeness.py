"""Several people in one video: whose face is whose, and how well each keeps its own identity.

Per frame, every person's face is found (`assign_faces`: a person with a region mask takes the face whose box
centre lies deepest in its mask; the others take the remaining faces in left-to-right order, as the automatic
binding does, or, when fewer faces remain than people, each face goes to the person whose equal vertical strip
it lies in), embedded, and compared with every reference: `sims [F, P, P]`, sims[f, k, j] = cosine of person
k's face in frame f with reference j (NaN where person k has no face in frame f). From it (`multi_scores`):
- own likeness: per person, the mean of sims[:, k, k];
- cross likeness: per person, the mean over frames of its highest similarity to another person's reference;
- swap rate: the share of (frame, person) faces more similar to another person's reference than to their own;
- blend rate: the share of faces at or above `threshold` for their own reference AND another one at once (a
  face that looks like both people);
- missing: the share of (frame, person) without a face.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from . import align as A
from .analyzer import order_faces
from .images import load_images
from .likeness import reference_embedding
from .threads import single_thread


def _centre(box) -> tuple[float, float]:
    return (float(box[0]) + float(box[2])) / 2, (float(box[1]) + float(box[3])) / 2


def _area(box) -> float:
    return (float(box[2]) - float(box[0])) * (float(box[3]) - float(box[1]))


def assign_faces(boxes: list, masks: list, size: tuple) -> list:
    """Which face is whose in one frame. boxes: the frame's face boxes [x1, y1, x2, y2] (pixels); masks: per
    person a [H, W] mask (0..1, any size: read at the box centre scaled to it) or None (left-to-right binding);
    size: the frame's (H, W). Returns per person the index of its face in `boxes`, or None."""
    H, W = size
    free = set(range(len(boxes)))
    out = [None] * len(masks)
    pairs = []
    for k, m in enumerate(masks):
        if m is None:
            continue
        mh, mw = m.shape[-2:]
        for i, b in enumerate(boxes):
            cx, cy = _centre(b)
            y, x = min(mh - 1, max(0, int(cy / H * mh))), min(mw - 1, max(0, int(cx / W * mw)))
            v = float(m[y, x])
            if v > 0.5:
                pairs.append((v, k, i))
    for v, k, i in sorted(pairs, key=lambda p: (-p[0], p[1], p[2])):
        if out[k] is None and i in free:
            out[k] = i
            free.discard(i)
    auto = [k for k, m in enumerate(masks) if m is None]
    rest = sorted(free, key=lambda i: _centre(boxes[i])[0])
    if len(rest) >= len(auto):                        # every person found: left-to-right order
        for k, i in zip(auto, rest):
            out[k] = i
        return out
    # fewer faces than people: each face goes to the person whose vertical strip it lies in (the automatic
    # binding's equal strips), the largest face first, so a lone right-hand face is the right-hand person's
    for i in sorted(rest, key=lambda i: -_area(boxes[i])):
        k = auto[min(len(auto) - 1, int(_centre(boxes[i])[0] / W * len(auto)))]
        if out[k] is None:
            out[k] = i
    return out


def _mask_at(mask, f: int):
    """Person mask for frame f: mask [H, W] or [F, H, W] (torch or numpy) or None."""
    if mask is None:
        return None
    m = mask if isinstance(mask, np.ndarray) else torch.as_tensor(mask).float().cpu().numpy()
    return m if m.ndim == 2 else m[min(f, m.shape[0] - 1)]


def face_similarities(analyzer, frames, identities: list, masks: list | None = None, det_size=None, det_thresh=None,
                      detections: list | None = None) -> torch.Tensor:
    """sims [F, P, P] (module docstring) for a video: frames IMAGE [F, H, W, 3] (or what load_images takes);
    identities: P references (MoCAIdentity / FaceIdentity / [512] embeddings); masks: per person None or a mask
    [H, W] / [F, H, W]. detections: per frame the list of faces (with .box and .kps) when already detected."""
    P = len(identities)
    masks = list(masks) if masks is not None else [None] * P
    refs = torch.stack([reference_embedding(i).float().cpu() for i in identities])
    refs = refs / refs.norm(dim=-1, keepdim=True).clamp_min(1e-12)                # [P, 512]
    loaded = load_images(frames)
    sims = torch.full((len(loaded), P, P), math.nan)
    for f, img in enumerate(loaded):
        faces = detections[f] if detections is not None else order_faces(
            analyzer.detect_loaded(img, det_size, det_thresh, False)[0], "largest")
        if not faces:
            continue
        who = assign_faces([fc.box for fc in faces], [_mask_at(m, f) for m in masks], tuple(img.data.shape[:2]))
        picked = [(k, faces[i]) for k, i in enumerate(who) if i is not None]
        if not picked:
            continue
        with single_thread(analyzer.device):
            crops = torch.cat([A.align_faces(img.data.to(analyzer.device), torch.from_numpy(fc.kps)[None],
                                             analyzer.backend.rec_size)[0].cpu() for _, fc in picked])
        emb = analyzer.embed(crops)                                                 # [n, 512]
        for (k, _), e in zip(picked, emb @ refs.T):
            sims[f, k] = e
    return sims


def multi_scores(sims: torch.Tensor, threshold: float = 0.4) -> dict:
    """sims [F, P, P] -> {"own": [P], "cross": [P], "swap_rate", "blend_rate", "missing", "faces"} (module
    docstring; a mean over no faces is None)."""
    sims = torch.as_tensor(sims, dtype=torch.float64)
    F_, P, _ = sims.shape
    if P < 2:
        raise ValueError(f"multi-person scores need at least 2 people, got {P}")
    own = sims.diagonal(dim1=1, dim2=2)                                            # [F, P]
    other = sims.masked_fill(torch.eye(P, dtype=torch.bool), -math.inf).amax(dim=2)   # [F, P]
    present = ~own.isnan()

    def mean(t, m):
        return float(t[m].mean()) if m.any() else None
    n = int(present.sum())
    return {"own": [mean(own[:, k], present[:, k]) for k in range(P)],
            "cross": [mean(other[:, k], present[:, k]) for k in range(P)],
            "swap_rate": float((other > own)[present].double().mean()) if n else None,
            "blend_rate": float(((own >= threshold) & (other >= threshold))[present].double().mean()) if n else None,
            "missing": 1.0 - n / max(1, F_ * P), "faces": n}


def summary(scores: dict, names: list | None = None) -> str:
    """One line per person plus the swap / blend rates."""
    P = len(scores["own"])
    names = names or [f"person {k + 1}" for k in range(P)]

    def f(v):
        return "n/a" if v is None else f"{v:.3f}"
    lines = [f"{names[k]}: own {f(scores['own'][k])}, others {f(scores['cross'][k])}" for k in range(P)]
    lines.append(f"swap rate {f(scores['swap_rate'])}, blend rate {f(scores['blend_rate'])}, "
                 f"faces missing {scores['missing']:.0%}")
    return "\n".join(lines)
