"""`python -m moca_model toybench`: identity fidelity of MoCA and its variants in the toy world (issue 10).

Every adapter (a file, or a variant name of `moca_model.variants`, resolved to the file `--train-all` writes:
`<out>/<variant>/toybench_<variant>.safetensors`; `no_identity` = the backbone alone) generates the same videos:
for the first --people held-out identities and --prompts prompts each, the reference photo
`make_reference(person, 0)` and the caption of `clip_spec(person, PROMPT_SEEDS[k])`, with a fixed sampling seed
per video (`video_seed`).
Per video (`video_metrics`, also usable on its own):
  - likeness to the reference under the *evaluation* recogniser (not the conditioning one): mean, p10 and worst
    frame (no face = 0), and stability: spread (std) over frames and drift (first vs last quarter) - the
    functions of MoCA Identity Score (`moca_model.face.likeness`), so they take real frames and packs too;
  - prompt adherence: the world's classifiers' action / background / lighting against the prompt's;
  - copy-paste (beyond identity; the world knows both the reference's scene and pose and the prompt's):
    `scene_copy` = fraction of the background / lighting heads where the classifiers see the *reference's*
    label although the prompt asked for another; `pose_copy` = how much closer the faces' head pose and mouth
    are to the reference's than the world's own clip of the prompt is (`metrics.pose_copy` excess, >= 0);
    `copy_paste` = their mean (0 = follows the prompt, 1 = pastes the reference);
  - motion: `motion` = the clip's mean frame difference over that of the world's own clip of the prompt,
    capped at 1 (a frozen clip scores 0), plus the keypoint travel and the frozen flag.
Every mean comes with a 95% bootstrap interval over videos; `moca - single_xattn` likeness is also given as a
paired difference with its interval. Per-video results go to `<out>/eval/<label>-<digest>/` as they finish
(the digest covers the adapter file and the settings), so an interrupted run resumes and a changed adapter is
never mixed with old results. Outputs: `<out>/results.json`, `results.md`, `results.png` (`_quick` with --quick).

`--train-all` first trains every variant with `train_moca.py --config configs/toybench_<variant>.yaml` (same
steps, batch, data, seed and backbone) on the toy build's cache shards, skipping finished variants and resuming
interrupted ones; `--estimate` measures each variant's training step time and prints the expected CPU time.
The results also carry each variant's parameter share at Wan 2.1 1.3B and 14B, its analytic FLOPs overhead
there, and its measured forward-time overhead on the toy backbone (`moca_model.bench.forward_times`).
The last line is `moca_minus_single_xattn_likeness=<(a) minus (b) mean likeness>` when both were evaluated.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import subprocess
import sys
import time
from functools import cached_property
from pathlib import Path

import numpy as np

from ..atomic import atomic_target
from ..variants import MODEL_VARIANTS

REPO = Path(__file__).resolve().parents[2]
VARIANTS = MODEL_VARIANTS                       # (a) ... (g) in the order
LETTERS = dict(zip(VARIANTS, "abcdefg"))
TRAINED = tuple(v for v in VARIANTS if v != "no_identity")
PROMPT_SEEDS = (1000, 1001, 1002, 1003)         # as `python -m moca_model.toy eval`
OTHER_REFERENCE_SEED = 1                        # another photo of the same person (pixel-copy margin)
QUICK = {"people": 2, "prompts": 1, "steps": 8}
FULL = {"people": 100, "prompts": 2, "steps": None}
VIDEO_S = 3.0 + 2.0   # s of one core per video: generation (docs/toy_world.md: 3 s) + these metrics (measured 1.9 s)
MEANS = ("likeness_mean", "likeness_p10", "likeness_worst", "likeness_spread", "likeness_drift", "action_ok",
         "background_ok", "lighting_ok", "copy_paste", "scene_copy", "pose_copy", "pixel_copy_margin", "motion",
         "frozen", "no_face_frames")


def config_path(variant: str) -> Path:
    return REPO / "configs" / f"toybench_{variant}.yaml"


def adapter_path(out, variant: str) -> Path:
    """The file `--train-all` writes for a variant: a joint run's combined file (its fine-tuned backbone + the
    adapter, evaluated together), else the adapter-only export."""
    combined = Path(out) / variant / f"toybench_{variant}_combined.safetensors"
    return combined if combined.is_file() else Path(out) / variant / f"toybench_{variant}.safetensors"


def resolve(items, out) -> list[tuple[str, Path | None]]:
    """[(label, adapter file or None)] for variant names and file paths; unknown names are named with the fix."""
    got = []
    for it in items:
        if it == "no_identity":
            got.append((it, None))
        elif it in TRAINED:
            got.append((it, adapter_path(out, it)))
        elif Path(it).suffix == ".safetensors" or Path(it).is_file():
            got.append((Path(it).stem, Path(it)))
        else:
            raise SystemExit(f"toybench: {it!r} is neither a variant ({', '.join(VARIANTS)}) nor an adapter file")
    missing = [f"{label}: {p}" for label, p in got if p is not None and not p.is_file()]
    if missing:
        raise SystemExit("toybench: adapter file(s) missing: " + "; ".join(missing) +
                         ". Train them with `python -m moca_model toybench --train-all` (resumable), or pass files.")
    return got


def _write_json(path: Path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_target(path, overwrite=True) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=1, default=str))


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for p in parts:
        if isinstance(p, Path) and p.is_file():
            h.update(p.read_bytes())
        else:
            h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:12]


# ---------------------------------------------------------------------------------------------- per video
def video_seed(seed: int, person_index: int, k: int) -> int:
    """The sampling seed of person n's k-th prompt: the same for every variant (paired comparisons)."""
    return seed + 10_000 * k + person_index


def world_item(pid: int, k: int) -> dict:
    """What the world knows about one benchmark video: the reference photo and its face, its scene, another
    photo of the person, the prompt, and the world's own clip of that prompt (the baseline for pose and motion)."""
    from . import world
    from .metrics import motion
    ref = world.make_reference(pid, 0)
    spec = world.clip_spec(pid, PROMPT_SEEDS[k])
    clip = world.make_clip(pid, PROMPT_SEEDS[k])
    return {"person": pid, "prompt_index": k, "reference": ref.image,
            "reference_kps": ref.faces[0].kps, "reference_scene": world.reference_scene(pid, 0),
            "other_reference": world.make_reference(pid, OTHER_REFERENCE_SEED).image,
            "caption": spec.caption, "prompt": {"action": spec.action, "background": spec.background,
                                                "lighting": spec.lighting},
            "world_kps": [f[0].kps for f in clip.faces], "world_frame_diff": motion(clip.frames)["frame_diff"]}


def video_metrics(judge, classifiers, frames, item: dict) -> dict:
    """Every benchmark metric of one video ``frames`` [T, H, W, 3] for ``item`` (see `world_item`)."""
    from . import metrics as M
    dets = M.detect_frames(judge, frames)                                  # the largest face per frame, once
    lik = M.likeness(judge, frames, item["reference"], detections=dets)
    mot = M.motion(frames, dets)
    pose = M.pose_copy(dets, item["reference_kps"], baseline_kps=item["world_kps"])
    pix = M.pixel_copy(judge, frames, item["reference"], dets, other_reference=item["other_reference"])
    cls = classifiers.classify(frames)
    scene = M.toy_copy_paste(cls, item["reference_scene"], item["prompt"])
    copied = [float(scene[f"{h}_copied"]) for h in ("background", "lighting") if scene.get(f"{h}_copied") is not None]
    scene_copy = float(np.mean(copied)) if copied else None
    pose_copy = max(0.0, pose["excess"]) if dets and any(d is not None for d in dets) else None
    parts = [v for v in (scene_copy, pose_copy) if v is not None]
    base_diff = item["world_frame_diff"]
    return {
        "likeness_mean": lik.mean, "likeness_p10": lik.p10, "likeness_worst": lik.worst,
        "likeness_spread": lik.stability, "likeness_drift": lik.drift, "likeness_per_frame": lik.per_frame,
        "no_face_frames": lik.n_no_face,
        **{f"{h}_ok": bool(cls[h][0] == item["prompt"][h]) for h in ("action", "background", "lighting")},
        "predicted": {h: cls[h][0] for h in ("action", "background", "lighting")},
        "scene_copy": scene_copy, "pose_copy": pose_copy, "copy_paste": float(np.mean(parts)) if parts else None,
        "pixel_copy_margin": pix.get("margin_ssim"), "pixel_copy_ssim_max": pix["ssim_max"],
        "motion": min(1.0, mot["frame_diff"] / base_diff) if base_diff > 0 else None,
        "frame_diff": mot["frame_diff"], "kps_travel": mot["kps_travel"], "frozen": bool(mot["frozen"]),
    }


# ---------------------------------------------------------------------------------------------- models
class Models:
    """The frozen parts every variant shares: backbone, VAE, conditioning pack, judge, classifiers - each loaded
    when first needed (a run whose videos are all done loads none of them)."""

    def __init__(self, a):
        for what, flag, p in (("toy backbone", "backbone", a.backbone), ("toy VAE", "vae", a.vae),
                              ("evaluation recogniser", "eval-recogniser", a.eval_recogniser),
                              ("toy classifiers", "classifiers", a.classifiers)):
            if not Path(p).is_file():
                raise SystemExit(f"toybench: the {what} {p} is missing; the toy models come from `make toy` "
                                 f"(python -m moca_model.toy build), or pass --{flag}")
        self.a = a
        self.own_backbone = False           # True while a combined file's backbone replaces --backbone

    @cached_property
    def model(self):
        from ..config import MoCAConfig
        from ..dit import MoCADiT
        return MoCADiT(MoCAConfig.preset(self.a.preset)).load_backbone(str(self.a.backbone))

    @cached_property
    def vae(self):
        import torch

        from ..wan_vae import load_wan_vae
        from .pipeline import VAE_DTYPE
        return load_wan_vae(self.a.vae).to(VAE_DTYPE if self.a.vae_bf16 else torch.float32).eval()

    @cached_property
    def analyzer(self):
        from ..face import FaceAnalyzer
        return FaceAnalyzer.load(str(self.a.face_models), pack=self.a.face_pack, provider="cpu")

    @cached_property
    def judge(self):
        from .metrics import eval_analyzer
        return eval_analyzer(self.a.face_models, self.a.face_pack, self.a.eval_recogniser)

    @cached_property
    def classifiers(self):
        from .classifiers import load_classifiers
        return load_classifiers(self.a.classifiers)

    def pipeline(self, adapter: Path | None):
        """A ToyPipeline with this adapter (None: the backbone alone). A combined file (a joint run's export)
        brings its own fine-tuned backbone; an adapter-only file and None run on --backbone."""
        from ..checkpoint import read_moca
        from .pipeline import ToyPipeline, check_adapter_recognizer
        from .text import ToyTextEncoder
        f = read_moca(adapter) if adapter is not None else None
        own = f is not None and f.kind == "combined"
        if own:
            self.model.load_backbone(f.backbone_state)
        elif self.own_backbone:                            # back to the shared backbone after a combined file
            self.model.load_backbone(str(self.a.backbone))
        self.own_backbone = own
        if adapter is not None:
            self.model.load_adapter(str(adapter))          # rebuilds the adapter for a variant's config
            check_adapter_recognizer(adapter, self.analyzer)
        return ToyPipeline(self.model.eval(), self.vae, self.analyzer, ToyTextEncoder())


def evaluate(models: Models, label: str, adapter: Path | None, people: int, prompts: int, seed: int,
             steps: int | None, out: Path, log=print) -> list[dict]:
    """Per-video metrics of one adapter, resumable (see the module docstring)."""
    from . import world
    settings = {"people": people, "prompts": prompts, "seed": seed, "steps": steps, "preset": models.a.preset,
                **{k: Path(getattr(models.a, k)) for k in ("backbone", "vae", "eval_recogniser", "classifiers")}}
    folder = out / "eval" / f"{label}-{_digest(adapter if adapter is not None else 'no_identity', settings)}"
    rows, pipe, t0 = [], None, time.perf_counter()
    opts = {} if steps is None else {"steps": steps}
    for n in range(people):
        pid, ident = world.HELDOUT_IDS[n], None
        for k in range(prompts):
            path = folder / f"{pid}_{k}.json"
            if path.is_file():
                rows.append(json.loads(path.read_text()))
                continue
            pipe = pipe or models.pipeline(adapter)
            item = world_item(pid, k)
            if adapter is not None and ident is None:
                ident = pipe.identity(item["reference"])                   # [1, M, D_id], once per person
            frames = pipe.generate(item["caption"], ident, seed=video_seed(seed, n, k), **opts)
            row = {"person": pid, "prompt_index": k, "caption": item["caption"],
                   **video_metrics(models.judge, models.classifiers, frames, item)}
            _write_json(path, row)
            rows.append(row)
        if (n + 1) % 10 == 0:
            log(f"[toybench] {label}: {n + 1}/{people} people ({time.perf_counter() - t0:.0f} s)")
    return rows


# ---------------------------------------------------------------------------------------------- summary
def summarise(rows: list[dict], keys=MEANS) -> dict:
    """Mean, 95% bootstrap interval and count of each of `keys` over the rows that have it."""
    from .metrics import bootstrap_ci
    s = {"videos": len(rows)}
    for key in keys:
        mean, lo, hi = _finite(bootstrap_ci([None if r.get(key) is None else float(r[key]) for r in rows]))
        s[key] = {"mean": mean, "ci95": [lo, hi], "n": sum(r.get(key) is not None for r in rows)}
    return s


def _finite(values) -> list:
    """NaN (no value to average) -> None, so the JSON stays strict."""
    return [None if v is None or math.isnan(v) else v for v in values]


def paired_difference(a: list[dict], b: list[dict], key: str = "likeness_mean") -> dict:
    """Mean of a - b over the videos both have (same person, prompt and seed), with its bootstrap interval."""
    from .metrics import bootstrap_ci
    bb = {(r["person"], r["prompt_index"]): r[key] for r in b}
    d = [r[key] - bb[(r["person"], r["prompt_index"])] for r in a if (r["person"], r["prompt_index"]) in bb]
    mean, lo, hi = _finite(bootstrap_ci(d))
    return {"mean": mean, "ci95": [lo, hi], "n": len(d)}


# where the forward-time overhead is measured: a random `small`-preset model (4 blocks of width 512, MoCA width
# 256: Wan 2.1 1.3B's ratio) at 6 latent frames of 30 x 52 (21 frames 240 x 416, 2,340 tokens). At the toy clip's
# size (5 x 16 x 16 latents, 320 tokens) per-operation overhead dominates and the ratios say little about Wan.
COST_PRESET, COST_T, COST_HW, COST_REPS = "small", 6, (30, 52), 5


def costs(variants, preset: str = COST_PRESET, reps: int = COST_REPS, hw=COST_HW, T: int = COST_T) -> dict:
    """Per variant: adapter share at Wan 2.1 1.3B / 14B, analytic FLOPs overhead there (81 frames 480x832), and
    the measured forward-time overhead (identity vs none, CPU) on a random `preset` model at T x hw latents."""
    import torch

    from ..adapter import live_adapter
    from ..bench import forward_times
    from ..dit import MoCADiT
    from ..flops import overhead
    from ..variants import adapter_share, variant_config
    out = {}
    for v in variants:
        if v not in VARIANTS:
            continue
        if v == "no_identity":
            out[v] = {"share_wan2.1-1.3b": 0.0, "share_wan2.1-14b": 0.0, "adapter_M_wan2.1-1.3b": 0.0,
                      "adapter_M_wan2.1-14b": 0.0, "flops_overhead_wan2.1-1.3b": 0.0, "forward_time_ratio": 1.0}
            continue
        r = {}
        for p in ("wan2.1-1.3b", "wan2.1-14b"):
            sh = adapter_share(variant_config(v, p))
            r[f"share_{p}"], r[f"adapter_M_{p}"] = sh["share"], sh["adapter"] / 1e6
        r["flops_overhead_wan2.1-1.3b"] = overhead(variant_config(v, "wan2.1-1.3b"))["ratio"]
        torch.manual_seed(0)
        model = live_adapter(MoCADiT(variant_config(v, preset)).eval())
        ft = forward_times(model, T, hw, reps, text_len=32)
        r.update(forward_time_ratio=ft["ratio"], forward_base_s=ft["base_s"], forward_moca_s=ft["moca_s"])
        out[v] = r
    return out


def markdown(res: dict) -> str:
    def ci(d, pct=False):
        if d is None or d["mean"] is None:
            return "-"
        f = 100.0 if pct else 1.0
        return f"{f * d['mean']:.3f} [{f * d['ci95'][0]:.3f}, {f * d['ci95'][1]:.3f}]"
    st = res["settings"]
    lines = [f"{st['people']} held-out people x {st['prompts']} prompts, seed {st['seed']}, "
             f"{st['steps'] or 'default'} sampling steps; mean [95% bootstrap CI] over videos", "",
             "| variant | likeness | p10 | worst frame | spread | drift | action | background | copy-paste | "
             "motion |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label, s in res["variants"].items():
        name = f"({LETTERS[label]}) {label}" if label in LETTERS else label
        lines.append(f"| {name} | " + " | ".join(ci(s[k]) for k in (
            "likeness_mean", "likeness_p10", "likeness_worst", "likeness_spread", "likeness_drift", "action_ok",
            "background_ok", "copy_paste", "motion")) + " |")
    if res.get("paired"):
        refs = [r for r in ("moca", "no_identity") if r in res["variants"]]
        lines += ["", "Likeness differences, paired over the same videos (person, prompt, seed):", "",
                  "| variant | " + " | ".join(f"minus ({LETTERS[r]}) {r}" for r in refs) + " |",
                  "|---|" + "---|" * len(refs)]
        for label in res["variants"]:
            name = f"({LETTERS[label]}) {label}" if label in LETTERS else label
            lines.append(f"| {name} | " + " | ".join(ci(res["paired"].get(label, {}).get(r)) for r in refs) + " |")
    if res.get("moca_minus_single_xattn_likeness"):
        lines += ["", f"MoCA minus single cross-attention, paired likeness: {ci(res['moca_minus_single_xattn_likeness'])}"]
    if res.get("costs"):
        lines += ["", "| variant | adapter at 1.3B | share | adapter at 14B | share | FLOPs +% at 1.3B (81x480x832) | "
                  f"forward time x ({COST_PRESET}, {COST_T}x{COST_HW[0]}x{COST_HW[1]} latents, CPU) |",
                  "|---|---|---|---|---|---|---|"]
        for v, c in res["costs"].items():
            lines.append(f"| {v} | {c['adapter_M_wan2.1-1.3b']:.1f}M | {100 * c['share_wan2.1-1.3b']:.2f}% | "
                         f"{c['adapter_M_wan2.1-14b']:.0f}M | {100 * c['share_wan2.1-14b']:.2f}% | "
                         f"{100 * c['flops_overhead_wan2.1-1.3b']:.2f} | {c['forward_time_ratio']:.3f} |")
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path, width: int = 900):
    """Bars with 95% intervals for likeness, copy-paste and motion per variant (PIL only)."""
    from PIL import Image, ImageDraw
    keys = (("likeness_mean", "likeness"), ("copy_paste", "copy-paste"), ("motion", "motion"))
    labels = list(res["variants"])
    cell, top, left = 28, 30, 140
    panel = (width - left) // len(keys)
    img = Image.new("RGB", (width, top + cell * len(labels) + 20), "white")
    d = ImageDraw.Draw(img)
    for i, label in enumerate(labels):
        d.text((4, top + i * cell + 8), label[:20], fill="black")
    for j, (key, title) in enumerate(keys):
        x0 = left + j * panel
        # each panel's axis ends at the first of 0.05, 0.1, 0.2, 0.5, 1 past its largest interval end: toy
        # likeness is a few hundredths, and on a 0..1 axis its bars would be a few pixels wide
        top_v = max([c for lab in labels for c in (res["variants"][lab][key]["ci95"] or []) if c is not None] + [0.0])
        end = next((e for e in (0.05, 0.1, 0.2, 0.5) if top_v <= e), 1.0)
        d.text((x0 + 4, 8), f"{title} (0..{end:g})", fill="black")
        d.line([(x0, top), (x0, top + cell * len(labels))], fill="gray")
        scale = (panel - 20) / end
        for i, label in enumerate(labels):
            s = res["variants"][label][key]
            if s["mean"] is None:
                continue
            y = top + i * cell
            v = min(1.0, max(0.0, s["mean"]))
            d.rectangle([x0, y + 6, x0 + int(v * scale), y + cell - 6], fill=(70, 130, 180))
            lo, hi = (min(1.0, max(0.0, c)) for c in s["ci95"])
            d.line([(x0 + int(lo * scale), y + cell // 2), (x0 + int(hi * scale), y + cell // 2)], fill="black", width=2)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    img.save(tmp)
    tmp.replace(path)


# ---------------------------------------------------------------------------------------------- training
def train_args(variant: str, out: Path, a) -> list[str]:
    """`train_moca.py` arguments of one variant: its config with this run's folders and files."""
    cache = Path(a.cache)
    sets = [f"out_dir={out / variant}", f'data.shards=["{cache}"]',
            f"objective.empty_text={cache / 'empty_text.safetensors'}", f"model.backbone={a.train_backbone}",
            f"objective.lvpl.vae={a.vae}", "logging.progress=false"]
    if a.train_steps:
        sets.append(f"optim.max_steps={a.train_steps}")
    return ["--config", str(config_path(variant)), "--resume", "--device", "cpu", "--set", *sets]


def train_all(a, out: Path, variants=TRAINED, log=print) -> dict:
    """Train every variant (of `variants`) not finished yet (a finished one has its exported adapter and a stamp of the same
    settings), `--procs` at a time, each resuming its own checkpoints. Returns {variant: seconds}."""
    if not (Path(a.cache) / "empty_text.safetensors").is_file():
        raise SystemExit(f"toybench --train-all: no toy cache shards in {a.cache}; make them with "
                         "`python -m moca_model.toy build --stages cache` (or pass --cache)")
    for what, flag, p in (("text-only backbone", "train-backbone", a.train_backbone), ("VAE", "vae", a.vae)):
        if not Path(p).is_file():
            raise SystemExit(f"toybench --train-all: the toy {what} {p} is missing (`make toy` writes it, or "
                             f"pass --{flag})")
    todo, done = [], {}
    for v in variants:
        stamp = out / v / "toybench_stamp.json"
        want = _digest(train_args(v, out, a), config_path(v), Path(a.train_backbone))
        if adapter_path(out, v).is_file() and stamp.is_file() and json.loads(stamp.read_text())["digest"] == want:
            log(f"[toybench] {v}: trained (up to date)")
            continue
        todo.append((v, want))
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    running = []
    while todo or running:
        while todo and len(running) < max(1, a.procs):
            v, want = todo.pop(0)
            (out / v).mkdir(parents=True, exist_ok=True)
            logf = open(out / v / "train.log", "a")
            log(f"[toybench] {v}: training (log {out / v / 'train.log'})")
            cmd = [sys.executable, str(REPO / "train_moca.py"), *train_args(v, out, a)]
            running.append((v, want, subprocess.Popen(cmd, env=env, stdout=logf, stderr=subprocess.STDOUT),
                            time.perf_counter(), logf))
        time.sleep(1.0)
        for entry in list(running):
            v, want, proc, t0, logf = entry
            if proc.poll() is None:
                continue
            running.remove(entry)
            logf.close()
            if proc.returncode != 0 or not adapter_path(out, v).is_file():
                raise SystemExit(f"[toybench] {v}: training failed (exit {proc.returncode}); see {out / v / 'train.log'}"
                                 "; run the same command again to resume")
            _write_json(out / v / "toybench_stamp.json", {"digest": want, "seconds": time.perf_counter() - t0})
            done[v] = time.perf_counter() - t0
            log(f"[toybench] {v}: trained in {done[v]:.0f} s")
    return done


def step_seconds(variants=TRAINED, steps: int = 2, batch: int | None = None, log=print) -> dict:
    """Median seconds per optimiser step of each variant's config on random weights and synthetic shards of
    the toy clip's shapes (5 x 16 x 16 latents, 32 text tokens, 16 x 16 face latents), LVPL on a random
    extractor of the toy VAE's width: the basis of the CPU-time estimate."""
    import tempfile

    from ..training.config import TrainConfig
    from ..training.synthetic import make_synthetic_shards
    from ..training.trainer import Trainer
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        cfg0 = TrainConfig.load(config_path(TRAINED[0]))
        b = batch or cfg0.data.batch_size
        make_synthetic_shards(f"{tmp}/data", num_samples=b, per_shard=b, frames=5, height=16, width=16,
                              text_tokens=32, face_size=16)
        for v in variants:
            cfg = TrainConfig.load(config_path(v)).with_overrides([
                f"out_dir={tmp}/{v}", f'data.shards=["{tmp}/data"]', "data.num_workers=0", f"data.batch_size={b}",
                "model.backbone=null", "objective.empty_text=null", "objective.lvpl.vae=null",
                "objective.lvpl.vae_dim=8", "logging.every=0", "logging.progress=false", "checkpoint.every=0",
                f"optim.max_steps={steps + 1}"])
            tr = Trainer(cfg, device="cpu", log=lambda *x: None)
            tr.train_step()
            times = []
            for _ in range(steps):
                t0 = time.perf_counter()
                tr.train_step()
                times.append(time.perf_counter() - t0)
            out[v] = {"sec_per_step": sorted(times)[len(times) // 2], "batch": b, "max_steps": cfg0.optim.max_steps}
            log(f"[toybench] {v}: {out[v]['sec_per_step']:.2f} s per step (batch {b})")
    return out


def estimate(steps: dict, people: int, prompts: int, evaluated: int = len(VARIANTS)) -> dict:
    """Expected CPU time (one core) of --train-all: training (measured s/step x max_steps per variant) plus the
    evaluation (videos x VIDEO_S)."""
    train = {v: s["sec_per_step"] * s["max_steps"] for v, s in steps.items()}
    ev = people * prompts * evaluated * VIDEO_S
    return {"train_s": train, "eval_s": ev, "total_s": sum(train.values()) + ev}


def argv_of(a) -> list[str]:
    """The evaluation settings of parsed arguments `a`, as command-line flags (for worker processes)."""
    out = ["--out", str(a.out), "--seed", str(a.seed), "--preset", a.preset, "--backbone", str(a.backbone),
           "--vae", str(a.vae), "--face-models", str(a.face_models), "--face-pack", a.face_pack,
           "--eval-recogniser", str(a.eval_recogniser), "--classifiers", str(a.classifiers)]
    for flag, v in (("--people", a.people), ("--prompts", a.prompts), ("--steps", a.steps)):
        if v is not None:
            out += [flag, str(v)]
    return out + (["--quick"] if a.quick else []) + ([] if a.vae_bf16 else ["--vae-fp32"])


def worker_name(label: str, path) -> str:
    """How a worker process is told an adapter: a variant by its name (its worker resolves the same file and files
    its results under the same label the summary reads), any other adapter by its path."""
    return label if label in VARIANTS else str(path)


def evaluate_in_parallel(a, chosen, flags: list[str], log=print, jobs: list[list[str]] | None = None):
    """Evaluate the adapters in `a.procs` worker processes of one thread each (one adapter per worker, or one job
    of `jobs` each: extra flags per worker, e.g. one binding of --multi); their per-video results are what the
    summary then reads."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if jobs is None:
        jobs = [[worker_name(label, p)] for label, p in chosen]
    todo, running = [(" ".join(j), j) for j in jobs], []
    while todo or running:
        while todo and len(running) < a.procs:
            what, args = todo.pop(0)
            cmd = [sys.executable, "-m", "moca_model", "toybench", *args, "--no-summary", "--no-costs", *flags]
            running.append((what, subprocess.Popen(cmd, env=env)))
        time.sleep(1.0)
        for entry in list(running):
            if entry[1].poll() is not None:
                running.remove(entry)
                if entry[1].returncode != 0:
                    raise SystemExit(f"[toybench] evaluating {entry[0]} failed (exit {entry[1].returncode}); "
                                     "run the same command again to resume")
                log(f"[toybench] {entry[0]}: evaluated")


# ---------------------------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    from .build import DEFAULT_DATA, TEXT_ONLY_BACKBONE
    from .pipeline import FACE_PACK, FILES
    ap = argparse.ArgumentParser(prog="python -m moca_model toybench", description=__doc__.split("\n")[0])
    ap.add_argument("adapters", nargs="*", help=f"variant names ({', '.join(VARIANTS)}) or adapter files "
                    "(default: every variant)")
    ap.add_argument("--out", default=str(REPO / "runs" / "toybench"))
    ap.add_argument("--quick", action="store_true", help=f"a small subset ({QUICK['people']} people x "
                    f"{QUICK['prompts']} prompt, {QUICK['steps']} sampling steps)")
    ap.add_argument("--people", type=int, default=None, help=f"held-out people (default {FULL['people']})")
    ap.add_argument("--prompts", type=int, default=None, choices=range(1, len(PROMPT_SEEDS) + 1))
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default: the toy pipeline's 20)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train-all", action="store_true", help="first train every variant (or those named) that is "
                    "not trained yet (resumable), then benchmark them")
    ap.add_argument("--train-only", action="store_true", help="with --train-all: stop after training")
    ap.add_argument("--estimate", action="store_true", help="only measure each variant's training step time and "
                    "print the expected CPU time of --train-all")
    ap.add_argument("--procs", type=int, default=1, help="variants trained / evaluated at once (one thread each; "
                    "with --multi: adapter-and-binding pairs evaluated at once)")
    ap.add_argument("--train-steps", type=int, default=None, help="override every variant's optim.max_steps "
                    "(tests; the benchmark's budget is the configs')")
    ap.add_argument("--cache", default=str(REPO / "runs" / "toy" / "cache"), help="the toy build's cache shards")
    ap.add_argument("--preset", default="toy")
    ap.add_argument("--backbone", default=str(FILES["backbone"]), help="the backbone of adapter-only files and of "
                    "no_identity (default: the shipped toy backbone, which the shipped adapter was trained with); a "
                    "combined file, as --train-all's variants export, runs on its own fine-tuned backbone")
    ap.add_argument("--train-backbone", default=str(DEFAULT_DATA / TEXT_ONLY_BACKBONE),
                    help="--train-all: the text-only backbone every variant starts from and trains jointly with its "
                    "adapter (default: the one `make toy`'s backbone stage writes)")
    ap.add_argument("--vae", default=str(FILES["vae"]))
    ap.add_argument("--vae-fp32", dest="vae_bf16", action="store_false", help="run the VAE in fp32 (default bf16)")
    ap.add_argument("--face-models", default=str(FILES["insightface"]))
    ap.add_argument("--face-pack", default=FACE_PACK)
    ap.add_argument("--eval-recogniser", default=str(FILES["eval_recogniser"]))
    ap.add_argument("--classifiers", default=str(FILES["classifiers"]))
    ap.add_argument("--no-costs", action="store_true", help="skip the parameter-share and step-time section")
    ap.add_argument("--no-summary", action="store_true", help=argparse.SUPPRESS)   # a worker of --procs N
    ap.add_argument("--multi", action="store_true", help="two people per video (toybench_multi.py): per-person "
                    "likeness to its own and the other reference, swap and blend rates, for each binding; --people "
                    "counts pairs")
    ap.add_argument("--bindings", nargs="+", default=["regions", "masks", "concat", "alone"],
                    choices=["regions", "masks", "concat", "alone"], help="with --multi: identity regions left to "
                    "right, from the world clip's masks, the naive concatenation baseline, and the control of one "
                    "person bound at a time (no second identity to interfere)")
    ap.add_argument("--blend-threshold", type=float, default=0.4, help="with --multi: a face 'looks like' a "
                    "reference at or above this likeness (blend rate: both references at once)")
    ap.add_argument("--no-strip", action="store_true", help="with --multi: skip the PNG strip")
    a = ap.parse_intermixed_args(argv)
    import torch
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    base = QUICK if a.quick else FULL
    people = a.people or base["people"]
    prompts = a.prompts or base["prompts"]
    steps = a.steps if a.steps is not None else base["steps"]
    out = Path(a.out)
    if a.estimate:
        sec = step_seconds(steps=3)
        est = estimate(sec, people, prompts)
        _write_json(out / "estimate.json", {"step_seconds": sec, **est})
        per = ", ".join(f"{v} {s / 60:.0f} min" for v, s in est["train_s"].items())
        print(f"expected CPU time of --train-all (an estimate, one core): training "
              f"{sum(est['train_s'].values()) / 3600:.1f} h ({per}), "
              f"evaluation {est['eval_s'] / 3600:.1f} h ({people} people x {prompts} prompts x {len(VARIANTS)} "
              f"variants at ~{VIDEO_S:.1f} s per video); total {est['total_s'] / 3600:.1f} h")
        return 0
    if a.train_all:
        train_all(a, out, [v for v in (a.adapters or TRAINED) if v in TRAINED])
    if a.train_only:
        return 0
    if a.adapters:
        chosen = resolve(a.adapters, out)
    else:                                                   # every variant trained so far, and the backbone alone
        chosen = resolve([v for v in VARIANTS if v == "no_identity" or adapter_path(out, v).is_file()], out)
        untrained = [v for v in TRAINED if not adapter_path(out, v).is_file()]
        if untrained:
            print(f"[toybench] not trained yet in {out} (left out): {', '.join(untrained)}; "
                  "`python -m moca_model toybench --train-all` trains them")
    if a.multi:                                            # two people per video: toybench_multi.py
        from .toybench_multi import run_multi
        if a.procs > 1 and not a.no_summary:               # one worker per adapter and binding, then the summary
            flags = argv_of(a) + ["--multi", "--no-strip", "--blend-threshold", str(a.blend_threshold)]
            evaluate_in_parallel(a, chosen, flags, jobs=[
                [worker_name(label, p), "--bindings", mode] for label, p in chosen
                for mode in (a.bindings if p is not None else a.bindings[:1])])
        a.people, a.prompts, a.steps = people, prompts, steps
        if run_multi(a, chosen, out) is None:              # a worker: its per-video rows are written
            return 0
        print(f"[toybench] wrote {out / 'results_multi'}{'_quick' if a.quick else ''}.json, .md, .png")
        return 0
    t0 = time.perf_counter()
    if a.procs > 1 and len(chosen) > 1 and not a.no_summary:
        evaluate_in_parallel(a, chosen, argv_of(a))
    models = Models(a)
    results, rows = {}, {}
    for label, path in chosen:
        rows[label] = evaluate(models, label, path, people, prompts, a.seed, steps, out)
        results[label] = summarise(rows[label])
        if a.no_summary:
            continue
        print(f"[toybench] {label}: likeness {results[label]['likeness_mean']['mean']:.3f} over "
              f"{results[label]['videos']} videos")
    if a.no_summary:
        return 0
    res = {"settings": {"people": people, "prompts": prompts, "seed": a.seed, "steps": steps, "quick": a.quick,
                        "preset": a.preset, "backbone": a.backbone, "adapters": {k: str(p) for k, p in chosen}},
           "variants": results, "seconds_eval": round(time.perf_counter() - t0, 1),
           "train_seconds": {v: json.loads((out / v / "toybench_stamp.json").read_text())["seconds"]
                             for v in TRAINED if (out / v / "toybench_stamp.json").is_file()}}
    res["paired"] = {label: {r: paired_difference(rows[label], rows[r]) for r in ("moca", "no_identity")
                             if r in rows and r != label} for label in rows}
    if "moca" in rows and "single_xattn" in rows:
        res["moca_minus_single_xattn_likeness"] = paired_difference(rows["moca"], rows["single_xattn"])
    if not a.no_costs:
        res["costs"] = costs([label for label, _ in chosen])
    if (out / "estimate.json").is_file():                   # training step times measured by --estimate
        res["train_step_seconds"] = json.loads((out / "estimate.json").read_text())["step_seconds"]
    stem = "results_quick" if a.quick else "results"
    _write_json(out / f"{stem}.json", res)
    with atomic_target(out / f"{stem}.md", overwrite=True) as tmp:
        Path(tmp).write_text(markdown(res))
    plot(res, out / f"{stem}.png")
    print(markdown(res))
    print(f"[toybench] wrote {out / stem}.json, .md, .png")
    if "moca" in results and "single_xattn" in results:
        d = (results["moca"]["likeness_mean"]["mean"] or 0.0) - (results["single_xattn"]["likeness_mean"]["mean"] or 0.0)
        print(f"moca_minus_single_xattn_likeness={d:.4f}")
    else:
        print("[toybench] no moca_minus_single_xattn_likeness: it needs both moca and single_xattn evaluated")
    return 0
