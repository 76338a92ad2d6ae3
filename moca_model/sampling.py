"""Standalone sampler: Wan's rectified flow with timestep shift, Euler or DPM-Solver++(2M), and
separate text and identity guidance (the same as ComfyUI's MoCA Sampler):

    cond = v_text + s_id (v_text+id - v_text)        identity guidance, folded into the prompt's prediction
    v    = v_uncond + s_text (cond - v_uncond)       text CFG

so s_id = 0 is plain CFG, s_id = 1 needs no text-only pass, s_text = 1 no negative pass, and MoCA runs only in
the pass with identity.

Flow convention (Wan / ComfyUI FLOW): x_sigma = (1 - sigma) x0 + sigma * noise, the model predicts the
velocity v = noise - x0 at timestep t = 1000 * sigma, so x0 = x - sigma * v.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable

import torch

from .regions import RegionalIdentity

SOLVERS = ("euler", "dpmpp_2m")


class SamplingCancelled(RuntimeError):
    """Raised when the caller's cancel flag is set between steps."""


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """Wan / SD3 timestep shift: sigma' = shift * sigma / (1 + (shift - 1) * sigma)."""
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def flow_sigmas(steps: int, shift: float = 8.0) -> torch.Tensor:
    """steps + 1 noise levels from 1 to 0 (float64 for the solver's arithmetic)."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    return shift_sigmas(torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64), shift)


@dataclass
class Guidance:
    """Which passes a step needs and how they combine: v = sum(coef * v_pass) (the coefficients sum to 1)."""
    text_cfg: float = 5.0
    id_cfg: float = 1.0

    def coefficients(self, use_identity: bool) -> dict:
        s_t, s_i = self.text_cfg, (self.id_cfg if use_identity else 0.0)
        coefs = (("uncond", 1.0 - s_t), ("text", s_t * (1.0 - s_i)), ("text_id", s_t * s_i))
        return {k: c for k, c in coefs if not math.isclose(c, 0.0, abs_tol=1e-12)}


def make_noise(shape, seed: int, device="cpu", dtype=torch.float32) -> torch.Tensor:
    """Seeded Gaussian noise drawn on the CPU, so a seed gives the same latent on every device."""
    g = torch.Generator("cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=g, dtype=torch.float32).to(device=device, dtype=dtype)


def _is_cancelled(cancel) -> bool:
    if cancel is None:
        return False
    if isinstance(cancel, threading.Event):
        return cancel.is_set()
    return bool(cancel())


@torch.no_grad()
def sample(model, noise: torch.Tensor, context: torch.Tensor, negative_context: torch.Tensor | None = None,
           identity: torch.Tensor | None = None, *, steps: int = 30, text_cfg: float = 5.0, id_cfg: float = 1.0,
           shift: float = 8.0, solver: str = "euler", moca_options=None, id_start: float = 0.0,
           id_end: float = 1.0, progress: bool = True, cancel=None,
           callback: Callable | None = None) -> torch.Tensor:
    """Integrate from pure noise (sigma = 1) to a clean latent.

    model: a MoCADiT (or anything with its forward signature). noise [B, 16, T, H, W];
    context / negative_context [B, L, text_dim] (negative defaults to zeros); identity [B|1, M, D_id], a
    RegionalIdentity (several people; its tokens [1, M_k, D_id] broadcast over B) or None.
    id_start / id_end: fraction of the schedule (0 = first step) where identity guidance acts.
    cancel: a threading.Event or a callable returning True to stop (raises SamplingCancelled).
    callback(step, total, x, x0) after each step, e.g. for previews.
    """
    from tqdm.auto import tqdm

    if solver not in SOLVERS:
        raise ValueError(f"Unknown solver {solver!r}; choose one of {SOLVERS}")
    if not 0.0 <= id_start <= id_end <= 1.0:
        raise ValueError(f"Need 0 <= id_start <= id_end <= 1, got {id_start}, {id_end}")
    B = noise.shape[0]
    if negative_context is None:
        negative_context = torch.zeros_like(context)
    guidance = Guidance(text_cfg, id_cfg)
    sigmas = flow_sigmas(steps, shift)
    x = noise.clone()
    x0_prev, h_prev = None, None

    def velocity(x, sigma, use_id):
        coefs = guidance.coefficients(use_id and identity is not None)
        t = torch.full((B,), float(sigma) * 1000.0, device=x.device)
        v = None

        def add(name, out):
            nonlocal v
            v = coefs[name] * out.float() if v is None else v + coefs[name] * out.float()

        # The passes without identity run as one batch when their text lengths agree (the backbone alone);
        # the identity pass runs on its own, so the adapter only ever sees the rows that use it.
        plain = [n for n in ("uncond", "text") if n in coefs]
        texts = {"uncond": negative_context, "text": context}
        if len(plain) == 2 and negative_context.shape[1] != context.shape[1]:
            groups = [[n] for n in plain]
        else:
            groups = [plain] if plain else []
        for names in groups:
            ctx = torch.cat([texts[n].expand(B, -1, -1) for n in names])
            out = model(x.repeat(len(names), 1, 1, 1, 1), t.repeat(len(names)), ctx)
            for n, vn in zip(names, out.chunk(len(names))):
                add(n, vn)
        if "text_id" in coefs:
            ident = identity if isinstance(identity, RegionalIdentity) else identity.expand(B, -1, -1)
            add("text_id", model(x, t, context.expand(B, -1, -1), identity=ident, moca_options=moca_options))
        return v

    bar = tqdm(range(steps), desc=f"MoCA {solver}", disable=not progress, leave=False)
    for i in bar:
        if _is_cancelled(cancel):
            bar.close()
            raise SamplingCancelled(f"sampling cancelled at step {i}/{steps}")
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        frac = i / steps
        v = velocity(x, s, id_start <= frac < id_end)
        x0 = x.float() - s * v
        if solver == "euler":
            x = (x.float() + (s_next - s) * v).to(noise.dtype)
        else:
            x, h_prev, x0_prev = _dpmpp_2m_step(x.float(), x0, s, s_next, h_prev, x0_prev)
            x = x.to(noise.dtype)
        if callback is not None:
            callback(i + 1, steps, x, x0)
    return x


def _lambda(sigma: float) -> float:
    """log-SNR of the flow schedule, log(alpha / sigma) with alpha = 1 - sigma."""
    if sigma <= 0.0:
        return math.inf
    if sigma >= 1.0:
        return -math.inf
    return math.log((1.0 - sigma) / sigma)


def _dpmpp_2m_step(x, x0, s, s_next, h_prev, x0_prev):
    """One DPM-Solver++(2M) step in data prediction for alpha = 1 - sigma; first order where the
    log-SNR step is infinite (the first and the last step).

    The second step's history point is sigma = 1, at log-SNR -inf, where the log-SNR extrapolation
    degenerates to first order. There x0 is taken linear in sigma through (1, x0_prev) and (s, x0) and
    integrated exactly: x_next = first-order step + B (s_next - s + s_next ln(s / s_next)),
    B = (x0 - x0_prev) / (s - 1), which is second order again."""
    a_next = 1.0 - s_next
    h = _lambda(s_next) - _lambda(s)
    # exp(-h) = (alpha_s * sigma_next) / (sigma_s * alpha_next), finite-safe at both ends.
    exp_neg_h = 0.0 if a_next == 0 or s_next == 0 else ((1.0 - s) * s_next) / (s * a_next)
    d = x0
    if x0_prev is not None and math.isfinite(h) and h_prev is not None and math.isfinite(h_prev):
        r = h_prev / h
        d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
    x_next = (s_next / s) * x + a_next * (1.0 - exp_neg_h) * d
    if x0_prev is not None and math.isfinite(h) and h_prev == math.inf:
        x_next = x_next + (x0 - x0_prev) / (s - 1.0) * (s_next - s + s_next * math.log(s / s_next))
    return x_next, h, x0
