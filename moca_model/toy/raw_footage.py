"""Toy raw footage: long videos with scene cuts, one or two people per shot, the same people across videos,
with ground truth - the input that `train_moca.py prepare` is measured on (moca_model/toy/prepare_eval.py).

A video is a run of shots; each shot has its own background, lighting and action (clips.action_track over
the whole shot) and one person (sometimes two, side by side). Consecutive shots change the background (a
hard cut), except a "soft cut" (share ``soft_cut_share``): same background and lighting, another person in
the same place - only the face changes, so a shot detector may miss it and the tracker must split there.
People come from ``RAW_IDS`` (neither the training ids nor the held-out evaluation ids of the toy world).

Files (``write_raw_footage``): ``videos/vid_NNN.mp4`` (128x128, ``fps``), a caption sidecar per video
``videos/vid_NNN.captions.json`` (one segment per shot, in seconds; the format `prepare` reads), and
``ground_truth.json``::

    {"fps": 16, "size": 128, "videos": [{"file": "vid_000.mp4", "frames": 212, "cuts": [40, 97, ...],
      "shots": [{"start": 0, "end": 40, "people": [300003], "soft_cut": false, "caption": "...",
                 "boxes": {"300003": [[x1, y1, x2, y2], ...one per frame of the shot]}}, ...]}]}

Deterministic from the seed. CPU time: ~3 ms per frame (rendering) plus H.264 encoding.

    python -m moca_model.toy.raw_footage --out runs/raw_toy [--videos 8] [--people 6] [--seed 0]
"""
from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from ..atomic import atomic_target
from ..video import write_video
from .clips import ACTIONS, TWO_PERSON_ACTIONS, _base_pose, action_track, caption_for
from .people import Person, rng_for
from .render import SHIRTS, render
from .scene import BACKGROUNDS, LIGHTINGS

RAW_IDS = range(300_000, 300_500)   # identity seeds of raw footage (apart from TRAIN_IDS and HELDOUT_IDS)
FOOTAGE_STREAM = 0x5A7
SIZE = 128


def footage_plan(seed: int = 0, n_videos: int = 6, n_people: int = 5, people_per_video: int = 3,
                 shots_per_video: tuple = (4, 7), shot_frames: tuple = (24, 56), two_person_share: float = 0.2,
                 soft_cut_share: float = 0.12) -> list:
    """Per video a list of shot dicts (people, background, lighting, action, frames, soft_cut, shirts, seed)."""
    rng = rng_for(FOOTAGE_STREAM, seed)
    pool = [int(p) for p in rng.choice(np.asarray(RAW_IDS), n_people, replace=False)]
    videos = []
    for _ in range(n_videos):
        cast = [int(p) for p in rng.choice(pool, min(people_per_video, n_people), replace=False)]
        shots, prev = [], None
        for k in range(int(rng.integers(shots_per_video[0], shots_per_video[1] + 1))):
            n = int(rng.integers(shot_frames[0], shot_frames[1] + 1))
            soft = prev is not None and len(prev["people"]) == 1 and rng.random() < soft_cut_share
            if soft:   # same scene, another person in the same place
                people = [int(rng.choice([p for p in cast if p != prev["people"][0]]))]
                shot = dict(prev, people=people, frames=n, soft_cut=True, action=str(rng.choice(ACTIONS)),
                            seed=int(rng.integers(2 ** 31)))
            else:
                two = len(cast) >= 2 and rng.random() < two_person_share
                people = [int(p) for p in rng.choice(cast, 2 if two else 1, replace=False)]
                bgs = [b for b in BACKGROUNDS if prev is None or b != prev["background"]]
                shot = dict(people=people, frames=n, soft_cut=False,
                            background=str(rng.choice(bgs)), lighting=str(rng.choice(LIGHTINGS)),
                            action=str(rng.choice(TWO_PERSON_ACTIONS if two else ACTIONS)),
                            shirts=[int(i) for i in rng.choice(len(SHIRTS), 2, replace=False)],
                            seed=int(rng.integers(2 ** 31)))
            shots.append(shot)
            prev = shot
        videos.append(shots)
    return videos


def render_shot(shot: dict) -> tuple:
    """A planned shot -> (frames [T, 128, 128, 3] uint8, caption, {seed: boxes [T, 4]})."""
    rng = rng_for(FOOTAGE_STREAM, shot["seed"])
    T, people = shot["frames"], shot["people"]
    tracks = []
    if len(people) == 1:
        poses, direction = action_track(shot["action"], rng, T, _base_pose(rng))
        tracks.append(poses)
    else:
        direction = ""
        for cx in (0.26, 0.74):
            base = replace(_base_pose(rng), cx=cx + rng.uniform(-0.01, 0.01), cy=0.55, scale=rng.uniform(0.32, 0.36))
            tracks.append(action_track(shot["action"], rng, T, base)[0])
    caption = caption_for(shot["action"], shot["background"], shot["lighting"], rng, direction, people=len(people))
    persons = [Person.from_seed(p) for p in people]
    shirts = [SHIRTS[i] for i in shot["shirts"][:len(people)]]
    frames, boxes = [], {p: [] for p in people}
    for t in range(T):
        r = render([(pp, tr[t]) for pp, tr in zip(persons, tracks)], shot["background"], shot["lighting"], SIZE,
                   shot["seed"], shirts=shirts)
        frames.append(r.image)
        for p, f in zip(people, r.faces):
            boxes[p].append([round(float(v), 2) for v in f.box])
    return np.stack(frames), caption, boxes


def write_raw_footage(out_dir, seed: int = 0, n_videos: int = 6, n_people: int = 5, fps: int = 16,
                      overwrite: bool = False, **plan_kw) -> Path:
    """Render the plan into ``out_dir`` (videos/, sidecars, ground_truth.json); returns the ground truth path."""
    out = Path(out_dir)
    vids = out / "videos"
    gt = {"fps": fps, "size": SIZE, "seed": seed, "videos": []}
    for v, shots in enumerate(footage_plan(seed, n_videos, n_people, **plan_kw)):
        name = f"vid_{v:03d}.mp4"
        frames, segments, shot_gt, t0 = [], [], [], 0
        for shot in shots:
            f, caption, boxes = render_shot(shot)
            frames.append(f)
            t1 = t0 + len(f)
            segments.append({"start": t0 / fps, "end": t1 / fps, "caption": caption})
            shot_gt.append({"start": t0, "end": t1, "people": shot["people"], "soft_cut": shot["soft_cut"],
                            "caption": caption, "boxes": {str(p): b for p, b in boxes.items()}})
            t0 = t1
        write_video(vids / name, np.concatenate(frames), fps=fps, overwrite=overwrite)
        with atomic_target(vids / f"vid_{v:03d}.captions.json", overwrite=overwrite) as tmp:
            Path(tmp).write_text(json.dumps({"segments": segments}, indent=1))
        gt["videos"].append({"file": name, "frames": t0, "cuts": [s["start"] for s in shot_gt[1:]],
                             "shots": shot_gt})
    path = out / "ground_truth.json"
    with atomic_target(path, overwrite=overwrite) as tmp:
        Path(tmp).write_text(json.dumps(gt))
    return path


def main(argv=None):
    ap = argparse.ArgumentParser(description="Toy raw footage with scene cuts and ground truth.")
    ap.add_argument("--out", required=True)
    ap.add_argument("--videos", type=int, default=6)
    ap.add_argument("--people", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fps", type=int, default=16)
    a = ap.parse_args(argv)
    print(write_raw_footage(a.out, a.seed, a.videos, a.people, a.fps))


if __name__ == "__main__":
    main()
