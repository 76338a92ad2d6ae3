"""One identity file format for MoCA Save Identity and FaceIdentity.save; the two former formats still load."""
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from moca_model import MoCAIdentity
from moca_model.face import FaceIdentity
from moca_model.face.errors import FaceIdentityFileError
from moca_model.identity import load_identity


def _header(path):
    with safe_open(str(path), "pt") as f:
        return f.metadata(), set(f.keys())


@pytest.fixture(scope="module")
def face(tiny_analyzer, astronaut):
    return tiny_analyzer.encode([astronaut, astronaut[:, ::-1].copy()], fusion="separate")


def test_both_writers_write_the_same_format(face, tmp_path):
    a, ka = _header(face.save(tmp_path / "face.safetensors"))
    b, kb = _header(MoCAIdentity(torch.randn(2, 512), torch.randn(2, 16, 1, 4, 4)).save(tmp_path / "node.safetensors"))
    assert (a["format"], a["format_version"]) == (b["format"], b["format_version"]) == ("moca-identity", "2")
    assert "arcface" in ka and "arcface" in kb and a["fusion"] == "concat"


def test_a_face_identity_file_loads_as_a_moca_identity(face, tmp_path):
    ident = MoCAIdentity.load(face.save(tmp_path / "face.safetensors"))
    assert torch.equal(ident.arcface, face.embeddings) and ident.face_latent is None and ident.fusion == "concat"
    assert (ident.crops - face.crops).abs().max() <= 0.5 / 255 + 1e-6
    assert len(ident.info["quality"]) == 2 and ident.info["metadata"]["pack"] == "antelopev2"


def test_a_node_identity_file_says_what_facenidentity_lacks(tmp_path):
    p = MoCAIdentity(torch.randn(1, 512), torch.randn(1, 16, 1, 4, 4), crops=torch.rand(1, 32, 32, 3)).save(
        tmp_path / "node.safetensors")
    with pytest.raises(FaceIdentityFileError, match="without the 112 px ArcFace crops.*load_identity"):
        FaceIdentity.load(p)


def test_former_face_identity_files_still_load(face, tmp_path):
    """A file in the former 'moca-face-identity' layout (as written before the merge)."""
    p = tmp_path / "old_face.safetensors"
    u8 = lambda x: (x * 255).round().clamp(0, 255).to(torch.uint8)                     # noqa: E731
    save_file({"embeddings": face.embeddings, "embedding": face.embedding, "crops112": u8(face.crops112),
               "crops": u8(face.crops)}, str(p),
              metadata={"format": "moca-face-identity", "format_version": "1", "fusion": "separate",
                        "quality": json.dumps([q.as_dict() for q in face.quality]), "skipped": "[]", "dropped": "[]",
                        "metadata": json.dumps(face.metadata, default=str)})
    back = FaceIdentity.load(p)
    assert torch.equal(back.embeddings, face.embeddings) and back.fusion == "separate"
    ident = load_identity(p)
    assert torch.equal(ident.arcface, face.embeddings) and ident.fusion == "concat"


def test_former_moca_identity_files_still_load(tmp_path):
    p = tmp_path / "old_node.safetensors"
    arc, lat = torch.randn(2, 512), torch.randn(2, 16, 1, 4, 4)
    save_file({"arcface": arc, "face_latent": lat}, str(p),
              metadata={"format": "moca-identity", "format_version": "1", "fusion": "mean", "info": '{"used": ["a"]}'})
    ident = MoCAIdentity.load(p)
    assert torch.equal(ident.arcface, arc) and torch.equal(ident.face_latent, lat) and ident.info == {"used": ["a"]}
