"""MoCA variants (moca_model/variants.py): every variant builds, runs forward and backward on the tiny preset,
round-trips through an adapter file, and MoCA as designed is unchanged (numbers recorded before the variant
fields existed); lean MoCA stays within 3% of the real backbones."""
import json

import pytest
import torch

from moca_model import CheckpointError, MoCAConfig, MoCADiT, MoCALayer, MoCAOptions, load_moca, read_moca, save_moca
from moca_model.adapter import live_adapter
from moca_model.variants import MODEL_VARIANTS, adapter_share, lean_shares, variant_config, variant_of

ARCH = [v for v in MODEL_VARIANTS if v not in ("no_lvpl", "no_identity")]   # the variants with their own modules


def inputs(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    x, ctx = torch.randn(2, 16, 3, 8, 8, generator=g), torch.randn(2, 7, 4096, generator=g)
    ident = model.adapter.tokenizer(arcface=torch.randn(2, 512, generator=g),
                                    face_latent=torch.randn(2, 16, 1, 8, 8, generator=g))
    return x, torch.tensor([700.0, 250.0]), ctx, ident


@torch.no_grad()
def test_default_is_unchanged():
    """Recorded with the code before the variant fields (tiny preset, seed 0, live_adapter(seed=0)): the same
    adapter keys, the same initial weights and the same MoCA residual."""
    import hashlib
    torch.manual_seed(0)
    m = MoCADiT(MoCAConfig.preset("tiny")).eval()
    live_adapter(m, seed=0)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(1, 16, 3, 8, 8, generator=g), torch.randn(1, 7, 4096, generator=g)
    ident = m.adapter.tokenizer(arcface=torch.randn(1, 512, generator=g),
                                face_latent=torch.randn(1, 16, 1, 8, 8, generator=g))
    d = m(x, torch.tensor([500.0]), ctx, identity=ident) - m(x, torch.tensor([500.0]), ctx)
    assert d.abs().sum().item() == pytest.approx(199.54107666015625, rel=1e-5)
    assert d.flatten()[:4].tolist() == pytest.approx([0.025218427, 0.080552369, 0.000685275, 0.088297054], rel=1e-4)
    keys = sorted((k, tuple(v.shape)) for k, v in m.adapter.state_dict().items())
    assert hashlib.sha256(repr(keys).encode()).hexdigest()[:16] == "c08f4fcd7a15251c"
    blob = b"".join(v.numpy().tobytes() for _, v in sorted(m.adapter.state_dict().items()))
    assert hashlib.sha256(blob).hexdigest()[:16] == "71be4842a05d770d"
    # the header of a default config names no variant field: older readers load it as before
    assert set(json.loads(MoCAConfig.preset("tiny").to_json())) == set(json.loads(
        '{"arcface_dim": 0, "cross_attn_norm": 0, "dim": 0, "eps": 0, "face_latent_channels": 0, "ffn_dim": 0, '
        '"freq_dim": 0, "id_dim": 0, "in_dim": 0, "moca_dim": 0, "moca_heads": 0, "num_global_tokens": 0, '
        '"num_heads": 0, "num_layers": 0, "num_local_tokens": 0, "out_dim": 0, "patch_size": 0, "qk_norm": 0, '
        '"resampler_depth": 0, "router_use_time": 0, "scales": 0, "text_dim": 0, "text_len": 0}'))


@pytest.mark.parametrize("variant", ARCH)
def test_variant_forward_backward_and_round_trip(variant, tmp_path):
    cfg = variant_config(variant, "tiny")
    assert variant_of(cfg) == variant
    torch.manual_seed(0)
    model = MoCADiT(cfg).train()
    x, t, ctx, ident = inputs(model)
    with torch.no_grad():
        base = model(x, t, ctx)
        assert torch.equal(model(x, t, ctx, identity=ident), base)        # fresh adapter == backbone
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith("adapter."))
    loss = (model(x, t, ctx, identity=ident) - base - torch.sign(x)).pow(2).mean()
    loss.backward()
    grads = {n: p.grad for n, p in model.adapter.named_parameters() if p.grad is not None}
    assert all(layer.out.weight.grad.abs().sum() > 0 for layer in model.adapter.layers)
    torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1).step()
    model.eval()
    with torch.no_grad():
        out = model(x, t, ctx, identity=ident)
        assert (out - base).abs().max() > 1e-5
    path = save_moca(tmp_path / f"{variant}.safetensors", model, adapter_only=True)
    f = read_moca(path)
    assert f.config == cfg and variant_of(f.config) == variant
    fresh = MoCADiT(MoCAConfig.preset("tiny"))                        # a default model rebuilds the variant
    fresh.load_backbone(model.backbone_state_dict())
    fresh.load_adapter(str(path))
    assert fresh.config == cfg
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x, t, ctx, identity=ident), out)
    adapter = load_moca(path)
    assert adapter.config == cfg and len(grads) > 0


@torch.no_grad()
def test_single_xattn_is_one_plain_cross_attention():
    import torch.nn.functional as F
    cfg = variant_config("single_xattn", "tiny")
    layer = MoCALayer(cfg).eval()
    assert not hasattr(layer, "experts") and not hasattr(layer, "router") and not hasattr(layer, "htp")
    g = torch.Generator().manual_seed(0)
    for p in layer.parameters():
        p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    T, h, w = 3, 2, 2
    x, ident = torch.randn(2, T * h * w, cfg.dim, generator=g), torch.randn(2, cfg.num_id_tokens, cfg.id_dim, generator=g)
    out = layer(x, torch.randn(2, 1, 6, cfg.dim, generator=g), ident, (T, h, w), MoCAOptions(strength=0.5).resolve(cfg))
    at, a, H = layer.attn, cfg.moca_dim, cfg.moca_heads
    q = at.norm_q(at.q(F.layer_norm(x, (cfg.dim,), eps=cfg.eps)))
    k, v = at.kv(ident).chunk(2, -1)
    att = torch.softmax(q.view(2, -1, H, a // H).transpose(1, 2) @ at.norm_k(k).view(2, -1, H, a // H).transpose(1, 2)
                        .transpose(-1, -2) / (a // H) ** 0.5, -1) @ v.view(2, -1, H, a // H).transpose(1, 2)
    torch.testing.assert_close(out, 0.5 * layer.out(att.transpose(1, 2).reshape(2, -1, a)), rtol=1e-5, atol=1e-5)
    # its one gain (MoCA Expert Mixing's gain_1) scales the attention output, as an expert's gain does
    gained = layer(x, torch.zeros(2, 1, 6, cfg.dim), ident, (T, h, w), MoCAOptions(expert_gains=(2.0,)).resolve(cfg))
    torch.testing.assert_close(gained, layer.out(2 * att.transpose(1, 2).reshape(2, -1, a)), rtol=1e-5, atol=1e-5)
    # every token sees only the identity: a token's output does not depend on the other frames
    x2 = x.clone()
    x2[:, h * w:] += 1.0
    out2 = layer(x2, torch.zeros(2, 1, 6, cfg.dim), ident, (T, h, w), MoCAOptions(strength=0.5).resolve(cfg))
    torch.testing.assert_close(out2[:, :h * w], out[:, :h * w])


@torch.no_grad()
def test_lean_experts_start_from_shared_kv_and_disable_exactly():
    cfg = variant_config("lean", "tiny")
    layer = MoCALayer(cfg)
    layer.experts.init_weights()
    ex = layer.experts
    assert ex.kv.out_features == 2 * cfg.moca_dim and all(up.weight.abs().sum() == 0 for up in ex.kv_up)
    assert ex.summary_proj.in_features == cfg.moca_dim
    g = torch.Generator().manual_seed(1)
    for up in ex.kv_up:
        up.weight.copy_(torch.randn(up.weight.shape, generator=g))
    torch.nn.init.normal_(layer.out.weight, std=0.1)
    torch.nn.init.normal_(layer.router.proj_x.weight, std=0.1)
    x, vec = torch.randn(1, 4 * 4, cfg.dim, generator=g), torch.randn(1, 1, 6, cfg.dim, generator=g)
    ident = torch.randn(1, cfg.num_id_tokens, cfg.id_dim, generator=g)
    both = layer(x, vec, ident, (4, 2, 2), MoCAOptions(scale_enabled={"2": False, "4": False}).resolve(cfg))
    # the same two experts in a model that only has them: identical (the disabled experts' K/V play no part)
    only_cfg = MoCAConfig.preset("tiny", **{k: getattr(cfg, k) for k in ("moca_dim", "moca_heads", "id_dim",
                                                                         "expert_kv_rank", "summary_source")},
                                 scales=(1, 0))
    only = MoCALayer(only_cfg)
    keep, r = [0, 3], cfg.expert_kv_rank
    sd = {k: v for k, v in layer.state_dict().items() if not k.startswith("experts.kv_up.")}
    sd.update({f"experts.kv_up.{i}.weight": ex.kv_up[e].weight for i, e in enumerate(keep)})
    sd["experts.kv_down.weight"] = torch.cat([ex.kv_down.weight[e * r:(e + 1) * r] for e in keep])
    sd["experts.scale_embed"] = ex.scale_embed[keep]
    for k in ("router.proj_x.weight", "router.proj_x.bias", "router.proj_t.weight"):
        sd[k] = sd[k][keep]
    only.load_state_dict(sd)
    torch.testing.assert_close(both, only(x, vec, ident, (4, 2, 2), MoCAOptions().resolve(only_cfg)),
                               rtol=1e-5, atol=1e-6)


def test_lean_is_at_most_3_percent_of_the_real_backbones():
    shares = lean_shares()
    for preset, s in shares.items():
        print(f"lean MoCA at {preset}: {s['adapter'] / 1e6:.1f}M = {100 * s['share']:.2f}% of the backbone")
        assert s["share"] <= 0.03, (preset, s)
    # MoCA as designed is far above it (the reason for the lean design), and keeps its designed widths
    designed = {p: adapter_share(variant_config("moca", p)) for p in ("wan2.1-1.3b", "wan2.1-14b")}
    assert round(designed["wan2.1-1.3b"]["adapter"] / 1e6, 1) == 203.1
    assert round(designed["wan2.1-14b"]["adapter"] / 1e6, 1) == 1773.9


@pytest.mark.parametrize("preset", ["wan2.1-1.3b", "wan2.1-14b", "wan2.2-a14b"])
def test_real_presets_build_lean_moca_and_variants_keep_the_designed_widths(preset):
    """The toy benchmark put lean within MoCA's interval, so the real presets are lean MoCA (issue 10); every
    ablation stays MoCA as designed with one thing changed, at the designed widths."""
    lean = MoCAConfig.preset(preset)
    assert lean == variant_config("lean", preset) and variant_of(lean) == "lean"
    assert (lean.moca_dim, lean.moca_heads, lean.id_dim) == {"wan2.1-1.3b": (256, 2, 256)}.get(preset, (768, 6, 512))
    assert (lean.expert_kv_rank, lean.summary_source) == (16, "query")
    designed = variant_config("moca", preset)
    assert variant_of(designed) == "moca" and designed.expert_kv_rank == 0 and designed.summary_source == "video"
    assert designed.moca_dim == {"wan2.1-1.3b": 768}.get(preset, 2048)
    for v in ("single_xattn", "frame_scale", "clip_scale", "no_lvpl"):
        cfg = variant_config(v, preset)
        assert variant_of(cfg) == {"no_lvpl": "moca"}.get(v, v)
        assert (cfg.moca_dim, cfg.id_dim) == (designed.moca_dim, designed.id_dim), v
    # a file of MoCA as designed (made before the change) still loads as what it is: its header is its config
    assert MoCAConfig.from_json(designed.to_json()) == designed
    assert "expert_kv_rank" not in designed.to_dict()              # the header it always had
    assert MoCAConfig.from_json(MoCAConfig.preset(preset).to_json()) == MoCAConfig.preset(preset)


def test_unknown_variant_and_invalid_fields_are_named(tmp_path):
    with pytest.raises(ValueError, match="Unknown MoCA variant 'huge'"):
        variant_config("huge", "tiny")
    with pytest.raises(ValueError, match="identity_attention='perceiver' is not a known kind"):
        MoCAConfig.preset("tiny", identity_attention="perceiver")
    with pytest.raises(ValueError, match=r"set scales=\(1,\)"):
        MoCAConfig.preset("tiny", identity_attention="single")
    # an adapter file of an unknown kind fails with the reason, not a key listing
    model = MoCADiT(variant_config("single_xattn", "tiny"))
    path = save_moca(tmp_path / "a.safetensors", model, adapter_only=True)
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    meta["config"] = meta["config"].replace('"single"', '"perceiver"')
    save_file(load_file(str(path)), str(tmp_path / "b.safetensors"), metadata=meta)
    with pytest.raises(CheckpointError, match="perceiver.*update the node pack"):
        read_moca(tmp_path / "b.safetensors")


@pytest.mark.parametrize("variant,T", [("single_xattn", 5), ("lean", 5), ("lean", 8), ("clip_scale", 7)])
@torch.no_grad()
def test_variant_flops_equal_the_layers_counted_flops(variant, T):
    """moca_flops of a variant against torch's FLOP counter on one layer (as tests/test_core_flops.py does for
    MoCA as designed; the router mix is an elementwise multiply-add the counter does not see)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from moca_model.flops import moca_flops
    cfg = variant_config(variant, "tiny", num_layers=1)
    layer = MoCALayer(cfg).eval()
    h, w, M = 4, 6, cfg.num_id_tokens
    x, vec, ident = torch.randn(1, T * h * w, cfg.dim), torch.randn(1, 1, 6, cfg.dim), torch.randn(1, M, cfg.id_dim)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        layer(x, vec, ident, (T, h, w), MoCAOptions().resolve(cfg))
    router_mix = 0 if variant == "single_xattn" else 2 * cfg.num_experts * T * h * w * cfg.moca_dim
    assert counter.get_total_flops() == moca_flops(cfg, (T, h, w), M) - router_mix


def test_bench_measures_a_variant(capsys):
    from moca_model import bench
    res = bench.main(["--preset", "tiny", "--variant", "lean", "--frames", "1,2", "--reps", "1", "--quick", "--no-memory"])
    out = capsys.readouterr().out
    assert res["variant"] == "lean" and "wan2.1-1.3b (lean): adapter 35.4M = 2.5% of the backbone" in out
    assert res["adapter_share"] == pytest.approx(adapter_share(variant_config("lean", "tiny"))["share"])
    assert out.strip().splitlines()[-1].startswith("moca_overhead_ratio=")
