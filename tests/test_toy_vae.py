"""The toy world's VAE: deterministic batches, the loss terms, exact resume, the file it writes, and the
shipped toy_models/vae/toy_wan_vae.safetensors (loads as a Wan 2.1 VAE, reconstructs a held-out clip; with
COMFYUI_PATH set, ComfyUI's core VAE loader decodes our latents to the same frames)."""
import json

import numpy as np
import pytest
import torch

from moca_model.toy import vae_train as vt
from moca_model.toy import world

SHIPPED_MIN_PSNR = 20.0        # the shipped file: 20.9 dB on this clip, 22.9 dB mean on 32 held-out clips (docs/toy_world.md)


def _tiny(**kw):
    base = dict(dim=4, steps=4, batch=2, crop=16, image_batch=2, long_batch=1, cycle="wiwl", pool=4,
                new_per_step=1.0, checkpoint_every=2, warmup=2, compile=False)
    base.update(kw)
    return vt.VAETrainConfig(**base)


def test_batches_are_a_function_of_seed_and_step():
    cfg = _tiny(cycle="wilf")
    kinds = [vt.step_kind(s, cfg) for s in range(8)]
    assert kinds == ["window", "image", "long", "full"] * 2
    pool_a, pool_b = vt.ClipPool(0, cfg.pool, 1.0, 0.5), vt.ClipPool(0, cfg.pool, 1.0, 0.5)
    shapes = {"window": (2, 3, 5, 16, 16), "image": (2, 3, 1, 16, 16), "long": (1, 3, 17, 16, 16),
              "full": (1, 3, 17, 128, 128)}
    for step in (0, 1, 2, 3):
        kind, a = vt.make_batch(step, cfg, pool_a, seed=3)
        _, b = vt.make_batch(step, cfg, pool_b, seed=3)
        assert tuple(a.shape) == shapes[kind] and torch.equal(a, b)
        assert a.min() >= -1 and a.max() <= 1
    assert min(pool_a.cache) >= pool_a.window(3).start                   # clips that left the pool are freed
    assert not torch.equal(vt.make_batch(0, cfg, pool_a, seed=4)[1], vt.make_batch(0, cfg, pool_a, seed=3)[1])


def test_pool_trains_on_training_identities_only():
    pool = vt.ClipPool(0, 8, 1.0, 0.0, ids=[5, 6])
    assert pool.ids == [5, 6]
    assert set(vt.ClipPool(0, 8, 1.0, 0.0).ids) == set(world.TRAIN_IDS)
    assert not set(world.TRAIN_IDS) & set(world.HELDOUT_IDS)


def test_loss_terms():
    from moca_model.wan_vae import WanVAE
    torch.manual_seed(0)
    vae = WanVAE(dim=4)
    x = torch.rand(2, 3, 5, 16, 16) * 2 - 1
    cfg = _tiny(amp=False)
    t = vt.vae_losses(vae, x, cfg, torch.randn(vt.latent_shape(x.shape)))
    assert all(torch.isfinite(v) for v in t.values())
    assert cfg.recon == "mse"
    torch.testing.assert_close(t["loss"], t["mse"] + cfg.edge_weight * t["edge"] + cfg.kl_weight * t["kl"]
                               + cfg.moment_weight * t["moment"])
    t1 = vt.vae_losses(vae, x, _tiny(amp=False, recon="l1", edge_weight=0.5), None)
    torch.testing.assert_close(t1["loss"], t1["l1"] + 0.5 * t1["edge"] + cfg.kl_weight * t1["kl"] + cfg.moment_weight * t1["moment"])
    t["loss"].backward()
    assert all(p.grad is not None for p in vae.parameters())


def test_exact_resume(tmp_path):
    cfg = _tiny(checkpoint_every=3)
    straight = vt.train_vae(cfg, seed=1, log=lambda *a: None)
    vt.train_vae(cfg, seed=1, resume_dir=tmp_path, log=lambda *a: None, stop_at=2)      # "interrupted"
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["step_00000002"]
    resumed = vt.train_vae(cfg, seed=1, resume_dir=tmp_path, log=lambda *a: None)
    for k, v in straight.state_dict().items():
        assert torch.equal(v, resumed.state_dict()[k]), k
    with pytest.raises(ValueError, match="other settings"):
        vt.train_vae(_tiny(dim=8), seed=1, resume_dir=tmp_path, log=lambda *a: None)
    logs = []                                        # a longer run resumes from there on a stretched schedule
    longer = vt.train_vae(_tiny(checkpoint_every=3, steps=6), seed=1, resume_dir=tmp_path, log=logs.append)
    assert any("resumed" in m and "step 4" in m for m in logs) and any("step 6/6" in m for m in logs)
    assert not torch.equal(longer.state_dict()["conv1.weight"], resumed.state_dict()["conv1.weight"])


def test_train_toy_vae_writes_a_wan_vae_file(tmp_path):
    from moca_model.checkpoint import read_safetensors
    out = tmp_path / "vae" / "toy.safetensors"
    figures = vt.train_toy_vae(out, steps=2, seed=0, resume_dir=tmp_path / "run", config=_tiny().__dict__,
                               eval_clips=2, log=lambda *a: None)
    assert figures["width"] == 4 and figures["steps"] == 2 and len(figures["latent_std"]) == 16
    assert np.isfinite(figures["psnr_db"])
    sd, meta = read_safetensors(out)
    assert meta["format"] == "wan2.1-vae" and meta["width"] == "4"
    assert json.loads(meta["figures"])["psnr_db"] == figures["psnr_db"]
    assert all(v.dtype == torch.float16 for v in sd.values())
    vae = vt.load_toy_vae(out)
    assert vae.dim == 4 and next(vae.parameters()).dtype == torch.float32


def test_load_toy_vae_says_how_to_build_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="--stages vae"):
        vt.load_toy_vae(tmp_path / "nope.safetensors")


# ---------------------------------------------------------------------------------------------- shipped file
@pytest.fixture(scope="module")
def shipped():
    if not vt.DEFAULT_PATH.is_file():        # like the other toy models: not trained to quality yet (issue 8)
        pytest.skip(f"toy VAE not built yet: {vt.DEFAULT_PATH} (python -m moca_model.toy build --stages vae)")
    return vt.load_toy_vae()


def test_shipped_vae_reconstructs_a_heldout_clip(shipped):
    from moca_model.checkpoint import read_safetensors
    meta = read_safetensors(vt.DEFAULT_PATH)[1]
    assert meta["format"] == "wan2.1-vae" and int(meta["width"]) == shipped.dim
    r = vt.evaluate_vae(shipped, n_clips=1, batch=1, ids=[world.HELDOUT_IDS[7]], clip_seed=3)
    assert r["psnr_db"] > SHIPPED_MIN_PSNR
    assert all(abs(m) < 0.5 for m in r["latent_mean"])                   # normalised latents ~ N(0, 1)


@pytest.mark.comfyui
def test_comfyui_core_loader_decodes_the_shipped_file_like_we_do(shipped):
    import comfy_harness as H
    H.require_comfyui()
    H.import_comfy()
    import re
    version = re.search(r'__version__ = "([0-9.]+)"', (H.comfy_path() / "comfyui_version.py").read_text()).group(1)
    if tuple(int(x) for x in version.split(".")) < (0, 8, 0):
        pytest.skip(f"ComfyUI {version} builds every Wan VAE at width 96 (test_wan_vae asserts that refusal)")
    import comfy.ldm.wan.vae
    import comfy.sd
    import comfy.utils
    cv = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(vt.DEFAULT_PATH)))
    assert isinstance(cv.first_stage_model, comfy.ldm.wan.vae.WanVAE)
    frames = world.make_clip(world.HELDOUT_IDS[0], 0).frames[:9]
    video = vt._to_video(frames[None])
    with torch.no_grad():
        mu = shipped.encode(video)
        ours = ((shipped.decode(mu) + 1) / 2).clamp(0, 1)[0].permute(1, 2, 3, 0)          # [T, H, W, 3]
        theirs = cv.decode(mu).float().reshape(ours.shape)
        assert (theirs - ours).abs().max() < 1e-4
        pixels = torch.from_numpy(frames).float() / 255
        assert ((cv.encode(pixels).float() - mu).abs().max() / mu.abs().max()) < 1e-4


def test_standardising_the_latents_keeps_reconstructions_and_makes_them_unit_normal():
    from moca_model.wan_vae import WanVAE
    torch.manual_seed(0)
    vae = vt.init_for_training(WanVAE(dim=4), _tiny()).eval()
    with torch.no_grad():                                          # an arbitrary, non-standard latent space
        vae.conv1.weight[:16] *= torch.rand(16, 1, 1, 1, 1) * 3
        vae.conv1.bias[:16] += torch.randn(16)
    videos = [torch.rand(2, 3, 5, 16, 16) * 2 - 1 for _ in range(3)]
    with torch.no_grad():
        before = [vae.decode(vae.encode(v)) for v in videos]
    m, s = vt.latent_moments(vae, videos, amp=False)
    assert (m.abs() > 0.1).any() or ((s - 1).abs() > 0.1).any()    # the test starts off-standard
    vt.standardize_latents(vae, m, s)
    m2, s2 = vt.latent_moments(vae, videos, amp=False)
    assert m2.abs().max() < 1e-3 and (s2 - 1).abs().max() < 1e-3
    with torch.no_grad():
        for v, b in zip(videos, before):
            torch.testing.assert_close(vae.decode(vae.encode(v)), b, atol=1e-4, rtol=1e-4)


def test_evaluation_reports_what_the_vae_leaves_of_identity():
    """With the judge: the original clips look like their reference, an untrained VAE's reconstructions do not."""
    judge = vt.default_judge()
    if judge is None:
        pytest.skip("the toy face pack / evaluation recogniser is not in this checkout")
    from moca_model.wan_vae import WanVAE
    torch.manual_seed(0)
    vae = vt.init_for_training(WanVAE(dim=4), _tiny()).eval()
    r = vt.evaluate_vae(vae, n_clips=2, batch=2, judge=judge)
    assert r["likeness_original"] > 0.5, r
    assert r["likeness_reconstructed"] < r["likeness_original"] - 0.3, r
    assert "likeness_original" not in vt.evaluate_vae(vae, n_clips=1, batch=1)
