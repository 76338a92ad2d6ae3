"""`python -m moca_model toybench --multi`: two people in one toy video (issue 12, part 4).

For the first --people pairs of held-out identities (HELDOUT_IDS[2n], HELDOUT_IDS[2n + 1]) and --prompts prompts
each: the caption of the world's two-person clip `make_two_person_clip((a, b), PROMPT_SEEDS[k])`, each person's
reference photo `make_reference(p, 0)`, a fixed sampling seed per video (`toybench.video_seed`, the same for every
adapter and binding). Each adapter generates every video in each binding of `BINDINGS`:
  regions  - identity regions bound left to right (no masks; the world puts person a on the left, b on the right)
  masks    - identity regions from the head masks of the world's own clip of that prompt, per frame (an oracle
             layout: what a user's masks give when the people stand where the masks say)
  concat   - the naive baseline: both identities' tokens concatenated, attended everywhere, no regions
  alone    - the control: one video per person with only that person's identity bound (its head mask, as in
             masks; the other person drawn without identity), same caption and seed, scored on the bound
             person's face. No second identity is there to interfere, so a binding of both people that does
             as well adds no swaps of its own. (A model trained with every person bound has never seen one
             person bound and one not, so the control is no strict floor: it can do worse than both bound.)
Per video, under the *evaluation* recogniser (`multi_video_metrics`, `moca_model.face.multi_likeness`; faces are
assigned by the layout: each person takes the largest face on its side of the frame, split midway between the
people's head masks in the world clip, `layout_halves`): each person's likeness to its own reference and the
highest to the other's, their difference per person (`separation`), the swap rate (faces more similar to the other reference),
the blend rate (own and other reference both at or above --blend-threshold at once) and the share of missing
faces; 95% bootstrap intervals over videos.
The single-identity numbers are `toybench` without --multi: one identity takes the unchanged single-identity path
(bit-identical to before identity regions existed: tests/test_core_regions.py).
Per-video results go to `<out>/eval_multi/<label>-<binding>-<digest>/` (resumable); outputs `<out>/results_multi.json`,
`results_multi.md` and `results_multi.png` (a strip: per binding, frames of the first video).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

BINDINGS = ("regions", "masks", "concat", "alone")
BLEND_THRESHOLD = 0.4
MULTI_MEANS = ("own", "cross", "separation", "swap_rate", "blend_rate", "missing")


def two_person_item(n: int, k: int) -> dict:
    """Pair n's k-th prompt: people, caption, reference photos and the world clip's per-person head masks."""
    from . import world
    from .toybench import PROMPT_SEEDS
    a, b = world.HELDOUT_IDS[2 * n], world.HELDOUT_IDS[2 * n + 1]
    clip = world.make_two_person_clip((a, b), PROMPT_SEEDS[k])
    masks = [np.stack([f[p].mask for f in clip.faces]) for p in (0, 1)]          # [F, H, W] bool each
    return {"people": [int(a), int(b)], "prompt_index": k, "caption": clip.caption,
            "references": [world.make_reference(p, 0).image for p in (a, b)], "masks": masks,
            "world_frames": clip.frames}


def layout_halves(masks: list) -> list:
    """Where each person's face should be, per frame: the frame split midway between the people's head masks
    (`regions.left_to_right_regions` frame by frame), each person the part on its side -> [F, H, W] float per
    person. Faces are assigned by it (a person takes the largest face whose centre lies in its part), so a lone
    face on the right counts as the right-hand person's, where left-to-right order gave it to the left one."""
    import torch

    from ..regions import left_to_right_regions
    m = torch.from_numpy(np.stack(masks)).float()                                  # [P, F, H, W]
    parts = torch.cat([left_to_right_regions(m[:, f:f + 1]) for f in range(m.shape[1])], dim=1)
    return [p.numpy() for p in parts]


def binding(tokens: list, item: dict, mode: str, person: int = 0):
    """The RegionalIdentity of one binding: tokens [1, M, D_id] per person (item's order); "alone" binds only
    `person`."""
    import torch

    from ..regions import RegionalIdentity
    if mode == "regions":
        return RegionalIdentity(tokens)
    if mode == "masks":
        return RegionalIdentity(tokens, masks=[torch.from_numpy(m).float() for m in item["masks"]])
    if mode == "concat":
        return RegionalIdentity(tokens, mode="concat")
    if mode == "alone":
        return RegionalIdentity([tokens[person]], masks=[torch.from_numpy(item["masks"][person]).float()])
    raise ValueError(f"toybench --multi: binding {mode!r} is not one of {BINDINGS}")


def video_similarities(judge, frames, references, masks=None):
    """sims [F, P, P] of one video (`face.multi_likeness`): frames [F, H, W, 3] uint8; references: each person's
    photo (left to right); faces are assigned left to right, but a person given a mask ([F, H, W] or None per
    person) takes the face whose centre lies in it."""
    import torch

    from ..face.multi_likeness import face_similarities
    from .metrics import reference_embedding
    refs = [reference_embedding(judge, r) for r in references]
    return face_similarities(judge, torch.from_numpy(np.ascontiguousarray(frames)).float() / 255, refs, masks)


def multi_video_metrics(judge, frames, references, threshold: float = BLEND_THRESHOLD, sims=None) -> dict:
    """Two-person metrics of one video: frames [F, H, W, 3]; references: each person's photo (left to right).
    sims: the similarities when already measured (then frames is not read)."""
    from ..face.multi_likeness import multi_scores
    if sims is None:
        sims = video_similarities(judge, frames, references)
    s = multi_scores(sims, threshold)
    own = [v for v in s["own"] if v is not None]
    cross = [v for v in s["cross"] if v is not None]
    return {"own": float(np.mean(own)) if own else None, "cross": float(np.mean(cross)) if cross else None,
            "own_per_person": s["own"], "cross_per_person": s["cross"], "swap_rate": s["swap_rate"],
            "blend_rate": s["blend_rate"], "missing": s["missing"], "faces": s["faces"]}


def evaluate_multi(models, label: str, adapter: Path | None, pairs: int, prompts: int, seed: int, steps, out: Path,
                   mode: str, threshold: float = BLEND_THRESHOLD, log=print) -> list[dict]:
    """Per-video two-person metrics of one adapter in one binding, resumable."""
    from .toybench import _digest, _write_json, video_seed
    settings = {"pairs": pairs, "prompts": prompts, "seed": seed, "steps": steps, "preset": models.a.preset,
                "threshold": threshold, "assign": "layout halves",     # (before 2026-12-02: left-to-right order)
                **{k: Path(getattr(models.a, k)) for k in ("backbone", "vae", "eval_recogniser")}}
    digest = _digest(adapter if adapter is not None else "no_identity", settings)
    folder = out / "eval_multi" / f"{label}-{mode}-{digest}"
    rows, pipe, t0 = [], None, time.perf_counter()
    opts = {} if steps is None else {"steps": steps}
    for n in range(pairs):
        tokens = None
        for k in range(prompts):
            path = folder / f"{n}_{k}.json"
            if path.is_file():
                rows.append(json.loads(path.read_text()))
                continue
            pipe = pipe or models.pipeline(adapter)
            item = two_person_item(n, k)
            if adapter is not None:
                tokens = tokens or [pipe.identity(r) for r in item["references"]]
            vseed = video_seed(seed, n, k)
            layout = layout_halves(item["masks"])
            if mode == "alone":               # one video per person, each scored on its bound person's face
                sims = None
                for p in range(len(tokens)):
                    frames = pipe.generate(item["caption"], binding(tokens, item, mode, p), seed=vseed, **opts)
                    one = video_similarities(models.judge, frames, item["references"], layout)   # [F, P, P]
                    sims = one if sims is None else sims
                    sims[:, p] = one[:, p]
            else:
                ident = binding(tokens, item, mode) if adapter is not None else None
                frames = pipe.generate(item["caption"], ident, seed=vseed, **opts)
                sims = video_similarities(models.judge, frames, item["references"], layout)
            row = {"people": item["people"], "prompt_index": k, "caption": item["caption"], "binding": mode,
                   **multi_video_metrics(models.judge, None, item["references"], threshold, sims=sims)}
            _write_json(path, row)
            rows.append(row)
        if (n + 1) % 10 == 0:
            log(f"[toybench --multi] {label} ({mode}): {n + 1}/{pairs} pairs ({time.perf_counter() - t0:.0f} s)")
    return rows


def separation(row: dict) -> float | None:
    """Own likeness minus the other's, per person where both were measured, averaged over people: > 0 when the
    faces look more like their own reference than like the other one (a swap-free video), ~0 when the identities
    do not reach their own faces. Unlike the swap rate it weighs by how much, so it resolves small toy likenesses."""
    own, cross = row.get("own_per_person"), row.get("cross_per_person")
    if own is None or cross is None:                               # a row without the per-person lists
        return None if row.get("own") is None or row.get("cross") is None else row["own"] - row["cross"]
    d = [o - c for o, c in zip(own, cross) if o is not None and c is not None]
    return float(np.mean(d)) if d else None


def paired_multi(a: list[dict], b: list[dict], key: str) -> dict:
    """Mean of a - b of `key` over the videos both measured (same pair, prompt and seed), with its bootstrap
    interval: e.g. a binding's swap rate minus the alone control's on the same videos."""
    from .metrics import bootstrap_ci
    from .toybench import _finite

    def value(r):
        return separation(r) if key == "separation" else r.get(key)
    bb = {(tuple(r["people"]), r["prompt_index"]): value(r) for r in b}
    d = [value(r) - bb[(tuple(r["people"]), r["prompt_index"])] for r in a
         if value(r) is not None and bb.get((tuple(r["people"]), r["prompt_index"])) is not None]
    mean, lo, hi = _finite(bootstrap_ci(d))
    return {"mean": mean, "ci95": [lo, hi], "n": len(d)}


def summarise_multi(rows: list[dict]) -> dict:
    from .toybench import summarise
    return summarise([{**r, "separation": separation(r)} for r in rows], MULTI_MEANS)


def markdown_multi(res: dict) -> str:
    """The results table: one row per adapter and binding."""
    def ci(d):
        if d["mean"] is None:
            return "n/a"
        return f"{d['mean']:.3f} [{d['ci95'][0]:.3f}, {d['ci95'][1]:.3f}]"
    lines = [f"Two people per video: {res['pairs']} pairs of held-out people x {res['prompts']} prompt(s); evaluation "
             f"recogniser; blend threshold {res['threshold']}.", "",
             "| adapter | binding | own likeness | other's likeness | own minus other | swap rate | blend rate | "
             "faces missing |", "|---|---|---|---|---|---|---|---|"]
    for r in res["rows"]:
        s = r["summary"]
        lines.append(f"| {r['label']} | {r['binding']} | {ci(s['own'])} | {ci(s['cross'])} | {ci(s['separation'])} | "
                     f"{ci(s['swap_rate'])} | {ci(s['blend_rate'])} | {ci(s['missing'])} |")
    paired = [r for r in res["rows"] if r.get("minus_alone")]
    if paired:
        lines += ["", "Against the alone control (one person bound at a time), paired over the same videos:", "",
                  "| adapter | binding | swap rate minus alone | own minus other, minus alone |", "|---|---|---|---|"]
        for r in paired:
            m = r["minus_alone"]
            lines.append(f"| {r['label']} | {r['binding']} | {ci(m['swap_rate'])} | {ci(m['separation'])} |")
    return "\n".join(lines) + "\n"


def strip(frames_by_row: list[tuple[str, np.ndarray]], path: Path, every: int = 4):
    """A PNG strip: one row per (label, frames [F, H, W, 3]), every `every`-th frame, label on the left."""
    from PIL import Image, ImageDraw

    from ..atomic import atomic_target
    rows = []
    for label, frames in frames_by_row:
        picked = frames[::every]
        row = np.concatenate(list(picked), axis=1)
        pad = Image.new("RGB", (160, row.shape[0]), (20, 20, 24))
        # adapter and binding on lines of their own, long file names wrapped at 24 characters
        lines = [part[i:i + 24] for part in label.split(" / ") for i in range(0, len(part), 24)]
        for i, text in enumerate(lines):
            ImageDraw.Draw(pad).text((6, row.shape[0] // 2 - 7 * len(lines) + 14 * i), text, fill=(230, 230, 230))
        rows.append(np.concatenate([np.asarray(pad), row], axis=1))
    width = max(r.shape[1] for r in rows)
    img = np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0))) for r in rows], axis=0)
    with atomic_target(path, overwrite=True) as tmp:
        Image.fromarray(img).save(tmp, format="PNG")
    return path


def run_multi(a, chosen, out: Path, log=print) -> dict:
    """--multi: every chosen adapter in every binding (a.bindings), summary files, the strip (None for a worker
    of --procs N, which only writes per-video rows)."""
    from .toybench import Models, _write_json, video_seed
    models = Models(a)
    pairs, prompts = a.people, a.prompts
    res = {"pairs": pairs, "prompts": prompts, "threshold": a.blend_threshold, "seed": a.seed, "rows": []}
    for label, adapter in chosen:
        got = {}
        for mode in (a.bindings if adapter is not None else ("none",)):
            got[mode] = evaluate_multi(models, label, adapter, pairs, prompts, a.seed, a.steps, out, mode,
                                       a.blend_threshold, log)
            res["rows"].append({"label": label, "binding": mode, "summary": summarise_multi(got[mode])})
        if "alone" in got:                    # each binding against the control, paired over the same videos
            for r in res["rows"]:
                if r["label"] == label and r["binding"] != "alone":
                    r["minus_alone"] = {k: paired_multi(got[r["binding"]], got["alone"], k)
                                        for k in ("swap_rate", "separation")}
    if a.no_summary:                          # a worker of --procs N: the per-video rows are on disk
        return None
    suffix = "_quick" if a.quick else ""
    _write_json(out / f"results_multi{suffix}.json", res)
    from ..atomic import atomic_target
    with atomic_target(out / f"results_multi{suffix}.md", overwrite=True) as tmp:
        Path(tmp).write_text(markdown_multi(res))
    if not a.no_strip:                        # regenerates the first video per adapter and binding (a few s each)
        item = two_person_item(0, 0)
        shown = [("world clip", item["world_frames"])]
        opts = {} if a.steps is None else {"steps": a.steps}
        for label, adapter in chosen:
            pipe = models.pipeline(adapter)
            tokens = [pipe.identity(r) for r in item["references"]] if adapter is not None else None
            for mode in (a.bindings if adapter is not None else ("none",)):
                ident = binding(tokens, item, mode) if adapter is not None else None
                frames = pipe.generate(item["caption"], ident, seed=video_seed(a.seed, 0, 0), **opts)
                shown.append((f"{label} / {'alone (left person)' if mode == 'alone' else mode}", frames))
        strip(shown, out / f"results_multi{suffix}.png")
    log(markdown_multi(res))
    return res
