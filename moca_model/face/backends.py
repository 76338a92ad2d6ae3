"""The two ways to run a pack's ONNX files: insightface's model_zoo classes, or onnxruntime directly.

Both expose the same three calls (detect, embed, describe) and give the same numbers: the onnxruntime
path re-implements insightface's SCRFD decoding and ArcFace normalisation (see ``detector.py`` and
``recognizer.py``). ``auto`` prefers insightface when it imports cleanly (0.7.3 or 2.x) and otherwise
falls back with a one-line notice - face encoding never makes the node pack fail to load.
"""
from __future__ import annotations

import logging

import numpy as np

from . import providers as prov
from .detector import SCRFDOnnx
from .errors import FaceBackendError, FaceError, FaceOptionError, FacePackError
from .packs import FacePack
from .recognizer import ArcFaceOnnx

log = logging.getLogger("moca.face")
BACKEND_CHOICES = ("auto", "insightface", "onnxruntime")
_notice_logged: set = set()


def import_insightface():
    """(insightface module, None) or (None, one-line reason)."""
    try:
        import insightface
        from insightface import model_zoo  # noqa: F401  (the part we use)
    except ModuleNotFoundError as e:
        if e.name and e.name.split(".")[0] == "insightface":
            return None, "insightface is not installed"
        return None, f"insightface failed to import (missing {e.name or e})"
    except Exception as e:  # NumPy 2 ABI errors, broken builds, DLL errors ...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "numpy.dtype size changed" in msg or "numpy" in msg.lower() and "binary incompatib" in msg.lower():
            msg += " - an insightface build compiled for NumPy 1 under NumPy 2"
        return None, f"insightface failed to import ({type(e).__name__}: {msg[:200]})"
    return insightface, None


def _fixed_square(session):
    shape = list(session.get_inputs()[0].shape)
    if len(shape) == 4 and isinstance(shape[2], int) and shape[2] > 0 and shape[2] == shape[3]:
        return int(shape[2])
    return None


class OnnxRuntimeBackend:
    """The pack's ONNX files run directly with onnxruntime."""

    name = "onnxruntime"

    def __init__(self, pack: FacePack, provider: str = "auto"):
        ort = prov.import_onnxruntime()

        def factory(path, providers):
            so = ort.SessionOptions()
            if providers[0] == "DmlExecutionProvider":  # DirectML requirements
                so.enable_mem_pattern = False
                so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            s = ort.InferenceSession(path, sess_options=so, providers=providers)
            return s, s

        det = prov.start(pack.detector, provider, factory, fixed_shape=False)
        rec = prov.start(pack.recognizer, provider, factory, fixed_shape=True)
        self.det = SCRFDOnnx(det.session, str(pack.detector))
        self.rec = ArcFaceOnnx(rec.session, str(pack.recognizer))
        self.det_provider, self.rec_provider = det.active, rec.active
        self.notes = det.notes + [n for n in rec.notes if n not in det.notes]
        self.version = f"onnxruntime {getattr(ort, '__version__', '?')}"
        self.det_fixed_size = self.det.fixed_size
        self.rec_size = self.rec.input_size
        self.input_mean, self.input_std = self.rec.input_mean, self.rec.input_std

    def detect(self, img_rgb: np.ndarray, size: int, threshold: float):
        return self.det.detect(img_rgb, size, threshold)

    def embed(self, blob: np.ndarray) -> np.ndarray:
        return self.rec.forward(blob)


class InsightFaceBackend:
    """The pack's ONNX files run through insightface's ``model_zoo`` classes (0.7.3 and 2.x)."""

    name = "insightface"

    def __init__(self, pack: FacePack, provider: str = "auto", module=None):
        insightface = module or import_insightface()[0]
        if insightface is None:
            raise FaceBackendError(import_insightface()[1])
        from insightface import model_zoo

        def factory(path, providers):
            m = model_zoo.get_model(path, providers=providers)
            if m is None:
                raise FaceBackendError(f"insightface could not identify {path} as a detector or recogniser")
            return m, m.session

        det = prov.start(pack.detector, provider, factory, fixed_shape=False)
        rec = prov.start(pack.recognizer, provider, factory, fixed_shape=True)
        self.det, self.rec = det.model, rec.model
        if not hasattr(self.det, "detect") or not hasattr(self.rec, "forward"):
            raise FaceBackendError(
                f"insightface routed {pack.detector.name} / {pack.recognizer.name} to unexpected model classes "
                f"({type(self.det).__name__}, {type(self.rec).__name__})."
            )
        self.det_provider, self.rec_provider = det.active, rec.active
        self.notes = det.notes + [n for n in rec.notes if n not in det.notes]
        self.version = f"insightface {getattr(insightface, '__version__', '?')}"
        self.det_fixed_size = _fixed_square(self.det.session)
        shape = list(self.rec.session.get_inputs()[0].shape)
        self.rec_size = int(shape[2])
        self.rec_fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self.input_mean, self.input_std = float(self.rec.input_mean), float(self.rec.input_std)

    def detect(self, img_rgb: np.ndarray, size: int, threshold: float):
        self.det.det_thresh = float(threshold)
        bgr = np.ascontiguousarray(img_rgb[..., ::-1])
        dets, kps = self.det.detect(bgr, input_size=(size, size), max_num=0)
        dets = np.asarray(dets, np.float32).reshape(-1, 5)
        kps = np.zeros((0, 5, 2), np.float32) if kps is None else np.asarray(kps, np.float32).reshape(-1, 5, 2)
        return dets, kps

    def embed(self, blob: np.ndarray) -> np.ndarray:
        if self.rec_fixed_batch == 1 and blob.shape[0] != 1:
            return np.concatenate([np.asarray(self.rec.forward(blob[i:i + 1])) for i in range(blob.shape[0])])
        return np.asarray(self.rec.forward(blob))


def apply_contract(be, pack: FacePack):
    """Check the started recogniser against its pack's manifest (input size, embedding size) and apply the
    manifest's normalisation, if it gives one, to either backend."""
    spec = pack.spec
    if spec is None:
        return be
    where = f"the {pack.name} manifest ({spec.manifest})" if spec.manifest else f"the built-in {pack.name} pack"
    if be.rec_size != spec.input_size:
        raise FacePackError(f"{pack.recognizer} takes {be.rec_size} px crops, but {where} says input_size "
                            f"{spec.input_size}. Fix input_size in {spec.manifest or 'the manifest'}.")
    out = list(be.rec.session.get_outputs()[0].shape)
    if out and isinstance(out[-1], int) and out[-1] != spec.embedding_size:
        raise FacePackError(f"{pack.recognizer} returns {out[-1]}-d embeddings, but {where} says "
                            f"{spec.embedding_size} (MoCA's identity tokenizer takes 512). Use a 512-d recogniser.")
    if spec.input_mean is not None:
        be.input_mean, be.input_std = float(spec.input_mean), float(spec.input_std)
        be.rec.input_mean, be.rec.input_std = be.input_mean, be.input_std
    return be


def open_backend(pack: FacePack, provider: str = "auto", backend: str = "auto"):
    """(backend object, notice or None). ``backend``: auto | insightface | onnxruntime. The recogniser is
    checked against the pack's contract (``apply_contract``)."""
    be, notice = _open_backend(pack, provider, backend)
    return apply_contract(be, pack), notice


def _open_backend(pack: FacePack, provider: str, backend: str):
    b = str(backend or "auto").strip().lower()
    if b not in BACKEND_CHOICES:
        raise FaceOptionError(f"Unknown face backend {backend!r}; choose one of {', '.join(BACKEND_CHOICES)}.")
    if b == "onnxruntime":
        return OnnxRuntimeBackend(pack, provider), None
    module, reason = import_insightface()
    if module is not None:
        try:
            return InsightFaceBackend(pack, provider, module), None
        except FaceError:
            raise  # pack / provider problems: the onnxruntime path would hit them too
        except Exception as e:  # an insightface release that no longer fits: never the reason faces fail
            if b == "insightface":
                raise FaceBackendError(
                    f"insightface {getattr(module, '__version__', '?')} could not load the {pack.name} pack "
                    f"({type(e).__name__}: {e}). Choose backend 'auto' or 'onnxruntime'.") from e
            reason = (f"insightface {getattr(module, '__version__', '?')} could not load the pack "
                      f"({type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''})")
    if b == "insightface":
        raise FaceBackendError(
            f"backend='insightface' was requested but {reason}. Choose backend 'auto' or 'onnxruntime' to run "
            f"the same {pack.name} files without it, or repair insightface (`python -m pip install -U "
            f"insightface`; with NumPy 2 it needs a build made for NumPy 2)."
        )
    notice = f"{reason}; running the {pack.name} ONNX files with onnxruntime directly (same results)"
    if notice not in _notice_logged:
        _notice_logged.add(notice)
        (log.info if "not installed" in reason else log.warning)("MoCA face: %s", notice)
    return OnnxRuntimeBackend(pack, provider), notice
