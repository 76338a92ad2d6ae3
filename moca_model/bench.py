"""`python -m moca_model bench`: what MoCA costs on top of the Wan backbone, measured side by side.

CPU (default): the `small` preset at several latent frame counts; median forward time with identity vs
identity=None (same weights, same inputs, runs interleaved), peak memory of one forward of each
(torch profiler allocation timeline), the adapter's parameter share and the analytic FLOPs overhead for
wan2.1-1.3b at 81 frames 480x832. The last line is `moca_overhead_ratio=<time ratio at the largest size>`.
CUDA (`--device cuda`): wan2.1-1.3b dims, random weights, bf16, 81 frames at 480x832: seconds per model
evaluation and peak VRAM with and without MoCA.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from .adapter import live_adapter
from .config import MoCAConfig
from .dit import MoCADiT
from .flops import latent_grid, overhead


def cpu_peak_bytes(fn) -> int:
    """Peak of live CPU tensor memory during fn(), from the profiler's allocation timeline."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.events() if e.self_cpu_memory_usage), key=lambda e: e.time_range.start)
    live = peak = 0
    for e in events:
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak


def make_inputs(model, T, h, w, device, dtype, text_len=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 16, T, h, w, generator=g).to(device, dtype)
    ctx = torch.randn(1, text_len, model.config.text_dim, generator=g).to(device, dtype)
    t = torch.tensor([500.0], device=device)
    with torch.no_grad():
        ident = model.adapter.tokenizer(arcface=torch.randn(1, 512, generator=g).to(device, dtype),
                                        face_latent=torch.randn(1, 16, 1, 32, 32, generator=g).to(device, dtype))
    return x, t, ctx, ident


def bench_sampler(model, T: int, hw: tuple[int, int], device="cpu", dtype=torch.float32, steps: int = 3,
                  reps: int = 3, text_len: int = 64) -> dict:
    """Seconds per sampling step with identity guidance (text_cfg 5, id_cfg 2: negative, text and text+identity
    passes; the adapter runs on the identity pass only) vs text-only CFG (negative and text), same steps and
    inputs, runs interleaved; `ratio` is the cost of identity guidance (target <= 1.58: 3 vs 2 evaluations x 1.05)."""
    from .sampling import sample
    x, _, ctx, ident = make_inputs(model, T, *hw, device, dtype, text_len=text_len)
    neg = torch.zeros_like(ctx)
    runs = {"identity": lambda: sample(model, x, ctx, neg, ident, steps=steps, text_cfg=5.0, id_cfg=2.0,
                                       progress=False),
            "text": lambda: sample(model, x, ctx, neg, None, steps=steps, text_cfg=5.0, progress=False)}
    times = {k: [] for k in runs}
    for fn in runs.values():                                                 # warm-up
        fn()
    for r in range(reps):
        for name in (("identity", "text") if r % 2 == 0 else ("text", "identity")):
            if device != "cpu":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            runs[name]()
            if device != "cpu":
                torch.cuda.synchronize()
            times[name].append((time.perf_counter() - t0) / steps)
    out = {k: statistics.median(v) for k, v in times.items()}
    return {"latent_frames": T, "steps": steps, "identity_s_per_step": out["identity"],
            "text_s_per_step": out["text"], "ratio": out["identity"] / out["text"]}


def forward_times(model, T: int, hw: tuple[int, int], reps: int, memory: bool = False, text_len: int = 64) -> dict:
    """Median seconds of one forward with identity vs identity=None (same weights and inputs, runs interleaved,
    order alternating) at T latent frames of hw latent pixels, on the CPU; with `memory`, peak MB of each."""
    x, t, ctx, ident = make_inputs(model, T, *hw, "cpu", torch.float32, text_len=text_len)
    base = lambda: model(x, t, ctx)                                          # noqa: E731
    moca = lambda: model(x, t, ctx, identity=ident)                          # noqa: E731
    times = {"base": [], "moca": []}
    with torch.no_grad():
        base(), moca()                                                       # warm-up
        for r in range(reps):
            order = (("base", base), ("moca", moca)) if r % 2 == 0 else (("moca", moca), ("base", base))
            for name, fn in order:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        peaks = {k: cpu_peak_bytes(fn) for k, fn in (("base", base), ("moca", moca))} if memory else {}
    b, m = statistics.median(times["base"]), statistics.median(times["moca"])
    return {"base_s": b, "moca_s": m, "ratio": m / b,
            "base_peak_mb": peaks.get("base", 0) / 2**20, "moca_peak_mb": peaks.get("moca", 0) / 2**20}


def bench_cpu(preset: str, frames: list[int], hw: tuple[int, int], reps: int, memory: bool = True,
              config: MoCAConfig | None = None) -> dict:
    """`config`: another MoCAConfig than the preset's (a variant, moca_model/variants.py)."""
    torch.manual_seed(0)
    model = MoCADiT(config or MoCAConfig.preset(preset)).eval()
    live_adapter(model)
    rows = []
    for T in frames:
        g = latent_grid(4 * T - 3, hw[0] * 8, hw[1] * 8, model.config)
        rows.append({"latent_frames": T, "video_frames": 4 * T - 3, "tokens": g[0] * g[1] * g[2],
                     **forward_times(model, T, hw, reps, memory)})
    share = model.num_parameters("adapter") / model.num_parameters()
    with torch.no_grad():
        sampler = bench_sampler(model, frames[len(frames) // 2], hw, reps=reps)
    return {"device": "cpu", "preset": preset, "threads": torch.get_num_threads(), "reps": reps,
            "latent_hw": hw, "rows": rows, "adapter_share": share, "sampler": sampler}


def bench_cuda(preset: str, frames: int = 81, height: int = 480, width: int = 832, reps: int = 5,
               config: MoCAConfig | None = None) -> dict:
    dev, dtype = "cuda", torch.bfloat16
    model = MoCADiT(config or MoCAConfig.preset(preset), device=dev, dtype=dtype).eval()
    live_adapter(model)
    T, h2, w2 = latent_grid(frames, height, width, model.config)
    x, t, ctx, ident = make_inputs(model, T, height // 8, width // 8, dev, dtype, text_len=512)
    out = {}
    with torch.no_grad():
        for name, kw in (("base", {}), ("moca", {"identity": ident})):
            model(x, t, ctx, **kw)
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            times = []
            for _ in range(reps):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record()
                model(x, t, ctx, **kw)
                end.record()
                torch.cuda.synchronize()
                times.append(start.elapsed_time(end) / 1000)
            out[name] = {"s_per_eval": statistics.median(times),
                         "peak_vram_gb": torch.cuda.max_memory_allocated() / 2**30}
        sampler = bench_sampler(model, T, (height // 8, width // 8), dev, dtype, steps=2, reps=2, text_len=512)
    return {"device": torch.cuda.get_device_name(), "preset": preset, "frames": frames, "size": [height, width],
            "tokens": T * h2 * w2, **out, "ratio": out["moca"]["s_per_eval"] / out["base"]["s_per_eval"],
            "sampler": sampler}


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m moca_model bench", description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--quick", action="store_true", help="a short run (smaller sizes, fewer repeats)")
    ap.add_argument("--preset", default=None, help="model preset (default: small on CPU, wan2.1-1.3b on CUDA)")
    ap.add_argument("--variant", default=None, help="a MoCA variant of moca_model/variants.py (moca: MoCA as "
                    "designed, lean, single_xattn, frame_scale, clip_scale; default: the preset's own model, which "
                    "is lean MoCA at the real Wan presets and MoCA as designed at tiny / toy / small)")
    ap.add_argument("--frames", default=None, help="comma-separated latent frame counts (CPU)")
    ap.add_argument("--reps", type=int, default=None, help="timed repeats per variant")
    ap.add_argument("--no-memory", action="store_true", help="skip the CPU peak-memory profile")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    from .variants import model_config, variant_of
    preset = args.preset or ("wan2.1-1.3b" if args.device == "cuda" else "small")
    config = model_config(preset, args.variant)
    real = model_config("wan2.1-1.3b", args.variant)
    flops = overhead(real)
    if args.device == "cuda":
        if not torch.cuda.is_available():
            raise SystemExit("bench --device cuda: no CUDA device is available")
        res = bench_cuda(preset, reps=args.reps or 5, config=config)
        print(f"device: {res['device']}  preset {res['preset']}  {res['frames']} frames {res['size'][0]}x"
              f"{res['size'][1]} ({res['tokens']} tokens), bf16, random weights")
        print(f"{'':10}{'s/eval':>10}{'peak VRAM GB':>15}")
        for k in ("base", "moca"):
            print(f"{k:10}{res[k]['s_per_eval']:>10.3f}{res[k]['peak_vram_gb']:>15.2f}")
        ratio = res["ratio"]
    else:
        quick = args.quick
        frames = [int(f) for f in args.frames.split(",")] if args.frames else ([2, 4, 8] if quick else [3, 6, 11, 21])
        hw = (16, 28) if quick else (30, 52)
        res = bench_cpu(preset, frames, hw, args.reps or (3 if quick else 5), not args.no_memory, config)
        print(f"device: cpu ({res['threads']} threads)  preset {res['preset']}  latent {hw[0]}x{hw[1]} "
              f"(video {hw[0] * 8}x{hw[1] * 8})  median of {res['reps']} interleaved runs, one forward each")
        print(f"{'latent T':>8} {'frames':>6} {'tokens':>7} {'base s':>8} {'MoCA s':>8} {'ratio':>6} "
              f"{'base MB':>8} {'MoCA MB':>8}")
        for r in res["rows"]:
            print(f"{r['latent_frames']:>8} {r['video_frames']:>6} {r['tokens']:>7} {r['base_s']:>8.3f} "
                  f"{r['moca_s']:>8.3f} {r['ratio']:>6.3f} {r['base_peak_mb']:>8.1f} {r['moca_peak_mb']:>8.1f}")
        print(f"adapter parameters ({variant_of(config)}): {100 * res['adapter_share']:.1f}% of the {res['preset']} "
              "backbone")
        ratio = res["rows"][-1]["ratio"]
    share13 = MoCADiT(real, device="meta")
    res["variant"], res["variant_wan2.1-1.3b"] = variant_of(config), variant_of(real)
    print(f"wan2.1-1.3b ({variant_of(real)}): adapter {share13.num_parameters('adapter') / 1e6:.1f}M = "
          f"{100 * share13.num_parameters('adapter') / share13.num_parameters():.1f}% of the backbone; analytic "
          f"FLOPs at 81 frames 480x832 ({flops['tokens']} tokens): backbone {flops['backbone_tflops']:.1f} TFLOP, "
          f"MoCA +{flops['moca_tflops']:.2f} TFLOP = +{100 * flops['ratio']:.2f}%")
    res["flops_wan2.1-1.3b"] = flops
    sm = res["sampler"]
    print(f"sampler, {sm['latent_frames']} latent frames, {sm['steps']} steps: {sm['identity_s_per_step']:.3f} s/step "
          f"with identity guidance (3 passes, MoCA on one) vs {sm['text_s_per_step']:.3f} s/step text-only CFG")
    print(f"sampler_step_ratio={sm['ratio']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2, default=str)
    print(f"moca_overhead_ratio={ratio:.3f}")
    return res
