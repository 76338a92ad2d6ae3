"""MoCAAdapter: every MoCA layer plus the IdentityTokenizer -- the part an adapter file holds."""
from __future__ import annotations

import torch
import torch.nn as nn

from .config import MoCAConfig
from .layer import MoCALayer
from .tokenizer import IdentityTokenizer


def init_generic(modules):
    """Xavier-uniform weights and zero biases for linear and conv layers, unit norms (shared by the random
    backbone and a fresh adapter)."""
    for m in modules:
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.Conv3d)):
            nn.init.xavier_uniform_(m.weight.flatten(1))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.LayerNorm, nn.RMSNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)


class MoCAAdapter(nn.Module):
    def __init__(self, config: MoCAConfig, operations=None, device=None, dtype=None):
        super().__init__()
        operations = operations or nn
        self.config = config
        self.layers = nn.ModuleList(MoCALayer(config, operations, device, dtype) for _ in range(config.num_layers))
        self.tokenizer = IdentityTokenizer(config, operations, device, dtype)

    def init_weights(self):
        """Fresh adapter: generic init, then zero output projections and routers (MoCA == backbone)."""
        init_generic(self.modules())
        self.tokenizer.init_weights()
        for layer in self.layers:
            layer.init_weights()
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def live_adapter(model, seed: int = 0):
    """Seeded random output projections and routers (std 0.02) for an untrained adapter (`model` is a MoCADiT
    or a MoCAAdapter), so the identity path visibly acts and nothing is short-circuited by zeros: the CPU demo
    and the benchmarks, never a trained model."""
    adapter = getattr(model, "adapter", model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in adapter.layers:
            for p in (layer.out.weight,) + (() if layer.single else (layer.router.proj_x.weight,)):
                p.copy_((torch.randn(p.shape, generator=g) * 0.02).to(p.device, p.dtype))
    return model
