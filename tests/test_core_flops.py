"""The analytic FLOPs of moca_model.flops against what the MoCA layer really computes."""
import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from moca_model import MoCAConfig, MoCALayer, MoCAOptions
from moca_model.flops import latent_grid, moca_flops, overhead


@pytest.mark.parametrize("scales,T", [((1, 2, 4, 0), 5), ((1, 2, 4, 0), 8), ((0,), 7), ((1, 3), 7)])
@torch.no_grad()
def test_moca_flops_equal_the_layers_counted_flops(scales, T):
    """torch's FLOP counter on one MoCA layer (attention in the math backend, so its matmuls are counted) equals
    moca_flops minus the router mix, an elementwise multiply-add the counter does not see."""
    cfg = MoCAConfig.preset("tiny", num_layers=1, scales=scales)
    layer = MoCALayer(cfg).eval()
    h, w, M = 4, 6, cfg.num_id_tokens
    x, vec, ident = torch.randn(1, T * h * w, cfg.dim), torch.randn(1, 1, 6, cfg.dim), torch.randn(1, M, cfg.id_dim)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        layer(x, vec, ident, (T, h, w), MoCAOptions().resolve(cfg))
    router_mix = 2 * cfg.num_experts * T * h * w * cfg.moca_dim
    assert counter.get_total_flops() == moca_flops(cfg, (T, h, w), M) - router_mix


def test_wan13b_overhead_at_81_frames():
    """The review's figure: +5.30 TFLOP counted the whole-clip scale as T windows and the router's time
    projection once per token (it runs once per sample): 5.07 for the padded batched experts; 5.04 since the
    experts run in a loop (each attends to its own M + W keys, no padding)."""
    from moca_model.variants import variant_config
    cfg = variant_config("moca", "wan2.1-1.3b")                     # MoCA as designed
    o = overhead(cfg)
    assert latent_grid(81, 480, 832, cfg) == (21, 30, 52)
    print(f"\nwan2.1-1.3b, 81 frames 480x832: MoCA +{o['moca_tflops']:.3f} TFLOP on {o['backbone_tflops']:.1f} "
          f"({100 * o['ratio']:.2f}%)")
    assert o["moca_tflops"] == pytest.approx(5.04, abs=0.01)
    assert o["ratio"] < 0.12
    lean = overhead(MoCAConfig.preset("wan2.1-1.3b"))             # the preset's model since issue 10
    assert lean["moca_tflops"] == pytest.approx(1.68, abs=0.01)
