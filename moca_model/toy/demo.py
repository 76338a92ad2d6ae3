"""The embedded default of `python -m moca_model demo`: a held-out toy person's photo + two prompts -> video.

demo.mp4 shows, per prompt (one row each): the reference photo | the video with identity | the same seed
without identity. report.json gives the likeness of both videos to the reference under the *evaluation*
recogniser (not the one that conditions the model), the action / background the world's classifiers see,
and timings; demo_strip.png is a frame strip of the same (the README shows it).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..atomic import atomic_target
from ..video import write_video

PROMPTS = ("a person turns their head to the left in front of a striped wall, in warm evening light",
           "a person smiles in front of a sandy beach by the sea, in bright daylight")


def _resize(img: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.fromarray(img).resize((size, size), Image.LANCZOS))


def _rounded(d: dict) -> dict:
    return {k: (round(v, 4) if isinstance(v, float) else [round(x, 4) for x in v] if k == "per_frame" else v)
            for k, v in d.items()}


def frame_strip(rows: list[list[np.ndarray]], frames=(0, 4, 8, 12, 16)) -> np.ndarray:
    """rows of [reference, video_with, video_without] -> one image: the reference, then the chosen frames of
    each video (with identity above, without below) for every row."""
    out = []
    for ref, with_id, without in rows:
        s = with_id.shape[1]
        pad = np.full((s, 4, 3), 255, np.uint8)
        top = [_resize(ref, s), pad] + [x for f in frames for x in (with_id[f], pad[:, :2])]
        bottom = [np.full((s, s, 3), 255, np.uint8), pad] + [x for f in frames for x in (without[f], pad[:, :2])]
        out += [np.concatenate(top, 1), np.full((2, sum(a.shape[1] for a in top), 3), 255, np.uint8),
                np.concatenate(bottom, 1), np.full((8, sum(a.shape[1] for a in top), 3), 255, np.uint8)]
    return np.concatenate(out, 0)


def run(out: Path, person: int = 0, prompts=PROMPTS, seed: int = 0, steps: int | None = None,
        overwrite: bool = False, fps: float = 8.0) -> dict:
    from . import world
    from .metrics import eval_analyzer, likeness
    from .pipeline import FACE_PACK, FILES, SAMPLING, ToyPipeline

    targets = {"video": out / "demo.mp4", "report": out / "report.json", "strip": out / "demo_strip.png"}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise SystemExit(f"demo: {', '.join(existing)} already exist; pass --overwrite or choose another --out")
    t_start = time.perf_counter()
    toy = ToyPipeline.load()
    judge = eval_analyzer(FILES["insightface"], FACE_PACK, FILES["eval_recogniser"])
    pid = world.HELDOUT_IDS[person]
    ref = world.make_reference(pid, 0).image                                             # [256, 256, 3]
    t0 = time.perf_counter()
    ident = toy.identity(ref)
    t_identity = time.perf_counter() - t0
    opts = {} if steps is None else {"steps": steps}
    rows, runs = [], []
    for prompt in prompts:
        videos, timing = {}, {}
        for name, tokens in (("with_identity", ident), ("without_identity", None)):
            t0 = time.perf_counter()
            videos[name] = toy.generate(prompt, tokens, seed=seed, **opts)
            timing[name] = round(time.perf_counter() - t0, 3)
        rows.append([ref, videos["with_identity"], videos["without_identity"]])
        runs.append({"prompt": prompt, "seconds": timing,
                     "likeness": {k: _rounded(likeness(judge, v, ref).as_dict()) for k, v in videos.items()}})
    grid = np.concatenate([np.concatenate([np.repeat(_resize(r, v.shape[1])[None], len(v), 0), v, w], 2)
                           for r, v, w in rows], 1)                                      # [F, 2S, 3S, 3]
    out.mkdir(parents=True, exist_ok=True)
    write_video(targets["video"], grid, fps=fps, overwrite=overwrite)
    from PIL import Image
    with atomic_target(targets["strip"], overwrite=overwrite, suffix=".png") as tmp:
        Image.fromarray(frame_strip(rows)).save(tmp, format="PNG")

    def pooled(key):
        vals = [r["likeness"][key] for r in runs]
        return {"mean": round(float(np.mean([v["mean"] for v in vals])), 4),
                "p10": round(float(np.mean([v["p10"] for v in vals])), 4)}
    report = {
        "models": "the toy world's trained models (toy_models/): toy Wan-layout T2V backbone, MoCA adapter trained "
                  "by train_moca.py, toy Wan-layout VAE, toy face pack, toy text encoder",
        "person": {"held_out_seed": pid, "reference": "world.make_reference(seed, 0): another pose, background "
                                                       "and lighting than any clip"},
        "sampling": dict(SAMPLING, **opts, seed=seed), "runs": runs,
        "likeness": {"with_identity": pooled("with_identity"), "without_identity": pooled("without_identity"),
                     "judge": "evaluation recogniser toy_models/eval/rec_eval.onnx (independent of the "
                              "conditioning one); frames without a detected face count as 0"},
        "seconds": {"identity": round(t_identity, 3), "total": round(time.perf_counter() - t_start, 3)},
        "outputs": {k: str(v) for k, v in targets.items()},
    }
    with atomic_target(targets["report"], overwrite=overwrite) as tmp:
        Path(tmp).write_text(json.dumps(report, indent=2))
    print(f"MoCA toy demo: held-out person {pid}; likeness with identity {report['likeness']['with_identity']}, "
          f"without {report['likeness']['without_identity']} -> {out}  ({report['seconds']['total']:.1f} s)")
    return report
