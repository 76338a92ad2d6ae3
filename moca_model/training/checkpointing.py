"""The trainer's checkpoint I/O: gather the trainable weights, optimiser and EMA state (full tensors, also under
FSDP2), write them with `train_state.save_checkpoint` (rank 0), and restore them for an exact resume, refusing
a run whose data stream differs from the checkpoint's."""
from __future__ import annotations

import hashlib
import json
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


def checkpoint_model_config(st: dict):
    """The MoCA model a checkpoint's state (state.json) was trained with. Checkpoints store it since the real
    presets became lean MoCA; an older one's is its training config's preset, which then meant MoCA as designed."""
    from ..config import MoCAConfig
    from ..variants import DESIGNED_WIDTHS, model_config
    if st.get("moca_config"):
        return MoCAConfig.from_dict(st["moca_config"])
    m = st.get("config", {}).get("model", {})
    preset, variant = m.get("preset", "tiny"), m.get("variant")
    if variant is None and preset in DESIGNED_WIDTHS:
        variant = "moca"
    return model_config(preset, variant, m.get("overrides") or {})


def data_stream(trainer) -> dict:
    """What fixes the stream of samples and their draws, beyond the global batch: the seed, the shard set
    (names, sample counts and sizes; not folders, so a moved cache still resumes), the order and the text
    padding."""
    c = trainer.cfg
    shards = [[p.name, n, p.stat().st_size] for p, n in trainer.dataset.shards]
    return {"seed": c.train.seed, "shuffle": c.data.shuffle, "reference": c.data.reference,
            "automatic_binding": c.data.automatic_binding,
            "text_len": trainer.objective.text_len, "num_samples": len(trainer.dataset), "num_shards": len(shards),
            "shards_digest": hashlib.sha256(json.dumps(shards).encode()).hexdigest()[:16]}


def _stream_changes(saved: dict | None, now: dict, saved_config: dict) -> list[str]:
    """Human-readable differences between a checkpoint's data stream and this run's."""
    if saved is None:                     # checkpoints before issue 9: compare what their config tells
        d, t = saved_config.get("data", {}), saved_config.get("train", {})
        saved = {"seed": t.get("seed"), "shuffle": d.get("shuffle"), "reference": d.get("reference"),
                 "text_len": d.get("text_len") or now["text_len"]}
    names = {"seed": "train.seed", "shuffle": "data.shuffle", "reference": "data.reference",
             "automatic_binding": "data.automatic_binding", "text_len": "data.text_len"}   # compared where saved
    out = [f"{names[k]} {saved[k]!r} -> {now[k]!r}" for k in names if k in saved and saved[k] != now[k]]
    if "shards_digest" in saved and saved["shards_digest"] != now["shards_digest"]:
        out.append(f"shard set {saved['num_shards']} shards / {saved['num_samples']} samples "
                   f"({saved['shards_digest']}) -> {now['num_shards']} / {now['num_samples']} ({now['shards_digest']})")
    return out


def _recognizer(trainer):
    """The face recogniser of the run's shards (provenance.Recognizer, None when unrecorded)."""
    return getattr(trainer, "recognizer", None)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and k != "overrides" else {prefix + k: v})
    return out


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
             "ema_updates": trainer.ema.num_updates if trainer.ema else 0, "data_stream": data_stream(trainer),
             "global_batch": trainer.global_batch, "config": trainer.cfg.to_dict(),
             "moca_config": trainer.mcfg.to_dict(),
             "face_recognizer": _recognizer(trainer) and _recognizer(trainer).as_dict()},
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
    from ..provenance import Recognizer, require_match
    require_match(_recognizer(trainer), "this run's training shards", Recognizer.from_value(st.get("face_recognizer")),
                  f"checkpoint {path}", "resume on shards of the checkpoint's recogniser (data.shards), or start a "
                  "new run (another out_dir) on these shards.", "train_moca.py --resume")
    trained = checkpoint_model_config(st)
    if trained != trainer.mcfg:
        from ..variants import variant_of
        diff = [f"{f} {getattr(trained, f)!r} -> {getattr(trainer.mcfg, f)!r}" for f in trained.to_dict()
                if getattr(trained, f) != getattr(trainer.mcfg, f)]
        raise ValueError(f"{path} trained another MoCA model ({variant_of(trained)}) than this config builds "
                         f"({variant_of(trainer.mcfg)}): {'; '.join(diff)}. The wan presets build lean MoCA since "
                         "2026-12; to resume a run of MoCA as designed set model.variant: moca (or the run's "
                         "model.overrides), or start a new run in another out_dir.")
    if st["global_batch"] != trainer.global_batch:
        raise ValueError(f"{path} was trained with a global batch of {st['global_batch']} samples; this run has "
                         f"{trainer.global_batch} (batch_size x grad_accum x processes). Keep the global batch "
                         "to resume exactly (the world size may change).")
    changes = _stream_changes(st.get("data_stream"), data_stream(trainer), st.get("config", {}))
    if changes:
        what = "; ".join(changes)
        if trainer.cfg.checkpoint.strict_resume:
            raise ValueError(f"{path} was trained on another data stream: {what}. Resuming would not continue "
                             "that run. Restore those settings, or set checkpoint.strict_resume: false to "
                             "continue from its weights on the new stream.")
        trainer.log(f"[moca-train] warning: resuming on another data stream ({what}); "
                    "checkpoint.strict_resume is off, so the run continues from the weights, not exactly")
    old, new = _flat(st.get("config", {})), _flat(trainer.cfg.to_dict())
    other = [f"{k} {old[k]!r} -> {new[k]!r}" for k in sorted(set(old) & set(new))
             if old[k] != new[k] and k not in ("train.seed", "data.shuffle", "data.reference", "data.text_len")]
    if other:
        trainer.log(f"[moca-train] resuming with changed settings: {'; '.join(other)}")
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
    trainer.metrics.resume_at(trainer.step)          # drop what the interrupted run logged after the checkpoint
    trainer.log(f"[moca-train] resumed from {path} at step {trainer.step} ({st['samples_seen']} samples seen)")
    return True
