"""The nodes' own checks, in-process against a real ComfyUI (COMFYUI_PATH): each node's execute() is called
as ComfyUI calls it, with real ComfyUI objects (VAE, MODEL, CONDITIONING). Skipped, with the reason shown,
when COMFYUI_PATH is not set."""
from __future__ import annotations

import pytest
import torch

import comfy_harness as H

pytestmark = pytest.mark.comfyui
H.require_comfyui()
H.import_comfy()

import comfy.sd  # noqa: E402
import folder_paths  # noqa: E402

import face_models  # noqa: E402

mm = H.pack_module("moca_model")
nodes_face = H.pack_module("nodes.nodes_face")
nodes_training = H.pack_module("nodes.nodes_training")


@pytest.fixture(scope="module")
def analyzer(tmp_path_factory):
    from moca_pack.moca_model.face import FaceAnalyzer
    root = tmp_path_factory.mktemp("insightface")
    face_models.make_tiny_pack(root)
    return FaceAnalyzer.load(root, backend="onnxruntime", provider="cpu")


@pytest.fixture()
def output_dir(tmp_path):
    before = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    yield tmp_path
    folder_paths.set_output_directory(before)


def _photo():
    return torch.from_numpy(face_models.astronaut()).float()[None] / 255.0          # [1, H, W, 3]


def _uninitialised_wan_vae():
    """ComfyUI's WanVAE as its loader builds it, without loading weights: uninitialised memory, like a
    broken or truncated VAE file (this is what the old test fixture held)."""
    import comfy.ldm.wan.vae as wan_vae
    vae = wan_vae.WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                         temperal_downsample=[False, True, True], dropout=0.0)
    state = {k: v.half().contiguous() for k, v in vae.state_dict().items()}
    state[next(k for k in state if k.endswith(".weight") and state[k].ndim == 5)].fill_(float("nan"))
    return comfy.sd.VAE(sd=state)


def test_encode_face_refuses_a_vae_that_returns_nan(analyzer):
    with pytest.raises(ValueError, match=r"input 'vae': the VAE returned NaN or infinity for the face crop of "
                                         r"input 'image' frame 0"):
        nodes_face.MoCAEncodeFace.execute(_photo(), analyzer, _uninitialised_wan_vae(), "largest", 0, "error",
                                          "mean", 64)


@pytest.mark.parametrize("bad", ["video_latent", "caption_conditioning"])
def test_save_training_sample_refuses_nan_inputs_and_writes_nothing(output_dir, bad):
    latent = torch.randn(1, 16, 2, 8, 8)
    text = torch.randn(1, 5, 4096)
    if bad == "video_latent":
        latent[0, 0, 0, 0, 0] = float("nan")
    else:
        text[0, 0, 0] = float("inf")
    ident = mm.MoCAIdentity(torch.randn(1, 512), torch.randn(1, 16, 1, 4, 4))
    with pytest.raises(ValueError, match=rf"input '{bad}' holds NaN or infinity \(1 of"):
        nodes_training.MoCASaveTrainingSample.execute({"samples": latent}, [[text, {}]], ident, "clip", "s")
    assert not list(output_dir.rglob("*.safetensors"))


@pytest.mark.parametrize("option, dtype", [("default", None), ("bf16", torch.bfloat16), ("fp8_e4m3fn", torch.float8_e4m3fn)])
def test_adapter_loaders_store_the_adapter_in_weight_dtype(tmp_path, option, dtype):
    nodes_loaders = H.pack_module("nodes.nodes_loaders")
    adapter_mod = H.pack_module("nodes.adapter")
    H.pack_module("nodes.paths").register_folders()
    ref = H.tiny_moca()
    folder_paths.add_model_folder_path("moca", str(tmp_path))
    mm.save_moca(tmp_path / "fp32_adapter.safetensors", ref.adapter)           # what the trainer exported (fp32)
    mm.save_moca(tmp_path / "fp32_dit.safetensors", ref)
    want = dtype or adapter_mod.default_adapter_dtype()
    ap = nodes_loaders.MoCAAdapterLoader.execute("fp32_adapter.safetensors", option).result[0]
    assert ap.model.layers[0].out.weight.dtype == want
    _, ap = nodes_loaders.MoCADiTLoader.execute("fp32_dit.safetensors", "default", option).result
    assert ap.model.layers[0].experts.q.weight.dtype == want


def test_no_face_error_names_the_input_and_gives_the_advice_once(analyzer):
    from moca_pack.moca_model.face import FaceNotFoundError
    blank = torch.zeros(1, 256, 256, 3)
    with pytest.raises(FaceNotFoundError) as e:
        nodes_face.MoCAEncodeFace.execute(_photo(), analyzer, None, "largest", 0, "error", "mean", 64, image_2=blank)
    msg = str(e.value)
    assert msg.startswith("MoCA Encode Face: no usable face in input 'image_2' frame 0 (256x256): no face found at "
                          "detection sizes"), msg
    assert msg.count("on_no_face") == 1 and msg.count("frontal") == 1 and "det_thresh" not in msg, msg


def test_each_validate_inputs_takes_one_input_so_comfyui_reports_a_problem_once():
    """ComfyUI repeats a failed validate_inputs for every input the function takes ('ckpt_name' was reported
    twice); fixed-list combos are checked when the node runs instead."""
    import inspect
    extension = H.pack_module("nodes.extension")
    for node in extension.NODES:
        if "validate_inputs" in vars(node):
            params = list(inspect.signature(node.validate_inputs).parameters)
            assert len(params) == 1, f"{node.__name__}.validate_inputs takes {params}"
    with pytest.raises(ValueError, match=r"MoCA Encode Face: input 'fusion' = 'median' is not one of: mean, concat"):
        nodes_face.MoCAEncodeFace.execute(_photo(), None, None, "largest", 0, "error", "median", 64)


def test_load_identity_reads_face_identity_files(tmp_path, analyzer):
    """MoCA Load Identity reads the identity files FaceIdentity.save writes (and the former face format)."""
    H.pack_module("nodes.paths").register_folders()
    folder_paths.add_model_folder_path("moca_identities", str(tmp_path))
    face = analyzer.encode(_photo())
    face.save(tmp_path / "from_python.safetensors")
    ident, crops, info = nodes_face.MoCALoadIdentity.execute("from_python.safetensors").result
    assert torch.equal(ident.arcface, face.embeddings.float()) and ident.face_latent is None
    assert crops.shape == face.crops.shape and "1 reference(s)" in info


def test_adapter_list_leaves_out_the_trainers_lora_file(tmp_path):
    paths = H.pack_module("nodes.paths")
    paths.register_folders()
    folder_paths.add_model_folder_path("moca", str(tmp_path))
    ref = H.tiny_moca()
    mm.save_moca(tmp_path / "me.safetensors", ref.adapter)
    # what train_moca.py writes beside the adapter with trainable = "lora" (training/export.py)
    from moca_pack.moca_model.checkpoint import atomic_save_safetensors
    atomic_save_safetensors({"diffusion_model.blocks.0.ffn.0.lora_down.weight": torch.zeros(4, 256)},
                            tmp_path / "me_lora.safetensors", {"format": "comfyui-lora", "moca_adapter": "me.safetensors"})
    (tmp_path / "not_downloaded_yet.safetensors").touch()              # no header: listed, the loader explains
    listed = paths.moca_files()
    assert "me.safetensors" in listed and "not_downloaded_yet.safetensors" in listed
    assert "me_lora.safetensors" not in listed and "me_lora.safetensors" in paths.files("moca")


def test_each_expert_has_one_multiplier_the_mixing_gain():
    """Temporal Pooling turns scales on and off; Expert Mixing's gain_* is the one per-expert multiplier (the
    pooling node's weight_* was the same multiplier a second time)."""
    nodes_moca = H.pack_module("nodes.nodes_moca")
    pooling = [i.id for i in nodes_moca.MoCATemporalPooling.define_schema().inputs]
    mixing = [i.id for i in nodes_moca.MoCAExpertMixing.define_schema().inputs]
    assert pooling == ["scale_1", "scale_2", "scale_4", "scale_T"]
    assert [n for n in mixing if n.startswith("gain_")] == ["gain_1", "gain_2", "gain_4", "gain_T"]
