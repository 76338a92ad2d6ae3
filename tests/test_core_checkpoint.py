"""save_moca / load_moca / read_moca: safetensors only, versioned header, atomic writes, clear errors."""
import os
import pickle

import pytest
import torch
from safetensors import safe_open

from moca_model import CheckpointError, MoCAAdapter, MoCAConfig, MoCADiT, load_moca, read_moca, save_moca
from moca_model import checkpoint as ckpt


@pytest.fixture
def model():
    m = MoCADiT(MoCAConfig.preset("tiny")).eval()
    with torch.no_grad():
        for layer in m.adapter.layers:
            layer.out.weight.normal_(std=0.05)
    return m


def test_adapter_round_trip_with_header(tmp_path, model):
    path = save_moca(tmp_path / "a.safetensors", model.adapter, metadata={"trained_steps": 12, "note": "hi"})
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["format"] == "moca" and meta["format_version"] == "1" and meta["kind"] == "adapter"
    assert MoCAConfig.from_json(meta["config"]) == model.config
    loaded = load_moca(path)
    assert isinstance(loaded, MoCAAdapter) and loaded.moca_metadata == {"trained_steps": "12", "note": "hi"}
    for k, v in model.adapter.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    fresh = MoCADiT(MoCAConfig.preset("tiny"))
    fresh.load_state_dict(model.backbone_state_dict(), strict=False)
    fresh.load_adapter(path)
    x, t, c = torch.randn(1, 16, 2, 4, 4), torch.tensor([500.0]), torch.randn(1, 3, 4096)
    ident = model.adapter.tokenizer(arcface=torch.randn(1, 512))
    with torch.no_grad():
        torch.testing.assert_close(fresh(x, t, c, identity=ident), model(x, t, c, identity=ident))


def test_combined_file_splits_into_backbone_and_adapter(tmp_path, model):
    path = save_moca(tmp_path / "c.safetensors", model)
    f = read_moca(path)
    assert f.kind == "combined"
    assert set(f.backbone_state) == set(model.backbone_state_dict())
    assert set(f.adapter_state) == set(model.adapter.state_dict())
    loaded = load_moca(path)
    assert isinstance(loaded, MoCADiT)
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v), k
    only = save_moca(tmp_path / "only.safetensors", model, adapter_only=True)
    assert read_moca(only).kind == "adapter"


def test_write_is_atomic_and_never_overwrites(tmp_path, model, monkeypatch):
    path = tmp_path / "a.safetensors"
    save_moca(path, model.adapter)
    with pytest.raises(FileExistsError, match="already exists"):
        save_moca(path, model.adapter)
    save_moca(path, model.adapter, overwrite=True)
    before = path.read_bytes()

    def broken_save(tensors, filename, metadata=None):
        with open(filename, "wb") as fh:
            fh.write(b"half")
        raise OSError("disk full")
    monkeypatch.setattr("safetensors.torch.save_file", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_moca(path, model.adapter, overwrite=True)
    assert path.read_bytes() == before                        # the old file is intact
    assert sorted(os.listdir(tmp_path)) == ["a.safetensors"]  # and no temp file is left behind


def test_pickle_and_wrong_extension_are_refused(tmp_path, model):
    pt = tmp_path / "adapter.pt"
    torch.save(model.adapter.state_dict(), pt)
    with pytest.raises(CheckpointError, match="not a .safetensors file .*pickle"):
        load_moca(pt)
    disguised = tmp_path / "adapter.safetensors"
    disguised.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(CheckpointError, match="pickle"):
        load_moca(disguised)


def test_truncated_file_is_reported(tmp_path, model):
    path = save_moca(tmp_path / "a.safetensors", model.adapter)
    data = path.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=r"cut.safetensors \(\d+ bytes\) is truncated or corrupt"):
        load_moca(tmp_path / "cut.safetensors")
    with pytest.raises(FileNotFoundError, match="not found"):
        load_moca(tmp_path / "missing.safetensors")


def test_shape_and_config_mismatch_are_listed(tmp_path, model):
    path = save_moca(tmp_path / "a.safetensors", model.adapter)
    tensors, meta = ckpt.read_safetensors(path)
    tensors["layers.0.out.weight"] = torch.zeros(3, 3)
    del tensors["layers.1.router.proj_x.bias"]
    tensors["layers.0.bogus"] = torch.zeros(1)
    ckpt.atomic_save_safetensors(tensors, tmp_path / "bad.safetensors", meta)
    with pytest.raises(CheckpointError) as e:
        read_moca(tmp_path / "bad.safetensors")
    msg = str(e.value)
    assert "missing 1 keys: layers.1.router.proj_x.bias" in msg
    assert "unexpected 1 keys: layers.0.bogus" in msg
    assert "layers.0.out.weight: file [3, 3] vs model [256, 128]" in msg
    # An adapter for another backbone size is refused with the differing fields named.
    other = MoCADiT(MoCAConfig.preset("tiny", dim=384, num_heads=3))
    with pytest.raises(CheckpointError, match="dim: adapter 256 vs model 384"):
        other.load_adapter(path)
    # A bad config in the header
    _, meta = ckpt.read_safetensors(path)
    tensors, _ = ckpt.read_safetensors(path)
    ckpt.atomic_save_safetensors(tensors, tmp_path / "cfg.safetensors", {**meta, "config": '{"dim": "x", "nope": 1}'})
    with pytest.raises(CheckpointError, match="config in its header is invalid"):
        read_moca(tmp_path / "cfg.safetensors")


def test_plain_wan_file_is_not_an_adapter(tmp_path, model):
    p = ckpt.save_wan_checkpoint(tmp_path / "wan.safetensors", model, prefix="model.diffusion_model.")
    with pytest.raises(CheckpointError, match="plain Wan checkpoint"):
        read_moca(p)
    back = MoCADiT(MoCAConfig.preset("tiny")).load_backbone(p)
    assert torch.equal(back.head.head.weight, model.head.head.weight)
