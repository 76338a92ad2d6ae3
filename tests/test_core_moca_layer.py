"""HTP windows, the TACA experts, the router knobs and the tokenizer."""
import math

import pytest
import torch
import torch.nn.functional as F

from moca_model import HierarchicalTemporalPooling, MoCAConfig, MoCALayer, MoCAOptions
from moca_model.htp import window_bounds
from moca_model.taca import TIME_FREQ_DIM
from moca_model.tokenizer import IdentityTokenizer
from moca_model.wan import sinusoidal_embedding_1d


def live_layer(config, seed=0):
    layer = MoCALayer(config)
    for m in layer.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                torch.nn.init.normal_(m.bias, std=0.02)
    layer.init_weights()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in (layer.out.weight, layer.router.proj_x.weight, layer.router.proj_t.weight):
            p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return layer.eval()


def layer_inputs(config, B=2, T=5, h=3, w=4, M=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, T * h * w, config.dim, generator=g)
    vec = torch.randn(B, 1, 6, config.dim, generator=g)
    ident = torch.randn(B, M, config.id_dim, generator=g)
    return x, vec, ident, (T, h, w)


@pytest.mark.parametrize("T", [1, 5, 7, 8])
def test_htp_windows_and_unpooling(T):
    htp = HierarchicalTemporalPooling((1, 2, 4, 0))
    assert window_bounds(7, 4) == [(0, 4), (4, 7)]           # ceil mode: last window shorter
    assert window_bounds(7, 0) == [(0, 7)]
    plan = htp.plan(T, (0, 1, 2, 3))
    x = torch.randn(2, T, 3, 5)
    pooled = htp.pool(x, plan)
    assert pooled.shape[1] == sum(math.ceil(T / s) for s in (1, 2, 4, T))
    row = 0
    for e, s in enumerate((1, 2, 4, 0)):
        for a, b in window_bounds(T, s):
            torch.testing.assert_close(pooled[:, row], x[:, a:b].mean(1))
            row += 1
    up = htp.unpool(pooled, plan)                             # [B, E, T, ...]
    assert up.shape == (2, 4, T, 3, 5)
    torch.testing.assert_close(up[:, 0], x)                   # scale 1 un-pools to the input itself
    for e, s in enumerate((1, 2, 4, 0)):
        for a, b in window_bounds(T, s):
            torch.testing.assert_close(up[:, e, a:b], x[:, a:b].mean(1, keepdim=True).expand_as(up[:, e, a:b]))


def test_pooling_commutes_with_the_query_projection():
    cfg = MoCAConfig.preset("tiny")
    layer = live_layer(cfg)
    htp = HierarchicalTemporalPooling(cfg.scales)
    plan = htp.plan(6, (0, 1, 2, 3))
    x = torch.randn(1, 6, 4, cfg.dim)
    torch.testing.assert_close(htp.pool(layer.experts.q(x), plan), layer.experts.q(htp.pool(x, plan)),
                               rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_scale_one_alone_is_one_cross_attention():
    cfg = MoCAConfig.preset("tiny", scales=(1,))
    layer = live_layer(cfg)
    x, vec, ident, (T, h, w) = layer_inputs(cfg)
    out = layer(x, vec, ident, (T, h, w), MoCAOptions().resolve(cfg))
    # Hand-written: every frame's tokens attend to [identity ; the T frame summaries] with expert 0's K/V.
    ex, a, H = layer.experts, cfg.moca_dim, cfg.moca_heads
    xn = F.layer_norm(x, (cfg.dim,), eps=cfg.eps).view(2, T, h * w, -1)
    time = ex.frame_embed(sinusoidal_embedding_1d(TIME_FREQ_DIM, torch.arange(T).float()))
    q = ex.norm_q(ex.q(xn) + (time + ex.scale_embed[0])[:, None])                       # [B, T, N, a]
    summ = ex.summary_proj(xn.mean(2)) + ex.summary_time(sinusoidal_embedding_1d(TIME_FREQ_DIM, torch.arange(T).float()))
    kv = ex.kv(torch.cat([ident, summ], 1))                                            # [B, M+T, 2a]
    k, v = ex.norm_k(kv[..., :a]), kv[..., a:]
    qh = q.reshape(2, T * h * w, H, -1).transpose(1, 2)
    att = F.scaled_dot_product_attention(qh, k.view(2, -1, H, a // H).transpose(1, 2), v.view(2, -1, H, a // H).transpose(1, 2))
    expected = layer.out(att.transpose(1, 2).reshape(2, T * h * w, a))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_router_probabilities_topk_and_temperature():
    cfg = MoCAConfig.preset("tiny")
    layer = live_layer(cfg)
    x, vec, _, _ = layer_inputs(cfg)
    xn = layer.norm(x)
    p = layer.router(xn, vec, MoCAOptions().resolve(cfg))
    torch.testing.assert_close(p.sum(-1), torch.ones(p.shape[:-1]))
    p2 = layer.router(xn, vec, MoCAOptions(top_k=2).resolve(cfg))
    assert ((p2 > 0).sum(-1) == 2).all()
    torch.testing.assert_close(p2.sum(-1), torch.ones(p.shape[:-1]))
    assert torch.equal(p2 > 0, p >= p.topk(2, dim=-1).values[..., -1:])                  # the two largest survive

    def entropy(q):
        return -(q * q.clamp_min(1e-12).log()).sum(-1).mean()
    cold, hot = (layer.router(xn, vec, MoCAOptions(temperature=t).resolve(cfg)) for t in (0.25, 4.0))
    assert entropy(cold) < entropy(p) < entropy(hot)
    gains = layer.router(xn, vec, MoCAOptions(expert_gains=(2.0, 1.0, 0.0, 1.0)).resolve(cfg))
    torch.testing.assert_close(gains, p * torch.tensor([2.0, 1.0, 0.0, 1.0]))


@torch.no_grad()
def test_fresh_router_weighs_experts_equally():
    cfg = MoCAConfig.preset("tiny")
    layer = MoCALayer(cfg)
    layer.init_weights()
    x, vec, _, _ = layer_inputs(cfg)
    p = layer.router(layer.norm(x), vec, MoCAOptions().resolve(cfg))
    torch.testing.assert_close(p, torch.full_like(p, 0.25))


@torch.no_grad()
def test_disabled_scale_removes_its_expert_exactly():
    cfg = MoCAConfig.preset("tiny")
    layer = live_layer(cfg)
    x, vec, ident, grid = layer_inputs(cfg)
    opts = MoCAOptions(scale_enabled={"2": False}).resolve(cfg)
    out = layer(x, vec, ident, grid, opts)
    # 1) the disabled expert's own weights no longer matter
    a = cfg.moca_dim
    layer.experts.kv.weight[2 * a:4 * a].normal_()
    layer.experts.scale_embed[1].normal_()
    assert torch.equal(layer(x, vec, ident, grid, opts), out)
    # 2) it equals a 3-expert layer {1, 4, T} with the same weights for the kept experts
    small = MoCAConfig.preset("tiny", scales=(1, 4, 0))
    ref = MoCALayer(small).eval()
    sd = layer.state_dict()
    keep = [0, 2, 3]
    kv_rows = torch.cat([torch.arange(e * 2 * a, (e + 1) * 2 * a) for e in keep])
    sd["experts.kv.weight"], sd["experts.kv.bias"] = sd["experts.kv.weight"][kv_rows], sd["experts.kv.bias"][kv_rows]
    sd["experts.scale_embed"] = sd["experts.scale_embed"][keep]
    sd["router.proj_x.weight"], sd["router.proj_x.bias"] = sd["router.proj_x.weight"][keep], sd["router.proj_x.bias"][keep]
    sd["router.proj_t.weight"] = sd["router.proj_t.weight"][keep]
    ref.load_state_dict(sd)
    torch.testing.assert_close(out, ref(x, vec, ident, grid, MoCAOptions().resolve(small)), rtol=1e-5, atol=1e-6)


@torch.no_grad()
def test_strength_and_scale_weights_scale_the_residual():
    cfg = MoCAConfig.preset("tiny")
    layer = live_layer(cfg)
    x, vec, ident, grid = layer_inputs(cfg)
    base = layer(x, vec, ident, grid, MoCAOptions().resolve(cfg))
    torch.testing.assert_close(layer(x, vec, ident, grid, MoCAOptions(strength=0.5).resolve(cfg)), 0.5 * base)
    only_t = MoCAOptions(scale_enabled={"1": False, "2": False, "4": False})
    one = layer(x, vec, ident, grid, only_t.resolve(cfg))
    two = layer(x, vec, ident, grid, MoCAOptions(scale_enabled=only_t.scale_enabled, scale_weights={"T": 2.0}).resolve(cfg))
    bias = layer.out.bias
    torch.testing.assert_close(two - bias, 2 * (one - bias), rtol=1e-5, atol=1e-6)


def test_options_errors_name_the_knob():
    cfg = MoCAConfig.preset("tiny")
    with pytest.raises(ValueError, match="scale '8' is not one of"):
        MoCAOptions(scale_enabled={8: True}).resolve(cfg)
    with pytest.raises(ValueError, match="expert_gains has 2 values"):
        MoCAOptions(expert_gains=(1, 2)).resolve(cfg)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        MoCAOptions(temperature=0).resolve(cfg)
    with pytest.raises(ValueError, match="every temporal scale is disabled"):
        MoCAOptions(scale_enabled={s: False for s in ("1", "2", "4", "T")}).resolve(cfg)
    with pytest.raises(ValueError, match="unknown keys"):
        MoCAOptions.coerce({"strenght": 1})


@torch.no_grad()
def test_tokenizer_shapes_and_fusion():
    cfg = MoCAConfig.preset("tiny")
    tok = IdentityTokenizer(cfg)
    for m in tok.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.xavier_uniform_(m.weight)
    tok.init_weights()
    arc, lat = torch.randn(2, 3, 512), torch.randn(2, 3, 16, 1, 32, 32)
    M = cfg.num_id_tokens
    assert tok(arc[:, 0], lat[:, 0]).shape == (2, M, cfg.id_dim)
    mean = tok(arc, lat, fusion="mean")
    cat = tok(arc, lat, fusion="concat")
    assert mean.shape == (2, M, cfg.id_dim) and cat.shape == (2, 3 * M, cfg.id_dim)
    torch.testing.assert_close(mean, cat.view(2, 3, M, -1).mean(1))
    assert tok(arcface=arc[:, 0]).shape == (2, cfg.num_global_tokens, cfg.id_dim)
    assert tok(face_latent=lat[:, 0, :, :, :31, :29]).shape == (2, cfg.num_local_tokens, cfg.id_dim)  # odd crops
    torch.testing.assert_close(tok(arc[:, 0] * 7.0), tok(arc[:, 0]))                    # ArcFace is normalised
    with pytest.raises(ValueError, match="needs an ArcFace embedding"):
        tok()
    with pytest.raises(ValueError, match=r"face_latent must be \[B, 16, 1, h, w\]"):
        tok(face_latent=torch.randn(2, 4, 1, 8, 8))
    with pytest.raises(ValueError, match="arcface has 2x3 references"):
        tok(arc, lat[:, :2])
