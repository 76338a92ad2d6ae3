"""How well `train_moca.py prepare` does on toy raw footage, against the footage's ground truth.

Figures (``measure``):
- ``shots``: precision / recall / F1 of the detected cuts (within +-1 frame), also for hard and soft cuts apart;
- ``tracks``: purity - over all real detections of all tracks, the share that belong to their track's
  majority person (a detection belongs to the ground-truth face it overlaps most, IoU >= 0.3; none = a
  false detection); and how many tracks there are per ground-truth (person, shot) appearance;
- ``identities``: cluster purity (share of tracks in their cluster's majority person), recall (share of a
  person's tracks in that person's largest cluster), and pairwise recall across videos (pairs of tracks of
  one person in different videos that share a cluster);
- ``pairs``: share of (clip, reference) pairs whose reference comes from another ground-truth shot / video,
  and wrong-identity pairs (reference person != clip person).

    python -m moca_model.toy.prepare_eval --out runs/prepare_toy [--videos 12] [--people 8] [--seed 0]

generates the footage (``raw_footage``) unless present, runs `prepare` with the toy settings below, and
writes ``measure.json`` next to the report.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ..prepare.pipeline import TRACK_ARRAYS, PrepareConfig, Preparer, video_key
from ..prepare.selection import QualityFilters
from ..prepare.shots import boundary_f1
from ..prepare.tracking import FaceTrack, iou

IOU_MATCH = 0.3
TOY_FILTERS = dict(min_eye_px=8.0)      # two-person shots have ~12 px between the eyes at 128x128


def toy_config(face_models="toy_models/insightface", **kw) -> PrepareConfig:
    """`prepare` settings for toy footage: toyface pack on the CPU, 17-frame 128x128 clips at 16 fps."""
    filters = QualityFilters(**{**TOY_FILTERS, **kw.pop("filters", {})})
    return PrepareConfig(**{**dict(face_models=str(face_models), face_pack="toyface", provider="cpu", det_size=160,
                                   frames=17, height=128, width=128, fps=16.0, filters=filters), **kw})


def _load_tracks(work: Path, key: str) -> tuple:
    meta = json.loads((work / f"{key}.json").read_text())
    with np.load(work / f"{key}.npz") as z:
        tracks = [FaceTrack(shot=s, **{n: z[f"{k}.{n}"] for n in TRACK_ARRAYS}) for k, s in enumerate(meta["track_shots"])]
    return meta, tracks


def _gt_person(video_gt: dict, frame: int, box: np.ndarray):
    """The ground-truth person whose face box overlaps ``box`` most at ``frame`` (None below IOU_MATCH)."""
    shot = next(s for s in video_gt["shots"] if s["start"] <= frame < s["end"])
    people = list(shot["boxes"])
    if not people:
        return None, shot
    gt = np.array([shot["boxes"][p][frame - shot["start"]] for p in people], np.float32)
    ov = iou(box[None].astype(np.float32), gt)[0]
    k = int(ov.argmax())
    return (int(people[k]) if ov[k] >= IOU_MATCH else None), shot


def measure(ground_truth, out_dir) -> dict:
    gt = json.loads(Path(ground_truth).read_text())
    out = Path(out_dir)
    work = out / "work"
    by_key = {video_key(Path(v["file"])): v for v in gt["videos"]}
    # shots
    found_all, truth_all, hard, soft = [], [], [], []
    track_labels, track_info = {}, []
    pur_hit = pur_tot = 0
    appearances = set()
    for key, v in by_key.items():
        meta, tracks = _load_tracks(work, key)
        cuts = [s[0] for s in meta["shots"][1:]]
        found_all += [(key, c) for c in cuts]
        truth_all += [(key, c) for c in v["cuts"]]
        soft_cuts = [s["start"] for s in v["shots"][1:] if s["soft_cut"]]
        hard += [boundary_f1(cuts, [c for c in v["cuts"] if c not in soft_cuts])["true_positives"]]
        soft += [(len(soft_cuts), sum(any(abs(c - s) <= 1 for c in cuts) for s in soft_cuts))]
        for s in v["shots"]:
            for p in s["people"]:
                appearances.add((key, s["start"], p))
        for k, tr in enumerate(tracks):
            labs = [_gt_person(v, int(f), b)[0] for f, b, d in zip(tr.frames, tr.boxes, tr.detected) if d]
            vals, counts = np.unique(np.array([-1 if x is None else x for x in labs]), return_counts=True)
            pur_hit += int(counts.max())
            pur_tot += len(labs)
            maj = int(vals[counts.argmax()])
            track_labels[(key, k)] = maj
            shot = _gt_person(v, int(tr.frames[len(tr.frames) // 2]), tr.boxes[len(tr.frames) // 2])[1]
            track_info.append((key, k, maj, shot["start"]))
    tp = sum(boundary_f1([c for kk, c in found_all if kk == key], [c for kk, c in truth_all if kk == key])["true_positives"]
             for key in by_key)
    p = tp / max(1, len(found_all))
    r = tp / max(1, len(truth_all))
    n_soft = sum(a for a, _ in soft)
    shots = {"cuts_true": len(truth_all), "cuts_found": len(found_all), "precision": round(p, 4),
             "recall": round(r, 4), "f1": round(2 * p * r / max(p + r, 1e-9), 4),
             "hard_cut_recall": round(sum(hard) / max(1, len(truth_all) - n_soft), 4),
             "soft_cuts": n_soft, "soft_cuts_found": sum(b for _, b in soft)}
    tracks_fig = {"tracks": len(track_info), "appearances": len(appearances),
                  "purity": round(pur_hit / max(1, pur_tot), 4), "detections": pur_tot,
                  "tracks_per_appearance": round(len(track_info) / max(1, len(appearances)), 3)}
    ident = _identity_figures(out, track_labels)
    pairs = [json.loads(ln) for ln in (out / "pairs.jsonl").read_text().splitlines() if ln.strip()]
    vids = {v["file"]: v for v in gt["videos"]}
    n = wrong = other_shot = other_video = 0
    for pr in pairs:
        v = vids[Path(pr["source"]).name]
        meta, tracks = _load_tracks(work, video_key(Path(pr["source"])))
        clip_person = track_labels[(video_key(Path(pr["source"])), pr["track"])]
        _, clip_shot = _gt_person(v, pr["frames"][0], tracks[pr["track"]].boxes[pr["frames"][0] - int(tracks[pr["track"]].frames[0])])
        for ref in pr["references"]:
            rv = vids[Path(ref["source"]).name]
            _, rtracks = _load_tracks(work, video_key(Path(ref["source"])))
            rt = rtracks[ref["track"]]
            person, rshot = _gt_person(rv, ref["frame"], rt.boxes[ref["frame"] - int(rt.frames[0])])
            n += 1
            wrong += person != clip_person
            other_video += rv["file"] != v["file"]
            other_shot += (rv["file"], rshot["start"]) != (v["file"], clip_shot["start"])
    pair_fig = {"clips": len(pairs), "pairs": n, "wrong_identity": wrong,
                "reference_from_other_shot": round(other_shot / max(1, n), 4),
                "reference_from_other_video": round(other_video / max(1, n), 4)}
    return {"shots": shots, "tracks": tracks_fig, "identities": ident, "pairs": pair_fig}


def _identity_figures(out: Path, track_labels: dict) -> dict:
    """Cluster purity / recall / cross-video pairwise recall of the identities `prepare` gave the tracks
    (``tracks.jsonl``); ``track_labels``: (video key, track) -> ground-truth person (-1: a false detection)."""
    rows = [json.loads(ln) for ln in (out / "tracks.jsonl").read_text().splitlines() if ln.strip()]
    keys = [(video_key(Path(r["video"])), r["track"]) for r in rows]
    labels = np.array([r["identity"] for r in rows])
    truth = np.array([track_labels[k] for k in keys])
    real = truth >= 0
    hit = sum(np.unique(truth[(labels == c) & real], return_counts=True)[1].max() for c in np.unique(labels[real]))
    rec = sum(np.unique(labels[truth == p], return_counts=True)[1].max() for p in np.unique(truth[real]))
    same = tot = 0
    for i in range(len(keys)):
        for j in range(i + 1, len(keys)):
            if real[i] and truth[i] == truth[j] and keys[i][0] != keys[j][0]:
                tot += 1
                same += labels[i] == labels[j]
    return {"clusters": int(len(np.unique(labels))), "people": int(len(np.unique(truth[real]))),
            "purity": round(float(hit / max(1, real.sum())), 4), "recall": round(float(rec / max(1, real.sum())), 4),
            "cross_video_pair_recall": round(same / max(1, tot), 4), "cross_video_pairs": tot}


def main(argv=None):
    from .raw_footage import write_raw_footage
    ap = argparse.ArgumentParser(description="Measure `train_moca.py prepare` on toy raw footage.")
    ap.add_argument("--out", required=True, help="folder: raw/ (footage) and prepared/ (prepare's output)")
    ap.add_argument("--videos", type=int, default=12)
    ap.add_argument("--people", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--face-models", default="toy_models/insightface")
    a = ap.parse_args(argv)
    out = Path(a.out)
    gt = out / "raw" / "ground_truth.json"
    t0 = time.process_time()
    if not gt.is_file():
        write_raw_footage(out / "raw", a.seed, a.videos, a.people)
    t1 = time.process_time()
    report = Preparer(toy_config(a.face_models)).run(out / "raw" / "videos", out / "prepared")
    t2 = time.process_time()
    m = measure(gt, out / "prepared")
    m["cpu_seconds"] = {"footage": round(t1 - t0, 1), "prepare": round(t2 - t1, 1)}
    m["report"] = {k: report[k] for k in ("frames", "shots", "tracks", "track_splits", "identities", "candidate_clips",
                                          "clips", "pairs", "dropped", "references")}
    (out / "prepared" / "measure.json").write_text(json.dumps(m, indent=1))
    print(json.dumps(m, indent=1))


if __name__ == "__main__":
    main()
