"""Wan's rectified flow for training, in the sampler's convention (moca_model.sampling):

    x_sigma = (1 - sigma) x0 + sigma * noise,   target v = noise - x0,   t = 1000 * sigma,
    x0_hat  = x_sigma - sigma * v_pred.

Training sigmas: u ~ U(0, 1) (or logit-normal), then Wan's shift sigma = s u / (1 + (s - 1) u), which moves
mass towards high noise as the sampler's shifted schedule does.
"""
from __future__ import annotations

import torch

from ..sampling import shift_sigmas


def sample_sigmas(u: torch.Tensor, shift: float, mode: str = "uniform") -> torch.Tensor:
    """u [B] uniform in (0, 1) -> shifted sigmas [B] in (0, 1)."""
    if mode == "logit_normal":
        u = torch.sigmoid(torch.special.ndtri(u.clamp(1e-6, 1 - 1e-6)))   # u -> N(0,1) quantile -> sigmoid
    elif mode != "uniform":
        raise ValueError(f"timestep sampling {mode!r}: choose 'uniform' or 'logit_normal'")
    return shift_sigmas(u, shift)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x0, noise [B, C, T, H, W]; sigma [B] -> x_sigma."""
    s = sigma.view(-1, *([1] * (x0.ndim - 1))).to(x0.dtype)
    return (1 - s) * x0 + s * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    return noise - x0


def predict_x0(x_t: torch.Tensor, v_pred: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.view(-1, *([1] * (x_t.ndim - 1))).to(v_pred.dtype)
    return x_t.to(v_pred.dtype) - s * v_pred


def timesteps(sigma: torch.Tensor) -> torch.Tensor:
    """Wan's 0..1000 timestep for a sigma."""
    return sigma * 1000.0
