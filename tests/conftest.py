"""Shared pytest fixtures. Face part: tiny ONNX packs (no real antelopev2 needed, nothing downloads)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))  # `import face_models` from any test file

import face_models  # noqa: E402


@pytest.fixture(scope="session")
def astronaut():
    """skimage's astronaut portrait, [512, 512, 3] uint8."""
    return face_models.astronaut()


@pytest.fixture
def tiny_root(tmp_path):
    """A ComfyUI-style ``models/insightface`` folder holding a tiny antelopev2 pack (astronaut face)."""
    face_models.make_tiny_pack(tmp_path)
    return tmp_path


@pytest.fixture(scope="session")
def tiny_analyzer(tmp_path_factory):
    """FaceAnalyzer (onnxruntime backend) on a tiny antelopev2 pack that sees the astronaut's face."""
    from moca_model.face import FaceAnalyzer

    root = tmp_path_factory.mktemp("insightface")
    face_models.make_tiny_pack(root)
    return FaceAnalyzer.load(root, backend="onnxruntime")
