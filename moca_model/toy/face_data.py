"""Pre-rendered training data of the toy face models (uint8 .npy under /work/toydata/face/, never committed).

* ``render_detection_pool``: whole toy pictures with their faces - references (256 px), clip frames
  (128 px, a few frames of each clip) and background-only pictures - as ``{name}_images.npy``
  ``[N, S, S, 3]`` uint8 + ``{name}_faces.npz`` (boxes ``[N, F, 4]``, kps ``[N, F, 5, 2]``, ``n [N]``).
* ``render_crop_pool``: 112x112 ArcFace crops aligned by the pipeline's own ``moca_model.face.align``
  with the world's keypoints (jittered by ~detector error), from references and clip frames, some of the
  pictures blurred / down-and-up scaled / recoloured first so decoded 128-px video frames look familiar;
  ``{name}_crops.npy`` ``[N, 112, 112, 3]`` uint8 + ``{name}_labels.npy`` ``[N]`` int (person seeds).

Rendering is deterministic from the seeds; files are written atomically and reused when present.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

DEFAULT_DATA = Path("/work/toydata/face")


def _save_npy(path: Path, arr: np.ndarray):
    from moca_model.atomic import atomic_target

    with atomic_target(path, overwrite=True, suffix=".npy") as tmp:
        np.save(tmp, arr)


def _save_npz(path: Path, **arrays):
    from moca_model.atomic import atomic_target

    with atomic_target(path, overwrite=True, suffix=".npz") as tmp:
        np.savez(tmp, **arrays)


def faces_of(annotations, max_faces: int = 4):
    """World FaceAnnotations -> (boxes [F, 4], kps [F, 5, 2]) float32."""
    b = np.zeros((max_faces, 4), np.float32)
    k = np.zeros((max_faces, 5, 2), np.float32)
    n = min(len(annotations), max_faces)
    for i, a in enumerate(annotations[:n]):
        b[i] = np.asarray(a.box, np.float32)
        k[i] = np.asarray(a.kps, np.float32).reshape(5, 2)
    return b, k, n


def clip_frames(pid: int, clip_seed: int, picks: int, rng: np.random.Generator, size: int = 128):
    """``picks`` random frames (image, annotations) of ``make_clip(pid, clip_seed)``, rendering only those
    frames (the same pixels as the clip's)."""
    from .clips import SHIRTS, clip_spec
    from .people import Person
    from .render import render

    spec = clip_spec(pid, clip_seed)
    person = Person.from_seed(pid)
    idx = rng.choice(len(spec.poses), size=min(picks, len(spec.poses)), replace=False)
    out = []
    for i in sorted(idx):
        r = render([(person, spec.poses[i])], spec.background, spec.lighting, size, spec.seed,
                   shirts=[SHIRTS[spec.shirt]])
        out.append((r.image, r.faces))
    return out


KINDS = ("ref", "frame", "two", "bg")


def render_detection_pool(data_dir=DEFAULT_DATA, name: str = "det", n_refs: int = 1200, n_clips: int = 300,
                          frames_per_clip: int = 4, n_two: int = 60, n_background: int = 150, seed: int = 7,
                          log=print) -> dict:
    """Render the detector's pictures of TRAIN_IDS (see module doc). Returns the file paths."""
    from . import world

    data_dir = Path(data_dir)
    out = {k: data_dir / f"{name}_{k}_images.npy" for k in KINDS}
    ann = {k: data_dir / f"{name}_{k}_faces.npz" for k in out}
    if all(p.is_file() for p in list(out.values()) + list(ann.values())):
        return {"images": out, "faces": ann}
    rng = np.random.default_rng(seed)
    ids = np.asarray(list(world.TRAIN_IDS))
    t0 = time.perf_counter()
    # references, 256 px
    imgs, boxes, kps, ns = [], [], [], []
    for i in range(n_refs):
        pid = int(rng.choice(ids))
        r = world.make_reference(pid, 1000 + int(rng.integers(1 << 20)))
        imgs.append(r.image)
        b, k, n = faces_of(r.faces)
        boxes.append(b), kps.append(k), ns.append(n)
    _save_npy(out["ref"], np.stack(imgs))
    _save_npz(ann["ref"], boxes=np.stack(boxes), kps=np.stack(kps), n=np.array(ns))
    log(f"[toy-face] detector pool: {n_refs} references ({time.perf_counter() - t0:.0f} s)")
    # clip frames, 128 px
    imgs, boxes, kps, ns = [], [], [], []
    for i in range(n_clips):
        pid = int(rng.choice(ids))
        for img, faces in clip_frames(pid, 1000 + int(rng.integers(1 << 20)), frames_per_clip, rng):
            imgs.append(img)
            b, k, n = faces_of(faces)
            boxes.append(b), kps.append(k), ns.append(n)
    _save_npy(out["frame"], np.stack(imgs))
    _save_npz(ann["frame"], boxes=np.stack(boxes), kps=np.stack(kps), n=np.array(ns))
    log(f"[toy-face] detector pool: {len(imgs)} clip frames ({time.perf_counter() - t0:.0f} s)")
    # two-person clip frames, 128 px
    imgs, boxes, kps, ns = [], [], [], []
    for i in range(n_two):
        a, b = (int(x) for x in rng.choice(ids, 2, replace=False))
        clip = world.make_two_person_clip((a, b), 1000 + int(rng.integers(1 << 20)))
        for t in rng.choice(len(clip.frames), frames_per_clip, replace=False):
            imgs.append(clip.frames[t])
            bb, k, n = faces_of(clip.faces[t])
            boxes.append(bb), kps.append(k), ns.append(n)
    _save_npy(out["two"], np.stack(imgs))
    _save_npz(ann["two"], boxes=np.stack(boxes), kps=np.stack(kps), n=np.array(ns))
    log(f"[toy-face] detector pool: {len(imgs)} two-person frames ({time.perf_counter() - t0:.0f} s)")
    # background only (no person), 256 px (the sampler shrinks some to clip size)
    imgs = []
    for i in range(n_background):
        bg = world.BACKGROUNDS[int(rng.integers(len(world.BACKGROUNDS)))]
        li = world.LIGHTINGS[int(rng.integers(len(world.LIGHTINGS)))]
        imgs.append(world.render([], bg, li, size=256, seed=int(rng.integers(1 << 20))).image)
    _save_npy(out["bg"], np.stack(imgs))
    _save_npz(ann["bg"], boxes=np.zeros((len(imgs), 4, 4), np.float32), kps=np.zeros((len(imgs), 4, 5, 2), np.float32),
              n=np.zeros(len(imgs), np.int64))
    log(f"[toy-face] detector pool: {len(imgs)} backgrounds ({time.perf_counter() - t0:.0f} s)")
    return {"images": out, "faces": ann}


def load_detection_pool(data_dir=DEFAULT_DATA, name: str = "det", mmap: bool = True) -> dict:
    """{kind: (images [N, S, S, 3] uint8, boxes [N, F, 4], kps [N, F, 5, 2], n [N])}."""
    data_dir = Path(data_dir)
    pool = {}
    for k in KINDS:
        imgs = np.load(data_dir / f"{name}_{k}_images.npy", mmap_mode="r" if mmap else None)
        a = np.load(data_dir / f"{name}_{k}_faces.npz")
        pool[k] = (imgs, a["boxes"], a["kps"], a["n"])
    return pool


def align_crops(img: np.ndarray, kps: np.ndarray) -> np.ndarray:
    """The pipeline's 112 ArcFace crops of one picture: [H, W, 3] uint8, kps [F, 5, 2] -> [F, 112, 112, 3] uint8."""
    from moca_model.face.align import align_faces

    crops, _, _ = align_faces(torch.from_numpy(np.ascontiguousarray(img)), torch.as_tensor(kps, dtype=torch.float32))
    return (crops * 255.0).round().clamp(0, 255).to(torch.uint8).numpy()


def jitter_kps(kps: np.ndarray, rng: np.random.Generator, amount: float) -> np.ndarray:
    """Keypoints [5, 2] moved like a detector's error: a small similarity change plus per-point noise,
    both in units of the eye distance times ``amount``."""
    eye = float(np.linalg.norm(kps[1] - kps[0])) + 1e-6
    c = kps.mean(0)
    a = rng.normal(0, 0.03 * amount)
    s = 1 + rng.normal(0, 0.03 * amount)
    rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]]) * s
    out = (kps - c) @ rot.T + c + rng.normal(0, 0.03 * amount * eye, 2)
    return (out + rng.normal(0, 0.025 * amount * eye, kps.shape)).astype(np.float32)


def degrade(img: np.ndarray, rng: np.random.Generator, p: float = 0.5) -> np.ndarray:
    """With probability ``p``: blur, down-and-up scaling (a decoded video frame), colour/contrast change
    or noise on a whole picture (before alignment, as the pipeline would see it)."""
    if rng.random() >= p:
        return img
    from .face_detector import photometric

    return photometric(img, rng, strength=1.5)


def render_crop_pool(data_dir=DEFAULT_DATA, name: str = "rec", ids=None, refs_per_id: int = 8,
                     clips_per_id: int = 3, frames_per_clip: int = 3, seed: int = 11, stream: int = 0,
                     jitter: float = 1.0, degrade_p: float = 0.5, log=print) -> dict:
    """Aligned 112 crops of every person in ``ids`` (default TRAIN_IDS): ``refs_per_id`` references and
    ``clips_per_id * frames_per_clip`` clip frames each. ``stream`` offsets the reference / clip seeds so two
    recognisers see different renders. Resumable per chunk of 100 identities."""
    from . import world

    data_dir = Path(data_dir)
    ids = list(world.TRAIN_IDS if ids is None else ids)
    crops_p, labels_p = data_dir / f"{name}_crops.npy", data_dir / f"{name}_labels.npy"
    kind_p = data_dir / f"{name}_kinds.npy"
    if crops_p.is_file() and labels_p.is_file() and kind_p.is_file():
        return {"crops": crops_p, "labels": labels_p, "kinds": kind_p}
    parts = data_dir / f"{name}_parts"
    parts.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    chunk = 100
    files = []
    for c0 in range(0, len(ids), chunk):
        part = parts / f"{c0:06d}.npz"
        files.append(part)
        if part.is_file():
            continue
        crops, labels, kinds = [], [], []
        for pid in ids[c0:c0 + chunk]:
            rng = np.random.default_rng([seed, stream, int(pid)])
            pics = []
            for j in range(refs_per_id):
                r = world.make_reference(int(pid), 10_000 * (stream + 1) + j)
                pics.append((r.image, r.faces, 0))
            for j in range(clips_per_id):
                for img, faces in clip_frames(int(pid), 10_000 * (stream + 1) + j, frames_per_clip, rng):
                    pics.append((img, faces, 1))
            for img, faces, kind in pics:
                k = jitter_kps(np.asarray(faces[0].kps, np.float32).reshape(5, 2), rng, jitter)
                crops.append(align_crops(degrade(img, rng, degrade_p), k[None])[0])
                labels.append(int(pid))
                kinds.append(kind)
        _save_npz(part, crops=np.stack(crops), labels=np.array(labels, np.int64), kinds=np.array(kinds, np.int8))
        log(f"[toy-face] crops {name}: {min(c0 + chunk, len(ids))}/{len(ids)} identities "
            f"({time.perf_counter() - t0:.0f} s)")
    loaded = [np.load(f) for f in files]
    _save_npy(crops_p, np.concatenate([z["crops"] for z in loaded]))
    _save_npy(labels_p, np.concatenate([z["labels"] for z in loaded]))
    _save_npy(kind_p, np.concatenate([z["kinds"] for z in loaded]))
    for f in files:
        f.unlink()
    parts.rmdir()
    return {"crops": crops_p, "labels": labels_p, "kinds": kind_p}


def small_detection_pool(n: int = 2, seed: int = 0) -> dict:
    """An in-memory detection pool of ``n`` pictures per kind (tests and smoke runs)."""
    from . import world

    rng = np.random.default_rng(seed)
    ids = list(world.TRAIN_IDS)
    pics = {"ref": [world.make_reference(ids[i], 1000 + i) for i in range(n)],
            "frame": [clip_frames(ids[n + i], 1000 + i, 1, rng)[0] for i in range(n)],
            "two": [], "bg": []}
    pics["ref"] = [(r.image, r.faces) for r in pics["ref"]]
    for i in range(n):
        clip = world.make_two_person_clip((ids[2 * n + i], ids[3 * n + i]), 1000 + i, num_frames=5)
        pics["two"].append((clip.frames[2], clip.faces[2]))
        pics["bg"].append((world.render([], world.BACKGROUNDS[i % len(world.BACKGROUNDS)], world.LIGHTINGS[0],
                                        size=256, seed=i).image, []))
    pool = {}
    for k, items in pics.items():
        anns = [faces_of(f) for _, f in items]
        pool[k] = (np.stack([im for im, _ in items]), np.stack([a[0] for a in anns]), np.stack([a[1] for a in anns]),
                   np.array([a[2] for a in anns]))
    return pool


def small_crop_pool(ids, per_id: int = 4, seed: int = 0):
    """In-memory (crops, labels, kinds) of ``ids``: ``per_id`` references each (tests and smoke runs)."""
    from . import world

    rng = np.random.default_rng(seed)
    crops, labels = [], []
    for pid in ids:
        for j in range(per_id):
            r = world.make_reference(int(pid), 2000 + j)
            crops.append(align_crops(r.image, jitter_kps(np.asarray(r.faces[0].kps), rng, 1.0)[None])[0])
            labels.append(int(pid))
    return np.stack(crops), np.array(labels), np.zeros(len(labels), np.int8)
