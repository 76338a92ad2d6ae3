"""The MoCA router: per token, a soft mixture over the TACA experts."""
from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn as nn
import torch.nn.functional as F

from .htp import WindowPlan
from .options import ResolvedOptions


@lru_cache(maxsize=64)
def _constant(values: tuple, device: torch.device) -> torch.Tensor:
    """A float32 tensor of `values` on `device`, made once (no host-to-device copy per call)."""
    with torch.inference_mode(False):
        return torch.tensor(values, dtype=torch.float32, device=device)


class MoCARouter(nn.Module):
    """Soft routing from LayerNorm(x) and the diffusion time embedding (the Wan block's time modulation
    vector `vec`, averaged over its 6 chunks: a linear function of Wan's time embedding that every host
    already passes to its blocks).

    Both projections are zero-initialised, so an untrained router weighs all experts equally.
    Inference knobs: temperature, top-k (0 = dense), disabled experts (dropped before the softmax) and
    per-expert weights (applied after it, without renormalising: a gain of 2 doubles that expert).
    """

    def __init__(self, dim: int, num_experts: int, use_time: bool = True, operations=nn, device=None, dtype=None):
        super().__init__()
        self.proj_x = operations.Linear(dim, num_experts, device=device, dtype=dtype)
        self.proj_t = operations.Linear(dim, num_experts, bias=False, device=device, dtype=dtype) if use_time else None

    def init_weights(self):
        nn.init.zeros_(self.proj_x.weight)
        nn.init.zeros_(self.proj_x.bias)
        if self.proj_t is not None:
            nn.init.zeros_(self.proj_t.weight)

    def logits(self, xn: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """xn [B, L, D] (normalised tokens), vec [B, 1|L, 6, D] (a Wan block's time modulation) -> [B, L, E]."""
        logits = self.proj_x(xn)
        if self.proj_t is not None:
            logits = logits + self.proj_t(F.silu(vec.to(xn.dtype).mean(dim=-2)))
        return logits

    def forward(self, xn, vec, opts: ResolvedOptions, plan: WindowPlan | None = None) -> torch.Tensor:
        """Mixing weights of the enabled experts, [B, L, E_on] (float32). `plan` (the layer's window plan)
        carries the enabled experts' index on the device; without it the index is built here."""
        index = plan.expert_index if plan is not None else _constant(opts.experts, xn.device).long()
        logits = self.logits(xn, vec).index_select(-1, index).float() / opts.temperature
        probs = logits.softmax(dim=-1)
        if 0 < opts.top_k < probs.shape[-1]:
            top = probs.topk(opts.top_k, dim=-1)
            probs = torch.zeros_like(probs).scatter_(-1, top.indices, top.values)
            probs = probs / probs.sum(dim=-1, keepdim=True)
        if any(w != 1.0 for w in opts.expert_weight):
            probs = probs * _constant(opts.expert_weight, probs.device)
        return probs
