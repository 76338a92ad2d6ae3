"""The MoCA trainer: model setup, the optimisation loop, DDP / FSDP2, checkpoints with exact resume,
logging and validation. Launch with `python train_moca.py --config FILE` on one device or
`torchrun --nproc_per_node N train_moca.py --config FILE` on many; only rank 0 writes files.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn as nn

from ..config import MoCAConfig
from ..dit import MoCADiT
from .config import TrainConfig
from .data import SampleOrder, ShardDataset
from .ema import EMA
from .lvpl import LatentVideoPerceptualLoss, build_extractor
from .objective import FlowObjective, MoCATrainModule
from . import train_state

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}


# ---------------------------------------------------------------------------------------------- distributed
class Dist:
    """rank / world / device of this process; initialises torch.distributed when launched by torchrun."""

    def __init__(self, device: str | None = None):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        want_cuda = (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
        if want_cuda:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        self.enabled = self.world > 1
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if want_cuda else "gloo")
        self.is_main = self.rank == 0

    def barrier(self):
        if self.enabled:
            dist.barrier()

    def mean(self, t: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            t = t.clone()
            dist.all_reduce(t)
            t /= self.world
        return t


def lr_at(step: int, o) -> float:
    """Linear warm-up to o.lr over o.warmup_steps, then cosine down to o.lr * o.min_lr_ratio at o.max_steps."""
    if o.warmup_steps > 0 and step < o.warmup_steps:
        return o.lr * (step + 1) / o.warmup_steps
    span = max(1, o.max_steps - o.warmup_steps)
    progress = min(1.0, (step - o.warmup_steps) / span)
    return o.lr * (o.min_lr_ratio + (1 - o.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def _full(t: torch.Tensor) -> torch.Tensor:
    """A full (unsharded) CPU copy of a parameter or DTensor."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.detach().to("cpu")


# ---------------------------------------------------------------------------------------------- trainer
class Trainer:
    def __init__(self, config: TrainConfig, device: str | None = None, log=print):
        self.cfg = c = config
        self.dist = Dist(device)
        self.device = self.dist.device
        self.log = log if self.dist.is_main else (lambda *a, **k: None)
        if c.train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self.out_dir = Path(c.out_dir)
        self.mcfg = MoCAConfig.preset(c.model.preset, **c.model.overrides)

        self.dataset = ShardDataset(c.data.shards)
        for path, why in self.dataset.skipped:
            self.log(f"[moca-train] skipped shard {path}: {why}")
        self.order = SampleOrder(len(self.dataset), seed=c.train.seed, shuffle=c.data.shuffle)
        self.global_batch = c.data.batch_size * c.data.grad_accum * self.dist.world

        self.module = self._build_module()
        self.model = self._wrap(self.module)
        # collected after sharding: FSDP2 replaces parameters by sharded DTensors (same names)
        self.params = {n: p for n, p in self.module.named_parameters() if p.requires_grad}
        self.optimizer = torch.optim.AdamW(list(self.params.values()), lr=c.optim.lr, betas=tuple(c.optim.betas),
                                           eps=c.optim.eps, weight_decay=c.optim.weight_decay, foreach=False)
        self.ema = EMA(self.params, c.train.ema_decay) if c.train.ema_decay > 0 else None
        self.objective = FlowObjective(c, text_len=c.data.text_len or self.mcfg.text_len, text_dim=self.mcfg.text_dim,
                                       empty_text=self._empty_text(), lvpl=self._build_lvpl())
        self.step = 0
        self._writer = None
        self._metrics_file = None

    # ------------------------------------------------------------------ setup
    def _build_module(self) -> MoCATrainModule:
        """The training module on this process's device. Under FSDP2 every rank builds a meta skeleton, shards
        it and receives the weights from rank 0 (the only process that reads the backbone file), so no GPU
        ever holds the whole backbone and host memory is needed on rank 0 only."""
        c = self.cfg
        if self.dist.enabled and c.train.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
            module = self._make_module("meta")
            self._shard(module)
            module.to_empty(device=self.device)
            full = self._make_module("cpu").state_dict() if self.dist.is_main else {}
            set_model_state_dict(module, full, options=StateDictOptions(full_state_dict=True,
                                                                        broadcast_from_rank0=True))
            del full
        else:
            module = self._make_module(self.device)
        dit = module.dit
        dit.gradient_checkpointing = c.train.gradient_checkpointing
        module.train()
        n_train = sum(p.numel() for p in module.parameters() if p.requires_grad)
        n_bb = sum(p.numel() for n, p in module.named_parameters() if not n.startswith(("dit.adapter.", "lora.")))
        n_ad = sum(p.numel() for n, p in module.named_parameters() if n.startswith("dit.adapter."))
        self.log(f"[moca-train] MoCA {c.model.preset}: backbone {n_bb / 1e6:.1f}M, adapter {n_ad / 1e6:.1f}M, "
                 f"trainable {n_train / 1e6:.2f}M ({c.train.trainable}); {self.dist.world} process(es) on "
                 f"{self.device} ({c.train.strategy if self.dist.enabled else 'single'})")
        return module

    def _make_module(self, device) -> MoCATrainModule:
        """MoCADiT (+ LoRA) with weights (backbone file or seeded random init, fresh or given adapter), the
        trainable set marked and dtypes applied, on `device` ("meta" = shapes only, no weights)."""
        c, mc = self.cfg, self.mcfg
        device = torch.device(device)
        meta = device.type == "meta"
        torch.manual_seed(c.train.seed)                       # same random init on every rank
        if meta:
            dit = MoCADiT(mc, device="meta")
        elif c.model.backbone:
            from ..adapter import MoCAAdapter
            from ..checkpoint import check_state_dict, normalize_wan_keys, read_safetensors
            sd, _ = read_safetensors(c.model.backbone)
            sd = normalize_wan_keys(sd)
            dit = MoCADiT(mc, device="meta")
            check_state_dict(dit.backbone_state_dict(), sd, f"{Path(c.model.backbone).name} (Wan 2.1 backbone)")
            adapter = MoCAAdapter(mc).init_weights()
            dit.load_state_dict({**sd, **{"adapter." + k: v for k, v in adapter.state_dict().items()}},
                                assign=True, strict=True)
        else:
            dit = MoCADiT(mc)
        if c.model.adapter_init and not meta:
            from ..checkpoint import read_moca
            f = read_moca(c.model.adapter_init)
            if f.config != mc:
                raise ValueError(f"model.adapter_init {c.model.adapter_init} was made for another MoCA config; "
                                 "set model.preset / model.overrides to match it")
            dit.adapter.load_state_dict(f.adapter_state)

        mode = c.train.trainable
        dit.requires_grad_(mode == "full")
        dit.adapter.requires_grad_(True)
        lora = None
        if mode == "lora":
            from .lora import LoRASet
            lora = LoRASet(dit, c.train.lora_targets, c.train.lora_rank, c.train.lora_alpha)
        module = MoCATrainModule(dit, lora)
        bdt, pdt = DTYPES[c.model.backbone_dtype], DTYPES[c.model.param_dtype]
        for name, p in module.named_parameters():
            if name.startswith("dit.patch_embedding"):               # MoCADiT runs the patch conv in fp32
                dt = torch.float32
            else:
                dt = pdt if p.requires_grad else bdt
            p.data = p.data.to(device, dtype=dt)
        for name, b in module.named_buffers():
            b.data = b.data.to(device)
        return module

    def _shard(self, module: MoCATrainModule):
        """FSDP2: one unit per Wan block and per MoCA layer, the rest (embeddings, head, tokenizer, LoRA) in the
        root unit; bf16 compute and fp32 gradient reduction on CUDA with mixed precision."""
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
        kw = {}
        if self.cfg.train.mixed_precision == "bf16" and self.device.type == "cuda":
            kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        dit = module.dit
        for block, layer in zip(dit.blocks, dit.adapter.layers):
            fully_shard(block, **kw)
            fully_shard(layer, **kw)
        fully_shard(module, **kw)

    def _wrap(self, module: nn.Module) -> nn.Module:
        if not self.dist.enabled or self.cfg.train.strategy == "fsdp":       # FSDP2 shards in _build_module
            return module
        from torch.nn.parallel import DistributedDataParallel as DDP
        return DDP(module, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def _build_lvpl(self):
        lv = self.cfg.objective.lvpl
        if lv.weight <= 0:
            return None
        ex = build_extractor(lv.extractor, vae=lv.vae, vae_dim=lv.vae_dim, stages=lv.stages, checkpoint=lv.checkpoint)
        return LatentVideoPerceptualLoss(ex, lv.face_weight, lv.background_weight, lv.temporal_weight,
                                         lv.stage_weights).to(self.device)

    def _empty_text(self):
        path = self.cfg.objective.empty_text
        if not path:
            return None
        from ..checkpoint import read_safetensors
        t, _ = read_safetensors(path)
        if "text" not in t:
            raise ValueError(f"objective.empty_text {path} must hold a tensor named 'text' [L, 4096] "
                             "(train_moca.py cache writes empty_text.safetensors next to the shards)")
        return t["text"].float()

    # ------------------------------------------------------------------ state
    def _sd_options(self, **kw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions
        return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)

    def trainable_state(self) -> dict:
        """Full trainable parameters by name (gathered on every rank under FSDP)."""
        if self.cfg.train.strategy == "fsdp" and self.dist.enabled:
            from torch.distributed.checkpoint.state_dict import get_model_state_dict
            return get_model_state_dict(self.module, options=self._sd_options(ignore_frozen_params=True))
        return {n: _full(p) for n, p in self.params.items()}

    def save(self) -> Path | None:
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
        model_sd = self.trainable_state()
        osd = get_optimizer_state_dict(self.module, self.optimizer, options=self._sd_options())
        ema_sd = {n: _full(t) for n, t in self.ema.state_dict().items()} if self.ema else None
        path = None
        if self.dist.is_main:
            tensors, groups = train_state.flatten_optimizer(osd)
            path = train_state.save_checkpoint(
                self.out_dir, self.step, model_sd, tensors, groups, ema_sd,
                {"samples_seen": self.step * self.global_batch, "world_size": self.dist.world,
                 "global_batch": self.global_batch, "config": self.cfg.to_dict()},
                keep_last=self.cfg.checkpoint.keep_last)
            self.log(f"[moca-train] checkpoint {path}")
        self.dist.barrier()
        return path

    def resume(self, path=None) -> bool:
        """Load the given checkpoint folder, or the latest one in out_dir. Returns False if there is none."""
        if path is None:
            found = train_state.list_checkpoints(self.out_dir)
            if not found:
                self.log(f"[moca-train] no checkpoint in {self.out_dir / 'checkpoints'}; starting fresh")
                return False
            path = found[-1]
        ck = train_state.load_checkpoint(path)
        st = ck["state"]
        if st["global_batch"] != self.global_batch:
            raise ValueError(f"{path} was trained with a global batch of {st['global_batch']} samples; this run has "
                             f"{self.global_batch} (batch_size x grad_accum x processes). Keep the global batch "
                             "to resume exactly (the world size may change).")
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict
        missing = sorted(set(self.params) - set(ck["model"]))
        if missing:
            raise ValueError(f"{path} lacks trainable parameters {missing[:4]}...: it was made with another "
                             "train.trainable setting or model config")
        if self.cfg.train.strategy == "fsdp" and self.dist.enabled:
            set_model_state_dict(self.module, ck["model"], options=self._sd_options(strict=False))
        else:
            with torch.no_grad():
                for n, p in self.params.items():
                    p.copy_(ck["model"][n])
        set_optimizer_state_dict(self.module, self.optimizer, ck["optimizer"], options=self._sd_options())
        if self.ema is not None:
            if ck["ema"] is None:
                raise ValueError(f"{path} has no EMA state but train.ema_decay > 0")
            with torch.no_grad():
                for n, t in self.ema.shadow.items():
                    full = ck["ema"][n]
                    if hasattr(t, "device_mesh"):
                        from torch.distributed.tensor import distribute_tensor
                        full = distribute_tensor(full.to(t.dtype), t.device_mesh, t.placements)
                    t.copy_(full)
        train_state.set_rng_states(st["rng"])
        self.step = int(st["step"])
        self.log(f"[moca-train] resumed from {path} at step {self.step} ({st['samples_seen']} samples seen)")
        return True

    # ------------------------------------------------------------------ logging
    def _scalars(self, values: dict, step: int):
        if not self.dist.is_main:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self._metrics_file is None:
            self._metrics_file = open(self.out_dir / "metrics.jsonl", "a", encoding="utf-8")
            if self.cfg.logging.tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter
                    self._writer = SummaryWriter(str(self.out_dir / "tensorboard"))
                except ImportError:
                    warnings.warn("TensorBoard logging needs the `tensorboard` package (pip install tensorboard); "
                                  "scalars go to metrics.jsonl only", stacklevel=2)
        self._metrics_file.write(json.dumps({"step": step, **values}) + "\n")
        self._metrics_file.flush()
        if self._writer is not None:
            for k, v in values.items():
                self._writer.add_scalar(k, v, step)

    def close(self):
        if self._metrics_file:
            self._metrics_file.close()
            self._metrics_file = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    # ------------------------------------------------------------------ steps
    def _autocast(self):
        mp = self.cfg.train.mixed_precision
        if mp == "no":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def micro_batches(self, step: int):
        """(samples, positions) of this process's micro-batches at an optimiser step."""
        c, B, W = self.cfg, self.cfg.data.batch_size, self.dist.world
        for m in range(c.data.grad_accum):
            start = step * self.global_batch + m * B * W + self.dist.rank * B
            positions = list(range(start, start + B))
            idx = self.order.indices(start, B)
            yield [self.dataset[i] for i in idx], positions

    def train_step(self) -> dict:
        c = self.cfg
        lr = lr_at(self.step, c.optim)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        sums = {}
        n_micro = c.data.grad_accum
        pdt = DTYPES[c.model.param_dtype]
        for m, (samples, positions) in enumerate(self.micro_batches(self.step)):
            batch = self.objective.make_batch(samples, positions).to(self.device, pdt)
            sync = contextlib.nullcontext()
            if m < n_micro - 1 and hasattr(self.model, "no_sync"):
                sync = self.model.no_sync()
            with sync:
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

    @torch.no_grad()
    def eval_loss(self, n: int = 4, seed_offset: int = 10 ** 12) -> float:
        """Mean loss on the first n dataset samples with fixed draws (same every call): a noise-free progress
        measure for tests and logs (no dropout of text or identity)."""
        c = self.cfg
        saved = (c.objective.text_dropout, c.objective.id_dropout)
        c.objective.text_dropout = c.objective.id_dropout = 0.0
        try:
            idx = list(range(min(n, len(self.dataset))))
            batch = self.objective.make_batch([self.dataset[i] for i in idx],
                                              [seed_offset + i for i in idx]).to(self.device, DTYPES[c.model.param_dtype])
            with self._autocast():
                terms = self.objective.losses(self.module, batch)
            return float(terms["loss"].mean())
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
        try:
            while self.step < end:
                vals = self.train_step()
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
            bar.close()
            self.close()

    # ------------------------------------------------------------------ validation
    def validate(self):
        from .validation import run_validation
        return run_validation(self)
