"""The TACA experts against a window-by-window reference, and per call: no host synchronisation, no index
tensors built from Python lists, one graph under torch.compile."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from moca_model import MoCAConfig, MoCALayer, MoCAOptions
from moca_model.htp import window_bounds
from moca_model.taca import TIME_FREQ_DIM
from moca_model.wan import sinusoidal_embedding_1d


class OpLog(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def layer_and_inputs(T=5, h=2, w=3, seed=0):
    cfg = MoCAConfig.preset("tiny", num_layers=1)
    torch.manual_seed(seed)
    layer = MoCALayer(cfg).eval()
    for p in layer.parameters():
        torch.nn.init.normal_(p, std=0.05)
    x, vec = torch.randn(2, T * h * w, cfg.dim), torch.randn(2, 1, 6, cfg.dim)
    return cfg, layer, (x, vec, torch.randn(2, 12, cfg.id_dim), (T, h, w))


@pytest.mark.parametrize("options", [{}, {"expert_gains": (1.0, 2.0, 0.5, 1.0), "scale_enabled": {"2": False}},
                                     {"top_k": 2, "temperature": 0.5}])
@torch.no_grad()
def test_a_layer_call_never_waits_for_the_device(options):
    """`bool(plan.kv_valid.all())` read a tensor back to the host in every layer (a CUDA sync; aten's
    _local_scalar_dense), and the router turned Python lists into tensors on every call (lift_fresh: a
    host-to-device copy on CUDA). Both now come precomputed with the window plan."""
    cfg, layer, args = layer_and_inputs()
    opts = MoCAOptions(**options).resolve(cfg)
    layer(*args, opts)                                                    # first call builds the cached plan
    with OpLog() as log:
        layer(*args, opts)
    assert "aten._local_scalar_dense.default" not in log.ops
    assert "aten.lift_fresh.default" not in log.ops


@pytest.mark.parametrize("T", [1, 6, 7])
@torch.no_grad()
def test_taca_equals_a_window_by_window_reference(T):
    """Each window of each expert on its own, written out: its pooled queries (+ centre-frame and scale
    embeddings) attend to [identity tokens ; the summaries of every window of that expert's scale]."""
    cfg, layer, (x, vec, ident, (_, h, w)) = layer_and_inputs(T=T)
    taca, a, H = layer.experts, cfg.moca_dim, cfg.moca_heads
    xn = layer.norm(x).view(2, T, h * w, -1)
    plan = layer.htp.plan(T, (0, 1, 2, 3))
    got = taca(xn, ident, plan)                                               # [B, Tq, N, a]
    row = 0
    for e, scale in enumerate(cfg.scales):
        bounds = window_bounds(T, scale)
        centre = torch.tensor([(s + t - 1) / 2 for s, t in bounds])
        time = sinusoidal_embedding_1d(TIME_FREQ_DIM, centre)
        summaries = torch.stack([xn[:, s:t].mean(dim=(1, 2)) for s, t in bounds], 1)         # [B, W, D]
        summaries = taca.summary_proj(summaries) + taca.summary_time(time)
        kv = taca.kv(torch.cat([ident, summaries], 1))[..., e * 2 * a:(e + 1) * 2 * a]       # this expert's K, V
        k, v = taca.norm_k(kv[..., :a]), kv[..., a:]
        for j, (s, t) in enumerate(bounds):
            q = taca.norm_q(taca.q(xn[:, s:t]).mean(1) + taca.frame_embed(time[j]) + taca.scale_embed[e])   # [B, N, a]
            split = [u.unflatten(-1, (H, a // H)).transpose(1, 2) for u in (q, k, v)]
            want = F.scaled_dot_product_attention(*split).transpose(1, 2).flatten(2)
            torch.testing.assert_close(got[:, row], want, rtol=1e-5, atol=1e-6)
            row += 1
    assert row == got.shape[1]


@pytest.mark.filterwarnings("ignore:Dynamo detected a call to a `functools.lru_cache`")
@torch.no_grad()
def test_a_layer_compiles_to_one_graph():
    cfg, layer, args = layer_and_inputs(T=7)
    opts = MoCAOptions(expert_gains=(1.0, 2.0, 0.5, 1.0)).resolve(cfg)
    compiled = torch.compile(layer, fullgraph=True, backend="eager")       # graph breaks raise here
    torch.testing.assert_close(compiled(*args, opts), layer(*args, opts))
