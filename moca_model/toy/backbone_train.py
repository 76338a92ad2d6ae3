"""Train the toy world's Wan-layout T2V backbone from scratch: text-only rectified flow on cached shards.

The MoCA trainer (`train_moca.py`) trains adapters on a *frozen* pretrained Wan; the toy world has no
pretrained Wan, so this short loop makes one. It reads the same shards `train_moca.py cache` writes
(model-space latents [16, 5, 16, 16] of 17x128x128 clips and the toy text states), holds them in memory
(a few hundred MB), and minimises Wan's flow loss ||v(x_sigma, t, text) - (noise - x0)||^2 with
logit-normal, shifted sigmas, 10% empty-prompt dropout (so text CFG works), bf16 autocast (the CPU's
AMX units make that ~1.5x faster than fp32), AdamW with warm-up + cosine, and an EMA with warm-up that
is what gets exported. Checkpoints reuse the trainer's atomic folders (`training.train_state`), and
resume is exact: the batch at step s is drawn from a generator seeded by (seed, s).

    python -m moca_model.toy build --stages backbone      # what `make toy` runs (see build.py)
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch

from ..checkpoint import save_wan_checkpoint
from ..config import MoCAConfig
from ..dit import MoCADiT
from ..training import flow
from ..training.data import find_shards, read_shard
from ..training.train_state import flatten_optimizer, list_checkpoints, load_checkpoint, save_checkpoint
from .text import ToyTextEncoder, pad_text



def load_shards(shards) -> tuple[torch.Tensor, torch.Tensor]:
    """Every sample's latents [N, 16, T, h, w] (bf16) and padded text [N, TEXT_LEN, 4096] (bf16)."""
    lat, txt = [], []
    for path in find_shards(shards):
        for s in read_shard(path):
            lat.append(s["latents"].to(torch.bfloat16))
            txt.append(pad_text(s["text"].to(torch.bfloat16)))
    if not lat:
        raise ValueError(f"no samples in {shards}")
    return torch.stack(lat), torch.stack(txt)


class EMAWarmup:
    """EMA whose decay ramps as min(decay, (1 + n) / (10 + n)), so early averages are not dominated by the
    random init."""

    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay, self.n = decay, 0
        self.shadow = {k: v.detach().float().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: torch.nn.Module):
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        for k, v in model.state_dict().items():
            self.shadow[k].lerp_(v.detach().float(), 1 - d)


def lr_at(step: int, lr: float, warmup: int, total: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))


def train_backbone(shards, out_dir, *, preset: str = "toy", steps: int = 3000, batch_size: int = 8,
                   lr: float = 4e-4, warmup: int = 200, shift: float = 3.0, text_dropout: float = 0.1,
                   ema_decay: float = 0.999, seed: int = 0, checkpoint_every: int = 250, export=None,
                   log=print) -> Path:
    """Train (or resume) and export the EMA backbone as a Wan 2.1 checkpoint at `export`
    (default: <out_dir>/toy_wan_t2v.safetensors). Returns the exported path."""
    torch.manual_seed(seed)
    out_dir = Path(out_dir)
    lat, txt = load_shards(shards)
    empty = pad_text(ToyTextEncoder().encode([""])[0]).to(torch.bfloat16)
    log(f"[toy-backbone] {lat.shape[0]} clips, latents {list(lat.shape[1:])}, preset {preset}")
    model = MoCADiT(MoCAConfig.preset(preset))
    model.adapter.requires_grad_(False)                 # text only: the (zero-init) adapter stays out
    named = [(n, p) for n, p in model.named_parameters() if not n.startswith("adapter.")]
    params = [p for _, p in named]
    names = [n for n, _ in named]
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.99), weight_decay=0.01)
    ema = EMAWarmup(model, ema_decay)
    start = 0
    ckpts = list_checkpoints(out_dir)
    if ckpts:
        ck = load_checkpoint(ckpts[-1])
        model.load_state_dict(ck["model"])
        osd = ck["optimizer"]                                   # parameter names -> the optimiser's indices
        index = {n: i for i, n in enumerate(names)}
        opt.load_state_dict({"state": {index[k]: v for k, v in osd["state"].items()},
                             "param_groups": [dict(g, params=[index[n] for n in g["params"]])
                                              for g in osd["param_groups"]]})
        ema.shadow = {k: v.float() for k, v in ck["ema"].items()}
        ema.n = start = int(ck["state"]["step"])
        if start > steps:       # exporting it would ship a longer-trained model under a shorter run's name
            raise SystemExit(f"[toy-backbone] {ckpts[-1]} is at step {start}, past the {steps} steps asked for; "
                             f"ask for {start} or more steps, or move {out_dir} aside to train afresh")
        log(f"[toy-backbone] resumed from {ckpts[-1]}")
    model.train()
    t0, losses = time.perf_counter(), []
    for step in range(start, steps):
        g = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(lat.shape[0], (batch_size,), generator=g)
        x0 = lat[idx].float()
        ctx = txt[idx].clone()
        drop = torch.rand(batch_size, generator=g) < text_dropout
        ctx[drop] = empty
        noise = torch.randn(x0.shape, generator=g)
        sigma = flow.sample_sigmas(torch.rand(batch_size, generator=g), shift, "logit_normal")
        x_t = flow.add_noise(x0, noise, sigma)
        for group in opt.param_groups:
            group["lr"] = lr_at(step, lr, warmup, steps)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            v = model(x_t, flow.timesteps(sigma), ctx.float())
        loss = (v.float() - flow.velocity_target(x0, noise)).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        ema.update(model)
        losses.append(loss.item())
        done = step + 1
        if done % 50 == 0 or done == steps:
            rate = (time.perf_counter() - t0) / len(losses)
            log(f"[toy-backbone] step {done}/{steps} loss {sum(losses[-50:]) / len(losses[-50:]):.4f} "
                f"({rate:.2f} s/step)")
        if done % checkpoint_every == 0 or done == steps:
            osd = opt.state_dict()
            ot, og = flatten_optimizer({"state": {names[i]: v for i, v in osd["state"].items()},
                                        "param_groups": [dict(g, params=[names[i] for i in g["params"]])
                                                         for g in osd["param_groups"]]})
            save_checkpoint(out_dir, done, model.state_dict(), ot, og, ema.shadow,
                            {"samples_seen": done * batch_size, "preset": preset, "seed": seed}, keep_last=2)
    model.load_state_dict({k: v for k, v in ema.shadow.items()})
    export = Path(export) if export else out_dir / "toy_wan_t2v.safetensors"
    export.parent.mkdir(parents=True, exist_ok=True)
    save_wan_checkpoint(export, model, dtype=torch.float16, overwrite=True)
    log(f"[toy-backbone] exported EMA weights -> {export}")
    return export
