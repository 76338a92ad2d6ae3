"""Export trained weights in the formats the nodes and `load_moca` read.

- the MoCA adapter: `save_moca` adapter file (EMA weights when EMA is on and export.use_ema);
- with train.trainable = "lora": also `<name>_lora.safetensors` in ComfyUI's LoRA format (load it with
  LoraLoaderModelOnly on the Wan model the adapter attaches to);
- with train.trainable = "full": also `<name>_combined.safetensors` (Wan backbone + adapter, `save_moca` combined).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..adapter import MoCAAdapter
from ..checkpoint import save_moca
from ..config import MoCAConfig
from . import checkpointing
from .config import DTYPES

ADAPTER_PREFIX = "dit.adapter."


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"export dtype {name!r}: choose one of {list(DTYPES)}")
    return DTYPES[name]


def export_state(state: dict, mcfg: MoCAConfig, out, dtype="bfloat16", metadata: dict | None = None,
                 lora_names: dict | None = None, lora_alpha: float | None = None, recognizer=None) -> Path:
    """Write the adapter (and LoRA / combined files when `state` has them) from trainable-parameter names.
    `recognizer`: the training shards' face recogniser (provenance.Recognizer), recorded in the adapter."""
    out = Path(out)
    dt = _dtype(dtype)
    adapter_sd = {k[len(ADAPTER_PREFIX):]: v.to(dt) for k, v in state.items() if k.startswith(ADAPTER_PREFIX)}
    adapter = MoCAAdapter(mcfg, device="meta")
    adapter.load_state_dict(adapter_sd, assign=True, strict=True)
    meta = {"trainer": "train_moca.py", **(metadata or {})}
    save_moca(out, adapter, metadata=meta, overwrite=True, recognizer=recognizer)
    if lora_names:
        from ..checkpoint import atomic_save_safetensors
        from .lora import comfy_lora_state_dict
        atomic_save_safetensors(comfy_lora_state_dict(state, lora_names, lora_alpha),
                                out.with_name(out.stem + "_lora.safetensors"),
                                {"format": "comfyui-lora", "moca_adapter": out.name}, overwrite=True)
    if any(k.startswith("dit.blocks.") for k in state):                       # full fine-tune
        from ..dit import MoCADiT
        model = MoCADiT(mcfg, device="meta")
        model.load_state_dict({k[len("dit."):]: v.to(dt) for k, v in state.items() if k.startswith("dit.")},
                              assign=True, strict=True)
        save_moca(out.with_name(out.stem + "_combined.safetensors"), model, metadata=meta, overwrite=True,
                  recognizer=recognizer)
    return out


def export_run(trainer) -> Path | None:
    """At the end of training: gather the weights (every rank), rank 0 writes out_dir/export.name."""
    c = trainer.cfg
    use_ema = trainer.ema is not None and c.export.use_ema
    if use_ema:
        state = {n: (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu()
                 for n, t in trainer.ema.state_dict().items()}
    else:
        state = trainer.trainable_state()
    path = None
    if trainer.dist.is_main:
        lora = trainer.module.lora
        path = export_state(state, trainer.mcfg, Path(c.out_dir) / c.export.name, c.export.dtype,
                            {"steps": str(trainer.step), "ema": str(use_ema), "preset": c.model.preset},
                            lora_names=lora.names if lora is not None else None,
                            lora_alpha=lora.alpha if lora is not None else None,
                            recognizer=getattr(trainer, "recognizer", None))
        trainer.log(f"[moca-train] exported {path}")
    trainer.dist.barrier()
    return path


def export_checkpoint(ckpt_dir, out, use_ema: bool = True, dtype: str = "bfloat16") -> Path:
    """Export from a training checkpoint folder (no model or data needed): `train_moca.py export`."""
    from safetensors.torch import load_file

    from ..provenance import Recognizer
    from .config import TrainConfig
    ckpt_dir = Path(ckpt_dir)
    st = json.loads((ckpt_dir / "state.json").read_text(encoding="utf-8"))
    cfg = TrainConfig.from_dict(st["config"])
    mcfg = checkpointing.checkpoint_model_config(st)
    ema = ckpt_dir / "ema.safetensors"
    state = load_file(str(ema if use_ema and ema.is_file() else ckpt_dir / "model.safetensors"))
    lora_names = None
    if cfg.train.trainable == "lora":
        lora_names = {k[len("lora.layers."):-len(".down.weight")]: "" for k in state if k.endswith(".down.weight")}
        lora_names = {k: k.replace("__", ".") for k in lora_names}
    return export_state(state, mcfg, out, dtype, {"steps": str(st["step"]), "ema": str(use_ema and ema.is_file()),
                                                  "preset": cfg.model.preset},
                        lora_names=lora_names, lora_alpha=cfg.train.lora_alpha,
                        recognizer=Recognizer.from_value(st.get("face_recognizer"), str(ckpt_dir)))
