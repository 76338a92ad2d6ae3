"""LVPL, its Wan VAE decoder feature extractor, and the flow-matching convention."""
import pytest
import torch

from moca_model.sampling import shift_sigmas
from moca_model.training import flow
from moca_model.training.lvpl import IdentityExtractor, LatentVideoPerceptualLoss, build_extractor
from moca_model.training.wan_vae_decoder import WanVAEDecoderStages, load_wan_vae_decoder_stages


def _latents(seed=0, B=2, T=3, h=8, w=8):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 16, T, h, w, generator=g)


def _mask(B=2, T=3, h=8, w=8):
    m = torch.zeros(B, T, h, w)
    m[..., :, : w // 2] = 1.0                    # left half = face
    return m


@pytest.mark.parametrize("extractor", ["wan_vae_decoder", "identity"])
def test_zero_for_perfect_prediction_positive_otherwise(extractor):
    torch.manual_seed(0)
    loss = LatentVideoPerceptualLoss(build_extractor(extractor, vae_dim=8, checkpoint=False))
    x0 = _latents()
    assert torch.equal(loss(x0, x0, _mask()), torch.zeros(2))
    worse = loss(x0 + 0.1 * _latents(1), x0, _mask())
    assert worse.shape == (2,) and (worse > 0).all()


def test_face_region_weighted_as_configured():
    x0 = _latents()
    delta = torch.zeros_like(x0)
    face, bg = delta.clone(), delta.clone()
    face[..., :, :4] = 0.3                       # same-size perturbation inside / outside the face mask
    bg[..., :, 4:] = 0.3
    for fw, bw in ((1.0, 0.25), (2.0, 1.0)):
        loss = LatentVideoPerceptualLoss(IdentityExtractor(), face_weight=fw, background_weight=bw)
        lf, lb = loss(x0 + face, x0, _mask()), loss(x0 + bg, x0, _mask())
        torch.testing.assert_close(lf / lb, torch.full((2,), fw / bw), rtol=1e-5, atol=0)
    # Through the (random) Wan decoder stages the ratio is no longer exact (receptive fields mix regions),
    # but the face still dominates when it is weighted 4x.
    torch.manual_seed(0)
    loss = LatentVideoPerceptualLoss(build_extractor("wan_vae_decoder", vae_dim=8, checkpoint=False),
                                     face_weight=1.0, background_weight=0.25, temporal_weight=0.0)
    assert (loss(x0 + face, x0, _mask()) > 1.5 * loss(x0 + bg, x0, _mask())).all()
    # No mask: uniform weight 1.
    loss = LatentVideoPerceptualLoss(IdentityExtractor(), temporal_weight=0.0)
    torch.testing.assert_close(loss(x0 + face, x0), loss(x0 + bg, x0))


def test_temporal_term_sees_flicker():
    x0 = _latents()
    const = x0 + 0.2                                       # same offset on every frame: no temporal change
    flicker = x0.clone()
    flicker[:, :, 1::2] += 0.4                             # every second frame shifted: temporal change
    flicker[:, :, 0::2] += 0.0
    spatial = LatentVideoPerceptualLoss(IdentityExtractor(), temporal_weight=0.0)
    temporal = LatentVideoPerceptualLoss(IdentityExtractor(), temporal_weight=1.0)
    assert torch.allclose(temporal(const, x0), spatial(const, x0))      # offset: no frame-difference error
    assert (temporal(flicker, x0) > spatial(flicker, x0) + 1e-3).all()


def test_gradients_reach_the_prediction_not_the_extractor():
    ex = build_extractor("wan_vae_decoder", vae_dim=8, checkpoint=True)
    loss = LatentVideoPerceptualLoss(ex)
    x0 = _latents()
    pred = (x0 + 0.1 * _latents(2)).requires_grad_(True)
    loss(pred, x0, _mask()).sum().backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in ex.parameters())


def test_decoder_stages_shapes_and_causality():
    torch.manual_seed(0)
    ex = WanVAEDecoderStages(dim=8, stages=("conv1", "middle", "up0"))
    z = _latents(T=4)
    feats = ex(z)
    assert [tuple(f.shape) for f in feats] == [(2, 32, 4, 8, 8)] * 3
    z2 = z.clone()
    z2[:, :, 3] += 1.0                                     # changing the last frame must not change earlier ones
    feats2 = ex(z2)
    for a, b in zip(feats, feats2):
        assert torch.equal(a[:, :, :3], b[:, :, :3]) and not torch.equal(a[:, :, 3], b[:, :, 3])


def test_decoder_stages_load_wan_vae_names(tmp_path):
    from moca_model.checkpoint import CheckpointError, atomic_save_safetensors
    torch.manual_seed(1)
    src = WanVAEDecoderStages(dim=8)
    keys = set(src.state_dict())
    assert {"conv2.weight", "decoder.conv1.weight", "decoder.middle.0.residual.0.gamma",
            "decoder.middle.0.residual.6.weight", "decoder.middle.1.to_qkv.weight",
            "decoder.upsamples.2.residual.2.bias"} <= keys
    # a Wan VAE file holds the encoder and later decoder stages too: they are ignored
    sd = {**src.state_dict(), "encoder.conv1.weight": torch.zeros(1), "decoder.head.0.gamma": torch.zeros(1)}
    path = atomic_save_safetensors(sd, tmp_path / "wan_2.1_vae.safetensors")
    dst = load_wan_vae_decoder_stages(WanVAEDecoderStages(dim=8), path)
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.state_dict().items())
    with pytest.raises(CheckpointError, match="base width"):
        load_wan_vae_decoder_stages(WanVAEDecoderStages(dim=16), path)


def test_flow_matches_the_sampler_convention():
    x0, noise = _latents(0), _latents(1)
    sigma = torch.tensor([0.25, 0.9])
    x_t = flow.add_noise(x0, noise, sigma)
    v = flow.velocity_target(x0, noise)
    torch.testing.assert_close(flow.predict_x0(x_t, v, sigma), x0)
    # an Euler step of the sampler with the true velocity lands on the same line
    torch.testing.assert_close(x_t + (0.0 - sigma.view(-1, 1, 1, 1, 1)) * v, x0)
    u = torch.linspace(0.05, 0.95, 7)
    torch.testing.assert_close(flow.sample_sigmas(u, 5.0), shift_sigmas(u, 5.0))
    assert (flow.sample_sigmas(u, 5.0) >= u).all()                          # shift moves mass to high noise
    assert torch.equal(flow.timesteps(sigma), sigma * 1000)


@pytest.mark.parametrize("mode", ["uniform", "logit_normal"])
def test_wan22_sigma_range_truncates_the_training_distribution(mode):
    """One A14B expert's adapter trains only on its share of the schedule, with the same distribution there:
    the truncated samples are exactly the full-range samples that fall inside the range, re-spread."""
    u = (torch.arange(20000, dtype=torch.float64) + 0.5) / 20000
    full = flow.sample_sigmas(u, 5.0, mode)
    for lo, hi in ((0.875, 1.0), (0.0, 0.875)):
        part = flow.sample_sigmas(u, 5.0, mode, (lo, hi))
        assert part.min() >= lo - 1e-6 and part.max() <= hi + 1e-6
        inside = full[(full >= lo) & (full <= hi)]
        qs = torch.tensor([0.1, 0.5, 0.9], dtype=torch.float64)
        torch.testing.assert_close(torch.quantile(part, qs), torch.quantile(inside, qs), atol=2e-3, rtol=0)
    torch.testing.assert_close(flow.sample_sigmas(u, 5.0, mode, (0.0, 1.0)), full)
    with pytest.raises(ValueError, match="sigma_range"):
        flow.sample_sigmas(u, 5.0, mode, (0.9, 0.5))


def test_lvpl_only_at_low_noise(tmp_path):
    from moca_model.training.synthetic import make_synthetic_shards, tiny_train_config
    from moca_model.training.trainer import Trainer
    make_synthetic_shards(tmp_path / "d", 4, 4)
    t = Trainer(tiny_train_config(tmp_path / "r", tmp_path / "d",
                                  objective={"lvpl": {"weight": 1.0, "max_sigma": 0.5}}), device="cpu",
                log=lambda *a: None)
    b = t.objective.make_batch([t.dataset[i] for i in range(4)], [0, 1, 2, 3])
    b.sigma = torch.tensor([0.1, 0.4, 0.6, 0.95])
    with torch.no_grad():
        terms = t.objective.losses(t.module, b)
    assert terms["lvpl_on"].tolist() == [1.0, 1.0, 0.0, 0.0]
    assert (terms["lvpl"][:2] > 0).all() and (terms["lvpl"][2:] == 0).all()
    torch.testing.assert_close(terms["loss"], terms["flow"] + terms["lvpl"])
