"""MoCADiT: zero-init, trainability, Wan 2.1 compatibility, parameter budget, batching and padding."""
import pytest
import torch
from safetensors.torch import save_file

from moca_model import CheckpointError, MoCAConfig, MoCADiT
from wan_reference import wan21_t2v_keys, wan_forward


def tiny(**kw):
    return MoCADiT(MoCAConfig.preset("tiny", **kw)).eval()


def inputs(B=2, T=3, H=8, W=8, L=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, 16, T, H, W, generator=g), torch.tensor([700.0, 250.0][:B] + [500.0] * max(0, B - 2)),
            torch.randn(B, L, 4096, generator=g))


def random_identity(model, B=2, seed=1):
    g = torch.Generator().manual_seed(seed)
    return model.adapter.tokenizer(arcface=torch.randn(B, 512, generator=g),
                                   face_latent=torch.randn(B, 16, 1, 8, 8, generator=g))


def make_adapter_live(model, std=0.05, seed=3):
    """Give the zero-initialised projections (output, router) random values, as training would."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model.adapter.layers:
            for p in (layer.out.weight, layer.router.proj_x.weight, layer.router.proj_t.weight):
                p.copy_(torch.randn(p.shape, generator=g) * std)


@torch.no_grad()
def test_fresh_adapter_is_exactly_the_backbone():
    model = tiny()
    x, t, ctx = inputs()
    base = model(x, t, ctx)
    ref = wan_forward({k: v for k, v in model.backbone_state_dict().items()}, x, t, ctx, num_heads=2, num_layers=2)
    for seed in range(3):
        ident = random_identity(model, seed=seed) * (10 ** seed)
        assert torch.equal(model(x, t, ctx, identity=ident), base)
    # ... and the backbone is Wan 2.1: an independent original-style implementation agrees.
    err = (base - ref).abs().max() / ref.abs().max()
    print(f"MoCADiT backbone vs reference Wan forward: max rel diff {err:.2e}")
    assert err < 1e-5


def test_one_optimizer_step_makes_output_depend_on_identity():
    model = tiny().train()
    x, t, ctx = inputs()
    id_a, id_b = random_identity(model, seed=1).detach(), random_identity(model, seed=2).detach()
    with torch.no_grad():
        base = model(x, t, ctx)
    target = base + 0.5 * torch.sign(x)               # needs the identity path: the backbone is frozen
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("adapter."))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss = torch.nn.functional.mse_loss(model(x, t, ctx, identity=id_a), target)
    loss.backward()
    out_grads = [layer.out.weight.grad.abs().sum().item() for layer in model.adapter.layers]
    assert all(g > 0 for g in out_grads), out_grads
    opt.step()
    model.eval()
    with torch.no_grad():
        out_a, out_b, out_none = (model(x, t, ctx, identity=i) for i in (id_a, id_b, None))
    assert torch.equal(out_none, base)                 # identity=None is still exactly the backbone
    assert (out_a - base).abs().max() > 1e-4
    assert (out_a - out_b).abs().max() > 1e-6


def test_backbone_keys_and_shapes_are_wan21():
    for preset, (dim, ffn, layers) in {"wan2.1-1.3b": (1536, 8960, 30), "wan2.1-14b": (5120, 13824, 40)}.items():
        model = MoCADiT(MoCAConfig.preset(preset), device="meta")
        mine = {k: tuple(v.shape) for k, v in model.backbone_state_dict().items()}
        assert mine == wan21_t2v_keys(dim, ffn, layers), preset
    assert len(wan21_t2v_keys(1536, 8960, 30)) == 825


@pytest.mark.parametrize("prefix", ["", "model.diffusion_model."])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_load_backbone_from_a_wan_file(tmp_path, prefix, dtype):
    # A tiny Wan-format checkpoint written from the key list alone (not from our model).
    g = torch.Generator().manual_seed(0)
    sd = {prefix + k: (torch.randn(s, generator=g) * 0.05).to(dtype)
          for k, s in wan21_t2v_keys(256, 512, 2).items()}
    path = tmp_path / "wan_tiny.safetensors"
    save_file(sd, str(path))
    model = tiny()
    model.load_backbone(path)
    for k, v in model.backbone_state_dict().items():
        assert torch.equal(v, sd[prefix + k].float()), k
    model2 = tiny().load_backbone(sd)                  # a state dict works too
    assert torch.equal(model2.blocks[1].ffn[2].weight, model.blocks[1].ffn[2].weight)


def test_load_backbone_error_lists_missing_unexpected_misshaped():
    sd = {k: torch.zeros(s) for k, s in wan21_t2v_keys(256, 512, 2).items()}
    del sd["blocks.1.ffn.0.bias"]
    sd["blocks.0.extra.weight"] = torch.zeros(3)
    sd["head.head.weight"] = torch.zeros(32, 256)
    with pytest.raises(CheckpointError) as e:
        tiny().load_backbone(sd)
    msg = str(e.value)
    assert "missing 1 keys: blocks.1.ffn.0.bias" in msg
    assert "unexpected 1 keys: blocks.0.extra.weight" in msg
    assert "head.head.weight: file [32, 256] vs model [64, 256]" in msg


def test_load_backbone_rejects_i2v_and_diffusers_layouts():
    sd = {k: torch.zeros(s) for k, s in wan21_t2v_keys(256, 512, 2).items()}
    with pytest.raises(CheckpointError, match="image-to-video"):
        tiny().load_backbone({**sd, "img_emb.proj.0.weight": torch.zeros(3)})
    with pytest.raises(CheckpointError, match="diffusers"):
        tiny().load_backbone({"blocks.0.attn1.to_q.weight": torch.zeros(3)})


def test_parameter_budget_of_real_presets():
    from moca_model.variants import variant_config
    for preset in ("wan2.1-1.3b", "wan2.1-14b"):
        for name, cfg, budget in (("preset (lean)", MoCAConfig.preset(preset), 0.03),
                                  ("as designed", variant_config("moca", preset), 0.15)):
            model = MoCADiT(cfg, device="meta")
            backbone, adapter = model.num_parameters(), model.num_parameters("adapter")
            share = adapter / backbone
            print(f"{preset} {name}: backbone {backbone / 1e6:.1f}M, adapter {adapter / 1e6:.1f}M ({100 * share:.1f}%)")
            assert share <= budget
    assert 1.40e9 < MoCADiT(MoCAConfig.preset("wan2.1-1.3b"), device="meta").num_parameters() < 1.45e9


@torch.no_grad()
def test_batch_sample_equals_sample_alone():
    model = tiny()
    make_adapter_live(model)
    x, t, ctx = inputs(B=3)
    ident = random_identity(model, B=3)
    batched = model(x, t, ctx, identity=ident)
    for i in range(3):
        alone = model(x[i:i + 1], t[i:i + 1], ctx[i:i + 1], identity=ident[i:i + 1])
        torch.testing.assert_close(batched[i:i + 1], alone, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_identity_mask_switches_identity_per_sample():
    model = tiny()
    make_adapter_live(model)
    x, t, ctx = inputs(B=2)
    ident = random_identity(model, B=2)
    out = model(x, t, ctx, identity=ident, identity_mask=torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(out[:1], model(x[:1], t[:1], ctx[:1], identity=ident[:1]), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1:], model(x[1:], t[1:], ctx[1:]), rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_odd_sizes_are_padded_circularly_like_wan():
    model = tiny()
    make_adapter_live(model)
    x, t, ctx = inputs(B=1, T=3, H=7, W=9)
    ident = random_identity(model, B=1)
    out = model(x, t[:1], ctx, identity=ident)
    assert out.shape == x.shape
    padded = torch.nn.functional.pad(x, (0, 1, 0, 1, 0, 0), mode="circular")
    torch.testing.assert_close(out, model(padded, t[:1], ctx, identity=ident)[..., :7, :9])


def test_bad_inputs_are_named():
    model = tiny()
    x, t, ctx = inputs()
    with pytest.raises(ValueError, match=r"x must be \[B, 16, T, H, W\]"):
        model(x[:, :4], t, ctx)
    with pytest.raises(ValueError, match="context must be"):
        model(x, t, ctx[..., :100])
    with pytest.raises(ValueError, match="identity batch"):
        make_adapter_live(model)
        model(x, t, ctx, identity=random_identity(model, B=3))


def test_layer_classes_are_injectable():
    """ComfyUI passes its casting ops: every Linear/LayerNorm/RMSNorm/Conv must come from `operations`."""
    import types
    made = []

    def tracked(base):
        class Op(base):
            def __init__(self, *a, **k):
                super().__init__(*a, **k)
                made.append(base.__name__)
        return Op
    ops = types.SimpleNamespace(**{n: tracked(getattr(torch.nn, n))
                                   for n in ("Linear", "LayerNorm", "RMSNorm", "Conv2d", "Conv3d")})
    model = MoCADiT(MoCAConfig.preset("tiny"), operations=ops)
    plain = [n for n, m in model.named_modules()
             if type(m) in (torch.nn.Linear, torch.nn.LayerNorm, torch.nn.RMSNorm, torch.nn.Conv2d, torch.nn.Conv3d)]
    assert plain == [] and len(made) > 50


def test_importing_moca_model_is_cheap():
    import subprocess
    import sys
    code = ("import sys, moca_model; heavy = [m for m in ('onnxruntime', 'insightface', 'kornia', 'cv2', 'av') "
            "if m in sys.modules]; import torch; print(heavy, torch.cuda.is_initialized())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[] False"
