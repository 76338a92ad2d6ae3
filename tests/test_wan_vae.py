"""moca_model.wan_vae: Wan 2.1's VAE layout (key names and shapes), Wan's chunked causal semantics, loading,
and the LVPL decoder stages built from its pieces. Tests marked `comfyui` check numerical parity with
ComfyUI's own WanVAE and its core VAE loader (run them with COMFYUI_PATH set, see docs/nodes.md)."""
import json
from pathlib import Path

import pytest
import torch

import wan_vae_reference as ref
from moca_model.checkpoint import CheckpointError, atomic_save_safetensors
from moca_model.training.wan_vae_decoder import WanVAEDecoderStages, load_wan_vae_decoder_stages
from moca_model.wan_vae import WanVAE, load_wan_vae, wan_vae_config_from_state_dict

KEYS_FILE = Path(__file__).with_name("wan21_vae_keys.json")   # ComfyUI's WanVAE(dim=96) on meta: name -> shape


def _random_vae(dim=4, seed=0):
    """A WanVAE whose norms, biases and convs are all far from their init (so every path shows in outputs)."""
    torch.manual_seed(seed)
    vae = WanVAE(dim=dim).eval()
    with torch.no_grad():
        for name, p in vae.named_parameters():
            p.add_(torch.randn_like(p) * (0.3 if name.endswith("gamma") else 0.05))
    return vae


def _video(B=1, T=9, H=32, W=24, seed=1):
    return torch.rand(B, 3, T, H, W, generator=torch.Generator().manual_seed(seed)) * 2 - 1


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def test_keys_and_shapes_are_wan21s():
    expected = json.loads(KEYS_FILE.read_text())
    with torch.device("meta"):
        ours = WanVAE(dim=96)
    got = {k: list(v.shape) for k, v in ours.state_dict().items()}
    assert got == expected
    assert sum(torch.Size(s).numel() for s in expected.values()) == 126_892_531          # Wan 2.1 VAE's size


def test_shapes_and_dropped_trailing_frames():
    vae = _random_vae()
    with torch.no_grad():
        mu = vae.encode(_video(B=2, T=9, H=32, W=48))
        assert mu.shape == (2, 16, 3, 4, 6)
        assert vae.decode(mu).shape == (2, 3, 9, 32, 48)
        assert vae.decode(mu[:, :, :1]).shape == (2, 3, 1, 32, 48)                       # one image
        x = _video(T=11)
        assert torch.equal(vae.encode(x), vae.encode(x[:, :, :9]))                       # as Wan: 1 + 4k frames
    with pytest.raises(ValueError, match="divisible by 8"):
        vae.encode(_video(H=30))


@pytest.mark.parametrize("T", [1, 5, 13])
def test_full_sequence_pass_equals_wans_chunked_pass(T):
    """Our single causal pass == Wan's (first frame, then chunks of 4; decoder one latent frame at a time,
    with the per-conv caches and the 'Rep' first temporal upsample), on an independent reference."""
    vae = _random_vae()
    sd = vae.state_dict()
    x = _video(B=2, T=T)
    with torch.no_grad():
        mu = vae.encode(x)
        assert _rel(mu, ref.encode(sd, x)) < 1e-5
        assert _rel(vae.decode(mu), ref.decode(sd, mu)) < 1e-5


def test_causal_in_time():
    vae = _random_vae()
    x = _video(T=13)
    x2 = x.clone()
    x2[:, :, 9:] += 0.5                                       # frames of the third chunk only
    with torch.no_grad():
        a, b = vae.encode(x), vae.encode(x2)
        assert torch.equal(a[:, :, :3], b[:, :, :3]) and not torch.equal(a[:, :, 3], b[:, :, 3])
        z2 = a.clone()
        z2[:, :, 2] += 0.5                                    # latent frame 2 -> video frames 5..8 and later
        da, db = vae.decode(a), vae.decode(z2)
        assert torch.equal(da[:, :, :5], db[:, :, :5]) and not torch.equal(da[:, :, 5], db[:, :, 5])


def test_load_reads_width_and_prefixes(tmp_path):
    vae = _random_vae(dim=4)
    sd = vae.state_dict()
    path = atomic_save_safetensors({"first_stage_model." + k: v.half() for k, v in sd.items()},
                                   tmp_path / "vae.safetensors", {"format": "wan2.1-vae"})
    loaded = load_wan_vae(path)
    assert loaded.dim == 4 and not loaded.training
    assert all(torch.equal(loaded.state_dict()[k], v.half().float()) for k, v in sd.items())
    assert wan_vae_config_from_state_dict(sd)["dim"] == 4
    bad = dict(sd)
    bad["decoder.head.2.weight"] = torch.zeros(3, 5, 3, 3, 3)
    del bad["encoder.conv1.bias"]
    with pytest.raises(CheckpointError, match=r"missing 1 keys: encoder.conv1.bias[\s\S]*mis-shaped 1 keys: "
                                              r"decoder.head.2.weight"):
        load_wan_vae(bad)
    with pytest.raises(CheckpointError, match="Wan 2.2"):
        load_wan_vae({**sd, "decoder.upsamples.0.upsamples.0.residual.2.weight": torch.zeros(1)})


def test_lvpl_stages_are_the_decoders_first_layers():
    vae = _random_vae(dim=4)
    stages = WanVAEDecoderStages.from_wan_vae(vae.state_dict())             # width read from the weights
    assert stages.dim == 4
    z = torch.randn(2, 16, 3, 4, 4)
    from moca_model.latents import denormalize_latent
    with torch.no_grad():
        conv1, middle, up0 = stages(z)
        x = vae.decoder.conv1(vae.conv2(denormalize_latent(z)))
        assert torch.equal(conv1, x)
        x = vae.decoder.middle(x)
        assert torch.equal(middle, x)
        assert torch.equal(up0, vae.decoder.upsamples[:3](x))
    with pytest.raises(CheckpointError, match=r"base width 8 \(the file's is 4\)"):
        load_wan_vae_decoder_stages(WanVAEDecoderStages(dim=8), vae.state_dict())


def test_lvpl_build_extractor_takes_any_width(tmp_path):
    from moca_model.training.lvpl import build_extractor
    vae = _random_vae(dim=4)
    path = atomic_save_safetensors(vae.state_dict(), tmp_path / "toy.safetensors")
    ex = build_extractor("wan_vae_decoder", vae=str(path), vae_dim=96, checkpoint=False)  # file's width wins
    assert ex.dim == 4 and [f.shape[1] for f in ex(torch.randn(1, 16, 2, 4, 4))] == [16, 16, 16]


# ---------------------------------------------------------------------------------------------- ComfyUI
@pytest.fixture(scope="module")
def comfy():
    import comfy_harness as H
    H.require_comfyui()
    H.import_comfy()
    import comfy.ldm.wan.vae
    import comfy.sd
    return comfy


@pytest.mark.comfyui
def test_comfyui_key_list_is_the_stored_one(comfy):
    with torch.device("meta"):
        theirs = comfy.ldm.wan.vae.WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2,
                                          attn_scales=[], temperal_downsample=[False, True, True], dropout=0.0)
    assert {k: list(v.shape) for k, v in theirs.state_dict().items()} == json.loads(KEYS_FILE.read_text())


@pytest.mark.comfyui
def test_comfyui_wanvae_same_weights_same_numbers(comfy):
    vae = _random_vae(dim=8)
    theirs = comfy.ldm.wan.vae.WanVAE(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                      temperal_downsample=[False, True, True], dropout=0.0).eval()
    theirs.load_state_dict(vae.state_dict(), strict=True)
    x = _video(B=1, T=9, H=32, W=32)
    with torch.no_grad():
        mu = vae.encode(x)
        assert _rel(mu, theirs.encode(x)) < 1e-4
        assert _rel(vae.decode(mu), theirs.decode(mu)) < 1e-4


@pytest.mark.comfyui
def test_comfyui_core_vae_loader_takes_a_narrow_wan_vae(comfy, tmp_path):
    """What ComfyUI's "Load VAE" does with our file: comfy.sd.VAE on its state dict -> a Wan 2.1 VAE of
    our width, whose encode / decode (pixels 0..1, channels last, clamped) equal ours."""
    import comfy.utils
    import comfyui_version
    vae = _random_vae(dim=8)
    path = atomic_save_safetensors(vae.state_dict(), tmp_path / "toy_wan_vae.safetensors")
    if tuple(int(p) for p in comfyui_version.__version__.split(".")[:3]) <= (0, 3, 64):
        # 0.3.64 builds every Wan 2.1 VAE at width 96: a narrow one fails to load (the toy template says
        # it needs a newer ComfyUI; docs/toy_world.md)
        with pytest.raises(RuntimeError, match="size mismatch"):
            comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path)))
        return
    cv = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(path)))
    assert isinstance(cv.first_stage_model, comfy.ldm.wan.vae.WanVAE) and cv.latent_channels == 16
    assert cv.first_stage_model.decoder.head[0].gamma.shape[0] == 8
    x = _video(B=1, T=9, H=32, W=32)
    with torch.no_grad():
        mu = vae.encode(x)
        pixels = ((x[0].permute(1, 2, 3, 0) + 1) / 2)                                  # [T, H, W, 3] 0..1
        assert _rel(cv.encode(pixels).float(), mu) < 1e-4
        ours = ((vae.decode(mu) + 1) / 2).clamp(0, 1)[0].permute(1, 2, 3, 0)
        theirs = cv.decode(mu).float().reshape(ours.shape)
        assert (theirs - ours).abs().max() < 1e-4
