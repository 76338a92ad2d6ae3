"""MoCAAdapter: every MoCA layer plus the IdentityTokenizer -- the part an adapter file holds."""
from __future__ import annotations

import torch.nn as nn

from .config import MoCAConfig
from .layer import MoCALayer
from .tokenizer import IdentityTokenizer


class MoCAAdapter(nn.Module):
    def __init__(self, config: MoCAConfig, operations=None, device=None, dtype=None):
        super().__init__()
        operations = operations or nn
        self.config = config
        self.layers = nn.ModuleList(MoCALayer(config, operations, device, dtype) for _ in range(config.num_layers))
        self.tokenizer = IdentityTokenizer(config, operations, device, dtype)

    def init_weights(self):
        """Fresh adapter: generic init, then zero output projections and routers (MoCA == backbone)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight.flatten(1))
                nn.init.zeros_(m.bias)
            elif isinstance(m, (nn.LayerNorm, nn.RMSNorm)) and m.weight is not None:
                nn.init.ones_(m.weight)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
        self.tokenizer.init_weights()
        for layer in self.layers:
            layer.init_weights()
        return self

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
