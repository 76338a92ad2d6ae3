"""``FaceAnalyzer``: detect, align and embed faces with an insightface pack -> :class:`FaceIdentity`."""
from __future__ import annotations

import time
from datetime import datetime, timezone

import numpy as np
import torch

from . import align as A
from .backends import open_backend
from .detector import DEFAULT_DET_THRESH, Detection, fallback_sizes
from .errors import FaceNotFoundError, FaceOptionError
from .identity import FaceIdentity
from .images import LoadedImage, load_images
from ..provenance import Recognizer
from .packs import DEFAULT_PACK, find_pack
from .providers import describe, warn_duplicate_onnxruntime_once
from .quality import FaceQuality, eye_distance, pose_from_landmarks, sharpness, warnings_for
from .recognizer import crops_to_blob
from .threads import single_thread

SELECT_CHOICES = ("largest", "index", "left_to_right")
NO_FACE_CHOICES = ("error", "skip")
FUSION_CHOICES = ("mean", "separate")
DEFAULT_CROP_SIZE = 256
DEFAULT_OUTLIER_THRESHOLD = 0.2


def check_det_size(det_size) -> int:
    """SCRFD needs a multiple of its largest stride (32)."""
    if int(det_size) < 64 or int(det_size) % 32:
        raise FaceOptionError(f"det_size={det_size} must be a multiple of 32 and at least 64 (640 is usual).")
    return int(det_size)


def _check(name: str, value: str, choices) -> str:
    v = str(value).strip().lower()
    if v not in choices:
        raise FaceOptionError(f"{name}={value!r} is not one of {', '.join(choices)}.")
    return v


def order_faces(faces: list, select: str) -> list:
    """Faces in the order ``index`` counts in: by size (largest first), left to right, or detector order
    (highest score first) for ``select="index"``."""
    if select == "largest":
        return sorted(faces, key=lambda f: -f.area)
    if select == "left_to_right":
        return sorted(faces, key=lambda f: f.center[0])
    return list(faces)


def l2n(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)


class FaceAnalyzer:
    """Face detection + alignment + ArcFace embedding on an insightface pack.

    Build with :meth:`load`; ``report`` is a one-line description of what runs where.
    """

    def __init__(self, backend, pack, det_size: int = 640, det_thresh: float = DEFAULT_DET_THRESH,
                 device="cpu", notice: str | None = None, duplicate_ort: str | None = None):
        self.backend, self.pack = backend, pack
        self.det_size, self.det_thresh = int(det_size), float(det_thresh)
        self.device = torch.device(device)
        self.notice = notice
        # which recogniser makes this analyzer's embeddings (moca_model.provenance): recorded in identity files
        self.recognizer = Recognizer.of_file(pack.name, pack.recognizer)
        self.last_timing: dict = {}
        extra = [n for n in backend.notes]
        if duplicate_ort:
            extra.append("several onnxruntime packages installed, see the warning")
        if notice:
            extra.append(notice.split(";")[0])
        det_p, rec_p = describe(backend.det_provider), describe(backend.rec_provider)
        where = f"on {det_p}" if det_p == rec_p else f"detector on {det_p}, recogniser on {rec_p}"
        self.report = (f"MoCA face: {pack.name} from {pack.folder} via {backend.version} {where}"
                       + (f" ({'; '.join(extra)})" if extra else ""))

    @classmethod
    def load(cls, models_root, pack: str = DEFAULT_PACK, provider: str = "auto", det_size: int = 640,
             det_thresh: float = DEFAULT_DET_THRESH, backend: str = "auto", device="cpu") -> "FaceAnalyzer":
        """Find ``pack`` under ``models_root`` (e.g. ComfyUI's ``models/insightface``) and start its models.

        provider: auto | cuda | cpu | rocm | directml | coreml | openvino | tensorrt (or a full ORT name).
        backend: auto (insightface when it imports, else onnxruntime) | insightface | onnxruntime.
        """
        check_det_size(det_size)
        if not 0.0 < float(det_thresh) < 1.0:
            raise FaceOptionError(f"det_thresh={det_thresh} must be between 0 and 1 (0.5 is usual).")
        found = find_pack(models_root, pack)
        dup = warn_duplicate_onnxruntime_once()
        be, notice = open_backend(found, provider, backend)
        return cls(be, found, det_size, det_thresh, device, notice, dup)

    def __repr__(self) -> str:
        return f"FaceAnalyzer({self.report})"

    # ------------------------------------------------------------------ detection
    def detect_loaded(self, img: LoadedImage, det_size: int | None = None, det_thresh: float | None = None,
                      fallback: bool = True) -> tuple:
        """(faces sorted by score, the sizes tried) for one loaded image."""
        size = check_det_size(det_size or self.det_size)
        thr = float(self.det_thresh if det_thresh is None else det_thresh)
        if not 0.0 < thr < 1.0:
            raise FaceOptionError(f"det_thresh={det_thresh} must be between 0 and 1 (0.5 is usual).")
        sizes = fallback_sizes(size) if fallback else [size]
        if self.backend.det_fixed_size:
            sizes = [self.backend.det_fixed_size]
        u8 = img.uint8()
        tried = []
        for s in sizes:
            tried.append(s)
            dets, kps = self.backend.detect(u8, s, thr)
            if len(dets):
                return [Detection(d[:4].copy(), float(d[4]), k.copy(), s) for d, k in zip(dets, kps)], tried
        return [], tried

    def detect(self, image, det_size: int | None = None, det_thresh: float | None = None,
               fallback: bool = True) -> list:
        """Faces (:class:`Detection`, highest score first) in one image (any accepted input type)."""
        return self.detect_loaded(load_images(image)[0], det_size, det_thresh, fallback)[0]

    # ------------------------------------------------------------------ embedding
    def embed(self, crops112: torch.Tensor) -> torch.Tensor:
        """Aligned ArcFace crops [R, 112, 112, 3] float 0..1 -> L2-normalised embeddings [R, 512] float32."""
        if crops112.shape[0] == 0:
            return torch.zeros(0, 512)
        feats = self.backend.embed(crops_to_blob(crops112))
        return l2n(torch.from_numpy(np.asarray(feats, np.float32)).reshape(crops112.shape[0], -1))

    def align(self, image: torch.Tensor, kps, crop_size: int = DEFAULT_CROP_SIZE) -> tuple:
        """(crops112 [F, 112, 112, 3], local crops [F, S, S, 3]) of the faces with landmarks kps [F, 5, 2].

        image: [H, W, 3] float 0..1 or uint8 (``LoadedImage.data``)."""
        img = image.to(self.device)
        c112, _, _ = A.align_faces(img, kps, self.backend.rec_size)
        loc, _, _ = A.align_faces(img, kps, crop_size, A.LOCAL_MARGIN, A.LOCAL_CENTER)
        return c112.cpu(), loc.cpu()

    # ------------------------------------------------------------------ references -> identity
    def encode(self, images, select: str = "largest", index: int = 0, on_no_face: str = "error",
               fusion: str = "mean", drop_outliers: bool = False, crop_size: int = DEFAULT_CROP_SIZE,
               outlier_threshold: float = DEFAULT_OUTLIER_THRESHOLD, det_size: int | None = None,
               det_thresh: float | None = None) -> FaceIdentity:
        """Encode reference photos into a :class:`FaceIdentity`.

        select: which face of each image - ``largest`` (default; ``index`` counts down by size),
        ``left_to_right`` (``index`` counts from the left), ``index`` (``index`` in detector order, most
        confident first). on_no_face: ``error`` (default) or ``skip`` (listed in ``.skipped``; all skipped is
        an error). fusion: ``mean`` (one re-normalised mean embedding) or ``separate`` (every reference is
        kept for the consumer). drop_outliers: with 3+ references, drop those whose cosine to the mean of
        the others is more than ``outlier_threshold`` below the median.
        """
        select = _check("select", select, SELECT_CHOICES)
        on_no_face = _check("on_no_face", on_no_face, NO_FACE_CHOICES)
        fusion = _check("fusion", fusion, FUSION_CHOICES)
        index = int(index)
        if index < 0:
            raise FaceOptionError(f"index={index} must be 0 or more (0 is the first face).")
        crop_size = int(crop_size)
        if not 64 <= crop_size <= 1024:
            raise FaceOptionError(f"crop_size={crop_size} must be between 64 and 1024 (256 is usual).")
        t0 = time.perf_counter()
        loaded = load_images(images)
        t_load = time.perf_counter()
        chosen: list = []  # (LoadedImage, Detection)
        skipped: list = []
        reasons: dict = {}
        for img in loaded:
            faces, tried = self.detect_loaded(img, det_size, det_thresh)
            if not faces:
                thr = self.det_thresh if det_thresh is None else det_thresh
                sizes = f"detection sizes {', '.join(map(str, tried))} with score threshold {thr:g}"
                why = f"no face found at {sizes}"
                msg = f"No face found in image {img.index} ({_src(img)}; {img.size[0]}x{img.size[1]}) at {sizes}."
                reason = "no face"
            else:
                ordered = order_faces(faces, select)
                if index < len(ordered):
                    chosen.append((img, ordered[index]))
                    continue
                order = ('largest first' if select == 'largest' else 'from the left' if select == 'left_to_right'
                         else 'most confident first')
                why = f"{len(faces)} face(s) but index {index} was asked (faces are counted from 0, {order})"
                msg = f"Image {img.index} ({_src(img)}) has {why}."
                reason = f"{len(faces)} face(s), index {index}"
            if on_no_face == "error":
                err = FaceNotFoundError(
                    msg + " Use a larger, frontal, well-lit crop of the face (the face about a third of the "
                    "picture or more), lower det_thresh, or set on_no_face='skip' to leave this image out."
                )
                err.detail = why          # what went wrong, without the advice (callers add their own)
                raise err
            skipped.append(img.index)
            reasons[str(img.index)] = reason
        if not chosen:
            raise FaceNotFoundError(
                f"No usable face in any of the {len(loaded)} image(s) (all skipped: "
                f"{', '.join(f'{i} ({reasons[str(i)]})' for i in skipped)}). Use larger, frontal, well-lit "
                f"face photos, or lower det_thresh."
            )
        t_det = time.perf_counter()

        c112, loc, quality = [], [], []
        with single_thread(self.device):  # many small tensors: OpenMP only adds waiting
            for img, face in chosen:
                kps = torch.from_numpy(face.kps)[None]
                a, b = self.align(img.data, kps, crop_size)
                c112.append(a)
                loc.append(b)
                yaw, pitch, roll = pose_from_landmarks(kps)[0].tolist()
                quality.append(FaceQuality(
                    image_index=img.index, det_score=round(face.score, 4),
                    box=[round(float(v), 2) for v in face.box],
                    kps=[[round(float(x), 2), round(float(y), 2)] for x, y in face.kps],
                    face_px=round(float(eye_distance(kps)[0]) / img.scale, 1), yaw=round(yaw, 1),
                    pitch=round(pitch, 1), roll=round(roll, 1), sharpness=0.0, det_size=face.det_size))
            crops112, crops = torch.cat(c112), torch.cat(loc)
            for q, s in zip(quality, sharpness(crops112).tolist()):
                q.sharpness = round(float(s), 1)
        t_align = time.perf_counter()
        emb = self.embed(crops112)
        t_emb = time.perf_counter()

        keep = torch.ones(len(emb), dtype=torch.bool)
        dropped = []
        if len(emb) >= 2:
            total = emb.sum(0, keepdim=True)
            loo = (l2n(total - emb) * emb).sum(1)  # cosine of each reference to the mean of the others
            for q, s in zip(quality, loo.tolist()):
                q.similarity_to_others = round(float(s), 4)
            if drop_outliers and len(emb) >= 3:
                med = float(loo.median())
                bad = (loo < med - float(outlier_threshold)).nonzero().flatten().tolist()
                bad = sorted(bad, key=lambda i: float(loo[i]))[: (len(emb) - 1) // 2]  # keep a majority
                for i in bad:
                    keep[i] = False
                    dropped.append({"image_index": quality[i].image_index,
                                    "similarity_to_others": round(float(loo[i]), 4)})
        for q in quality:
            q.warnings = warnings_for(q)
        idx = keep.nonzero().flatten()
        emb, crops112, crops = emb[idx], crops112[idx], crops[idx]
        quality = [q for q, k in zip(quality, keep.tolist()) if k]
        fused = l2n(emb.mean(0))
        self.last_timing = {"load": t_load - t0, "detect": t_det - t_load, "align": t_align - t_det,
                            "embed": t_emb - t_align, "total": time.perf_counter() - t0}
        meta = {
            "pack": self.pack.name, "recognizer": self.pack.recognizer.name, "detector": self.pack.detector.name,
            "face_recognizer": self.recognizer.as_dict(),
            "backend": self.backend.version, "det_provider": self.backend.det_provider,
            "rec_provider": self.backend.rec_provider, "det_size": int(det_size or self.det_size),
            "det_thresh": float(self.det_thresh if det_thresh is None else det_thresh), "select": select,
            "index": index, "on_no_face": on_no_face, "drop_outliers": bool(drop_outliers),
            "crop_size": crop_size, "local_margin": A.LOCAL_MARGIN, "local_center": list(A.LOCAL_CENTER),
            "arcface_input": {"mean": self.backend.input_mean, "std": self.backend.input_std, "order": "RGB"},
            "n_images": len(loaded), "skip_reasons": reasons,
            "sources": [_src(img) for img, _ in chosen],
            "image_notes": {str(img.index): img.notes for img in loaded if img.notes},
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        return FaceIdentity(emb, fused, crops112, crops, quality, skipped, dropped, fusion, meta)


def _src(img: LoadedImage) -> str:
    s = img.source
    return s if len(s) <= 60 else "..." + s[-57:]
