"""Variant adapters (moca_model/variants.py) through ComfyUI's own path: the MoCA Adapter Loader's reading and
building (`read_moca` + `build_adapter_patcher` with ComfyUI's casting ops), MoCA Apply with the pooling and
mixing nodes' defaults, on ComfyUI's native Wan model: the same output as moca_model.MoCADiT with that adapter.
Skipped, with the reason shown, when COMFYUI_PATH is not set."""
from __future__ import annotations

import pytest
import torch

import comfy_harness as H

pytestmark = pytest.mark.comfyui
H.require_comfyui()
H.import_comfy()

import comfy.sd  # noqa: E402

mm = H.pack_module("moca_model")
variants = H.pack_module("moca_model.variants")
adapter_mod = H.pack_module("nodes.adapter")
logic = H.pack_module("nodes.logic")
patch = H.pack_module("nodes.patch")


@pytest.mark.parametrize("variant", ["single_xattn", "lean", "clip_scale"])
def test_moca_apply_runs_a_variant_adapter_like_mocadit(variant, tmp_path):
    torch.manual_seed(0)
    ref = mm.MoCADiT(variants.variant_config(variant, "tiny")).eval()
    with torch.no_grad():
        for layer in ref.adapter.layers:
            torch.nn.init.normal_(layer.out.weight, std=0.05)
    wan = tmp_path / "tiny_wan.safetensors"
    mm.save_wan_checkpoint(wan, ref, prefix="model.diffusion_model.")
    file = mm.save_moca(tmp_path / f"{variant}.safetensors", ref, adapter_only=True)
    model = comfy.sd.load_diffusion_model(str(wan))
    f = mm.read_moca(file)                                             # what MoCA Adapter Loader does
    adapter = adapter_mod.build_adapter_patcher(f.config, f.adapter_state, file.name, "fp32", f.recognizer)
    assert variants.variant_of(adapter.config) == variant
    g = torch.Generator().manual_seed(3)
    identity = mm.MoCAIdentity(torch.randn(1, 512, generator=g), torch.randn(1, 16, 1, 32, 32, generator=g), "mean")
    # MoCA Apply's own option building, with MoCA Temporal Pooling / Expert Mixing at their defaults
    pooling = logic.make_pooling({s: True for s in logic.SCALE_NAMES})
    mixing = logic.make_mixing(0.8, 1.0, 0, {s: 1.0 for s in logic.SCALE_NAMES})
    options, start, end = logic.build_options(adapter.config, pooling, mixing)
    patched = patch.apply_moca(model, adapter, identity, options, start, end, "all",
                               logic.mixing_blocks(mixing, adapter.config.num_layers))
    g = torch.Generator().manual_seed(0)
    x, sigma, ctx = torch.randn(1, 16, 3, 8, 10, generator=g), torch.tensor([0.7]), torch.randn(1, 12, 4096, generator=g)
    got, base = H.denoise(patched, x, sigma, ctx), H.denoise(model, x, sigma, ctx)
    with torch.no_grad():
        v = ref(x, sigma * 1000, ctx, identity=identity.tokens(ref.adapter.tokenizer), moca_options=options)
    want = x - sigma * v
    scale = want.abs().max().item()
    assert (got - base).abs().max().item() / scale > 1e-3, "the adapter must change the output"
    assert (got - want).abs().max().item() / scale < 1e-4
