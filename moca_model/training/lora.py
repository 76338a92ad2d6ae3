"""LoRA on the Wan backbone's linear layers, attached with forward hooks so every backbone parameter keeps
its Wan 2.1 name (the frozen base still loads and saves as a plain Wan checkpoint).

A hooked Linear computes y = W x + b + (alpha / rank) * up(down(x)); `up` is zero-initialised, so a fresh
LoRA changes nothing. `comfy_lora_state_dict` gives ComfyUI's LoRA format
(`diffusion_model.<module>.lora_down.weight` / `.lora_up.weight` / `.alpha`), loadable by LoraLoaderModelOnly.
"""
from __future__ import annotations

import torch
import torch.nn as nn


class LoRALinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, rank: int, device=None, dtype=None):
        super().__init__()
        self.down = nn.Linear(in_features, rank, bias=False, device=device, dtype=dtype)
        self.up = nn.Linear(rank, out_features, bias=False, device=device, dtype=dtype)
        nn.init.kaiming_uniform_(self.down.weight, a=5 ** 0.5)
        nn.init.zeros_(self.up.weight)

    def forward(self, x):
        return self.up(self.down(x.to(self.down.weight.dtype)))


class LoRASet(nn.Module):
    """All LoRA pairs of a model; `targets` are module-name suffixes inside `blocks.N.` (e.g. 'self_attn.q')."""

    def __init__(self, model: nn.Module, targets, rank: int, alpha: float, dtype=None):
        super().__init__()
        self.rank, self.alpha, self.scale = rank, float(alpha), float(alpha) / rank
        self.layers = nn.ModuleDict()
        self.names: dict[str, str] = {}
        self._handles = []
        for name, mod in model.named_modules():
            if not (name.startswith("blocks.") and isinstance(mod, nn.Linear)):
                continue
            if not any(name.endswith("." + t) for t in targets):
                continue
            key = name.replace(".", "__")
            self.layers[key] = LoRALinear(mod.in_features, mod.out_features, rank,
                                          device=mod.weight.device, dtype=dtype or torch.float32)
            self.names[key] = name
            self._handles.append(mod.register_forward_hook(self._hook(key)))
        if not self.layers:
            raise ValueError(f"LoRA: no backbone Linear matches the targets {list(targets)}")

    def _hook(self, key):
        def hook(module, args, output):
            return output + (self.layers[key](args[0]) * self.scale).to(output.dtype)
        return hook

    def remove(self):
        for h in self._handles:
            h.remove()
        self._handles.clear()


def comfy_lora_state_dict(state: dict, names: dict, alpha: float, dtype=torch.float16) -> dict:
    """ComfyUI's LoRA format from trainable-state tensors `lora.layers.<key>.{down,up}.weight`; `names` maps
    each key to its backbone module name (`LoRASet.names`)."""
    sd = {}
    for key, module_name in names.items():
        base = "diffusion_model." + module_name
        sd[base + ".lora_down.weight"] = state[f"lora.layers.{key}.down.weight"].detach().to("cpu", dtype)
        sd[base + ".lora_up.weight"] = state[f"lora.layers.{key}.up.weight"].detach().to("cpu", dtype)
        sd[base + ".alpha"] = torch.tensor(float(alpha), dtype=dtype)
    return sd
