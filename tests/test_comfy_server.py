"""The pack inside a real ComfyUI server (COMFYUI_PATH): loading, /object_info, workflows, headless runs.

One server for the module: `python main.py --cpu` on a free 127.0.0.1 port, temp folders, tiny random
models built here. Skipped, with the reason shown, when COMFYUI_PATH is not set.
"""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch

import comfy_harness as H

pytestmark = pytest.mark.comfyui
H.require_comfyui()
H.import_comfy()

MOCA_NODES = ["MoCAAdapterLoader", "MoCADiTLoader", "MoCAFaceAnalyzerLoader", "MoCAEncodeFace", "MoCASaveIdentity",
              "MoCALoadIdentity", "MoCATemporalPooling", "MoCAExpertMixing", "MoCAApply", "MoCAIdentityConditioning",
              "MoCASampler", "MoCASaveTextEmbeds", "MoCALoadTextEmbeds", "MoCAIdentityScore", "MoCASaveTrainingSample"]
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
SMOKE = H.REPO / "example_workflows" / "api" / "moca_smoke_cpu_api.json"
UI_WORKFLOWS = sorted((H.REPO / "example_workflows").glob("*.json"))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("comfy")
    H.build_models(root)
    srv = H.ComfyServer(root).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


def test_pack_loads_without_import_errors(server, object_info):
    log = server.tail(200000)
    lines = [line for line in log.splitlines() if "ComfyUI-MoCA" in line and "seconds" in line]
    assert lines and not [line for line in lines if "IMPORT FAILED" in line], log[-3000:]
    assert not [n for n in MOCA_NODES if n not in object_info], log[-3000:]
    print(f"\n{len([k for k in object_info if k.startswith('MoCA')])} MoCA nodes loaded by ComfyUI")


def test_object_info_lists_every_node_with_tooltips_and_descriptions(object_info):
    for name in MOCA_NODES:
        info = object_info[name]
        assert info["python_module"].startswith("custom_nodes."), name
        assert info["category"].startswith("MoCA"), name
        assert info["description"], f"{name} has no description"
        inputs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        assert inputs or name in (), name
        for iname, spec in inputs.items():
            opts = spec[1] if len(spec) > 1 else {}
            assert opts.get("tooltip"), f"{name}.{iname} has no tooltip"
        assert all(info["output_tooltips"]), f"{name} has an output without a tooltip"


def test_moca_folder_comes_from_extra_model_paths_and_lists_safetensors_only(object_info):
    options = object_info["MoCAAdapterLoader"]["input"]["required"]["adapter_name"][1]["options"]
    assert "moca_tiny_adapter.safetensors" in options and "moca_tiny_dit.safetensors" in options
    assert not [o for o in options if not o.endswith(".safetensors")], options


def test_templates_are_listed(server):
    templates = server.get("/workflow_templates")
    listed = templates.get("ComfyUI-MoCA", [])
    assert UI_WORKFLOWS and sorted(listed) == sorted(p.stem for p in UI_WORKFLOWS), templates
    # the folder ComfyUI expects: any other name it still serves, with a warning to rename it
    assert not [ln for ln in server.tail(200000).splitlines() if "consider renaming it to 'example_workflows'" in ln
                and "ComfyUI-MoCA" in ln]


def test_workflow_files_are_generated_from_their_source():
    import importlib.util
    spec = importlib.util.spec_from_file_location("make_workflows", H.REPO / "scripts" / "make_workflows.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--check"]) == 0


def _widgets(info: dict) -> list:
    """(name, spec) of the widgets a node shows, in order, with UI-only extras as (None, kind)."""
    order = info.get("input_order", {})
    inputs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
    out = []
    for name in order.get("required", []) + order.get("optional", []):
        spec = inputs[name]
        t = spec[0]
        opts = spec[1] if len(spec) > 1 else {}
        if isinstance(t, list) or t in WIDGET_TYPES:
            if opts.get("forceInput"):
                continue
            out.append((name, spec))
            if opts.get("control_after_generate"):
                out.append((None, "control"))
            if opts.get("image_upload"):
                out.append((None, "upload"))
    return out


def _check_value(where, spec, value):
    t = spec[0]
    opts = spec[1] if len(spec) > 1 else {}
    if isinstance(t, list) or t == "COMBO":
        options = t if isinstance(t, list) else opts.get("options", [])
        assert value in options, f"{where}: {value!r} is not one of {options[:12]}"
    elif t == "INT":
        assert isinstance(value, int) and not isinstance(value, bool), f"{where}: {value!r} is not an int"
        assert opts.get("min", -math.inf) <= value <= opts.get("max", math.inf), f"{where}: {value} out of range"
    elif t == "FLOAT":
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r} is not a number"
        assert opts.get("min", -math.inf) <= value <= opts.get("max", math.inf), f"{where}: {value} out of range"
    elif t == "BOOLEAN":
        assert isinstance(value, bool), f"{where}: {value!r} is not a boolean"
    elif t == "STRING":
        assert isinstance(value, str), f"{where}: {value!r} is not a string"


@pytest.mark.parametrize("path", UI_WORKFLOWS, ids=lambda p: p.name)
def test_ui_workflow_nodes_and_widgets_are_valid(path, object_info):
    if path.stem.startswith("moca_toy_"):
        from moca_model.toy.pipeline import missing_files
        if missing_files():
            pytest.skip(f"{path.name} names the toy world's models, not in this checkout: {missing_files()}")
    wf = json.loads(path.read_text())
    assert wf.get("version") == 0.4 and wf["nodes"] and "links" in wf
    types = {n["type"] for n in wf["nodes"]}
    assert not [t for t in types if t not in object_info and t not in FRONTEND_ONLY], "unknown node types"
    assert "Note" in types, "every workflow carries a Note listing its model files"
    ids = {n["id"] for n in wf["nodes"]}
    for link in wf["links"]:
        lid, src, sslot, dst, dslot, ltype = link
        assert src in ids and dst in ids, link
        src_node = next(n for n in wf["nodes"] if n["id"] == src)
        if src_node["type"] in object_info:
            out_type = object_info[src_node["type"]]["output"][sslot]
            assert out_type == ltype, f"link {lid}: output {out_type} != {ltype}"
    for n in wf["nodes"]:
        if n["type"] in FRONTEND_ONLY:
            continue
        info = object_info[n["type"]]
        widgets = _widgets(info)
        values = n.get("widgets_values", [])
        assert len(values) == len(widgets), f"{path.name} node {n['id']} {n['type']}: {len(values)} widget values, " \
                                            f"the node has {len(widgets)} ({[w[0] for w in widgets]})"
        for (name, spec), value in zip(widgets, values):
            where = f"{path.name} node {n['id']} {n['type']}.{name}"
            if name is None:
                if spec == "control":
                    assert value in ("fixed", "increment", "decrement", "randomize"), where
                continue
            _check_value(where, spec, value)
        linked = {i["name"] for i in n.get("inputs", []) if i.get("link") is not None}
        required = info["input"].get("required", {})
        for iname, spec in required.items():
            if not (isinstance(spec[0], list) or spec[0] in WIDGET_TYPES):
                assert iname in linked, f"{path.name} node {n['id']} {n['type']}: required input {iname} is not linked"


def test_smoke_workflow_validates_against_object_info(object_info):
    prompt = json.loads(SMOKE.read_text())
    for nid, node in prompt.items():
        info = object_info[node["class_type"]]
        inputs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
        for name, value in node["inputs"].items():
            assert name in inputs, f"{nid} {node['class_type']}: unknown input {name}"
            if not isinstance(value, list):
                _check_value(f"{nid}.{name}", inputs[name], value)


def _node_id(prompt: dict, class_type: str) -> str:
    return next(k for k, v in prompt.items() if v["class_type"] == class_type)


def _run_ok(server, prompt: dict) -> dict:
    entry = server.run_prompt(prompt, timeout=240)
    err = H.execution_error(entry)
    assert entry["status"]["status_str"] == "success", json.dumps(err, indent=1)[:4000] if err else server.tail()
    return entry


def _latent_of(server, prompt: dict, source: str, prefix: str):
    """Run `prompt` with a SaveLatent on node `source`'s LATENT output; returns that latent (float32)."""
    from safetensors.torch import load_file
    prompt = {**copy.deepcopy(prompt),
              "900": {"class_type": "SaveLatent", "inputs": {"samples": [source, 0], "filename_prefix": prefix}}}
    _run_ok(server, prompt)
    files = sorted((server.root / "output").glob(prefix + "_*.latent"))
    assert len(files) == 1, files
    return load_file(str(files[0]))["latent_tensor"].float()


def _video_frames(path):
    import av
    import numpy as np
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def test_smoke_workflow_runs_end_to_end_on_cpu(server):
    """The shipped smoke graph: a real video comes out (frames not blank, not black, not all alike), and the
    identity it saved holds finite ArcFace embeddings and face latents."""
    prompt = json.loads(SMOKE.read_text())
    entry = _run_ok(server, prompt)
    outputs = entry["outputs"]
    saved = [o for out in outputs.values() for key in ("images", "videos", "animated") for o in out.get(key, [])]
    video = next((o for o in saved if o["filename"].endswith(".mp4")), None)
    assert video, outputs
    path = server.root / "output" / video["subfolder"] / video["filename"]
    frames = _video_frames(path)
    assert frames.shape == (5, 64, 64, 3), frames.shape
    per_frame_std = frames.reshape(5, -1).std(axis=1)
    assert (per_frame_std > 2.0).all(), f"blank frames: per-frame std {per_frame_std}"
    assert frames.mean() > 5.0, f"black video: mean {frames.mean():.2f}"
    identities = list((server.root / "output" / "moca_identities" / "moca_smoke").glob("identity_*.safetensors"))
    assert identities, "MoCA Save Identity wrote nothing"
    from moca_model.identity import load_identity
    ident = load_identity(identities[0])
    assert torch.isfinite(ident.arcface).all() and torch.isfinite(ident.face_latent).all()
    assert ident.face_latent.std() > 1e-3, "the face latent is constant"
    print(f"\nsmoke workflow: {path.name} ({len(frames)} frames, mean {frames.mean():.1f}, per-frame std "
          f"{per_frame_std.min():.1f}..{per_frame_std.max():.1f}), identity {identities[0].name}")


def test_smoke_workflow_identity_changes_the_video(server):
    prompt = json.loads(SMOKE.read_text())
    sampler = _node_id(prompt, "MoCASampler")
    with_id = _latent_of(server, prompt, sampler, "moca_test/smoke_identity")
    off = copy.deepcopy(prompt)
    off[_node_id(off, "MoCAExpertMixing")]["inputs"]["identity_strength"] = 0.0
    without = _latent_of(server, off, sampler, "moca_test/smoke_strength0")
    assert torch.isfinite(with_id).all() and torch.isfinite(without).all()
    assert with_id.std() > 0.1 and without.std() > 0.1
    change = ((with_id - without).abs().max() / without.abs().max()).item()
    print(f"\nidentity strength 1 vs 0: the video latent changes by {change:.3f} (relative max)")
    assert change > 1e-2


def test_smoke_workflow_with_moca_apply_bypassed_equals_the_base_ksampler_graph(server):
    """Bypassing MoCA Apply (what the front end sends: MoCA Sampler's model comes from the loader) gives
    exactly the core graph without MoCA: the empty Wan latent + KSampler with cfg = text_cfg."""
    prompt = json.loads(SMOKE.read_text())
    sampler, apply_ = _node_id(prompt, "MoCASampler"), _node_id(prompt, "MoCAApply")
    bypassed = copy.deepcopy(prompt)
    bypassed[sampler]["inputs"]["model"] = bypassed[apply_]["inputs"]["model"]
    del bypassed[apply_]
    got = _latent_of(server, bypassed, sampler, "moca_test/smoke_bypassed")
    s = prompt[sampler]["inputs"]
    base = {k: v for k, v in prompt.items() if v["class_type"] in ("MoCADiTLoader", "MoCALoadTextEmbeds")}
    base["800"] = {"class_type": "EmptyHunyuanLatentVideo",
                   "inputs": {"width": s["width"], "height": s["height"], "length": s["frames"], "batch_size": 1}}
    base["801"] = {"class_type": "KSampler", "inputs": {
        "model": prompt[apply_]["inputs"]["model"], "seed": s["seed"], "steps": s["steps"], "cfg": s["text_cfg"],
        "sampler_name": s["sampler_name"], "scheduler": s["scheduler"], "positive": s["positive"],
        "negative": s["negative"], "latent_image": ["800", 0], "denoise": 1.0}}
    want = _latent_of(server, base, "801", "moca_test/smoke_base")
    assert torch.isfinite(want).all() and want.std() > 0.1
    assert torch.equal(got, want), (got - want).abs().max()


def test_photo_without_a_face_is_an_execution_error_naming_the_image(server):
    prompt = json.loads(SMOKE.read_text())
    face_node = next(k for k, v in prompt.items() if v["class_type"] == "LoadImage")
    prompt[face_node]["inputs"]["image"] = "moca_no_face.png"
    entry = server.run_prompt(prompt, timeout=120)
    err = H.execution_error(entry)
    assert err is not None, entry["status"]
    assert err["node_type"] == "MoCAEncodeFace"
    msg = err["exception_message"]
    assert "input 'image' frame 0" in msg and "no usable face" in msg and "on_no_face" in msg, msg
    print(f"\nno-face error: {msg[:200]}")


def test_wrong_link_is_refused_by_validation(server):
    prompt = json.loads(SMOKE.read_text())
    apply_id = next(k for k, v in prompt.items() if v["class_type"] == "MoCAApply")
    image_id = next(k for k, v in prompt.items() if v["class_type"] == "LoadImage")
    prompt[apply_id]["inputs"]["moca_id"] = [image_id, 0]        # IMAGE into MOCA_ID
    # the only other output (Save Identity) would still be valid and run; keep the broken branch alone
    prompt = {k: v for k, v in prompt.items() if v["class_type"] != "MoCASaveIdentity"}
    status, body = server.post("/prompt", {"prompt": prompt})
    assert status == 400
    errors = body["node_errors"][apply_id]["errors"]
    assert any(e["type"] == "return_type_mismatch" and "MOCA_ID" in e["details"] for e in errors), errors


def test_missing_model_file_is_refused_by_validation(server):
    prompt = json.loads(SMOKE.read_text())
    loader = next(k for k, v in prompt.items() if v["class_type"] == "MoCADiTLoader")
    prompt[loader]["inputs"]["ckpt_name"] = "does_not_exist.safetensors"
    prompt = {k: v for k, v in prompt.items() if v["class_type"] != "MoCASaveIdentity"}
    status, body = server.post("/prompt", {"prompt": prompt})
    assert status == 400 and loader in body["node_errors"], body
    errors = body["node_errors"][loader]["errors"]
    assert len(errors) == 1, errors                                   # reported once, not once per input
    details = errors[0]["details"]
    assert "ckpt_name" in details and "does_not_exist.safetensors" in details, details


def test_loaders_ksampler_identity_score_and_text_embeds_run_headless(server):
    """The core path (Load Diffusion Model + MoCA Adapter Loader + MoCA Apply + KSampler), Identity Score on a
    face frame and a face-less frame, and Save Text Embeds, in one headless prompt."""
    g = {
        "1": ("LoadImage", {"image": "moca_smoke_face.png"}),
        "2": ("LoadImage", {"image": "moca_no_face.png"}),
        "3": ("ImageBatch", {"image1": ["1", 0], "image2": ["2", 0]}),
        "4": ("MoCAFaceAnalyzerLoader", {"pack": "antelopev2", "provider": "cpu", "det_size": 640}),
        "5": ("VAELoader", {"vae_name": "moca_tiny_test_vae.safetensors"}),
        "6": ("MoCAEncodeFace", {"image": ["1", 0], "face_analyzer": ["4", 0], "vae": ["5", 0], "face_select": "largest",
                                 "face_index": 0, "on_no_face": "error", "fusion": "mean", "crop_size": 256}),
        "7": ("MoCAIdentityScore", {"frames": ["3", 0], "moca_id": ["6", 0], "face_analyzer": ["4", 0], "threshold": 0.4}),
        "8": ("MoCALoadTextEmbeds", {"embeds_file": "smoke_positive.safetensors"}),
        "9": ("MoCASaveTextEmbeds", {"conditioning": ["8", 0], "filename_prefix": "moca_test/roundtrip", "note": "hi"}),
        "10": ("UNETLoader", {"unet_name": "moca_tiny_wan.safetensors", "weight_dtype": "default"}),
        "11": ("MoCAAdapterLoader", {"adapter_name": "moca_tiny_adapter.safetensors"}),
        "12": ("MoCAApply", {"model": ["10", 0], "moca_adapter": ["11", 0], "moca_id": ["6", 0], "apply_to": "all"}),
        "13": ("EmptyHunyuanLatentVideo", {"width": 64, "height": 64, "length": 5, "batch_size": 1}),
        "14": ("KSampler", {"model": ["12", 0], "seed": 1, "steps": 2, "cfg": 2.0, "sampler_name": "euler",
                            "scheduler": "simple", "positive": ["8", 0], "negative": ["8", 0],
                            "latent_image": ["13", 0], "denoise": 1.0}),
        "15": ("SaveLatent", {"samples": ["14", 0], "filename_prefix": "moca_test/latent"}),
        "16": ("RepeatImageBatch", {"image": ["19", 0], "amount": 5}),
        "19": ("ImageScale", {"image": ["1", 0], "upscale_method": "bilinear", "width": 64, "height": 64,
                              "crop": "disabled"}),
        "17": ("VAEEncode", {"pixels": ["16", 0], "vae": ["5", 0]}),
        "18": ("MoCASaveTrainingSample", {"video_latent": ["17", 0], "caption_conditioning": ["8", 0],
                                          "moca_id": ["6", 0], "caption": "a test clip",
                                          "filename_prefix": "moca_test/sample"}),
    }
    prompt = {k: {"class_type": c, "inputs": i} for k, (c, i) in g.items()}
    entry = server.run_prompt(prompt, timeout=480)
    err = H.execution_error(entry)
    assert entry["status"]["status_str"] == "success", json.dumps(err, indent=1)[:4000] if err else server.tail()
    summary, per_frame = entry["outputs"]["7"]["text"]
    scores = per_frame.split(", ")
    assert len(scores) == 2 and scores[1] == "none" and float(scores[0]) > 0.9, per_frame
    assert "no face in 1 frame(s): 1" in summary and entry["outputs"]["7"]["images"]
    out = server.root / "output"
    assert list((out / "moca_text_embeds" / "moca_test").glob("roundtrip_*.safetensors"))
    latents = list((out / "moca_test").glob("latent_*.latent"))
    assert len(latents) == 1
    from safetensors.torch import load_file
    ks = load_file(str(latents[0]))["latent_tensor"].float()
    assert torch.isfinite(ks).all() and ks.std() > 0.1, "KSampler + MoCA Apply gave a blank latent"
    print(f"\nidentity score: {summary}")
    from moca_model.training.data import read_shard
    shards = list((out / "moca_training" / "moca_test").glob("sample_*.safetensors"))
    assert len(shards) == 1, shards
    sample = read_shard(shards[0])[0]
    assert sample["latents"].shape[:2] == (16, 2) and sample["caption"] == "a test clip"
    assert sample["arcface"].shape[-1] == 512 and sample["face_latent"].shape[-4] == 16
    for key in ("latents", "text", "arcface", "face_latent"):
        assert torch.isfinite(sample[key]).all() and sample[key].float().std() > 1e-3, f"shard {key} is blank"
    print(f"training sample: {shards[0].name} latents {list(sample['latents'].shape)}")
