"""Identity from reference photos: face detection, alignment, ArcFace embedding, identity files, likeness.

Pure Python/PyTorch (no ``comfy`` import). onnxruntime, insightface, kornia, OpenCV, Pillow and safetensors
are imported only when used, so importing this package is cheap.

    from moca_model.face import FaceAnalyzer, FaceIdentity, likeness_scores
    analyzer = FaceAnalyzer.load("ComfyUI/models/insightface", pack="antelopev2", provider="auto")
    print(analyzer.report)
    identity = analyzer.encode(images)            # IMAGE [N, H, W, C], paths, PIL, numpy
    identity.save("me.safetensors")
    report = likeness_scores(analyzer, frames, FaceIdentity.load("me.safetensors"))
    print(report.summary())

See ``docs/faces.md`` for where the model files go and what every error message means.
"""
from .analyzer import FUSION_CHOICES, NO_FACE_CHOICES, SELECT_CHOICES, FaceAnalyzer
from .backends import BACKEND_CHOICES
from .detector import Detection
from .errors import (
    FaceBackendError,
    FaceError,
    FaceIdentityFileError,
    FaceIdentityNotFoundError,
    FaceImageNotFoundError,
    FaceInputError,
    FaceNotFoundError,
    FaceOptionError,
    FacePackError,
    FaceProviderError,
)
from .identity import FaceIdentity
from .images import load_images
from .likeness import LikenessReport, likeness_scores
from .packs import DEFAULT_PACK, PACKS, FacePack, expected_files, find_pack
from .providers import PROVIDER_CHOICES
from .quality import FaceQuality

__all__ = [
    "FaceAnalyzer", "FaceIdentity", "FaceQuality", "Detection", "LikenessReport", "likeness_scores",
    "find_pack", "expected_files", "FacePack", "PACKS", "DEFAULT_PACK", "load_images",
    "FaceError", "FaceNotFoundError", "FacePackError", "FaceInputError", "FaceImageNotFoundError",
    "FaceProviderError", "FaceBackendError", "FaceIdentityFileError", "FaceIdentityNotFoundError",
    "FaceOptionError",
    "SELECT_CHOICES", "NO_FACE_CHOICES", "FUSION_CHOICES", "PROVIDER_CHOICES", "BACKEND_CHOICES",
]
