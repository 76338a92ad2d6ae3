"""Data parallelism for the trainer: FSDP2 sharding (meta skeleton, weights broadcast from rank 0) or DDP, and
gradient synchronisation around accumulation."""
from __future__ import annotations

import contextlib

import torch
import torch.nn as nn

from .config import TrainConfig
from .distributed import Dist


def uses_fsdp(c: TrainConfig, d: Dist) -> bool:
    return d.enabled and c.train.strategy == "fsdp"


def shard(module: nn.Module, c: TrainConfig, device: torch.device):
    """FSDP2: one unit per Wan block and per MoCA layer, the rest (embeddings, head, tokenizer, LoRA) in the
    root unit; bf16 compute and fp32 gradient reduction on CUDA with mixed precision."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    kw = {}
    if c.train.mixed_precision == "bf16" and device.type == "cuda":
        kw["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    dit = module.dit
    for block, layer in zip(dit.blocks, dit.adapter.layers):
        fully_shard(block, **kw)
        fully_shard(layer, **kw)
    fully_shard(module, **kw)


def build_sharded(make, c: TrainConfig, d: Dist) -> nn.Module:
    """FSDP2 without ever materialising the whole model on a GPU: every rank builds a meta skeleton with
    `make(device)`, shards it, and receives the weights from rank 0 (the only process that reads the backbone
    file, so host memory is needed on rank 0 only)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    module = make("meta")
    shard(module, c, d.device)
    module.to_empty(device=d.device)
    full = make("cpu").state_dict() if d.is_main else {}
    set_model_state_dict(module, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    return module


def wrap(module: nn.Module, c: TrainConfig, d: Dist) -> nn.Module:
    """What the loop calls: DDP around the module on several processes; the (FSDP2-sharded) module itself
    otherwise."""
    if not d.enabled or c.train.strategy == "fsdp":
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP
    return DDP(module, device_ids=[d.device.index] if d.device.type == "cuda" else None)


def gradient_sync(model: nn.Module, sync: bool):
    """Context for one micro-batch's backward: with sync=False gradients only accumulate locally (DDP
    `no_sync`; FSDP2 keeps unsharded gradients and skips the reduce-scatter), so a step with several
    micro-batches communicates once, on its last one."""
    if hasattr(model, "set_requires_gradient_sync"):                    # FSDP2 (fully_shard)
        model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if sync or not hasattr(model, "no_sync"):
        return contextlib.nullcontext()
    return model.no_sync()


def full_cpu(t: torch.Tensor) -> torch.Tensor:
    """A full (unsharded) CPU copy of a parameter or DTensor."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.detach().to("cpu")
