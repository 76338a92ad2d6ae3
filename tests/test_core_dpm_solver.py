"""DPM-Solver++(2M) on the flow schedule: every step after the first is second order."""
import math

import torch

from moca_model.sampling import _dpmpp_2m_step, _lambda, flow_sigmas

MU, S = 0.7, 0.3          # data ~ N(MU, S^2): the flow's exact x0 prediction and trajectory are known


def x0_pred(x, sigma):
    a = 1 - sigma
    return MU + a * S ** 2 / (a ** 2 * S ** 2 + sigma ** 2) * (x - a * MU)


def exact(z, sigma):
    a = 1 - sigma
    return a * MU + math.sqrt(a ** 2 * S ** 2 + sigma ** 2) * z


def second_step_error(steps, shift):
    """Error of the step sigma_1 -> sigma_2 taken from the exact x(sigma_1), with the first step's data
    prediction (at sigma_0 = 1, log-SNR -inf) as the multistep history."""
    s0, s1, s2 = flow_sigmas(steps, shift)[:3].tolist()
    z = torch.randn(64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x1 = exact(z, s1)
    h_prev = _lambda(s1) - _lambda(s0)
    x2, _, _ = _dpmpp_2m_step(x1, x0_pred(x1, s1), s1, s2, h_prev, x0_pred(z, s0))
    return float((x2 - exact(z, s2)).abs().max())


def test_the_second_step_is_second_order():
    """Its history point sits at log-SNR -inf, so the log-SNR extrapolation fell back to first order (local
    error / 4 per halving); with x0 linear in sigma through both points it is second order (/ 8)."""
    for shift in (1.0, 5.0):
        errs = [second_step_error(n, shift) for n in (20, 40, 80)]
        ratios = [errs[k] / errs[k + 1] for k in range(2)]
        print(f"\nshift {shift}: second-step errors {['%.2e' % e for e in errs]}, ratios {['%.1f' % r for r in ratios]}")
        assert min(ratios) > 7.0
