"""Node logic that needs no ComfyUI (always runs): options, identity routing, grids, guidance, files,
plots, workflow sources, and that importing the pack stays cheap."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

import comfy_harness as H

mm = H.pack_module("moca_model")
logic = H.pack_module("nodes.logic")
CFG = mm.MoCAConfig.preset("tiny")


def test_importing_the_pack_is_cheap_and_needs_no_comfyui():
    code = "\n".join([
        "import importlib.util, sys",
        "spec = importlib.util.spec_from_file_location('pack', sys.argv[1], submodule_search_locations=[sys.argv[2]])",
        "m = importlib.util.module_from_spec(spec); sys.modules['pack'] = m; spec.loader.exec_module(m)",
        "import pack.nodes, pack.nodes.logic, torch",
        "heavy = [k for k in ('onnxruntime', 'insightface', 'kornia', 'comfy', 'cv2') if k in sys.modules]",
        "print(hasattr(m, 'comfy_entrypoint'), heavy, torch.cuda.is_initialized())",
    ])
    out = subprocess.run([sys.executable, "-c", code, str(H.REPO / "__init__.py"), str(H.REPO)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True [] False", out.stdout


def test_pooling_and_mixing_become_adapter_options():
    pooling = logic.make_pooling({"1": True, "2": False, "4": True, "T": True})
    mixing = logic.make_mixing(0.7, 2.0, 1, {"1": 1.5, "2": 1.0, "4": 0.5, "T": 2.0}, 0.1, 0.8)
    opts, start, end = logic.build_options(CFG, pooling, mixing)
    r = opts.resolve(CFG)
    assert (start, end) == (0.1, 0.8)
    assert r.strength == 0.7 and r.temperature == 2.0 and r.top_k == 1
    assert r.experts == (0, 2, 3)                                  # scale 2 disabled
    assert r.expert_weight == pytest.approx((1.5, 0.5, 2.0))       # the gain of each enabled expert


@pytest.mark.parametrize("text, n, want", [
    ("all", 30, tuple(range(30))), ("", 4, (0, 1, 2, 3)), (" ALL ", 2, (0, 1)),
    ("0-9", 30, tuple(range(10))), ("0-2, 20, 25..27", 30, (0, 1, 2, 20, 25, 26, 27)),
    ("-3..-1", 30, (27, 28, 29)), ("-1", 40, (39,)), ("5, 3, 4-5", 8, (3, 4, 5)),
])
def test_block_ranges_resolve_against_the_model(text, n, want):
    mixing = logic.make_mixing(blocks=text)
    assert logic.mixing_blocks(mixing, n) == want
    assert logic.mixing_blocks(None, n) == tuple(range(n))         # no mixing node: every block


@pytest.mark.parametrize("text, n, match", [
    ("0-", 30, "cannot read '0-'"), ("first", 30, "cannot read 'first'"), ("1;2", 30, "cannot read"),
    ("30", 30, "outside this model's blocks 0..29"), ("-31", 30, "outside"), ("9-3", 30, "runs backwards"),
])
def test_bad_block_ranges_name_the_setting_and_the_fix(text, n, match):
    with pytest.raises(ValueError, match=match):
        logic.mixing_blocks({"blocks": text}, n)


def test_defaults_for_missing_scales_are_ignored_but_changes_are_errors():
    cfg = mm.MoCAConfig.preset("tiny", scales=(1, 0))
    pooling = logic.make_pooling({"1": True, "2": True, "4": True, "T": True})
    opts, _, _ = logic.build_options(cfg, pooling, None)
    assert opts.resolve(cfg).experts == (0, 1)
    with pytest.raises(ValueError, match="scale 4 .* only has the temporal scales"):
        logic.build_options(cfg, pooling, logic.make_mixing(gains={"1": 1.0, "2": 1.0, "4": 0.3, "T": 1.0}))


@pytest.mark.parametrize("call, match", [
    (lambda: logic.make_pooling({"1": False, "2": False, "4": False, "T": False}), "every scale is disabled"),
    (lambda: logic.make_mixing(start_percent=0.8, end_percent=0.2), "start_percent <= end_percent"),
    (lambda: logic.make_mixing(temperature=0.0), "router_temperature must be > 0"),
])
def test_bad_settings_name_the_input_and_the_fix(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_identity_routing_by_marker_and_apply_to():
    a = mm.MoCAIdentity(torch.randn(1, 512), None)
    b = mm.MoCAIdentity(torch.randn(1, 512), None)
    assert logic.resolve_identity(a, "all", None) is a
    assert logic.resolve_identity(a, "marked conditioning only", None) is None
    assert logic.resolve_identity(a, "all", logic.OFF) is None
    assert logic.resolve_identity(a, "marked conditioning only", logic.marker_for("with identity")) is a
    assert logic.resolve_identity(a, "all", logic.marker_for("with identity", b)) is b
    assert logic.marker_for("without identity") is logic.OFF           # "off" passes batch together
    with pytest.raises(TypeError, match="only MoCA Identity Conditioning"):
        logic.resolve_identity(a, "all", "something else")


def test_latent_grid_and_frames():
    assert logic.latent_grid((1, 16, 21, 60, 104)) == (21, 30, 52)     # 81 frames at 480x832
    assert logic.latent_grid((2, 16, 3, 9, 11)) == (3, 5, 6)           # odd sizes are padded (ceil)
    assert logic.latent_grid((1, 16, 3, 8, 8), extra_frames=2) == (5, 4, 4)
    assert [logic.latent_frames(f) for f in (1, 5, 33, 81)] == [1, 2, 9, 21]
    with pytest.raises(ValueError, match="Wan 2.1 text-to-video"):
        logic.latent_grid((1, 16, 8, 8))


def test_identity_file_round_trip_and_tokens(tmp_path):
    ident = mm.MoCAIdentity(torch.randn(2, 512), torch.randn(2, 16, 1, 32, 32), "concat",
                            torch.rand(2, 64, 64, 3), {"used": ["a", "b"]})
    path = ident.save(tmp_path / "me.safetensors")
    with pytest.raises(FileExistsError):
        ident.save(path)                                            # never overwritten silently
    back = mm.MoCAIdentity.load(path)
    assert torch.equal(back.arcface, ident.arcface) and torch.equal(back.face_latent, ident.face_latent)
    assert back.fusion == "concat" and back.info == {"used": ["a", "b"]}
    assert (back.crops - ident.crops).abs().max() <= 1 / 255
    adapter = mm.MoCAAdapter(CFG).init_weights()
    assert back.tokens(adapter.tokenizer).shape == (1, 2 * CFG.num_id_tokens, CFG.id_dim)
    mean = mm.MoCAIdentity(ident.arcface, ident.face_latent, "mean")
    assert mean.tokens(adapter.tokenizer).shape == (1, CFG.num_id_tokens, CFG.id_dim)
    with pytest.raises(mm.CheckpointError, match="not a MoCA identity file"):
        mm.MoCAIdentity.load(mm.save_moca(tmp_path / "adapter.safetensors", adapter))


def test_text_embeds_round_trip(tmp_path):
    cond = [[torch.randn(1, 7, 4096), {"pooled_output": None, "attention_mask": torch.ones(1, 7), "weight": 0.5,
                                       "hooks": object()}]]
    path, dropped = mm.save_text_embeds(tmp_path / "p.safetensors", cond, {"note": "a prompt"})
    assert dropped == ["0.hooks"]
    back, meta = mm.load_text_embeds(path)
    assert torch.equal(back[0][0], cond[0][0]) and torch.equal(back[0][1]["attention_mask"], torch.ones(1, 7))
    assert back[0][1]["weight"] == 0.5 and back[0][1]["pooled_output"] is None and meta["note"] == "a prompt"
    with pytest.raises(FileExistsError):
        mm.save_text_embeds(path, cond)


def test_safe_prefix_keeps_files_inside_the_output_folder():
    assert logic.safe_prefix("../../etc/passwd", "x") == "etc/passwd"
    assert logic.safe_prefix("/abs/a b", "x") == "abs/a_b"
    assert logic.safe_prefix("", "identity") == "identity"


def test_likeness_plot_is_an_image():
    img = logic.likeness_plot([0.8, None, 0.6, float("nan"), 0.7], threshold=0.4)
    assert img.shape == (1, 240, 640, 3) and img.dtype == torch.float32
    assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.01


def test_check_choice_messages():
    assert logic.check_choice("N", "x", "a", ["a", "b"]) is True
    assert logic.check_choice("N", "x", None, []) is True
    assert "not one of: a, b" in logic.check_choice("N", "x", "c", ["a", "b"])
    assert "list is empty" in logic.check_choice("N", "x", "c", [])


def test_workflows_are_up_to_date_and_carry_model_notes():
    out = subprocess.run([sys.executable, str(H.REPO / "scripts" / "make_workflows.py"), "--check"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    for path in (H.REPO / "example_workflows").glob("*.json"):
        wf = json.loads(path.read_text())
        notes = [n["widgets_values"][0] for n in wf["nodes"] if n["type"] == "Note"]
        if path.stem.startswith("moca_toy_"):       # the toy template: its files ship with the pack
            assert notes and "toy_models/" in notes[0] and "0.8.0" in notes[0], path.name
            continue
        assert notes and "models/" in notes[0], path.name
        if any(n["type"] == "MoCAAdapterLoader" for n in wf["nodes"]):
            assert "NO OFFICIAL MoCA WEIGHTS" in notes[0] and "train_moca.py" in notes[0]
        for n in wf["nodes"]:
            for m in n.get("properties", {}).get("models", []):
                assert m["url"].startswith("https://huggingface.co/Comfy-Org/") and m["directory"], m
    api = json.loads((H.REPO / "example_workflows" / "api" / "moca_smoke_cpu_api.json").read_text())
    assert all("class_type" in v and "inputs" in v for v in api.values())
