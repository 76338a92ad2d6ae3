"""MoCA on a GGUF-quantised Wan loaded by city96's ComfyUI-GGUF (its own loader, ops and model patcher).

The tiny Wan is written here as a GGUF file the way ComfyUI-GGUF's converter writes one (arch "wan", the
2-D weights in Q8_0, the rest in F32), loaded through `gguf_sd_loader` + `GGMLOps` + `GGUFModelPatcher`
exactly as its *Unet Loader (GGUF)* node does, then patched by MoCA Apply. The ComfyUI-GGUF tree comes
from COMFYUI_GGUF_PATH, else ../shared/comfyui/custom_nodes/ComfyUI-GGUF; the test skips, saying why,
when neither it nor the `gguf` package is there.
"""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import comfy_harness as H

pytestmark = pytest.mark.comfyui
H.require_comfyui()
H.import_comfy()

import comfy.sd  # noqa: E402

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (requirements-test.txt has it)")
mm = H.pack_module("moca_model")
patch = H.pack_module("nodes.patch")
adapter_mod = H.pack_module("nodes.adapter")


def gguf_tree() -> Path | None:
    for p in (os.environ.get("COMFYUI_GGUF_PATH"), H.REPO.parent / "shared" / "comfyui" / "custom_nodes" / "ComfyUI-GGUF"):
        if p and (Path(p) / "loader.py").is_file():
            return Path(p)
    return None


@pytest.fixture(scope="module")
def comfyui_gguf():
    tree = gguf_tree()
    if tree is None:
        pytest.skip("ComfyUI-GGUF not found: set COMFYUI_GGUF_PATH or provide ../shared/comfyui/custom_nodes/ComfyUI-GGUF")
    sys.path.insert(0, str(tree.parent))
    try:
        return (importlib.import_module(f"{tree.name}.loader"), importlib.import_module(f"{tree.name}.ops"),
                importlib.import_module(f"{tree.name}.nodes"))
    finally:
        sys.path.remove(str(tree.parent))


def write_gguf(path: Path, state: dict):
    """2-D weights whose rows are a multiple of the Q8_0 block -> Q8_0, everything else F32."""
    w = gguf.GGUFWriter(path=None, arch="wan")
    q8 = gguf.GGMLQuantizationType.Q8_0
    block = gguf.GGML_QUANT_SIZES[q8][0]
    for k, v in state.items():
        data = v.detach().float().numpy()
        if data.ndim == 2 and data.shape[-1] % block == 0:
            w.add_tensor(k, gguf.quants.quantize(data, q8), raw_dtype=q8)
        else:
            w.add_tensor(k, data.astype(np.float32), raw_dtype=gguf.GGMLQuantizationType.F32)
    w.write_header_to_file(path=path)
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def models(tmp_path_factory, comfyui_gguf):
    loader, ops_mod, nodes = comfyui_gguf
    root = tmp_path_factory.mktemp("gguf")
    ref = H.tiny_moca()
    st_path = root / "tiny_wan.safetensors"
    mm.save_wan_checkpoint(st_path, ref, prefix="model.diffusion_model.", overwrite=True)
    plain = comfy.sd.load_diffusion_model(str(st_path))
    gguf_path = root / "tiny_wan-Q8_0.gguf"
    write_gguf(gguf_path, plain.model.diffusion_model.state_dict())
    sd = loader.gguf_sd_loader(str(gguf_path))
    quantised = [k for k, v in sd.items() if getattr(v, "tensor_type", None) == gguf.GGMLQuantizationType.Q8_0]
    assert quantised, "nothing was quantised: the test would not exercise GGUF weights"
    model = comfy.sd.load_diffusion_model_state_dict(sd, model_options={"custom_operations": ops_mod.GGMLOps()})
    model = nodes.GGUFModelPatcher.clone(model)
    adapter = adapter_mod.build_adapter_patcher(ref.config, ref.adapter.state_dict(), "tiny")
    g = torch.Generator().manual_seed(3)
    identity = mm.MoCAIdentity(torch.randn(2, 512, generator=g), torch.randn(2, 16, 1, 32, 32, generator=g), "mean")
    return plain, model, adapter, identity, len(quantised)


denoise = H.denoise


def test_compat_moca_apply_on_a_gguf_q8_wan_from_comfyui_gguf(models):
    plain, quant, adapter, identity, n_q8 = models
    assert type(quant.get_model_object("diffusion_model")).__name__ == "WanModel"
    g = torch.Generator().manual_seed(0)
    x, sigma, ctx = torch.randn(1, 16, 3, 8, 10, generator=g), torch.tensor([0.7]), torch.randn(1, 12, 4096, generator=g)
    opts = mm.MoCAOptions()
    base_st, base_q = denoise(plain, x, sigma, ctx), denoise(quant, x, sigma, ctx)
    moca_st = denoise(patch.apply_moca(plain, adapter, identity, opts), x, sigma, ctx)
    moca_q = denoise(patch.apply_moca(quant, adapter, identity, opts), x, sigma, ctx)
    scale = base_st.abs().max().item()
    quant_err = (base_q - base_st).abs().max().item() / scale
    effect_st = moca_st - base_st
    effect_q = moca_q - base_q
    rel = (effect_q - effect_st).abs().max().item() / effect_st.abs().max().item()
    print(f"\nGGUF Q8_0 ({n_q8} tensors): base model differs by {quant_err:.2e}; MoCA's effect "
          f"{effect_st.abs().max().item() / scale:.3f} of the output scale, equal to the safetensors one within {rel:.2e}")
    assert torch.isfinite(moca_q).all()
    assert 0 < quant_err < 2e-2                                   # Q8_0 really quantised, and close
    assert effect_q.abs().max().item() / scale > 1e-2              # MoCA acts on the GGUF model
    assert rel < 0.1                                               # ... as it does on the unquantised one
    assert torch.equal(denoise(quant, x, sigma, ctx), base_q), "MoCA Apply modified the GGUF model in place"
