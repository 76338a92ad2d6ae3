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

    @property
    def recognizer(self):
        """The face recogniser the adapter was trained on (moca_model.provenance.Recognizer; None: unrecorded)."""
        return getattr(self.model, "moca_recognizer", None)


WEIGHT_DTYPES = {"default": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16,
                 "fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}
# What ComfyUI may store a Wan 2.1 model in (supported_models.WAN21_T2V), in its order of preference.
WAN_DTYPES = [torch.float16, torch.bfloat16, torch.float32]


def default_adapter_dtype(num_params: int = 0) -> torch.dtype:
    """The dtype ComfyUI's own rule gives a Wan 2.1 model on this machine (device support, --fp16-unet /
    --bf16-unet / --fp32-unet ...), so the adapter is stored like the model it attaches to: half precision on a
    GPU (the 14B adapter is 3.3 GiB instead of 6.6 GiB in fp32), fp32 on the CPU."""
    return comfy.model_management.unet_dtype(model_params=num_params, supported_dtypes=WAN_DTYPES)


def build_adapter_patcher(config: MoCAConfig, state: dict, name: str = "MoCA adapter",
                          weight_dtype: str | torch.dtype | None = "default", recognizer=None) -> AdapterPatcher:
    """`weight_dtype`: a WEIGHT_DTYPES name or a torch dtype; "default" / None = default_adapter_dtype(), never
    simply the file's dtype (a trainer's fp32 export would then sit on the GPU in fp32). `recognizer`: the file's
    face-recogniser record (MoCAFile.recognizer), checked against identities by MoCA Apply."""
    check_state_dict(MoCAAdapter(config, device="meta").state_dict(), state, f"{name} (MoCA adapter)")
    if isinstance(weight_dtype, str):
        if weight_dtype not in WEIGHT_DTYPES:
            raise ValueError(f"{name}: weight_dtype must be one of {list(WEIGHT_DTYPES)}, not {weight_dtype!r}")
        weight_dtype = WEIGHT_DTYPES[weight_dtype]
    dtype = weight_dtype or default_adapter_dtype(sum(v.numel() for v in state.values()))
    state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
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
    adapter.moca_recognizer = recognizer
    size = comfy.model_management.module_size(adapter)
    return AdapterPatcher(adapter, load_device=comfy.model_management.get_torch_device(),
                          offload_device=offload, size=size)
