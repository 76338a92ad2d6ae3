"""Finding insightface packs on disk, and the messages for every broken layout."""
import pytest

import face_models
from moca_model.face import FaceAnalyzer, FacePackError, expected_files, find_pack
from moca_model.face.errors import FaceOptionError


def test_expected_files_lists_required_first():
    assert expected_files("antelopev2")[:2] == ("scrfd_10g_bnkps.onnx", "glintr100.onnx")
    assert expected_files("buffalo_l")[:2] == ("det_10g.onnx", "w600k_r50.onnx")
    assert set(expected_files("antelopev2")[2:]) == {"1k3d68.onnx", "2d106det.onnx", "genderage.onnx"}


def test_found_in_comfyui_layout(tmp_path):
    folder = face_models.make_tiny_pack(tmp_path, optional=True)
    p = find_pack(tmp_path)
    assert p.folder == folder == tmp_path / "models" / "antelopev2"
    assert p.detector.name == "scrfd_10g_bnkps.onnx" and p.recognizer.name == "glintr100.onnx"
    assert set(p.optional) == {"1k3d68.onnx", "2d106det.onnx", "genderage.onnx"}


def test_found_nested_zip_layout(tmp_path):
    folder = face_models.make_tiny_pack(tmp_path, nested=True)
    assert folder == tmp_path / "models" / "antelopev2" / "antelopev2"
    assert find_pack(tmp_path).folder == folder


def test_root_may_be_models_folder_or_pack_folder(tmp_path):
    folder = face_models.make_tiny_pack(tmp_path)
    assert find_pack(tmp_path / "models").folder == folder
    assert find_pack(folder).folder == folder


def test_buffalo_l_accepted(tmp_path):
    face_models.make_tiny_pack(tmp_path, pack="buffalo_l")
    p = find_pack(tmp_path, "buffalo_l")
    assert p.detector.name == "det_10g.onnx" and p.recognizer.name == "w600k_r50.onnx"
    an = FaceAnalyzer.load(tmp_path, pack="buffalo_l", backend="onnxruntime")
    assert "buffalo_l" in an.report


def test_flat_layout_preferred_over_nested(tmp_path):
    flat = face_models.make_tiny_pack(tmp_path)
    face_models.make_tiny_pack(tmp_path, nested=True)
    assert find_pack(tmp_path).folder == flat


def test_missing_root_names_folder_and_files(tmp_path):
    with pytest.raises(FacePackError) as e:
        find_pack(tmp_path / "nope")
    msg = str(e.value)
    assert str(tmp_path / "nope") in msg and "does not exist" in msg
    assert str(tmp_path / "nope" / "models" / "antelopev2") in msg
    assert "scrfd_10g_bnkps.onnx" in msg and "glintr100.onnx" in msg and "never downloads" in msg
    assert isinstance(e.value, FileNotFoundError)


def test_missing_pack_lists_expected_files_and_exact_folder(tmp_path):
    (tmp_path / "models").mkdir()
    with pytest.raises(FacePackError) as e:
        find_pack(tmp_path)
    msg = str(e.value)
    assert "not found" in msg
    assert str(tmp_path / "models" / "antelopev2") in msg
    for f in expected_files("antelopev2"):
        assert f in msg
    assert "required" in msg and "optional" in msg


def test_partial_pack_names_missing_file(tmp_path):
    folder = face_models.make_tiny_pack(tmp_path)
    (folder / "glintr100.onnx").unlink()
    with pytest.raises(FacePackError) as e:
        find_pack(tmp_path)
    msg = str(e.value)
    assert "incomplete" in msg and "missing glintr100.onnx" in msg and str(folder) in msg
    assert "Present .onnx files: scrfd_10g_bnkps.onnx" in msg


def test_partial_nested_pack_reports_the_nested_folder(tmp_path):
    folder = face_models.make_tiny_pack(tmp_path, nested=True)
    (folder / "scrfd_10g_bnkps.onnx").unlink()
    with pytest.raises(FacePackError, match="missing scrfd_10g_bnkps.onnx") as e:
        find_pack(tmp_path)
    assert str(folder) in str(e.value)


@pytest.mark.parametrize("content,needle", [
    (b"", "empty"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n", "Git LFS pointer"),
    (b"<!DOCTYPE html><html><body>404</body></html>", "HTML page"),
])
def test_placeholder_files_are_named(tmp_path, content, needle):
    folder = face_models.make_tiny_pack(tmp_path)
    (folder / "glintr100.onnx").write_bytes(content)
    with pytest.raises(FacePackError, match=needle) as e:
        find_pack(tmp_path)
    assert "glintr100.onnx" in str(e.value)


def test_other_pack_files_are_pointed_out(tmp_path):
    face_models.make_tiny_pack(tmp_path, pack="buffalo_l")
    (tmp_path / "models" / "buffalo_l").rename(tmp_path / "models" / "antelopev2")
    with pytest.raises(FacePackError) as e:
        find_pack(tmp_path)
    msg = str(e.value)
    assert "det_10g.onnx" in msg and "pack='buffalo_l'" in msg


def test_unextracted_zip_is_pointed_out(tmp_path):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "antelopev2.zip").write_bytes(b"PK\x03\x04")
    with pytest.raises(FacePackError, match="unzip it there"):
        find_pack(tmp_path)


def test_unknown_pack_name():
    with pytest.raises(FaceOptionError, match="antelopev2, buffalo_l"):
        find_pack(".", "buffalo_xxl")


def test_corrupt_onnx_file_is_a_pack_error(tmp_path):
    folder = face_models.make_tiny_pack(tmp_path)
    (folder / "scrfd_10g_bnkps.onnx").write_bytes(b"\x08\x07" + b"\xff" * 100)
    with pytest.raises(FacePackError) as e:
        FaceAnalyzer.load(tmp_path, backend="onnxruntime")
    assert "scrfd_10g_bnkps.onnx" in str(e.value) and "fresh copy" in str(e.value)


def test_wrong_file_as_detector_is_named(tmp_path):
    folder = face_models.make_tiny_pack(tmp_path)
    (folder / "scrfd_10g_bnkps.onnx").write_bytes((folder / "glintr100.onnx").read_bytes())
    with pytest.raises(FacePackError, match="SCRFD detector has 6, 9, 10 or 15"):
        FaceAnalyzer.load(tmp_path, backend="onnxruntime")


def test_detector_without_landmarks_is_rejected(tmp_path):
    face_models.make_tiny_pack(tmp_path, with_kps=False)
    with pytest.raises(FacePackError, match="without the 5 face landmarks"):
        FaceAnalyzer.load(tmp_path, backend="onnxruntime")
