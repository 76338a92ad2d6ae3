"""`make toy`: every stage is wired, and the world stage writes the manifest the cache reads, resumably."""
import json

import pytest

from moca_model.toy import build, world
from moca_model.video import read_video


def test_every_stage_has_a_function():
    assert list(build.STAGES) == ["world", "face", "vae", "cache", "backbone", "adapter", "classifiers"]
    assert set(build.STAGE_FUNCS) == set(build.STAGES)


def test_joint_is_the_default_build_and_sets_its_step_counts():
    a = build.parse_args([])
    assert a.joint and (a.backbone_steps, a.adapter_steps) == (16000, 3000)   # 16,000 text-only + 3,000 joint
    a = build.parse_args(["--no-joint"])
    assert not a.joint and (a.backbone_steps, a.adapter_steps) == (18000, 2000)
    a = build.parse_args(["--backbone-steps", "7", "--adapter-steps", "5"])
    assert (a.backbone_steps, a.adapter_steps) == (7, 5)


def test_world_stage_writes_a_cache_manifest_and_resumes(tmp_path):
    manifest = build.write_world(tmp_path, [3], 1, log=lambda *_: None)
    (line,) = [json.loads(x) for x in manifest.read_text().splitlines()]
    spec = world.clip_spec(3, 0)
    assert line["caption"] == spec.caption and line["id"] == "3"
    frames, _ = read_video(tmp_path / line["video"])
    masks, _ = read_video(tmp_path / line["face_mask"])
    assert frames.shape == (17, 128, 128, 3) and masks.shape == (17, 128, 128, 3)
    clip = world.make_clip(3, 0)
    assert abs(frames.astype(float) - clip.frames).mean() < 4                 # H.264 at crf 18: close to the render
    head = masks[..., 0] > 127
    assert (head == [f[0].mask for f in clip.faces]).mean() > 0.97             # white = the person's head
    assert (tmp_path / line["reference"][0]).is_file()
    stamp = (tmp_path / line["video"]).stat().st_mtime_ns
    build.write_world(tmp_path, [3], 1, log=lambda *_: None)                  # done clips are not re-rendered
    assert (tmp_path / line["video"]).stat().st_mtime_ns == stamp


def test_adapter_stage_sets_aside_a_run_made_on_another_backbone(tmp_path, monkeypatch):
    """A retrained backbone must not be paired with an adapter run resumed from the old one."""
    import types

    import moca_model.training.cli as cli
    backbone, shipped = tmp_path / "toy_wan_t2v.safetensors", tmp_path / "shipped" / "toy_moca_adapter.safetensors"
    backbone.write_bytes(b"new backbone")
    monkeypatch.setattr(build, "paths", lambda: {"backbone": backbone, "vae": tmp_path / "vae", "adapter": shipped})
    calls = []

    def train(argv):                                        # records the run and writes its export
        calls.append(argv)
        out = tmp_path / "data" / "adapter"
        assert not (out / "checkpoints").exists()           # the old run's checkpoints are not resumed
        (out / "toy_moca_adapter.safetensors").write_bytes(b"adapter")
    monkeypatch.setattr(cli, "main", train)
    old = tmp_path / "data" / "adapter"
    (old / "checkpoints").mkdir(parents=True)
    (old / "backbone.sha256").write_text("0123456789abcdef\n")
    build._adapter(tmp_path / "data", [], types.SimpleNamespace(adapter_steps=5))
    assert (tmp_path / "data" / "adapter.0123456789abcdef" / "checkpoints").is_dir()
    assert (old / "backbone.sha256").read_text().strip() == build.file_digest(backbone)
    assert shipped.read_bytes() == b"adapter" and len(calls) == 1
    build._adapter(tmp_path / "data", [], types.SimpleNamespace(adapter_steps=5))   # same backbone: resumed in place
    assert not (tmp_path / "data" / "adapter.0123456789abcdef.1").exists()


def test_joint_adapter_stage_ships_the_fine_tuned_backbone(tmp_path, monkeypatch):
    """--joint: the adapter stage fine-tunes the backbone stage's text-only model (kept in the scratch folder),
    in its own run folder, and ships the combined export's backbone (Wan layout, fp16) with the adapter."""
    import types

    import torch

    import moca_model.training.cli as cli
    from moca_model import MoCAConfig, MoCADiT, save_moca
    data = tmp_path / "data"
    a = types.SimpleNamespace(adapter_steps=5, joint=True)
    text_only = build.text_only_backbone(data, a)
    assert text_only.parent == data / "backbone"                # not the shipped path
    text_only.parent.mkdir(parents=True)
    text_only.write_bytes(b"text-only backbone")
    shipped = {"backbone": tmp_path / "shipped" / "toy_wan_t2v.safetensors", "vae": tmp_path / "vae",
               "adapter": tmp_path / "shipped" / "toy_moca_adapter.safetensors"}
    monkeypatch.setattr(build, "paths", lambda: shipped)
    torch.manual_seed(0)
    tuned = MoCADiT(MoCAConfig.preset("tiny"))
    calls = []

    def train(argv):                                        # a full fine-tune's two exports
        calls.append(argv)
        out = data / "adapter_joint"
        save_moca(out / "toy_moca_adapter_combined.safetensors", tuned)
        save_moca(out / "toy_moca_adapter.safetensors", tuned, adapter_only=True)
    monkeypatch.setattr(cli, "main", train)
    build._adapter(data, [], a)
    (argv,) = calls
    assert argv[1].endswith("toy_moca_joint.yaml") and f"model.backbone={text_only}" in argv
    assert not (data / "adapter").exists()                  # the frozen-backbone run folder is left alone
    loaded = MoCADiT(MoCAConfig.preset("tiny"))
    loaded.load_backbone(str(shipped["backbone"]))
    for k, v in tuned.backbone_state_dict().items():
        assert torch.equal(loaded.backbone_state_dict()[k], v.half().float()), k
    assert shipped["adapter"].read_bytes() == (data / "adapter_joint" / "toy_moca_adapter.safetensors").read_bytes()
    with pytest.raises(ValueError, match="combined file"):
        build.write_backbone_of(shipped["adapter"], tmp_path / "x.safetensors")
