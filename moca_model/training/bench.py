"""Training-step benchmark: seconds per optimiser step and peak memory, random weights, synthetic data.

    python -m moca_model.training.bench                     # tiny and small on the CPU
    python -m moca_model.training.bench --presets wan2.1-1.3b --device cuda
    python -m moca_model.training.bench --presets wan2.1-1.3b --device cuda --deterministic   # what exact resume costs

Each case runs in its own subprocess so that peak memory is its own: on CUDA, torch.cuda.max_memory_allocated
(tensors only) and max_memory_reserved (allocator pool); on the CPU, the process's peak resident set size
(ru_maxrss: everything, including the Python interpreter and torch itself, ~0.3-0.4 GB) and its growth over
the first training step.
Every case trains the adapter only (backbone frozen), batch 1, LVPL on every step (max_sigma 1: the worst case).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

# preset -> (latent shape [16, T, h, w] of the clip, pixel size it stands for, text tokens, settings)
CASES = {
    "tiny": dict(latent=(3, 16, 16), pixels="9x128x128", text_len=64, vae_dim=16),
    "small": dict(latent=(5, 32, 32), pixels="17x256x256", text_len=128, vae_dim=32),
    "wan2.1-1.3b": dict(latent=(9, 60, 104), pixels="33x480x832", text_len=512, vae_dim=96),
    "wan2.1-14b": dict(latent=(9, 60, 104), pixels="33x480x832", text_len=512, vae_dim=96),
}


def run_case(preset: str, device: str, steps: int, warmup: int, deterministic: bool = False) -> dict:
    import resource

    import torch

    from .synthetic import make_synthetic_shards, tiny_train_config
    from .trainer import Trainer
    case = CASES[preset]
    cuda = device.startswith("cuda")
    T, h, w = case["latent"]
    with tempfile.TemporaryDirectory() as tmp:
        make_synthetic_shards(f"{tmp}/data", num_samples=2, per_shard=2, frames=T, height=h, width=w,
                              text_tokens=min(64, case["text_len"]), face_size=32)
        cfg = tiny_train_config(
            f"{tmp}/run", f"{tmp}/data",
            model={"preset": preset, "backbone_dtype": "bfloat16" if cuda else "float32"},
            data={"batch_size": 1, "text_len": case["text_len"]},
            objective={"lvpl": {"vae_dim": case["vae_dim"], "max_sigma": 1.0, "weight": 0.1}},
            optim={"max_steps": warmup + steps, "warmup_steps": 1},
            train={"mixed_precision": "bf16" if cuda else "no", "gradient_checkpointing": cuda,
                   "deterministic": deterministic},
            logging={"every": 0, "progress": False, "tensorboard": False})
        trainer = Trainer(cfg, device=device, log=lambda *a: None)
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20           # GiB (Linux: KiB)
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        for _ in range(warmup):
            trainer.train_step()
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
        if cuda:
            torch.cuda.synchronize()
        times = []
        for _ in range(steps):
            t0 = time.perf_counter()
            trainer.train_step()
            if cuda:
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        sec = sorted(times)[len(times) // 2]                          # median: robust to a busy machine
        out = {"preset": preset, "device": device, "clip": case["pixels"], "latent": f"16x{T}x{h}x{w}",
               "tokens": T * (h // 2) * (w // 2), "sec_per_step": sec,
               "trainable_M": sum(p.numel() for p in trainer.params.values()) / 1e6,
               "precision": "bf16 autocast, bf16 backbone, grad ckpt" if cuda else "fp32",
               "deterministic": deterministic}
        if cuda:
            out["peak_alloc_GiB"] = torch.cuda.max_memory_allocated() / 2 ** 30
            out["peak_reserved_GiB"] = torch.cuda.max_memory_reserved() / 2 ** 30
            out["gpu"] = torch.cuda.get_device_name()
        else:
            out["peak_rss_GiB"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20
            out["step_rss_growth_GiB"] = rss1 - rss0
            out["threads"] = torch.get_num_threads()
        return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m moca_model.training.bench", description=__doc__.split("\n")[0])
    p.add_argument("--presets", nargs="*", default=None, help=f"from {list(CASES)} (default: tiny small on CPU, "
                   "wan2.1-1.3b on CUDA)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--deterministic", action="store_true",
                   help="train.deterministic on (strict deterministic kernels, what exact resume needs): compare "
                        "with a run without it to see what determinism costs")
    p.add_argument("--one", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.one:
        print("BENCH " + json.dumps(run_case(a.one, a.device, a.steps, a.warmup, a.deterministic)))
        return 0
    presets = a.presets or (["wan2.1-1.3b"] if a.device.startswith("cuda") else ["tiny", "small"])
    rows = []
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for preset in presets:
        cmd = [sys.executable, "-m", "moca_model.training.bench", "--one", preset, "--device", a.device,
               "--steps", str(a.steps), "--warmup", str(a.warmup)] + (["--deterministic"] if a.deterministic else [])
        env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        line = next((ln for ln in res.stdout.splitlines() if ln.startswith("BENCH ")), None)
        if res.returncode != 0 or line is None:
            print(f"{preset}: failed\n{res.stderr[-3000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(line[6:]))
    if not rows:
        return 1
    mem_key = "peak_alloc_GiB" if a.device.startswith("cuda") else "peak_rss_GiB"
    print(f"{'preset':<12} {'device':<6} {'clip (FxHxW)':<13} {'latent':<14} {'tokens':>7} {'trainable':>10} "
          f"{'s/step':>8} {mem_key:>14} {'extra':>22}")
    for r in rows:
        extra = (f"reserved {r['peak_reserved_GiB']:.2f} GiB" if "peak_reserved_GiB" in r
                 else f"+{r['step_rss_growth_GiB']:.2f} GiB in step 1, {r['threads']} thr")
        print(f"{r['preset']:<12} {r['device']:<6} {r['clip']:<13} {r['latent']:<14} {r['tokens']:>7} "
              f"{r['trainable_M']:>8.1f} M {r['sec_per_step']:>8.3f} {r[mem_key]:>14.2f} {extra:>22}")
    print(f"({rows[0]['precision']}{', deterministic kernels' if a.deterministic else ''}; adapter only, batch 1, "
          f"LVPL on every step; {a.steps} timed steps after "
          f"{a.warmup} warm-up, median step time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
