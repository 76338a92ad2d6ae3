"""Command line of the trainer (`train_moca.py` at the top level is a thin wrapper around `main`).

    python train_moca.py --config FILE [--resume [CKPT_DIR]] [--set section.key=value ...] [--stop-after N]
    torchrun --nproc_per_node N train_moca.py --config FILE [--resume]
    python train_moca.py prepare --videos DIR --out DIR --face-models PATH [...]
    python train_moca.py cache --manifest FILE.jsonl --out DIR --vae PATH --text-encoder PATH [...]
    python train_moca.py import --format opens2v|consisid --out DIR [...]   (public datasets -> manifest)
    python train_moca.py export --checkpoint CKPT_DIR --out adapter.safetensors [--no-ema]
    python train_moca.py bench [--presets tiny small] [--device cuda]
"""
from __future__ import annotations

import argparse
import sys

COMMANDS = ("prepare", "import", "cache", "export", "bench")


def train_main(argv) -> int:
    p = argparse.ArgumentParser(prog="train_moca.py", description="Fine-tune MoCA (flow matching + LVPL).",
                                epilog="Subcommands: prepare, import, cache, export, bench "
                                       "(python train_moca.py CMD --help).")
    p.add_argument("--config", required=True, help="training config (.yaml/.yml or .json), see configs/")
    p.add_argument("--resume", nargs="?", const="auto", default=None,
                   help="resume from the latest checkpoint in out_dir, or from the given checkpoint folder")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="override config values, e.g. optim.lr=5e-5 data.batch_size=2")
    p.add_argument("--stop-after", type=int, default=None,
                   help="train this many steps, checkpoint and exit (for time-limited jobs)")
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    a = p.parse_args(argv)
    from .config import TrainConfig
    from .trainer import Trainer
    cfg = TrainConfig.load(a.config).with_overrides(a.set)
    if not a.resume:                        # a fresh start would overwrite an earlier run's checkpoints
        from pathlib import Path

        from .train_state import list_checkpoints
        found = list_checkpoints(Path(cfg.out_dir))
        if found:
            raise SystemExit(f"train_moca.py: {cfg.out_dir} already holds checkpoints of a run (latest "
                             f"{found[-1].name}). Add --resume to continue it, or give another out_dir "
                             f"(--set out_dir=...) to start a new run; delete the folder yourself to start over.")
    trainer = Trainer(cfg, device=a.device)
    if a.resume:
        trainer.resume(None if a.resume == "auto" else a.resume)
    result = trainer.fit(stop_after=a.stop_after)
    if result["losses"]:
        ls = result["losses"]
        trainer.log(f"[moca-train] done at step {trainer.step}: loss {ls[0]:.4f} (first) -> {ls[-1]:.4f} (last)")
    if trainer.dist.enabled:
        import torch.distributed as dist
        dist.destroy_process_group()
    return 0


def export_main(argv) -> int:
    from .config import DTYPES
    p = argparse.ArgumentParser(prog="train_moca.py export", description="Export an adapter from a checkpoint.")
    p.add_argument("--checkpoint", required=True, help="a checkpoint folder (out_dir/checkpoints/step_XXXXXXXX)")
    p.add_argument("--out", required=True, help="adapter .safetensors to write")
    p.add_argument("--no-ema", action="store_true", help="export the live weights, not the EMA")
    p.add_argument("--dtype", default="bfloat16", choices=list(DTYPES),
                   help="storage dtype of the exported weights (default bfloat16: half the size of float32)")
    a = p.parse_args(argv)
    from .export import export_checkpoint
    print(export_checkpoint(a.checkpoint, a.out, use_ema=not a.no_ema, dtype=a.dtype))
    return 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "prepare":
        from ..prepare.pipeline import main as prepare_main
        return prepare_main(argv[1:])
    if argv and argv[0] == "import":
        from ..importers import main as import_main
        return import_main(argv[1:])
    if argv and argv[0] == "cache":
        from .cache import main as cache_main
        return cache_main(argv[1:])
    if argv and argv[0] == "export":
        return export_main(argv[1:])
    if argv and argv[0] == "bench":
        from .bench import main as bench_main
        return bench_main(argv[1:])
    return train_main(argv)
