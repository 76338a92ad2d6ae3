"""The MoCA trainer loop: optimiser steps with gradient accumulation, the schedule, EMA, periodic logging,
validation and checkpoints. Launch with `python train_moca.py --config FILE` on one device or
`torchrun --nproc_per_node N train_moca.py --config FILE` on many; only rank 0 writes files.

The parts live next to it, one concern each: `distributed` (processes, determinism), `data` (shards, the
per-process sample stream, reading ahead), `build` (the model and the loss), `parallel` (FSDP2 / DDP),
`checkpointing` (save / exact resume), `metrics` (metrics.jsonl, TensorBoard), `validation`, `export`.
"""
from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import torch

from ..variants import model_config, variant_of
from . import build, checkpointing, parallel
from .config import DTYPES, TrainConfig
from .data import PERSON_KEYS, RankStream, SampleOrder, ShardDataset, micro_batch_loader
from .distributed import Dist, configure_determinism
from .ema import EMA
from .metrics import MetricsLog
from .objective import FlowObjective

__all__ = ["Trainer", "Dist", "lr_at", "DTYPES"]

# what eval_loss(identity="shuffled") swaps between samples (person k's where the donor has one)
IDENTITY_KEYS = ("arcface", "face_latent") + PERSON_KEYS


def _shuffled_references(samples: dict, by_size: dict) -> dict:
    """Every sample with the identity keys of the next sample of its size group (the last takes the first's)."""
    out = {}
    for ids in by_size.values():
        for j, i in enumerate(ids):
            donor = samples[ids[(j + 1) % len(ids)]]
            out[i] = dict(samples[i], **{k: donor[k] for k in IDENTITY_KEYS if k in donor})
    return out


def lr_at(step: int, o) -> float:
    """Linear warm-up to o.lr over o.warmup_steps, then cosine down to o.lr * o.min_lr_ratio at o.max_steps."""
    if o.warmup_steps > 0 and step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    span = max(1, o.max_steps - o.warmup_steps)
    progress = min(1.0, (step - o.warmup_steps) / span)
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


class Trainer:
    def __init__(self, config: TrainConfig, device: str | None = None, log=print):
        self.cfg = c = config
        self.dist = Dist(device)
        self.device = self.dist.device
        self.log = log if self.dist.is_main else (lambda *a, **k: None)
        configure_determinism(c.train.deterministic, self.device)
        self.out_dir = Path(c.out_dir)
        self.mcfg = model_config(c.model.preset, c.model.variant, c.model.overrides)

        self.dataset = ShardDataset(c.data.shards)       # refuses shards of different face recognisers
        for path, why in self.dataset.skipped:
            self.log(f"[moca-train] skipped shard {path}: {why}")
        self.recognizer = self.dataset.recognizer         # recorded in checkpoints and the exported adapter
        if self.recognizer is not None:
            self.log(f"[moca-train] face recogniser of the shards: {self.recognizer.label()}")
        self._check_recognizers()
        self.order = SampleOrder(len(self.dataset), seed=c.train.seed, shuffle=c.data.shuffle)
        self.stream = RankStream(self.order, c.data.batch_size, c.data.grad_accum, self.dist.world, self.dist.rank)
        self.global_batch = self.stream.global_batch

        self.module = self._build_module()
        self.model = parallel.wrap(self.module, c, self.dist)
        # collected after sharding: FSDP2 replaces parameters by sharded DTensors (same names)
        self.params = {n: p for n, p in self.module.named_parameters() if p.requires_grad}
        # two groups when more than the adapter trains: the adapter at optim.lr, the rest (backbone or LoRA) at
        # optim.lr * optim.backbone_lr_scale (a pretrained backbone wants a gentler step than a fresh adapter)
        groups = [[p for n, p in self.params.items() if n.startswith("dit.adapter.")],
                  [p for n, p in self.params.items() if not n.startswith("dit.adapter.")]]
        self.lr_scales = [s for s, g in zip((1.0, c.optim.backbone_lr_scale), groups) if g]
        self.optimizer = torch.optim.AdamW([{"params": g} for g in groups if g], lr=c.optim.lr,
                                           betas=tuple(c.optim.betas), eps=c.optim.eps,
                                           weight_decay=c.optim.weight_decay, foreach=False)
        self.ema = EMA(self.params, c.train.ema_decay) if c.train.ema_decay > 0 else None
        self.objective = FlowObjective(c, text_len=c.data.text_len or self.mcfg.text_len, text_dim=self.mcfg.text_dim,
                                       empty_text=build.load_empty_text(c.objective.empty_text),
                                       lvpl=build.build_lvpl(c, self.device))
        self.step = 0
        self.metrics = MetricsLog(self.out_dir, c.logging.tensorboard, enabled=self.dist.is_main)

    def _check_recognizers(self):
        """Refuse an adapter_init or a validation face pack of another recogniser than the shards'."""
        from ..provenance import Recognizer, read_file_record, require_match
        c = self.cfg
        if c.model.adapter_init:
            require_match(self.recognizer, "the training shards", read_file_record(c.model.adapter_init),
                          f"model.adapter_init {Path(c.model.adapter_init).name}",
                          "start from an adapter trained on this recogniser's embeddings, or from scratch "
                          "(no model.adapter_init), or train on shards of the adapter's recogniser.", "train_moca.py")
        if c.validation.face_models and self.recognizer is not None:
            from ..face.packs import find_pack
            pack = find_pack(c.validation.face_models, c.validation.face_pack)
            require_match(self.recognizer, "the training shards", Recognizer.of_file(pack.name, pack.recognizer),
                          f"validation.face_pack '{pack.name}'", f"set validation.face_pack to "
                          f"'{self.recognizer.pack}' (the pack the shards were cached with), so val/likeness "
                          "compares embeddings of one space.", "train_moca.py")

    def _build_module(self):
        c = self.cfg
        make = lambda device: build.make_module(c, self.mcfg, device)          # noqa: E731
        module = parallel.build_sharded(make, c, self.dist) if parallel.uses_fsdp(c, self.dist) else make(self.device)
        module.dit.gradient_checkpointing = c.train.gradient_checkpointing
        module.train()
        n = build.describe(module)
        self.log(f"[moca-train] MoCA {c.model.preset} ({variant_of(self.mcfg)}): backbone {n['backbone']:.1f}M, "
                 f"adapter {n['adapter']:.1f}M, trainable {n['trainable']:.2f}M ({c.train.trainable}); {self.dist.world} process(es) on "
                 f"{self.device} ({c.train.strategy if self.dist.enabled else 'single'})")
        return module

    # ------------------------------------------------------------------ state, logging
    def trainable_state(self) -> dict:
        """Full trainable parameters by name (gathered on every rank under FSDP)."""
        return checkpointing.trainable_state(self)

    def save(self) -> Path | None:
        return checkpointing.save(self)

    def resume(self, path=None) -> bool:
        """Load the given checkpoint folder, or the latest one in out_dir. Returns False if there is none."""
        return checkpointing.resume(self, path)

    def _scalars(self, values: dict, step: int):
        self.metrics.write(values, step)

    def close(self):
        self.metrics.close()

    # ------------------------------------------------------------------ steps
    def _autocast(self):
        mp = self.cfg.train.mixed_precision
        if mp == "no":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def micro_batches(self, step: int):
        """(samples, positions) of this process's micro-batches at an optimiser step, read now."""
        for m in range(self.cfg.data.grad_accum):
            yield [self.dataset[i] for i in self.stream.indices(step, m)], self.stream.positions(step, m)

    def train_step(self, micro: list[list[dict]] | None = None) -> dict:
        """One optimiser step. `micro`: the sample lists of its micro-batches (from the background loader);
        read here when not given."""
        c = self.cfg
        lr = lr_at(self.step, c.optim)
        for g, scale in zip(self.optimizer.param_groups, self.lr_scales):
            g["lr"] = lr * scale
        sums = {}
        n_micro = c.data.grad_accum
        pdt = DTYPES[c.model.param_dtype]
        if micro is None:
            micro = [samples for samples, _ in self.micro_batches(self.step)]
        for m, samples in enumerate(micro):
            batch = self.objective.make_batch(samples, self.stream.positions(self.step, m)).to(self.device, pdt)
            last = m == n_micro - 1
            with parallel.gradient_sync(self.model, last or c.train.grad_sync == "micro_batch"):
                with self._autocast():
                    terms = self.objective.losses(self.model, batch)
                (terms["loss"].mean() / n_micro).backward()
            for k, v in terms.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float().mean() / n_micro
        grad_norm = torch.nn.utils.clip_grad_norm_(list(self.params.values()),
                                                   c.optim.grad_clip if c.optim.grad_clip > 0 else float("inf"))
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update()
        self.step += 1
        out = {k: float(self.dist.mean(v.to(self.device))) for k, v in sums.items()}
        gn = grad_norm.full_tensor() if hasattr(grad_norm, "full_tensor") else grad_norm
        out.update(lr=lr, grad_norm=float(gn))
        return out

    def eval_loss(self, n: int | None = None, seed_offset: int = 10 ** 12, identity: str = "matched") -> float:
        """Mean loss on the first n dataset samples (default validation.eval_samples) with fixed draws (same
        every call): a noise-free progress measure for tests and logs (no dropout of text or identity).
        Samples are batched data.batch_size at a time, clips of one size together.

        identity="shuffled" gives every sample the references of the next sample of its size group (same
        noise, sigma and text): the loss minus the matched loss is how much the adapter's output depends on
        *whose* face it is given (`identity_gain`), which a generic improvement of the backbone does not show."""
        if identity not in ("matched", "shuffled"):
            raise ValueError(f"eval_loss: identity must be 'matched' or 'shuffled', not {identity!r}")
        samples, by_size = self._eval_set(n)
        if identity == "shuffled":
            samples = _shuffled_references(samples, by_size)
        return self._fixed_draw_loss(samples, by_size, seed_offset)

    def identity_gain(self, n: int | None = None, matched: float | None = None) -> float | None:
        """eval_loss with shuffled references minus eval_loss with the right ones (`matched`, computed when
        not given): > 0 when the adapter uses whose face it is given. None when no two of the first n samples
        share a clip size (nothing to swap)."""
        samples, by_size = self._eval_set(n)
        if all(len(ids) < 2 for ids in by_size.values()):
            return None
        if matched is None:
            matched = self._fixed_draw_loss(samples, by_size)
        return self._fixed_draw_loss(_shuffled_references(samples, by_size), by_size) - matched

    def _eval_set(self, n: int | None) -> tuple[dict, dict]:
        """The first n samples {index: sample} and their indices grouped by (latent, face-latent) size."""
        n = self.cfg.validation.eval_samples if n is None else n
        samples = {i: self.dataset[i] for i in range(min(n, len(self.dataset)))}
        by_size: dict[tuple, list[int]] = {}
        for i, s in samples.items():
            by_size.setdefault((tuple(s["latents"].shape), tuple(s["face_latent"].shape[-4:])), []).append(i)
        return samples, by_size

    @torch.no_grad()
    def _fixed_draw_loss(self, samples: dict, by_size: dict, seed_offset: int = 10 ** 12) -> float:
        c = self.cfg
        saved = (c.objective.text_dropout, c.objective.id_dropout)
        c.objective.text_dropout = c.objective.id_dropout = 0.0
        total = 0.0
        try:
            for ids in by_size.values():
                for k in range(0, len(ids), c.data.batch_size):
                    chunk = ids[k:k + c.data.batch_size]
                    batch = self.objective.make_batch([samples[i] for i in chunk], [seed_offset + i for i in chunk])
                    with self._autocast():
                        terms = self.objective.losses(self.module, batch.to(self.device, DTYPES[c.model.param_dtype]))
                    total += float(terms["loss"].float().sum())
            return total / max(1, len(samples))
        finally:
            c.objective.text_dropout, c.objective.id_dropout = saved

    # ------------------------------------------------------------------ loop
    def fit(self, stop_after: int | None = None) -> dict:
        """Train to optim.max_steps (or `stop_after` more steps, then checkpoint and return).
        Returns {"losses": [...], "exported": path or None}."""
        c = self.cfg
        from tqdm.auto import tqdm
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            (self.out_dir / "config.json").write_text(json.dumps(self.cfg.to_dict(), indent=1), encoding="utf-8")
        end = c.optim.max_steps if stop_after is None else min(c.optim.max_steps, self.step + stop_after)
        bar = tqdm(total=c.optim.max_steps, initial=self.step, desc="MoCA train", unit="step",
                   disable=not (c.logging.progress and self.dist.is_main), dynamic_ncols=True)
        losses = []
        last_saved = None
        t_last = time.perf_counter()
        d = c.data
        batches = micro_batch_loader(self.dataset, self.stream, self.step, end, d.num_workers, d.prefetch,
                                     pin_memory=self.device.type == "cuda")
        try:
            while self.step < end:
                vals = self.train_step([next(batches) for _ in range(d.grad_accum)])
                losses.append(vals["loss"])
                bar.update(1)
                bar.set_postfix(loss=f"{vals['loss']:.4f}", lr=f"{vals['lr']:.2e}")
                if c.logging.every and (self.step % c.logging.every == 0 or self.step == end):
                    now = time.perf_counter()
                    steps = c.logging.every if self.step % c.logging.every == 0 else max(1, len(losses) % c.logging.every)
                    vals["sec_per_step"] = (now - t_last) / steps
                    t_last = now
                    self._scalars({f"train/{k}": v for k, v in vals.items()}, self.step)
                if c.validation.every and self.step % c.validation.every == 0:
                    self.validate()
                if c.checkpoint.every and self.step % c.checkpoint.every == 0:
                    self.save()
                    last_saved = self.step
            bar.close()
            if last_saved != self.step:
                self.save()
            exported = None
            if self.step >= c.optim.max_steps:
                from .export import export_run
                exported = export_run(self)
            return {"losses": losses, "exported": exported}
        finally:
            del batches                         # stops the loader's workers
            bar.close()
            self.close()

    # ------------------------------------------------------------------ validation
    def validate(self):
        from .validation import run_validation
        return run_validation(self)
