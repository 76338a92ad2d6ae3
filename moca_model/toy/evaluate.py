"""`python -m moca_model.toy eval`: how well the shipped toy models keep a held-out person, and whether
identity costs prompt adherence.

For each of the first --people held-out identities and --prompts clip specs of that identity (their
captions, hence known action / background / lighting), it renders the reference photo
(`make_reference(seed, 0)`: another pose, scene and light than any clip), generates the video with
identity and the same seed without, and measures
  - likeness to the reference under the *evaluation* recogniser (toy_models/eval/rec_eval.onnx, trained
    apart from the conditioning one): per-video mean and 10th percentile over frames (no face = 0);
  - prompt adherence: the world's classifiers' action / background / lighting vs the prompt's.
Figures are means with 95% bootstrap intervals over videos. Results per person go to --out/items/ as they
finish, so an interrupted run resumes; the summary is --out/summary.json, summary.md and strip.png (4 people).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from ..atomic import atomic_target

PROMPT_SEEDS = (1000, 1001, 1002, 1003)         # clip seeds whose captions are the prompts (never trained on:
                                               # held-out people are never rendered for training at all)


def _write_json(path: Path, obj, overwrite: bool = True):
    with atomic_target(path, overwrite=overwrite) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=1))


def evaluate_person(toy, judge, classifiers, pid: int, n_prompts: int, seed: int, steps: int | None) -> dict:
    from . import world
    from .metrics import likeness
    ref = world.make_reference(pid, 0).image
    ident = toy.identity(ref)
    out = {"person": pid, "videos": []}
    opts = {} if steps is None else {"steps": steps}
    for c in PROMPT_SEEDS[:n_prompts]:
        spec = world.clip_spec(pid, c)
        item = {"prompt": spec.caption, "action": spec.action, "background": spec.background,
                "lighting": spec.lighting}
        frames = {}
        for name, tokens in (("with_identity", ident), ("without_identity", None)):
            frames[name] = toy.generate(spec.caption, tokens, seed=seed + c, **opts)
            lk = likeness(judge, frames[name], ref)
            item[name] = {"likeness_mean": lk.mean, "likeness_p10": lk.p10, "no_face_frames": lk.n_no_face}
        pred = classifiers.classify([frames["with_identity"], frames["without_identity"]])
        for i, name in enumerate(("with_identity", "without_identity")):
            for head in ("action", "background", "lighting"):
                item[name][f"{head}_ok"] = bool(pred[i][head][0] == item[head])
        out["videos"].append(item)
    out["_frames"] = frames
    out["_reference"] = ref
    return out


def evaluate_backbone(n_prompts: int = 40, seed: int = 0, steps: int | None = None, backbone=None, log=print) -> dict:
    """Does the toy backbone follow the caption? Text-only videos (no adapter, no identity) for the captions
    of held-out clip specs (`clip_spec(HELDOUT_IDS[k], PROMPT_SEEDS[0])`, k < n_prompts), judged by the
    world's classifiers: action / background / lighting accuracy with 95% bootstrap intervals, and the
    same for chance (the most frequent label among these prompts), and the fraction of frames in which the
    toy detector finds a face (does it draw people at all? 1.0 on the world's own clips)."""
    import torch

    from ..config import MoCAConfig
    from ..dit import MoCADiT
    from ..wan_vae import load_wan_vae
    from . import world
    from .classifiers import load_classifiers
    from .metrics import bootstrap_ci, detect_frames, eval_analyzer
    from .pipeline import FACE_PACK, FILES, VAE_DTYPE, ToyPipeline
    from .text import ToyTextEncoder
    judge = eval_analyzer(FILES["insightface"], FACE_PACK, FILES["eval_recogniser"])
    model = MoCADiT(MoCAConfig.preset("toy"))
    model.load_backbone(str(backbone or FILES["backbone"]))
    toy = ToyPipeline(model.eval(), load_wan_vae(FILES["vae"]).to(VAE_DTYPE).eval(), None, ToyTextEncoder())
    classifiers = load_classifiers()
    opts = {} if steps is None else {"steps": steps}
    ok = {h: [] for h in ("action", "background", "lighting")}
    truth = {h: [] for h in ok}
    faces = []                                                     # per frame: 1.0 when a face is found
    t0 = time.perf_counter()
    for k in range(n_prompts):
        spec = world.clip_spec(world.HELDOUT_IDS[k], PROMPT_SEEDS[0])
        frames = toy.generate(spec.caption, None, seed=seed + k, **opts)
        pred = classifiers.classify(frames)
        faces += [float(d is not None) for d in detect_frames(judge, frames)]
        for h in ok:
            truth[h].append(getattr(spec, h))
            ok[h].append(float(pred[h][0] == getattr(spec, h)))
        if (k + 1) % 10 == 0:
            log(f"[toy-eval] backbone {k + 1}/{n_prompts} prompts ({time.perf_counter() - t0:.0f} s)")
    out = {"prompts": n_prompts, "seconds": round(time.perf_counter() - t0, 1)}
    for h in ok:
        mean, lo, hi = bootstrap_ci(ok[h])
        chance = max(truth[h].count(x) for x in set(truth[h])) / len(truth[h])
        out[f"{h}_accuracy"] = {"mean": round(mean, 4), "ci95": [round(lo, 4), round(hi, 4)],
                                "chance": round(chance, 4)}
    mean, lo, hi = bootstrap_ci(faces)
    out["face_frames"] = {"mean": round(mean, 4), "ci95": [round(lo, 4), round(hi, 4)], "frames": len(faces)}
    return out


def summarise(items: list[dict]) -> dict:
    from .metrics import bootstrap_ci
    videos = [v for it in items for v in it["videos"]]
    s = {"people": len(items), "videos": len(videos)}
    for name in ("with_identity", "without_identity"):
        d = {}
        for key in ("likeness_mean", "likeness_p10", "action_ok", "background_ok", "lighting_ok"):
            mean, lo, hi = bootstrap_ci([float(v[name][key]) for v in videos])
            d[key] = {"mean": round(mean, 4), "ci95": [round(lo, 4), round(hi, 4)]}
        d["videos_without_any_face"] = sum(v[name]["no_face_frames"] == 17 for v in videos)
        s[name] = d
    gap = [v["with_identity"]["likeness_mean"] - v["without_identity"]["likeness_mean"] for v in videos]
    mean, lo, hi = bootstrap_ci(gap)
    s["likeness_gain"] = {"mean": round(mean, 4), "ci95": [round(lo, 4), round(hi, 4)]}
    return s


def markdown(s: dict) -> str:
    rows = [("likeness (mean over frames)", "likeness_mean"), ("likeness (10th percentile frame)", "likeness_p10"),
            ("action accuracy", "action_ok"), ("background accuracy", "background_ok"),
            ("lighting accuracy", "lighting_ok")]
    lines = [f"{s['people']} held-out people x {s['videos'] // max(1, s['people'])} prompts = {s['videos']} videos; "
             "mean [95% bootstrap CI]", "", "| metric | with identity | without identity |", "|---|---|---|"]
    for label, key in rows:
        w, o = s["with_identity"][key], s["without_identity"][key]
        lines.append(f"| {label} | {w['mean']:.3f} [{w['ci95'][0]:.3f}, {w['ci95'][1]:.3f}] | "
                     f"{o['mean']:.3f} [{o['ci95'][0]:.3f}, {o['ci95'][1]:.3f}] |")
    g = s["likeness_gain"]
    lines += ["", f"likeness gain from identity: {g['mean']:.3f} [{g['ci95'][0]:.3f}, {g['ci95'][1]:.3f}]"]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m moca_model.toy eval", description=__doc__.split("\n")[0])
    ap.add_argument("--out", default="runs/toy/eval")
    ap.add_argument("--people", type=int, default=100)
    ap.add_argument("--prompts", type=int, default=2, choices=range(1, len(PROMPT_SEEDS) + 1))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the pipeline's 20)")
    ap.add_argument("--adapter", default=None, help="another toy adapter file to evaluate")
    ap.add_argument("--backbone", default=None, help="another toy backbone file (Wan 2.1 layout) to evaluate")
    ap.add_argument("--backbone-only", type=int, default=0, metavar="N",
                    help="only check that the backbone follows N held-out captions (text only, no adapter needed)")
    a = ap.parse_args(argv)
    import torch
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    if a.backbone_only:
        r = evaluate_backbone(a.backbone_only, a.seed, a.steps, backbone=a.backbone)
        Path(a.out).mkdir(parents=True, exist_ok=True)
        _write_json(Path(a.out) / "backbone.json", r)
        print(json.dumps(r, indent=1))
        return 0
    from . import world
    from .classifiers import load_classifiers
    from .demo import frame_strip
    from .metrics import eval_analyzer
    from .pipeline import FACE_PACK, FILES, ToyPipeline
    out = Path(a.out)
    (out / "items").mkdir(parents=True, exist_ok=True)
    toy = ToyPipeline.load(adapter=a.adapter, backbone=a.backbone)
    judge = eval_analyzer(FILES["insightface"], FACE_PACK, FILES["eval_recogniser"])
    classifiers = load_classifiers()
    items, strip_rows, t0 = [], [], time.perf_counter()
    for k in range(a.people):
        pid = world.HELDOUT_IDS[k]
        path = out / "items" / f"{pid}.json"
        if path.is_file() and k >= 4:
            items.append(json.loads(path.read_text()))
            continue
        it = evaluate_person(toy, judge, classifiers, pid, a.prompts, a.seed, a.steps)
        if k < 4:
            f = it["_frames"]
            strip_rows.append([it["_reference"], f["with_identity"], f["without_identity"]])
        it = {k2: v for k2, v in it.items() if not k2.startswith("_")}
        _write_json(path, it)
        items.append(it)
        if (k + 1) % 10 == 0:
            print(f"[toy-eval] {k + 1}/{a.people} people ({time.perf_counter() - t0:.0f} s)")
    s = summarise(items)
    s["seconds"] = round(time.perf_counter() - t0, 1)
    s["settings"] = {"people": a.people, "prompts": a.prompts, "seed": a.seed, "adapter": a.adapter or str(FILES["adapter"]),
                     "backbone": a.backbone or str(FILES["backbone"])}
    _write_json(out / "summary.json", s)
    (out / "summary.md").write_text(markdown(s))
    if strip_rows:
        from PIL import Image
        Image.fromarray(frame_strip(strip_rows)).save(out / "strip.png")
    print(markdown(s))
    return 0
