"""Toy face models: an insightface-layout pack for the toy world, and an independent judge.

The project's real face pipeline (``moca_model.face``: SCRFD decoding, kornia alignment, ArcFace embedding,
identity files, likeness; the MoCA Encode Face / Identity Score nodes) runs unchanged on toy people with:

    toy_models/insightface/models/toyface/det_toy.onnx   SCRFD-contract detector   (face_detector.py)
    toy_models/insightface/models/toyface/rec_toy.onnx   ArcFace-contract recogniser, conditions MoCA
    toy_models/eval/rec_eval.onnx                        a second recogniser (other arch, seed, renders,
                                                         loss), used only to JUDGE likeness

All three train on TRAIN_IDS only; every figure below is on HELDOUT_IDS. Commands (each resumable from
its atomic checkpoint; ``python -m moca_model.toy.face_train --help``)::

    python -m moca_model.toy.face_train data        # render the pools to /work/toydata/face (uint8 .npy)
    python -m moca_model.toy.face_train detector    # train_toy_detector(...)  -> det_toy.onnx
    python -m moca_model.toy.face_train recogniser  # train_toy_recogniser(..., arch="res")  -> rec_toy.onnx
    python -m moca_model.toy.face_train judge       # train_toy_recogniser(..., arch="wide") -> rec_eval.onnx
    python -m moca_model.toy.face_train eval        # the figures, through FaceAnalyzer on the shipped pack
    python -m moca_model.toy.face_train all         # all of the above, in order

Figures of the shipped files (``python -m moca_model.toy.face_train eval``; process CPU time on the
shared 2-core machine): detector 5,000 steps, 990 s; recogniser 1,800 steps, 1,027 s; judge 2,000 steps,
1,091 s. On HELDOUT_IDS: detection recall 1.00 on 100 references and 150 clip frames (box IoU 0.86 mean,
5-point keypoint error 2.5 px mean / 6.5 px p95 on 128-px frames), 7 false faces on 24 pictures of empty
scenes (every fallback size tried) and 2 extra boxes on the 150 clip frames; verification accuracy on 3,000
pairs (threshold from TRAIN_IDS renders no model saw): recogniser 0.985 +- 0.004, judge 0.996 +- 0.002.
Python API:
``train_toy_detector(out_dir, steps, seed, resume=True)``,
``train_toy_recogniser(out_path, arch, seed, steps, resume=True)``, ``evaluate_detector(models_root)``,
``evaluate_recognisers(models_root, eval_path)``, ``judge_analyzer()`` (a FaceAnalyzer embedding with the
judge, for likeness measurements), ``build_toy_face(...)``.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from .face_data import DEFAULT_DATA, render_crop_pool, render_detection_pool
from .face_detector import train_toy_detector
from .face_recognizer import train_toy_recogniser

REPO = Path(__file__).resolve().parents[2]
TOY_MODELS = REPO / "toy_models"
PACK = "toyface"
PACK_DIR = TOY_MODELS / "insightface" / "models" / PACK
EVAL_REC = TOY_MODELS / "eval" / "rec_eval.onnx"

# Settings of the shipped models (``build_toy_face`` defaults).
DET_STEPS, DET_SEED = 5000, 0
REC_STEPS, REC_SEED = 1800, 1
JUDGE_STEPS, JUDGE_SEED = 2000, 2
REC_POOL = dict(name="rec", refs_per_id=8, clips_per_id=3, frames_per_clip=3, seed=11, stream=0)
JUDGE_POOL = dict(name="rec_eval", refs_per_id=6, clips_per_id=3, frames_per_clip=2, seed=23, stream=1)
EVAL_REF_SEED, EVAL_CLIP_SEED = 900, 900  # held-out renders for evaluation (no model saw these ids)


# ---------------------------------------------------------------------------------------------- evaluation
def _analyzer(models_root, det_size: int = 640):
    from moca_model.face import FaceAnalyzer

    return FaceAnalyzer.load(models_root, pack=PACK, backend="onnxruntime", provider="cpu", det_size=det_size)


def judge_analyzer(models_root=TOY_MODELS / "insightface", eval_path=EVAL_REC, det_size: int = 640):
    """A ``FaceAnalyzer`` that detects with the toy pack's detector and embeds with the evaluation recogniser
    (``rec_eval.onnx``), so ``encode`` / ``likeness_scores`` run unchanged to JUDGE likeness with a network
    that did not condition the model (``metrics.eval_analyzer`` with the toy pack)."""
    from .metrics import eval_analyzer
    return eval_analyzer(models_root, PACK, eval_path, det_size=det_size)


def box_iou(a, b) -> float:
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    return float(inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter + 1e-9))


def _match(dets, gt_faces):
    """For each ground-truth face, the detection with the highest IoU (or None)."""
    out = []
    for g in gt_faces:
        best = max(dets, key=lambda d: box_iou(d.box, g.box), default=None)
        out.append(best if best is not None and box_iou(best.box, g.box) > 0.3 else None)
    return out


def evaluate_detector(models_root, n_refs: int = 100, n_clips: int = 50, n_two: int = 20, n_bg: int = 24,
                      analyzer=None) -> dict:
    """Detection through ``FaceAnalyzer`` (onnxruntime) on held-out references, clip frames (at det size 640
    without fallback, as likeness scoring runs, and with the fallback), two-person frames and pictures with
    nobody in them. IoU with the world's box, keypoint error in image pixels."""
    from . import world

    ana = analyzer or _analyzer(models_root)
    held = list(world.HELDOUT_IDS)
    res = {}

    def score(items, **kw):
        ious, errs, found, n, sizes, extra = [], [], 0, 0, {}, 0
        for img, gts in items:
            dets = ana.detect(img, **kw)
            matched = _match(dets, gts)
            extra += max(0, len(dets) - sum(m is not None for m in matched))
            for d, g in zip(matched, gts):
                n += 1
                if d is None:
                    continue
                found += 1
                ious.append(box_iou(d.box, g.box))
                errs.append(float(np.linalg.norm(d.kps - g.kps, axis=1).mean()))
                sizes[d.det_size] = sizes.get(d.det_size, 0) + 1
        e = np.array(errs) if errs else np.array([np.nan])
        i = np.array(ious) if ious else np.array([np.nan])
        return {"faces": n, "recall": found / max(1, n), "false_positives": extra, "iou_mean": float(i.mean()),
                "iou_min": float(i.min()), "iou_gt_0.8": float((i > 0.8).mean()), "kps_err_mean_px": float(e.mean()),
                "kps_err_p95_px": float(np.percentile(e, 95)), "det_sizes": sizes}

    refs = [world.make_reference(pid, EVAL_REF_SEED + k) for k, pid in enumerate(held[:n_refs])]
    res["references_256"] = score([(r.image, r.faces) for r in refs])
    frames = []
    for k, pid in enumerate(held[:n_clips]):
        clip = world.make_clip(pid, EVAL_CLIP_SEED + k)
        frames += [(clip.frames[t], clip.faces[t]) for t in (0, 8, 16)]
    res["clip_frames_128_det640_nofallback"] = score(frames, fallback=False)
    res["clip_frames_128_det160_nofallback"] = score(frames, det_size=160, fallback=False)
    two = []
    for k in range(n_two):
        clip = world.make_two_person_clip((held[2 * k], held[2 * k + 1]), EVAL_CLIP_SEED + k)
        two += [(clip.frames[t], clip.faces[t]) for t in (0, 16)]
    res["two_person_frames_128"] = score(two)
    fp = 0
    for k in range(n_bg):
        img = world.render([], world.BACKGROUNDS[k % len(world.BACKGROUNDS)], world.LIGHTINGS[k % len(world.LIGHTINGS)],
                           size=256 if k % 2 else 128, seed=5000 + k).image
        fp += len(ana.detect(img))  # every fallback size tried
    res["background_only"] = {"images": n_bg, "faces_found": fp}
    return res


def heldout_crops(analyzer, ids, per_id: int = 6, ref_seed: int = EVAL_REF_SEED, clip_seed: int = EVAL_CLIP_SEED):
    """Pipeline crops of ``ids``: per person ``per_id // 2`` references and ``per_id - per_id // 2`` clip
    frames (one per clip), detected and aligned by ``analyzer``. Returns (crops [N, 112, 112, 3] uint8,
    labels [N], kinds [N] 0 = reference / 1 = frame)."""
    from . import world

    crops, labels, kinds = [], [], []
    rng = np.random.default_rng(12345)
    for pid in ids:
        pics = [(world.make_reference(pid, ref_seed + j).image, 0) for j in range(per_id // 2)]
        for j in range(per_id - per_id // 2):
            clip = world.make_clip(pid, clip_seed + j)
            pics.append((clip.frames[int(rng.integers(len(clip.frames)))], 1))
        for img, kind in pics:
            dets = analyzer.detect(img)
            if not dets:
                continue
            face = max(dets, key=lambda d: d.area)
            c112, _ = analyzer.align(torch.from_numpy(img), torch.from_numpy(face.kps)[None])
            crops.append((c112[0] * 255).round().clamp(0, 255).to(torch.uint8).numpy())
            labels.append(pid)
            kinds.append(kind)
    return np.stack(crops), np.array(labels), np.array(kinds)


def make_pairs(labels: np.ndarray, n: int, rng: np.random.Generator):
    """n // 2 same-person and n // 2 different-person index pairs [n, 2] and their truth [n]."""
    by = {}
    for i, l in enumerate(labels):
        by.setdefault(int(l), []).append(i)
    keys = [k for k, v in by.items() if len(v) >= 2]
    pairs, same = [], []
    while len(pairs) < n // 2:
        a, b = rng.choice(by[int(rng.choice(keys))], 2, replace=False)
        pairs.append((a, b))
        same.append(True)
    while len(pairs) < n:
        a, b = rng.integers(len(labels), size=2)
        if labels[a] != labels[b]:
            pairs.append((a, b))
            same.append(False)
    return np.array(pairs), np.array(same)


def verification(sims: np.ndarray, same: np.ndarray, threshold: float | None = None) -> dict:
    """Accuracy at ``threshold`` (best on these pairs when None), TAR at FAR 1e-2 and 1e-3, mean cosines."""
    if threshold is None:
        cand = np.sort(sims)
        accs = [((sims > t) == same).mean() for t in cand]
        threshold = float(cand[int(np.argmax(accs))])
    neg = np.sort(sims[~same])
    acc = float(((sims > threshold) == same).mean())
    out = {"threshold": float(threshold), "accuracy": acc,
           "accuracy_ci95": float(1.96 * np.sqrt(acc * (1 - acc) / len(sims))),  # binomial, pairs as independent
           "cos_same": float(sims[same].mean()), "cos_diff": float(sims[~same].mean()),
           "cos_same_std": float(sims[same].std()), "cos_diff_std": float(sims[~same].std())}
    for far in (1e-2, 1e-3):
        t = neg[min(len(neg) - 1, int(np.ceil((1 - far) * len(neg))))]
        out[f"tar@far={far:g}"] = float((sims[same] > t).mean())
    return out


def evaluate_recognisers(models_root, eval_path=EVAL_REC, n_pairs: int = 3000, per_id: int = 6,
                         n_train_ids: int = 200, analyzer=None) -> dict:
    """Verification of the pack's recogniser and of the judge on HELDOUT_IDS, threshold chosen on the same
    protocol over ``n_train_ids`` TRAIN_IDS (renders never trained on), crops from the real pipeline."""
    import onnxruntime as ort

    from moca_model.face.recognizer import ArcFaceOnnx, crops_to_blob

    from . import world

    ana = analyzer or _analyzer(models_root)
    judge = ArcFaceOnnx(ort.InferenceSession(str(eval_path), providers=["CPUExecutionProvider"]), str(eval_path))

    def embeds(crops):
        t = torch.from_numpy(crops).float() / 255.0
        a = ana.embed(t).numpy()
        b = judge.forward(crops_to_blob(t))
        return a, b / np.linalg.norm(b, axis=1, keepdims=True)

    out = {}
    sets = {}
    for name, ids in (("train", list(world.TRAIN_IDS)[:n_train_ids]), ("heldout", list(world.HELDOUT_IDS))):
        crops, labels, kinds = heldout_crops(ana, ids, per_id)
        pairs, same = make_pairs(labels, n_pairs, np.random.default_rng(7 if name == "train" else 8))
        ea, eb = embeds(crops)
        sets[name] = (pairs, same, ea, eb, kinds)
    for who, col in (("rec_toy", 2), ("rec_eval", 3)):
        pairs, same, e = sets["train"][0], sets["train"][1], sets["train"][col]
        thr = verification((e[pairs[:, 0]] * e[pairs[:, 1]]).sum(1), same)["threshold"]
        pairs, same, e, kinds = sets["heldout"][0], sets["heldout"][1], sets["heldout"][col], sets["heldout"][4]
        sims = (e[pairs[:, 0]] * e[pairs[:, 1]]).sum(1)
        res = verification(sims, same, thr)
        res["accuracy_best_threshold_on_heldout"] = verification(sims, same)["accuracy"]
        mixed = kinds[pairs[:, 0]] != kinds[pairs[:, 1]]
        res["reference_vs_frame_pairs"] = verification(sims[mixed], same[mixed], thr)
        out[who] = res
    pairs, same, ea, eb, _ = sets["heldout"]
    sa = (ea[pairs[:, 0]] * ea[pairs[:, 1]]).sum(1)
    sb = (eb[pairs[:, 0]] * eb[pairs[:, 1]]).sum(1)
    out["pairs"] = {"heldout_pairs": int(len(pairs)), "same": int(same.sum()), "heldout_crops": int(len(ea)),
                    "train_ids_for_threshold": n_train_ids}
    out["correlation_rec_toy_vs_rec_eval"] = {
        "all_pairs": float(np.corrcoef(sa, sb)[0, 1]), "same_pairs": float(np.corrcoef(sa[same], sb[same])[0, 1]),
        "different_pairs": float(np.corrcoef(sa[~same], sb[~same])[0, 1])}
    return out


# ---------------------------------------------------------------------------------------------- building
def install_pack(det_onnx, rec_onnx, judge_onnx=None, pack_dir=PACK_DIR, eval_path=EVAL_REC):
    """Copy the exported files into the ComfyUI layout (atomically), with the pack's moca_pack.json."""
    import shutil

    from moca_model.atomic import atomic_target

    pairs = [(det_onnx, Path(pack_dir) / "det_toy.onnx"), (rec_onnx, Path(pack_dir) / "rec_toy.onnx")]
    if judge_onnx is not None:
        pairs.append((judge_onnx, Path(eval_path)))
    for src, dst in pairs:
        if src is None:
            continue
        with atomic_target(dst, overwrite=True, suffix=".onnx") as tmp:
            shutil.copyfile(src, tmp)
    if det_onnx is not None or rec_onnx is not None:       # the pack's manifest (moca_model.face.packs)
        from moca_model.face.packs import PACKS, write_manifest
        write_manifest(pack_dir, PACKS[PACK], overwrite=True)


def build_toy_face(data_dir=DEFAULT_DATA, stages=("data", "detector", "recogniser", "judge", "eval"),
                   det_steps: int = DET_STEPS, rec_steps: int = REC_STEPS, judge_steps: int = JUDGE_STEPS,
                   install: bool = True, log=print) -> dict:
    """Everything ``make toy`` needs for faces; returns the figures (also written to
    ``<data_dir>/face_figures.json``). Each stage resumes from its checkpoint."""
    data_dir = Path(data_dir)
    runs = data_dir / "runs"
    fig_path = data_dir / "face_figures.json"
    figures = json.loads(fig_path.read_text()) if fig_path.is_file() else {}

    def note(key, value):
        figures[key] = value
        fig_path.parent.mkdir(parents=True, exist_ok=True)
        fig_path.write_text(json.dumps(figures, indent=1, default=str))

    if "data" in stages:
        t = time.process_time()
        render_detection_pool(data_dir, log=log)
        render_crop_pool(data_dir, log=log, **REC_POOL)
        render_crop_pool(data_dir, log=log, **JUDGE_POOL)
        note("data_cpu_s", round(time.process_time() - t, 1))
    if "detector" in stages:
        r = train_toy_detector(runs / "det", steps=det_steps, seed=DET_SEED, data_dir=data_dir, log=log)
        note("detector", {"cpu_s": round(r["cpu_s"], 1), "steps": det_steps, "onnx": r["onnx"],
                          "final_loss": float(np.mean([h["loss"] for h in r["history"][-100:]]))})
        if install:
            install_pack(runs / "det" / "det_toy.onnx", None)
    if "recogniser" in stages:
        r = train_toy_recogniser(runs / "rec_toy.onnx", "res", REC_SEED, rec_steps, data_dir=data_dir,
                                 pool_name=REC_POOL["name"], log=log)
        note("recogniser", {"cpu_s": round(r["cpu_s"], 1), "steps": rec_steps, "onnx": r["onnx"],
                            "final_loss": float(np.mean([h["loss"] for h in r["history"][-100:]]))})
        if install:
            install_pack(None, runs / "rec_toy.onnx")
    if "judge" in stages:
        r = train_toy_recogniser(runs / "rec_eval.onnx", "wide", JUDGE_SEED, judge_steps, data_dir=data_dir,
                                 pool_name=JUDGE_POOL["name"], log=log)
        note("judge", {"cpu_s": round(r["cpu_s"], 1), "steps": judge_steps, "onnx": r["onnx"],
                       "final_loss": float(np.mean([h["loss"] for h in r["history"][-100:]]))})
        if install:
            install_pack(None, None, runs / "rec_eval.onnx")
    if "eval" in stages:
        root = TOY_MODELS / "insightface"
        ana = _analyzer(root)
        note("detection", evaluate_detector(root, analyzer=ana))
        note("verification", evaluate_recognisers(root, analyzer=ana))
    return figures


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m moca_model.toy.face_train", description=__doc__.split("\n")[0])
    ap.add_argument("stage", choices=("data", "detector", "recogniser", "judge", "eval", "all"))
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="scratch folder for pools and runs (never committed)")
    ap.add_argument("--det-steps", type=int, default=DET_STEPS)
    ap.add_argument("--rec-steps", type=int, default=REC_STEPS)
    ap.add_argument("--judge-steps", type=int, default=JUDGE_STEPS)
    ap.add_argument("--no-install", action="store_true", help="do not copy the results into toy_models/")
    a = ap.parse_args(argv)
    stages = ("data", "detector", "recogniser", "judge", "eval") if a.stage == "all" else (a.stage,)
    figures = build_toy_face(a.data, stages, a.det_steps, a.rec_steps, a.judge_steps, install=not a.no_install)
    print(json.dumps({k: figures[k] for k in figures if k in ("detection", "verification")}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
