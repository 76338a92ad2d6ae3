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
        assert identity_mask is None, "the sampler never runs the adapter on rows without identity"
        self.calls.append((x.shape[0], identity is not None))
        v = context.mean(dim=(1, 2)).view(-1, 1, 1, 1, 1).expand_as(x).clone()
        return v + 10 if identity is not None else v


def test_guidance_formula_and_passes():
    noise = torch.zeros(1, 16, 1, 2, 2)
    pos, neg, ident = torch.full((1, 3, 8), 2.0), torch.full((1, 3, 8), -1.0), torch.zeros(1, 4, 8)
    model = Recorder()
    out = sample(model, noise, pos, neg, ident, steps=1, text_cfg=4.0, id_cfg=1.5, shift=1.0, progress=False)
    v_u, v_t, v_ti = -1.0, 2.0, 12.0
    v = v_u + 4.0 * (v_t + 1.5 * (v_ti - v_t) - v_u)
    torch.testing.assert_close(out, torch.full_like(noise, -v))                    # x0 = x - 1 * v at sigma 1
    assert model.calls == [(2, False), (1, True)]          # negative + text batched; the adapter on one row only


@pytest.mark.parametrize("text_cfg, id_cfg, with_identity, calls", [
    (1.0, 1.0, True, [(1, True)]),                          # one pass: text + identity
    (4.0, 1.0, True, [(1, False), (1, True)]),              # id_cfg 1: no text-only pass
    (1.0, 2.0, True, [(1, False), (1, True)]),              # text_cfg 1: no negative pass
    (4.0, 2.0, False, [(2, False)]),                        # no identity: plain CFG, no adapter
    (4.0, 0.0, True, [(2, False)]),                         # id_cfg 0: plain CFG, no adapter
])
def test_only_the_passes_a_setting_needs_run(text_cfg, id_cfg, with_identity, calls):
    model = Recorder()
    sample(model, torch.zeros(1, 16, 1, 2, 2), torch.ones(1, 3, 8), torch.zeros(1, 3, 8),
           torch.zeros(1, 4, 8) if with_identity else None, steps=1, text_cfg=text_cfg, id_cfg=id_cfg, progress=False)
    assert model.calls == calls


def test_identity_pass_matches_the_model_with_identity_and_plain_passes_the_backbone():
    """With a real MoCADiT: the guided velocity equals the formula on separately computed passes."""
    from moca_model.adapter import live_adapter
    model = MoCADiT(MoCAConfig.preset("tiny")).eval()
    live_adapter(model)
    g = torch.Generator().manual_seed(2)
    ctx, neg = torch.randn(1, 5, 4096, generator=g), torch.randn(1, 5, 4096, generator=g)
    ident = model.adapter.tokenizer(arcface=torch.randn(1, 512, generator=g))
    noise = make_noise((1, 16, 2, 8, 8), seed=1)
    out = sample(model, noise, ctx, neg, ident, steps=1, text_cfg=3.0, id_cfg=2.0, shift=1.0, progress=False)
    t = torch.tensor([1000.0])
    with torch.no_grad():
        v_u, v_t, v_ti = model(noise, t, neg), model(noise, t, ctx), model(noise, t, ctx, identity=ident)
    assert not torch.allclose(v_ti, v_t)
    torch.testing.assert_close(out, noise - (v_u + 3.0 * (v_t + 2.0 * (v_ti - v_t) - v_u)), rtol=1e-4, atol=1e-4)


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
