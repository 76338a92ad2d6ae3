"""Recogniser provenance in the nodes, in-process against a real ComfyUI (COMFYUI_PATH): MoCA Encode Face records
the analyzer's recogniser, Save Identity / Load Identity and Save Training Sample keep it, the adapter loader
reads the adapter's, and MoCA Apply (and a conditioning's own identity at sampling) refuses a mismatch naming
both. Skipped, with the reason shown, when COMFYUI_PATH is not set."""
from __future__ import annotations

import json

import pytest
import torch

import comfy_harness as H

pytestmark = pytest.mark.comfyui
H.require_comfyui()
H.import_comfy()

import comfy.sd  # noqa: E402
import comfy.utils  # noqa: E402
import folder_paths  # noqa: E402

import face_models  # noqa: E402

mm = H.pack_module("moca_model")
prov = H.pack_module("moca_model.provenance")
nodes_face = H.pack_module("nodes.nodes_face")
nodes_moca = H.pack_module("nodes.nodes_moca")
nodes_loaders = H.pack_module("nodes.nodes_loaders")
nodes_training = H.pack_module("nodes.nodes_training")
logic = H.pack_module("nodes.logic")

REC_B = prov.Recognizer("buffalo_l", "w600k_r50.onnx", "bbbbbbbbbbbbbbbb")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("prov")
    H.pack_module("nodes.paths").register_folders()
    from moca_pack.moca_model.face import FaceAnalyzer
    face_models.make_tiny_pack(root / "insightface")
    analyzer = FaceAnalyzer.load(root / "insightface", backend="onnxruntime", provider="cpu")
    ref = H.tiny_moca()
    wan = root / "tiny_wan.safetensors"
    mm.save_wan_checkpoint(wan, ref, prefix="model.diffusion_model.", overwrite=True)
    model = comfy.sd.load_diffusion_model(str(wan))
    (root / "moca").mkdir()
    folder_paths.add_model_folder_path("moca", str(root / "moca"))
    mm.save_moca(root / "moca" / "trained_on_tiny.safetensors", ref.adapter, recognizer=analyzer.recognizer)
    mm.save_moca(root / "moca" / "old_adapter.safetensors", ref.adapter)
    H.write_wan_vae(root / "vae.safetensors")
    vae = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(root / "vae.safetensors")))
    return analyzer, model, vae, root


def _photo():
    return torch.from_numpy(face_models.astronaut()).float()[None] / 255.0          # [1, H, W, 3]


def _adapter(name):
    return nodes_loaders.MoCAAdapterLoader.execute(name, "fp32").result[0]


def test_encode_face_records_the_recogniser_and_files_keep_it(setup, tmp_path):
    analyzer, _, vae, _ = setup
    ident = nodes_face.MoCAEncodeFace.execute(_photo(), analyzer, vae, "largest", 0, "error", "mean", 64).result[0]
    assert ident.recognizer == analyzer.recognizer and ident.recognizer.pack == "antelopev2"
    before = folder_paths.get_output_directory()
    folder_paths.set_output_directory(str(tmp_path))
    try:
        path = nodes_face.MoCASaveIdentity.execute(ident, "me").result[0]
        folder_paths.add_model_folder_path("moca_identities", str(tmp_path / "moca_identities"))
        loaded = nodes_face.MoCALoadIdentity.execute(path.split("moca_identities/")[-1]).result[0]
        assert loaded.recognizer == analyzer.recognizer
        shard = nodes_training.MoCASaveTrainingSample.execute(
            {"samples": torch.randn(1, 16, 2, 8, 8)}, [[torch.randn(1, 5, 4096), {}]], ident, "a clip", "s").result[0]
    finally:
        folder_paths.set_output_directory(before)
    from moca_pack.moca_model.training.data import read_shard_header
    assert json.loads(read_shard_header(shard)["face_recognizer"]) == analyzer.recognizer.as_dict()


def test_moca_apply_refuses_an_identity_of_another_recogniser(setup):
    analyzer, model, _, _ = setup
    adapter = _adapter("trained_on_tiny.safetensors")
    assert adapter.recognizer == analyzer.recognizer
    other = mm.MoCAIdentity(torch.randn(1, 512), torch.randn(1, 16, 1, 8, 8), recognizer=REC_B)
    with pytest.raises(prov.RecognizerMismatchError) as e:
        nodes_moca.MoCAApply.execute(model, adapter, other, "all")
    msg = str(e.value)
    assert msg.startswith("MoCA Apply: input 'moca_id' comes from the face recogniser buffalo_l")
    assert "trained_on_tiny.safetensors" in msg and analyzer.recognizer.label() in msg and REC_B.label() in msg
    assert "encode the reference photos again with the 'antelopev2' face pack" in msg
    same = mm.MoCAIdentity(torch.randn(1, 512), torch.randn(1, 16, 1, 8, 8), recognizer=analyzer.recognizer)
    assert nodes_moca.MoCAApply.execute(model, adapter, same, "all").result[0] is not model
    # an adapter written before the record: applies (its loader printed the one-line notice)
    assert _adapter("old_adapter.safetensors").recognizer is None
    nodes_moca.MoCAApply.execute(model, _adapter("old_adapter.safetensors"), other, "all")


def test_a_conditionings_own_identity_is_checked_when_it_is_used(setup):
    analyzer, model, _, _ = setup
    adapter = _adapter("trained_on_tiny.safetensors")
    same = mm.MoCAIdentity(torch.randn(1, 512), torch.randn(1, 16, 1, 8, 8), recognizer=analyzer.recognizer)
    other = mm.MoCAIdentity(torch.randn(1, 512), torch.randn(1, 16, 1, 8, 8), recognizer=REC_B)
    patched = nodes_moca.MoCAApply.execute(model, adapter, same, "marked conditioning only").result[0]
    g = torch.Generator().manual_seed(0)
    x, sigma, ctx = torch.randn(1, 16, 3, 8, 10, generator=g), torch.tensor([0.7]), torch.randn(1, 12, 4096, generator=g)
    H.denoise(patched, x, sigma, ctx, {"moca_id": logic.marker_for("with identity", same)})
    with pytest.raises(prov.RecognizerMismatchError, match="the conditioning's identity comes from the face recogniser "
                                                           "buffalo_l"):
        H.denoise(patched, x, sigma, ctx, {"moca_id": logic.marker_for("with identity", other)})
