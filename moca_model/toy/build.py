"""`make toy` = `python -m moca_model.toy build`: rebuild every toy model from nothing, resumably.

Stages, in order (each skipped when its outputs exist and its settings are unchanged; each training
resumes from its last checkpoint when interrupted):

    world       render the training clips, masks and references of TRAIN_IDS, and the manifest; with
                --two-person-clips N also N clips of two people (world.make_two_person_clip, a mask and a
                reference photo per person) and their manifest, manifest_two.jsonl (the multi-person work)
    face        toy face pack (SCRFD-contract detector, ArcFace-contract recogniser) + evaluation recogniser
    vae         toy Wan 2.1-layout VAE
    cache       `train_moca.py cache` on the manifest with the toy VAE, toy text encoder and toy face pack
    backbone    the toy Wan-layout T2V backbone, trained from scratch (text only)
    adapter     the MoCA adapter trained together with the backbone (configs/toy_moca_joint.yaml): the
                backbone stage's text-only model stays in <data>/backbone and the shipped backbone is the
                fine-tuned one; with --no-joint the adapter alone on the frozen text-only backbone
                (configs/toy_moca.yaml), which is then shipped as is
    classifiers action / background classifiers (prompt adherence in the evaluation)

Generated data and training runs go to --data (default runs/toy, never committed); the shipped weights
go to toy_models/ (committed). Held-out identities (world.HELDOUT_IDS) are never rendered here.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import json
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TOY_MODELS = REPO / "toy_models"
STAGES = ("world", "face", "vae", "cache", "backbone", "adapter", "classifiers")
DEFAULT_DATA = REPO / "runs" / "toy"
TEXT_ONLY_BACKBONE = Path("backbone") / "toy_wan_t2v_text_only.safetensors"   # under --data: the joint build's
                                                                             # text-only model (toybench starts there)


def paths() -> dict:
    """Where the shipped toy files live (the ComfyUI layout: the pack registers these folders)."""
    return {
        "vae": TOY_MODELS / "vae" / "toy_wan_vae.safetensors",
        "insightface": TOY_MODELS / "insightface",
        "face_pack": "toyface",
        "eval_recogniser": TOY_MODELS / "eval" / "rec_eval.onnx",
        "classifiers": TOY_MODELS / "eval" / "toy_classifiers.safetensors",
        "backbone": TOY_MODELS / "diffusion_models" / "toy_wan_t2v.safetensors",
        "adapter": TOY_MODELS / "moca" / "toy_moca_adapter.safetensors",
    }


class Stamps:
    """stage -> (settings digest, seconds): a stage is done when its stamp matches its settings."""

    def __init__(self, data: Path):
        self.path = data / "stamps.json"
        self.d = json.loads(self.path.read_text()) if self.path.is_file() else {}

    @staticmethod
    def digest(settings: dict) -> str:
        return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def done(self, stage: str, settings: dict) -> bool:
        return self.d.get(stage, {}).get("digest") == self.digest(settings)

    def mark(self, stage: str, settings: dict, seconds: float, figures: dict | None = None):
        from ..atomic import atomic_target
        if self.path.is_file():                      # another build process may have marked a stage meanwhile
            self.d = json.loads(self.path.read_text())
        self.d[stage] = {"digest": self.digest(settings), "seconds": round(seconds, 1), "settings": settings,
                         "figures": figures or {}}
        with atomic_target(self.path, overwrite=True) as tmp:
            Path(tmp).write_text(json.dumps(self.d, indent=1, default=str))


# ---------------------------------------------------------------------------------------------- world
def write_world(data: Path, ids, clips_per_id: int, log=print) -> Path:
    """Render clips (mp4), head masks (mp4, white = the person's head) and one reference photo (png) per
    clip; write manifest.jsonl in the cache's format. Resumable: existing files are kept."""
    import numpy as np
    from PIL import Image

    from ..atomic import atomic_target
    from ..video import write_video
    from . import world

    lines = []
    t0 = time.perf_counter()
    for n, pid in enumerate(ids):
        for c in range(clips_per_id):
            name = f"{pid:06d}_{c}"
            clip_p, mask_p, ref_p, meta_p = (data / "clips" / f"{name}.mp4", data / "masks" / f"{name}.mp4",
                                             data / "refs" / f"{name}.png", data / "clips" / f"{name}.json")
            if not meta_p.is_file():                                                  # written last
                clip = world.make_clip(pid, c)
                for p in (clip_p, mask_p, ref_p):
                    p.parent.mkdir(parents=True, exist_ok=True)
                masks = np.stack([f[0].mask for f in clip.faces])                     # [T, H, W] bool
                write_video(mask_p, np.repeat(masks[..., None], 3, -1).astype(np.uint8) * 255, overwrite=True)
                write_video(clip_p, clip.frames, overwrite=True)
                tmp = ref_p.with_suffix(".tmp.png")
                Image.fromarray(world.make_reference(pid, c).image).save(tmp)
                tmp.replace(ref_p)
                meta = {"caption": clip.caption, "action": clip.action, "background": clip.background,
                        "lighting": clip.lighting}
                with atomic_target(meta_p, overwrite=True) as tmp:
                    Path(tmp).write_text(json.dumps(meta))
            caption = json.loads(meta_p.read_text())["caption"]
            lines.append({"video": f"clips/{name}.mp4", "caption": caption, "reference": [f"refs/{name}.png"],
                          "face_mask": f"masks/{name}.mp4", "id": str(pid)})
        if (n + 1) % 200 == 0:
            log(f"[toy-world] {n + 1}/{len(ids)} identities ({time.perf_counter() - t0:.0f} s)")
    manifest = data / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return manifest


def two_person_pairs(ids, count: int) -> list[tuple[int, int, int]]:
    """(person a, person b, clip seed) of the N two-person training clips: distinct pairs of `ids`, fixed."""
    n = len(ids)
    if n < 2:
        raise ValueError("two-person clips need at least 2 identities (--ids)")
    out = []
    for j in range(count):
        a = ids[j % n]
        b = ids[(j % n + 1 + (j // n) % (n - 1)) % n]                    # never a itself
        out.append((int(a), int(b), j))
    return out


def write_two_person_world(data: Path, ids, count: int, log=print) -> Path:
    """N two-person clips (mp4), one head-mask video and one reference photo per person, and
    manifest_two.jsonl in the cache's multi-person format (training/cache.py: "people"). Resumable.
    Person k's reference is world.make_reference(seed_k, REF_SEED_OFFSET + j): another pose, scene and shirt."""
    import numpy as np
    from PIL import Image

    from ..atomic import atomic_target
    from ..video import write_video
    from . import world

    lines = []
    t0 = time.perf_counter()
    for n, (a, b, j) in enumerate(two_person_pairs(ids, count)):
        name = f"two_{j:06d}"
        clip_p, meta_p = data / "clips2" / f"{name}.mp4", data / "clips2" / f"{name}.json"
        masks_p = [data / "masks2" / f"{name}_p{k}.mp4" for k in (1, 2)]
        refs_p = [data / "refs2" / f"{name}_p{k}.png" for k in (1, 2)]
        if not meta_p.is_file():                                                      # written last
            clip = world.make_two_person_clip((a, b), j)
            for p in [clip_p] + masks_p + refs_p:
                p.parent.mkdir(parents=True, exist_ok=True)
            for k, (mask_p, ref_p, pid) in enumerate(zip(masks_p, refs_p, (a, b))):
                masks = np.stack([f[k].mask for f in clip.faces])                     # [T, H, W] bool
                write_video(mask_p, np.repeat(masks[..., None], 3, -1).astype(np.uint8) * 255, overwrite=True)
                tmp = ref_p.with_suffix(".tmp.png")
                Image.fromarray(world.make_reference(pid, REF_SEED_OFFSET + j).image).save(tmp)
                tmp.replace(ref_p)
            write_video(clip_p, clip.frames, overwrite=True)
            meta = {"caption": clip.caption, "action": clip.action, "background": clip.background,
                    "lighting": clip.lighting, "people": [a, b]}
            with atomic_target(meta_p, overwrite=True) as tmp:
                Path(tmp).write_text(json.dumps(meta))
        caption = json.loads(meta_p.read_text())["caption"]
        lines.append({"video": f"clips2/{name}.mp4", "caption": caption, "id": f"{a}+{b}",
                      "people": [{"reference": [f"refs2/{name}_p{k}.png"], "face_mask": f"masks2/{name}_p{k}.mp4"}
                                 for k in (1, 2)]})
        if (n + 1) % 200 == 0:
            log(f"[toy-world] {n + 1}/{count} two-person clips ({time.perf_counter() - t0:.0f} s)")
    manifest = data / "manifest_two.jsonl"
    with atomic_target(manifest, overwrite=True) as tmp:
        Path(tmp).write_text("".join(json.dumps(x) + "\n" for x in lines))
    return manifest


REF_SEED_OFFSET = 1000          # reference seeds of two-person clips: apart from the one-person clips' (0, 1, ...)


def parse_args(argv=None) -> argparse.Namespace:
    """The build's settings, with the step counts that depend on --joint filled in."""
    ap = argparse.ArgumentParser(prog="python -m moca_model.toy build", description=__doc__.split("\n")[0])
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="scratch folder (never committed)")
    ap.add_argument("--stages", nargs="*", default=list(STAGES), choices=STAGES)
    ap.add_argument("--clips-per-id", type=int, default=2)
    ap.add_argument("--ids", type=int, default=2000, help="how many of TRAIN_IDS to render")
    ap.add_argument("--vae-steps", type=int, default=None, help="toy VAE steps (default: vae_train's recipe); "
                    "may change between runs: training resumes on the changed schedule")
    ap.add_argument("--procs", type=int, default=min(2, os.cpu_count() or 1),
                    help="processes for the cache stage (one thread each)")
    ap.add_argument("--joint", action=argparse.BooleanOptionalAction, default=True,
                    help="train the backbone with the adapter (configs/toy_moca_joint.yaml; the default): the "
                    "shipped backbone is the fine-tuned one. --no-joint: the adapter on the frozen text-only "
                    "backbone (configs/toy_moca.yaml), the design's setting for real Wan")
    ap.add_argument("--backbone-steps", type=int, default=None,
                    help="text-only backbone steps (default 16,000 with --joint, whose adapter stage trains the "
                    "backbone 3,000 steps more; 18,000 with --no-joint)")
    ap.add_argument("--adapter-steps", type=int, default=None,
                    help="adapter steps (default 3,000 with --joint, 2,000 with --no-joint)")
    ap.add_argument("--two-person-clips", type=int, default=0, help="also render this many two-person clips "
                    "(world) and encode them into <data>/cache_two (cache), for configs/toy_moca_multi.yaml")
    a = ap.parse_args(argv)
    if a.backbone_steps is None:
        a.backbone_steps = 16000 if a.joint else 18000
    if a.adapter_steps is None:
        a.adapter_steps = 3000 if a.joint else 2000
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    data = Path(a.data)
    data.mkdir(parents=True, exist_ok=True)
    stamps = Stamps(data)
    from . import world
    ids = list(world.TRAIN_IDS)[: a.ids]
    for stage in a.stages:
        settings = {"ids": len(ids), "clips_per_id": a.clips_per_id,
                    "steps": {"vae": a.vae_steps, "backbone": a.backbone_steps, "adapter": a.adapter_steps}.get(stage)}
        if a.two_person_clips and stage in ("world", "cache"):          # absent when 0: old stamps stay valid
            settings["two_person_clips"] = a.two_person_clips
        if a.joint and stage in ("backbone", "adapter"):    # absent when off: old stamps stay valid
            settings["joint"] = True
        if stage == "adapter":                             # a retrained backbone makes the adapter stale
            settings["backbone"] = file_digest(text_only_backbone(data, a))
        if stamps.done(stage, settings):
            print(f"[toy] {stage}: up to date")
            continue
        t0 = time.perf_counter()
        print(f"[toy] {stage} ...")
        figures = STAGE_FUNCS[stage](data, ids, a)
        stamps.mark(stage, settings, time.perf_counter() - t0, figures)
        print(f"[toy] {stage}: done in {time.perf_counter() - t0:.0f} s")
    return 0


def _world(data, ids, a):
    write_world(data, ids, a.clips_per_id)
    if a.two_person_clips:
        write_two_person_world(data, ids, a.two_person_clips)
    return {}


def _cache(data, ids, a):
    """The real `train_moca.py cache` path: toy VAE, toy text encoder, toy face pack (onnxruntime), in
    --procs processes of one thread each sharing the manifest (`--part k/N`)."""
    import subprocess
    import sys
    p = paths()
    args = ["--manifest", str(data / "manifest.jsonl"), "--out", str(data / "cache"), "--vae", str(p["vae"]),
            "--text-encoder", "toy", "--face-models", str(p["insightface"]), "--face-pack", p["face_pack"],
            "--frames", "17", "--height", "128", "--width", "128", "--fps", "0", "--face-crop", "128",
            # bf16: PyTorch's fp32 CPU conv3d takes its slow im2col path at the toy VAE's narrow widths,
            # bf16 goes through oneDNN (~12x faster here: 0.3 s instead of 3.5 s per clip and thread)
            "--samples-per-shard", "64", "--device", "cpu", "--dtype", "bfloat16"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    jobs = [args]
    if getattr(a, "two_person_clips", 0):                                  # the two-person clips: their own folder
        two = list(args)
        two[1], two[3] = str(data / "manifest_two.jsonl"), str(data / "cache_two")
        jobs.append(two)
    for job in jobs:
        procs = [subprocess.Popen([sys.executable, str(REPO / "train_moca.py"), "cache", *job, "--part", f"{k}/{a.procs}"],
                                  env=env) for k in range(a.procs)]
        codes = [pr.wait() for pr in procs]
        if any(codes):
            raise SystemExit(f"[toy] cache: a cache process failed (exit codes {codes}); run the build again to resume")
    return {}


def text_only_backbone(data: Path, a) -> Path:
    """Where the backbone stage writes its text-only model: shipped as is, or (--joint) kept in the scratch
    folder for the adapter stage to fine-tune."""
    return data / TEXT_ONLY_BACKBONE if getattr(a, "joint", False) \
        else paths()["backbone"]


def _backbone(data, ids, a):
    from .backbone_train import train_backbone
    train_backbone([data / "cache"], data / "backbone", steps=a.backbone_steps, export=text_only_backbone(data, a))
    return {}


def file_digest(path: Path) -> str | None:
    """First 16 hex digits of the file's SHA-256 (None when absent)."""
    if not Path(path).is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _adapter(data, ids, a):
    """`train_moca.py --config configs/toy_moca.yaml` (--joint: toy_moca_joint.yaml) with this build's folders;
    the export is shipped (--joint: its adapter, and its backbone as the shipped backbone). A run made on
    another backbone file is moved aside (adapter.<its backbone digest>), not resumed."""
    import shutil

    from ..training.cli import main as train_main
    joint = getattr(a, "joint", False)
    out = data / ("adapter_joint" if joint else "adapter")
    source = text_only_backbone(data, a)
    backbone = file_digest(source)
    if backbone is None:
        raise SystemExit(f"[toy] adapter: no toy backbone at {source}; run the backbone stage first "
                         f"(python -m moca_model.toy build --stages backbone{'' if joint else ' --no-joint'})")
    record = out / "backbone.sha256"
    if out.exists() and (not record.is_file() or record.read_text().strip() != backbone):
        old = record.read_text().strip() if record.is_file() else "unknown"
        aside = data / f"{out.name}.{old}"
        k = 1
        while aside.exists():
            aside, k = data / f"{out.name}.{old}.{k}", k + 1
        out.rename(aside)
        print(f"[toy] adapter: {out} was trained on another backbone; moved to {aside}, training afresh")
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(backbone + "\n")
    config = "toy_moca_joint.yaml" if joint else "toy_moca.yaml"
    train_main(["--config", str(REPO / "configs" / config), "--resume",
                "--set", f"out_dir={out}", f'data.shards=["{data / "cache"}"]',
                f"objective.empty_text={data / 'cache' / 'empty_text.safetensors'}",
                f"model.backbone={source}", f"objective.lvpl.vae={paths()['vae']}",
                f"optim.max_steps={a.adapter_steps}"])
    if joint:                                              # the fine-tuned backbone is the one to ship
        write_backbone_of(out / "toy_moca_adapter_combined.safetensors", paths()["backbone"])
    target = paths()["adapter"]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    shutil.copyfile(out / "toy_moca_adapter.safetensors", tmp)
    tmp.replace(target)
    return {}


def write_backbone_of(combined: Path, target: Path) -> Path:
    """The Wan 2.1 backbone of a combined MoCA file (a full fine-tune's export) -> `target`, written as the
    backbone stage writes its own (save_wan_checkpoint, fp16)."""
    import torch

    from ..checkpoint import load_moca, save_wan_checkpoint
    from ..dit import MoCADiT
    model = load_moca(combined)
    if not isinstance(model, MoCADiT):
        raise ValueError(f"{combined} is a MoCA adapter file; a combined file (train.trainable: full) holds a backbone")
    target.parent.mkdir(parents=True, exist_ok=True)
    return save_wan_checkpoint(target, model, dtype=torch.float16, overwrite=True)


def _face(data, ids, a):
    from .face_train import build_toy_face
    return build_toy_face(data / "face")


def _vae(data, ids, a):
    from .vae_train import train_toy_vae
    return train_toy_vae(paths()["vae"], steps=a.vae_steps, resume_dir=data / "vae")


def _classifiers(data, ids, a):
    from .classifiers import train_classifiers
    return train_classifiers(paths()["classifiers"], data_dir=data / "cls")


STAGE_FUNCS = {"world": _world, "face": _face, "vae": _vae, "cache": _cache, "backbone": _backbone, "adapter": _adapter,
               "classifiers": _classifiers}
