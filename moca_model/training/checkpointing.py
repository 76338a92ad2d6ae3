"""The trainer's checkpoint I/O: gather the trainable weights, optimiser and EMA state (full tensors, also under
FSDP2), write them with `train_state.save_checkpoint` (rank 0), and restore them for an exact resume."""
from __future__ import annotations

from pathlib import Path

import torch

from . import train_state
from .parallel import full_cpu, uses_fsdp


def _sd_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions
    return StateDictOptions(full_state_dict=True, cpu_offload=True, **kw)


def trainable_state(trainer) -> dict:
    """Full trainable parameters by name (gathered on every rank under FSDP)."""
    if uses_fsdp(trainer.cfg, trainer.dist):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict
        return get_model_state_dict(trainer.module, options=_sd_options(ignore_frozen_params=True))
    return {n: full_cpu(p) for n, p in trainer.params.items()}


def save(trainer) -> Path | None:
    """Checkpoint the run at its current step (collective: every rank calls it; rank 0 writes)."""
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    model_sd = trainable_state(trainer)
    osd = get_optimizer_state_dict(trainer.module, trainer.optimizer, options=_sd_options())
    ema_sd = {n: full_cpu(t) for n, t in trainer.ema.state_dict().items()} if trainer.ema else None
    path = None
    if trainer.dist.is_main:
        tensors, groups = train_state.flatten_optimizer(osd)
        path = train_state.save_checkpoint(
            trainer.out_dir, trainer.step, model_sd, tensors, groups, ema_sd,
            {"samples_seen": trainer.step * trainer.global_batch, "world_size": trainer.dist.world,
             "ema_updates": trainer.ema.num_updates if trainer.ema else 0,
             "global_batch": trainer.global_batch, "config": trainer.cfg.to_dict()},
            keep_last=trainer.cfg.checkpoint.keep_last)
        trainer.log(f"[moca-train] checkpoint {path}")
    trainer.dist.barrier()
    return path


def resume(trainer, path=None) -> bool:
    """Load the given checkpoint folder, or the latest one in out_dir. Returns False if there is none."""
    if path is None:
        found = train_state.list_checkpoints(trainer.out_dir)
        if not found:
            trainer.log(f"[moca-train] no checkpoint in {trainer.out_dir / 'checkpoints'}; starting fresh")
            return False
        path = found[-1]
    ck = train_state.load_checkpoint(path)
    st = ck["state"]
    if st["global_batch"] != trainer.global_batch:
        raise ValueError(f"{path} was trained with a global batch of {st['global_batch']} samples; this run has "
                         f"{trainer.global_batch} (batch_size x grad_accum x processes). Keep the global batch "
                         "to resume exactly (the world size may change).")
    from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict
    missing = sorted(set(trainer.params) - set(ck["model"]))
    if missing:
        raise ValueError(f"{path} lacks trainable parameters {missing[:4]}...: it was made with another "
                         "train.trainable setting or model config")
    if uses_fsdp(trainer.cfg, trainer.dist):
        set_model_state_dict(trainer.module, ck["model"], options=_sd_options(strict=False))
    else:
        with torch.no_grad():
            for n, p in trainer.params.items():
                p.copy_(ck["model"][n])
    set_optimizer_state_dict(trainer.module, trainer.optimizer, ck["optimizer"], options=_sd_options())
    if trainer.ema is not None:
        if ck["ema"] is None:
            raise ValueError(f"{path} has no EMA state but train.ema_decay > 0")
        trainer.ema.load_state_dict(ck["ema"])
        trainer.ema.num_updates = int(st.get("ema_updates", st["step"]))     # one update per step
    train_state.set_rng_states(st["rng"])
    trainer.step = int(st["step"])
    trainer.log(f"[moca-train] resumed from {path} at step {trainer.step} ({st['samples_seen']} samples seen)")
    return True
