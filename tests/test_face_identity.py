"""Identity files: round trip, atomic writes, no silent overwrite, and a clear error for every bad file."""
import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from moca_model.face import FaceIdentity, FaceIdentityFileError, FaceIdentityNotFoundError
from moca_model.face import identity as I


@pytest.fixture(scope="module")
def ident(tiny_analyzer, astronaut):
    bright = np.clip(astronaut.astype(int) + 30, 0, 255).astype(np.uint8)
    return tiny_analyzer.encode([astronaut, np.zeros((32, 32, 3), np.uint8), bright], on_no_face="skip",
                                fusion="separate")


def test_round_trip(ident, tmp_path):
    p = ident.save(tmp_path / "sub" / "me.safetensors")
    assert p.is_file() and p.stat().st_size < 500_000  # small: 2 references, 256 px crops, ~0.23 MB each
    back = FaceIdentity.load(p)
    assert torch.equal(back.embeddings, ident.embeddings) and torch.equal(back.embedding, ident.embedding)
    assert (back.crops - ident.crops).abs().max() <= 0.5 / 255 + 1e-6
    assert (back.crops112 - ident.crops112).abs().max() <= 0.5 / 255 + 1e-6
    assert back.quality == ident.quality and back.skipped == [1] and back.fusion == "separate"
    assert back.metadata == json.loads(json.dumps(ident.metadata))
    assert back.info().splitlines()[1:] == ident.info().splitlines()[1:]
    assert sorted(os.listdir(p.parent)) == ["me.safetensors"]  # no temp file left behind


def test_never_overwrites_silently(ident, tmp_path):
    p = ident.save(tmp_path / "me.safetensors")
    before = p.read_bytes()
    with pytest.raises(FileExistsError, match="overwrite=True"):
        ident.save(p)
    assert p.read_bytes() == before
    ident.save(p, overwrite=True)


def test_failed_write_leaves_old_file_and_no_temp(ident, tmp_path, monkeypatch):
    p = ident.save(tmp_path / "me.safetensors")
    before = p.read_bytes()

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(I.os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        ident.save(p, overwrite=True)
    assert p.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["me.safetensors"]


def test_load_to_device_and_dtype(ident, tmp_path):
    p = ident.save(tmp_path / "me.safetensors")
    back = FaceIdentity.load(p, device="cpu")
    half = back.to(dtype=torch.float16)
    assert half.embeddings.dtype == torch.float16 and back.embeddings.dtype == torch.float32


def test_missing_file(tmp_path):
    with pytest.raises(FaceIdentityNotFoundError, match="does not exist") as e:
        FaceIdentity.load(tmp_path / "nope.safetensors")
    assert isinstance(e.value, FileNotFoundError)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "header"])
def test_corrupt_file(ident, tmp_path, damage):
    p = ident.save(tmp_path / "me.safetensors")
    data = p.read_bytes()
    if damage == "truncate":
        p.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        p.write_bytes(os.urandom(2000))
    else:
        p.write_bytes(data[:8] + b"{not json" + data[17:])
    with pytest.raises(FaceIdentityFileError, match="not a readable safetensors file") as e:
        FaceIdentity.load(p)
    assert "Re-create it" in str(e.value) and str(p) in str(e.value)


def test_other_safetensors_file_is_named(tmp_path):
    p = tmp_path / "model.safetensors"
    save_file({"blocks.0.self_attn.q.weight": torch.zeros(2, 2)}, str(p))
    with pytest.raises(FaceIdentityFileError, match="not a MoCA face identity") as e:
        FaceIdentity.load(p)
    assert "blocks.0.self_attn.q.weight" in str(e.value) and "model checkpoint" in str(e.value)


def _rewrite(path, meta_update=None, drop=None, tensors_update=None):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.update(meta_update or {})
    tensors.update(tensors_update or {})
    for k in drop or ():
        tensors.pop(k)
    save_file(tensors, str(path), metadata=meta)


def test_newer_format_version(ident, tmp_path):
    p = ident.save(tmp_path / "me.safetensors")
    _rewrite(p, {"format_version": "7"})
    with pytest.raises(FaceIdentityFileError, match="newer MoCA .identity format 7.* Update ComfyUI-MoCA"):
        FaceIdentity.load(p)


def test_missing_tensor_and_bad_shapes(ident, tmp_path):
    p = ident.save(tmp_path / "a.safetensors")
    _rewrite(p, drop=["crops"])
    with pytest.raises(FaceIdentityFileError, match="lacks the tensors crops"):
        FaceIdentity.load(p)
    p = ident.save(tmp_path / "b.safetensors")
    _rewrite(p, tensors_update={"arcface": torch.zeros(2, 128)})
    with pytest.raises(FaceIdentityFileError, match=r"embeddings has shape \[2, 128\], expected \[R>=1, 512\]"):
        FaceIdentity.load(p)
    p = ident.save(tmp_path / "c.safetensors")
    _rewrite(p, tensors_update={"arcface": torch.full((2, 512), float("nan"))})
    with pytest.raises(FaceIdentityFileError, match="NaN"):
        FaceIdentity.load(p)
    p = ident.save(tmp_path / "d.safetensors")
    _rewrite(p, {"quality": "[{]"})
    with pytest.raises(FaceIdentityFileError, match="unreadable metadata"):
        FaceIdentity.load(p)


def test_constructing_inconsistent_identity_fails(ident):
    with pytest.raises(FaceIdentityFileError, match="1 quality records for 2 references"):
        FaceIdentity(ident.embeddings, ident.embedding, ident.crops112, ident.crops, ident.quality[:1])
