"""Exceptions of the face pipeline.

Every error is a subclass of a standard exception (``ValueError``, ``FileNotFoundError``, ``ImportError``)
so callers that know nothing about MoCA still catch them, and of :class:`FaceError` so callers that do can
catch them all. Messages say what was wrong, where (image index, folder, file) and how to fix it;
``docs/faces.md`` lists them all.
"""
from __future__ import annotations


class FaceError(Exception):
    """Base class of every error raised by ``moca_model.face``."""


class FacePackError(FaceError, FileNotFoundError):
    """An insightface model pack is missing, incomplete or unreadable."""


class FaceNotFoundError(FaceError, ValueError):
    """No usable face in an image (or in every image, with ``on_no_face="skip"``)."""


class FaceInputError(FaceError, ValueError):
    """An input image has an unsupported type, shape, dtype or cannot be decoded."""


class FaceImageNotFoundError(FaceError, FileNotFoundError):
    """An input image path does not exist."""


class FaceProviderError(FaceError, ValueError):
    """An explicitly requested onnxruntime execution provider is unavailable or failed to start."""


class FaceBackendError(FaceError, ImportError):
    """``backend="insightface"`` was requested but the insightface package cannot be used."""


class FaceIdentityFileError(FaceError, ValueError):
    """An identity file is corrupt, truncated, of another kind, or from a newer format version."""


class FaceIdentityNotFoundError(FaceError, FileNotFoundError):
    """An identity file path does not exist."""


class FaceOptionError(FaceError, ValueError):
    """An option has a value outside its allowed set (``select``, ``on_no_face``, ``fusion``, ...)."""
