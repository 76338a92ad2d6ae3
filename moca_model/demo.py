"""`python -m moca_model demo --out DIR`: reference photo + text -> video with the standalone sampler, on the CPU.

With no model flags it runs the embedded default: the toy world's trained models (moca_model/toy/demo.py):
a held-out toy person's photo and two prompts -> demo.mp4 (reference | with identity | same seed without),
report.json with the likeness under the evaluation recogniser, demo_strip.png.

Real files (--checkpoint, or --wan + --adapter, --text-embeds, --identity / --face) run a real Wan model;
`--preset tiny` (or small, ...) with no files runs seeded RANDOM weights with stand-in text and identity,
which shows the pipeline and its cost, not a likeness.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import torch

from .atomic import atomic_target
from .config import MoCAConfig
from .dit import MoCADiT
from .latents import latent_to_rgb
from .sampling import SOLVERS, Guidance, make_noise, sample
from .video import write_video

DEFAULT_PROMPT = "a woman with short dark hair smiles and turns her head towards the camera, soft daylight"
DEFAULT_NEGATIVE = "blurry, distorted face, low quality"


def stand_in_text(prompt: str, text_dim: int) -> torch.Tensor:
    """A deterministic stand-in for umT5 states: one random vector per word, seeded by the prompt."""
    words = max(1, len(prompt.split()))
    seed = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:8], "little")
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, words + 1, text_dim, generator=g) * 0.1


def text_states(path) -> torch.Tensor:
    """The umT5 states [1, L, 4096] of a MoCA Save Text Embeds file (its first conditioning entry)."""
    from .text_embeds import load_text_embeds
    conditioning, _ = load_text_embeds(path)
    return conditioning[0][0].float()


def build_model(args) -> tuple[MoCADiT, list[str]]:
    notes = []
    if args.checkpoint:
        from .checkpoint import load_moca
        model = load_moca(args.checkpoint)
        if not isinstance(model, MoCADiT):
            raise SystemExit(f"--checkpoint {args.checkpoint} is an adapter file; pass it as --adapter with --wan")
        return model.eval(), [f"MoCA-DiT weights from {args.checkpoint}"]    # load_moca set .moca_recognizer
    torch.manual_seed(args.weight_seed)
    model = MoCADiT(MoCAConfig.preset(args.preset))
    if args.wan:
        model.load_backbone(args.wan)
        notes.append(f"Wan 2.1 backbone from {args.wan}")
    else:
        notes.append(f"RANDOM backbone weights ({args.preset} preset, seed {args.weight_seed}): "
                     "no real video model is loaded")
    model.moca_recognizer = None                      # the face recogniser the adapter was trained on
    if args.adapter:
        from .provenance import read_file_record
        model.load_adapter(args.adapter)
        model.moca_recognizer = read_file_record(args.adapter)
        notes.append(f"MoCA adapter from {args.adapter}")
    else:
        # An untrained adapter is exactly the backbone; give it seeded random projections so the
        # identity path visibly does something in the demo.
        from .adapter import live_adapter
        live_adapter(model, args.weight_seed + 1)
        notes.append("RANDOM MoCA adapter: no trained MoCA weights exist yet (train them with train_moca.py)")
    return model.eval(), notes


def build_identity(args, model) -> tuple[torch.Tensor, list[str]]:
    """Identity tokens from --identity / --face (refused when their recogniser is not the adapter's)."""
    from .provenance import check_identity
    tok = model.adapter.tokenizer
    adapter_rec = getattr(model, "moca_recognizer", None)
    adapter_name = Path(args.adapter or args.checkpoint or "adapter").name
    if args.identity:
        from .identity import load_identity
        ident = load_identity(args.identity)
        check_identity(adapter_rec, adapter_name, ident.recognizer, f"--identity {args.identity}", "MoCA demo")
        with torch.no_grad():
            tokens = ident.tokens(tok)
        return tokens, [f"identity: {args.identity} ({ident.summary()})"]
    if args.face:
        from .face import FaceAnalyzer
        if not args.face_models:
            raise SystemExit("--face needs --face-models: the folder that holds models/antelopev2 "
                             "(ComfyUI/models/insightface)")
        analyzer = FaceAnalyzer.load(args.face_models, pack=args.face_pack)
        check_identity(adapter_rec, adapter_name, analyzer.recognizer, f"--face-pack {args.face_pack}", "MoCA demo")
        face = analyzer.encode([args.face])
        with torch.no_grad():
            tokens = tok(arcface=face.embedding.float().view(1, -1))
        return tokens, [f"identity: ArcFace of {args.face} ({analyzer.report}); global tokens only (the "
                        "local tokens need the Wan VAE, which the CPU demo does not load)"]
    g = torch.Generator().manual_seed(args.seed + 1000)
    arc = torch.nn.functional.normalize(torch.randn(1, 512, generator=g), dim=-1)
    face_latent = torch.randn(1, 16, 1, 32, 32, generator=g)
    with torch.no_grad():
        tokens = tok(arcface=arc, face_latent=face_latent)
    return tokens, ["identity: a STAND-IN (random ArcFace vector and face latent); pass --face/--identity for a real one"]


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m moca_model demo", description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, help="output folder (toy default: demo.mp4, demo_strip.png, report.json; "
                    "random weights: demo.mp4, demo_no_identity.mp4, report.json)")
    ap.add_argument("--prompt", default=DEFAULT_PROMPT)
    ap.add_argument("--negative", default=DEFAULT_NEGATIVE)
    ap.add_argument("--preset", default=None, help="run seeded RANDOM weights of this preset (tiny, small, ...) "
                    "instead of the toy world's trained models")
    ap.add_argument("--toy-person", type=int, default=0, help="which held-out toy person (0..199) the default "
                    "demo shows")
    ap.add_argument("--checkpoint", help="a combined MoCA-DiT .safetensors")
    ap.add_argument("--wan", help="a Wan 2.1 T2V .safetensors for the backbone")
    ap.add_argument("--adapter", help="a MoCA adapter .safetensors")
    ap.add_argument("--text-embeds", help="positive umT5 states from MoCA Save Text Embeds (.safetensors)")
    ap.add_argument("--negative-embeds", help="negative umT5 states from MoCA Save Text Embeds")
    ap.add_argument("--identity", help="an identity file (.safetensors) from MoCA Save Identity or moca_model.face")
    ap.add_argument("--face", help="a reference face photo (needs --face-models)")
    ap.add_argument("--face-models", help="the insightface models root (e.g. ComfyUI/models/insightface)")
    ap.add_argument("--face-pack", default="antelopev2", help="the face pack under --face-models (the adapter's "
                    "training recogniser; a mismatch is refused)")
    ap.add_argument("--frames", type=int, default=17, help="video frames (4k+1; default 17)")
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--steps", type=int, default=None, help="sampling steps (default 20)")
    ap.add_argument("--solver", default="dpmpp_2m", choices=SOLVERS)
    ap.add_argument("--text-cfg", type=float, default=5.0)
    ap.add_argument("--id-cfg", type=float, default=1.5)
    ap.add_argument("--shift", type=float, default=8.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--weight-seed", type=int, default=0, help="seed of the random demo weights")
    ap.add_argument("--fps", type=float, default=16.0)
    ap.add_argument("--overwrite", action="store_true", help="replace existing outputs in --out")
    args = ap.parse_args(argv)

    out = Path(args.out)
    real = (args.checkpoint, args.wan, args.adapter, args.preset, args.text_embeds, args.identity, args.face)
    fallback = None
    if not any(real):
        from .toy.pipeline import missing_files
        missing = missing_files()
        if not missing:
            from .toy.demo import run as toy_demo
            return toy_demo(out, person=args.toy_person, seed=args.seed, steps=args.steps, overwrite=args.overwrite)
        fallback = ("the toy world's trained models are not in this checkout yet (" + "; ".join(missing) +
                    "): running seeded RANDOM weights instead; `make toy` builds them")
        print("MoCA demo: " + fallback)
    args.preset = args.preset or "tiny"
    args.steps = args.steps or 20
    targets = [out / "demo.mp4", out / "demo_no_identity.mp4", out / "report.json"]
    existing = [str(p) for p in targets if p.exists()]
    if existing and not args.overwrite:
        raise SystemExit(f"demo: {', '.join(existing)} already exist; pass --overwrite or choose another --out")
    if args.frames < 1 or (args.frames - 1) % 4:
        raise SystemExit(f"demo: --frames must be 4k+1 (Wan's VAE packs 4 frames per latent), got {args.frames}")
    if args.height % 16 or args.width % 16:
        raise SystemExit(f"demo: --height and --width must be multiples of 16, got {args.height}x{args.width}")

    t_start = time.perf_counter()
    model, notes = build_model(args)
    c = model.config
    if args.text_embeds:
        context = text_states(args.text_embeds)
        negative = text_states(args.negative_embeds) if args.negative_embeds else None
        notes.append(f"text: umT5 states from {args.text_embeds}"
                     + (f" and {args.negative_embeds}" if args.negative_embeds else " (negative: zeros)"))
    else:
        context, negative = stand_in_text(args.prompt, c.text_dim), stand_in_text(args.negative, c.text_dim)
        notes.append("text: a STAND-IN embedding hashed from the prompt (no umT5 encoder is loaded)")
    identity, id_notes = build_identity(args, model)
    notes += id_notes + ([fallback] if fallback else [])
    T = (args.frames - 1) // 4 + 1
    noise = make_noise((1, c.in_dim, T, args.height // 8, args.width // 8), args.seed)
    common = dict(steps=args.steps, text_cfg=args.text_cfg, shift=args.shift, solver=args.solver, progress=True)
    print("MoCA demo:\n  " + "\n  ".join(notes))

    runs, finals = {}, {}
    guidance = Guidance(args.text_cfg, args.id_cfg)
    for name, ident in (("with_identity", identity), ("without_identity", None)):
        t0 = time.perf_counter()
        latents = sample(model, noise, context, negative, ident, id_cfg=args.id_cfg, **common)
        seconds = time.perf_counter() - t0
        finals[name] = latents
        frames = latent_to_rgb(latents)[0]                                      # [T, H, W, 3]
        path = targets[0] if ident is not None else targets[1]
        write_video(path, frames, fps=args.fps / 4, overwrite=args.overwrite)
        runs[name] = {"video": str(path), "seconds": round(seconds, 3),
                      "seconds_per_step": round(seconds / args.steps, 4),
                      "model_evaluations_per_step": len(guidance.coefficients(ident is not None)),
                      "latent_mean_abs": round(latents.abs().mean().item(), 4)}
        print(f"  {name}: {seconds:.1f} s ({seconds / args.steps:.3f} s/step) -> {path}")
    diff = (finals["with_identity"] - finals["without_identity"]).abs().mean().item()
    report = {
        "config": c.to_dict(), "preset": args.preset if not args.checkpoint else None,
        "prompt": args.prompt, "negative": args.negative, "frames": args.frames, "latent_frames": T,
        "size": [args.height, args.width], "steps": args.steps, "solver": args.solver, "shift": args.shift,
        "text_cfg": args.text_cfg, "id_cfg": args.id_cfg, "seed": args.seed, "runs": runs,
        "decoder": "Wan 2.1 latent-to-RGB preview projection, one frame per latent frame (no VAE)",
        "notes": notes, "total_seconds": round(time.perf_counter() - t_start, 3), "torch": torch.__version__,
        "threads": torch.get_num_threads(), "latent_mean_abs_diff_identity_vs_none": round(diff, 4),
    }
    with atomic_target(targets[2], overwrite=args.overwrite) as tmp:
        Path(tmp).write_text(json.dumps(report, indent=2))
    print(f"  report: {targets[2]}  (total {report['total_seconds']:.1f} s)")
    return report
