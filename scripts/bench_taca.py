"""TACA experts: the plain loop over experts (moca_model/taca.py) against the former batched version (every
window of every expert one element of a single padded, masked attention call), same weights and inputs.

    python scripts/bench_taca.py [--preset small] [--reps 15] [--threads 1 --cpu-time]

Prints the outputs' largest difference and, per size, the median seconds of each and the ratio loop / batched
for a forward (inference) and a forward + backward (training), runs interleaved in alternating order.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from moca_model import MoCAConfig, MoCALayer, MoCAOptions  # noqa: E402
from moca_model.htp import HierarchicalTemporalPooling  # noqa: E402
from moca_model.taca import TIME_FREQ_DIM  # noqa: E402
from moca_model.wan import sinusoidal_embedding_1d  # noqa: E402


def padded_index(plan):
    """The batched version's index plan: each window row's expert, and the summary rows it attends to, padded
    to the longest scale (kv_valid False on padding)."""
    row_expert, kv_rows, kv_valid = [], [], []
    t_max = max(stop - start for start, stop in plan.rows)
    for e, (start, stop) in zip(plan.experts, plan.rows):
        rows = list(range(start, stop))
        for _ in rows:
            row_expert.append(e)
            kv_rows.append(rows + [start] * (t_max - len(rows)))
            kv_valid.append([True] * len(rows) + [False] * (t_max - len(rows)))
    dev = plan.pool.device
    return torch.tensor(row_expert, device=dev), torch.tensor(kv_rows, device=dev), torch.tensor(kv_valid, device=dev)


def batched_forward(self, xn, identity, plan, index):
    """The former TemporalAwareCrossAttention.forward (before issue 9), verbatim but for the index plan."""
    row_expert, kv_rows, kv_valid = index
    B, T, N, _ = xn.shape
    M, E, a, H = identity.shape[1], self.num_experts, self.inner, self.heads
    Tq, Tmax = kv_rows.shape
    time = sinusoidal_embedding_1d(TIME_FREQ_DIM, plan.centre).to(xn.dtype)
    scale = self.scale_embed.to(device=xn.device, dtype=xn.dtype)[row_expert]
    q = HierarchicalTemporalPooling.pool(self.q(xn), plan)
    q = self.norm_q(q + (self.frame_embed(time) + scale)[:, None])
    summary = HierarchicalTemporalPooling.pool(xn.mean(dim=2), plan)
    summary = self.summary_proj(summary) + self.summary_time(time)
    kv_id = self.kv(identity.to(xn.dtype)).view(B, M, E, 2, a)
    kv_sum = self.kv(summary).view(B, Tq, E, 2, a)
    rows = torch.arange(Tq, device=xn.device)
    kv_sum = kv_sum[:, rows, row_expert]
    kv = torch.cat([kv_id[:, :, row_expert].transpose(1, 2), kv_sum[:, kv_rows]], dim=2)
    k, v = self.norm_k(kv[..., 0, :]), kv[..., 1, :]
    mask = None
    if not bool(kv_valid.all()):
        valid = torch.cat([kv_valid.new_ones(Tq, M), kv_valid], dim=1)
        mask = valid[None, :, None, None, :].expand(B, -1, -1, -1, -1).reshape(B * Tq, 1, 1, M + Tmax)

    def heads(t):
        return t.reshape(B * Tq, t.shape[2], H, a // H).transpose(1, 2)
    out = F.scaled_dot_product_attention(heads(q), heads(k), heads(v), attn_mask=mask)
    return out.transpose(1, 2).reshape(B, Tq, N, a)


def timed(fn, reps, clock):
    times = {"loop": [], "batched": []}
    for r in range(reps):
        for name in (("loop", "batched") if r % 2 == 0 else ("batched", "loop")):
            t0 = clock()
            fn(name)
            times[name].append(clock() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="small")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--cpu-time", action="store_true",
                    help="time with the process's CPU time (with --threads 1: robust to other load on the machine)")
    ap.add_argument("--sizes", default="5x16x16,11x16x28,21x16x28", help="latent T x h x w (after patching)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = MoCAConfig.preset(a.preset, num_layers=1)
    torch.manual_seed(0)
    layer = MoCALayer(cfg)
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.05)
    taca = layer.experts
    opts = MoCAOptions().resolve(cfg)
    print(f"preset {a.preset} (dim {cfg.dim}, moca_dim {cfg.moca_dim}, {cfg.num_experts} experts {cfg.scales}, "
          f"{cfg.num_id_tokens} identity tokens), {torch.get_num_threads()} threads, median of {a.reps} "
          f"({'CPU' if a.cpu_time else 'wall'} time)")
    print(f"{'T x h x w':>10} {'tokens':>7} {'pass':>9} {'loop s':>8} {'batched s':>10} {'loop/batched':>13}")
    ratios = []
    for size in a.sizes.split(","):
        T, h, w = map(int, size.split("x"))
        xn = torch.randn(1, T, h * w, cfg.dim)
        ident = torch.randn(1, cfg.num_id_tokens, cfg.id_dim)
        plan = layer.htp.plan(T, opts.experts)
        index = padded_index(plan)
        with torch.no_grad():
            diff = (taca(xn, ident, plan) - batched_forward(taca, xn, ident, plan, index)).abs().max().item()

        def run(name, backward):
            with torch.set_grad_enabled(backward):
                x = xn.requires_grad_(backward)
                y = taca(x, ident, plan) if name == "loop" else batched_forward(taca, x, ident, plan, index)
                if backward:
                    y.square().mean().backward()
                    taca.zero_grad(set_to_none=True)
        for label, backward in (("forward", False), ("fwd+bwd", True)):
            run("loop", backward), run("batched", backward)                                    # warm-up
            t = timed(lambda name: run(name, backward), a.reps, time.process_time if a.cpu_time else time.perf_counter)
            ratio = t["loop"] / t["batched"]
            ratios.append(ratio)
            print(f"{size:>10} {T * h * w:>7} {label:>9} {t['loop']:>8.4f} {t['batched']:>10.4f} {ratio:>13.3f}"
                  + (f"   max |loop - batched| = {diff:.1e}" if not backward else ""))
    print(f"taca_loop_vs_batched_ratio={statistics.median(ratios):.3f}")


if __name__ == "__main__":
    main()
