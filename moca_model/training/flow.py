"""Wan's rectified flow for training, in the sampler's convention (moca_model.sampling):

    x_sigma = (1 - sigma) x0 + sigma * noise,   target v = noise - x0,   t = 1000 * sigma,
    x0_hat  = x_sigma - sigma * v_pred.

Training sigmas: u ~ U(0, 1) (or logit-normal), then Wan's shift sigma = s u / (1 + (s - 1) u), which moves
mass towards high noise as the sampler's shifted schedule does.
"""
from __future__ import annotations

import torch

from ..sampling import shift_sigmas


def sample_sigmas(u: torch.Tensor, shift: float, mode: str = "uniform", sigma_range=(0.0, 1.0)) -> torch.Tensor:
    """u [B] uniform in (0, 1) -> shifted sigmas [B] in (0, 1).

    sigma_range (lo, hi): the same distribution truncated to lo <= sigma <= hi (one expert's share of the
    schedule, e.g. Wan 2.2 A14B's low-noise expert below 0.875): every step of u -> sigma is increasing, so u
    is mapped into the u-interval whose sigmas are [lo, hi]."""
    if mode not in ("uniform", "logit_normal"):
        raise ValueError(f"timestep sampling {mode!r}: choose 'uniform' or 'logit_normal'")
    lo, hi = (float(v) for v in sigma_range)
    if (lo, hi) != (0.0, 1.0):
        if not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"sigma_range {sigma_range}: need 0 <= lo < hi <= 1")
        u_lo, u_hi = (_u_of_sigma(torch.tensor(v, dtype=torch.float64), shift, mode) for v in (lo, hi))
        u = (u_lo + u.double() * (u_hi - u_lo)).to(u.dtype)
    if mode == "logit_normal":
        u = torch.sigmoid(torch.special.ndtri(u.clamp(1e-6, 1 - 1e-6)))   # u -> N(0,1) quantile -> sigmoid
    return shift_sigmas(u, shift)


def _u_of_sigma(sigma: torch.Tensor, shift: float, mode: str) -> torch.Tensor:
    """The inverse of sample_sigmas' u -> sigma map (for the ends of sigma_range)."""
    v = sigma / (shift - (shift - 1) * sigma)                             # inverse of the shift
    if mode == "logit_normal":
        v = torch.special.ndtr(torch.logit(v.clamp(1e-12, 1 - 1e-12)))   # inverse of sigmoid(ndtri(.))
    return v


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
