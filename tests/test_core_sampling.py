"""The standalone flow sampler: solvers, guidance, determinism, cancellation."""
import threading

import pytest
import torch

from moca_model import MoCAConfig, MoCADiT
from moca_model.sampling import SamplingCancelled, flow_sigmas, make_noise, sample


class GaussianFlow(torch.nn.Module):
    """Exact velocity of the flow from N(mu, s^2) data: lets us check solvers against the true answer."""

    def __init__(self, mu=0.7, s=0.3):
        super().__init__()
        self.mu, self.s = mu, s

    def forward(self, x, t, context, identity=None, moca_options=None, identity_mask=None):
        sig = (t / 1000.0).view(-1, 1, 1, 1, 1).double()
        a = 1 - sig
        var = a ** 2 * self.s ** 2 + sig ** 2
        x0 = self.mu + a * self.s ** 2 / var * (x.double() - a * self.mu)      # E[x0 | x]
        return ((x.double() - x0) / sig.clamp_min(1e-12)).float()


def exact_endpoint(noise, mu=0.7, s=0.3):
    return mu + s * noise                                                        # the ODE maps noise to mu + s*noise


def test_shifted_sigmas():
    s = flow_sigmas(10, shift=8.0)
    assert s[0] == 1 and s[-1] == 0 and (s[1:] < s[:-1]).all()
    assert s[5] > 0.5                                                            # shift spends steps at high noise


def test_dpmpp_2m_is_more_accurate_than_euler():
    noise = make_noise((1, 16, 2, 4, 4), seed=3)
    errs = {}
    for solver in ("euler", "dpmpp_2m"):
        out = sample(GaussianFlow(), noise, torch.zeros(1, 1, 8), steps=20, text_cfg=1.0, shift=1.0,
                     solver=solver, progress=False)
        errs[solver] = (out - exact_endpoint(noise)).abs().max().item()
    print("max error after 20 steps:", errs)
    assert errs["dpmpp_2m"] < errs["euler"] / 5
    fine = sample(GaussianFlow(), noise, torch.zeros(1, 1, 8), steps=200, text_cfg=1.0, shift=1.0, progress=False)
    assert (fine - exact_endpoint(noise)).abs().max() < 2e-2                    # Euler converges (first order)


class Recorder(torch.nn.Module):
    """v = context mean + 10 * (identity present): lets us read back how passes were combined."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, context, identity=None, moca_options=None, identity_mask=None):
        self.calls.append((x.shape[0], identity is not None))
        v = context.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1).expand_as(x).clone()
        if identity is not None:
            v = v + 10 * identity_mask.view(-1, 1, 1, 1, 1)
        return v


def test_guidance_formula_and_batched_passes():
    noise = torch.zeros(1, 16, 1, 2, 2)
    pos, neg, ident = torch.full((1, 3, 8), 2.0), torch.full((1, 3, 8), -1.0), torch.zeros(1, 4, 8)
    model = Recorder()
    out = sample(model, noise, pos, neg, ident, steps=1, text_cfg=4.0, id_cfg=1.5, shift=1.0, progress=False)
    v_u, v_t, v_ti = -1.0, 2.0, 12.0
    v = v_u + 4.0 * (v_t - v_u) + 1.5 * (v_ti - v_t)
    torch.testing.assert_close(out, torch.full_like(noise, -v))                    # x0 = x - 1 * v at sigma 1
    assert model.calls == [(3, True)]                                            # three passes, one batch
    model.calls.clear()
    sample(model, noise, pos, neg, ident, steps=1, text_cfg=1.0, id_cfg=1.0, progress=False)
    assert model.calls == [(1, True)]                                            # cfg 1: only text+id runs


def test_identity_step_range():
    noise = torch.zeros(1, 16, 1, 2, 2)
    model = Recorder()
    pos, ident = torch.ones(1, 3, 8), torch.zeros(1, 4, 8)
    sample(model, noise, pos, None, ident, steps=4, text_cfg=1.0, id_cfg=1.0, id_start=0.25, id_end=0.75,
           progress=False)
    assert [c[1] for c in model.calls] == [False, True, True, False]


def test_seeded_sampling_is_deterministic_and_cancellable():
    model = MoCADiT(MoCAConfig.preset("tiny")).eval()
    ctx = torch.randn(1, 5, 4096)
    ident = model.adapter.tokenizer(arcface=torch.randn(1, 512))
    run = lambda: sample(model, make_noise((1, 16, 2, 8, 8), seed=7), ctx, identity=ident, steps=3,
                         solver="dpmpp_2m", progress=False)
    assert torch.equal(run(), run())
    stop = threading.Event()
    seen = []

    def cb(step, total, x, x0):
        seen.append(step)
        if step == 2:
            stop.set()
    with pytest.raises(SamplingCancelled, match="step 2/5"):
        sample(model, make_noise((1, 16, 2, 8, 8), seed=7), ctx, steps=5, progress=False, cancel=stop, callback=cb)
    assert seen == [1, 2]


def test_bad_arguments():
    with pytest.raises(ValueError, match="Unknown solver"):
        sample(Recorder(), torch.zeros(1, 16, 1, 2, 2), torch.zeros(1, 1, 8), solver="heun", progress=False)
    with pytest.raises(ValueError, match="id_start"):
        sample(Recorder(), torch.zeros(1, 16, 1, 2, 2), torch.zeros(1, 1, 8), id_start=0.8, id_end=0.2, progress=False)
