"""MOCA_ADAPTER: a MoCAAdapter built with ComfyUI's casting ops, inside its own ModelPatcher, so ComfyUI's
model management loads it to the GPU with the Wan model and offloads it again (fp16/bf16/fp8 weights run:
the casting ops cast each weight to the activations' dtype on the fly)."""
from __future__ import annotations

import torch

import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.utils

from ..moca_model.adapter import MoCAAdapter
from ..moca_model.checkpoint import check_state_dict
from ..moca_model.config import MoCAConfig


class AdapterPatcher(comfy.model_patcher.ModelPatcher):
    """A ModelPatcher around a MoCAAdapter; `.config` and `.name` for messages."""

    @property
    def config(self) -> MoCAConfig:
        return self.model.config

    @property
    def name(self) -> str:
        return getattr(self.model, "moca_name", "MoCA adapter")


def build_adapter_patcher(config: MoCAConfig, state: dict, name: str = "MoCA adapter") -> AdapterPatcher:
    check_state_dict(MoCAAdapter(config, device="meta").state_dict(), state, f"{name} (MoCA adapter)")
    dtype = comfy.utils.weight_dtype(state) or torch.float32
    offload = comfy.model_management.unet_offload_device()
    adapter = MoCAAdapter(config, operations=comfy.ops.manual_cast, device=offload, dtype=dtype)
    adapter.load_state_dict(state, strict=True)
    # Bare parameters (type / scale embeddings, resampler queries) are not cast by the ops: keep them in
    # float32 so the identity tokenizer computes in float32 whatever the file's dtype (fp8 included).
    for module in adapter.modules():
        if getattr(module, "comfy_cast_weights", False):
            continue
        for pname, p in list(module.named_parameters(recurse=False)):
            if p.dtype != torch.float32:
                setattr(module, pname, torch.nn.Parameter(p.detach().float(), requires_grad=False))
    adapter.requires_grad_(False)
    adapter.eval()
    adapter.moca_name = name
    size = comfy.model_management.module_size(adapter)
    return AdapterPatcher(adapter, load_device=comfy.model_management.get_torch_device(),
                          offload_device=offload, size=size)
