"""``FaceIdentity``: the encoded reference faces, and its small safetensors file.

A saved identity holds everything later runs need (ArcFace embeddings, the aligned 112 crops and the larger
local crops, per-face quality, metadata), so they need no detector. It is the one MoCA identity file format
(``moca-identity``, see ``moca_model.identity``): MoCA Save Identity writes the same file, with face-crop
latents and without the 112 crops. Files of the former ``moca-face-identity`` format still load. Crops are
stored as uint8 to keep the file small (about 0.25 MB per reference at the default 256 px crop). Writes are
atomic (temp file in the same folder, then ``os.replace``) and never overwrite unless asked.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..atomic import atomic_target
from .errors import FaceIdentityFileError, FaceIdentityNotFoundError
from .quality import FaceQuality

FORMAT = "moca-identity"                 # the one identity format (moca_model.identity.IDENTITY_FORMAT)
FORMAT_VERSION = 2
LEGACY_FORMAT = "moca-face-identity"     # version 1, written before the formats were merged: still read
EMBED_DIM = 512
_TENSORS = ("arcface", "crops112", "crops")   # + "embedding" (the fused one), recomputed when absent
_LEGACY_TENSORS = ("embeddings", "embedding", "crops112", "crops")


def fused_embedding(embeddings: torch.Tensor) -> torch.Tensor:
    """The references' mean embedding, re-normalised [512] (what ``FaceIdentity.embedding`` holds)."""
    e = torch.nn.functional.normalize(embeddings.float(), dim=-1).mean(0)
    return e / e.norm().clamp_min(1e-12)


def _uint8(x: torch.Tensor) -> torch.Tensor:
    return (x.detach().float().cpu() * 255.0).round_().clamp_(0, 255).to(torch.uint8).contiguous()


@dataclass
class FaceIdentity:
    """Reference faces encoded for MoCA.

    ``embeddings`` [R, 512] (L2-normalised, one per kept reference), ``embedding`` [512] (their mean,
    re-normalised), ``crops112`` [R, 112, 112, 3] and ``crops`` [R, S, S, 3] (float 0..1, RGB), ``quality``
    (one :class:`FaceQuality` per reference), ``skipped`` (input image indices without a usable face),
    ``dropped`` (references removed as outliers), ``fusion`` ("mean" or "separate": whether consumers should
    use the fused embedding or every reference).
    """

    embeddings: torch.Tensor
    embedding: torch.Tensor
    crops112: torch.Tensor
    crops: torch.Tensor
    quality: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    dropped: list = field(default_factory=list)  # [{"image_index": i, "similarity_to_others": s}]
    fusion: str = "mean"
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        self.validate()

    # ------------------------------------------------------------------ views
    @property
    def num_references(self) -> int:
        return int(self.embeddings.shape[0])

    def __len__(self) -> int:
        return self.num_references

    @property
    def recognizer(self):
        """The recogniser that made the embeddings (``moca_model.provenance.Recognizer``; None for old files)."""
        from ..provenance import Recognizer
        return Recognizer.from_value(self.metadata.get("face_recognizer"), "face identity")

    def arcface(self) -> torch.Tensor:
        """The embeddings to condition on: [1, 512] for fusion "mean", [R, 512] for "separate"."""
        return self.embedding[None] if self.fusion == "mean" else self.embeddings

    def to(self, device=None, dtype=None) -> "FaceIdentity":
        """A copy with tensors on ``device`` (and floating tensors in ``dtype``)."""
        def mv(t):
            return t.to(device=device, dtype=dtype if dtype is not None else t.dtype)
        return FaceIdentity(mv(self.embeddings), mv(self.embedding), mv(self.crops112), mv(self.crops),
                            list(self.quality), list(self.skipped), list(self.dropped), self.fusion,
                            dict(self.metadata))

    def info(self) -> str:
        """Human summary, several lines."""
        m = self.metadata
        lines = [
            f"MoCA face identity: {self.num_references} reference(s), fusion '{self.fusion}', "
            f"pack {m.get('pack', '?')}, crops {self.crops.shape[1]} px"
            + (f", created {m['created']}" if m.get("created") else "")
        ]
        if self.num_references > 1:
            e = self.embeddings.float()
            sims = e @ e.T
            off = sims[~torch.eye(len(e), dtype=torch.bool)]
            lines.append(f"  agreement between references: cosine mean {off.mean():.2f}, min {off.min():.2f}")
        for q in self.quality:
            lines.append("  " + q.short())
        if self.skipped:
            reasons = m.get("skip_reasons", {})
            lines.append("  skipped images (no usable face): " + ", ".join(
                f"{i}" + (f" ({reasons.get(str(i))})" if reasons.get(str(i)) else "") for i in self.skipped))
        if self.dropped:
            lines.append("  dropped as outliers: " + ", ".join(
                f"image {d['image_index']} (sim {d['similarity_to_others']:.2f})" for d in self.dropped))
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (f"FaceIdentity(references={self.num_references}, fusion={self.fusion!r}, "
                f"crop_size={int(self.crops.shape[1])}, skipped={self.skipped}, pack={self.metadata.get('pack')!r})")

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise :class:`FaceIdentityFileError` if shapes or values are inconsistent."""
        problems = []
        e, f, c1, c = self.embeddings, self.embedding, self.crops112, self.crops
        r = e.shape[0] if e.ndim == 2 else -1
        if e.ndim != 2 or e.shape[1] != EMBED_DIM or r < 1:
            problems.append(f"embeddings has shape {list(e.shape)}, expected [R>=1, {EMBED_DIM}]")
        if f.shape != (EMBED_DIM,):
            problems.append(f"embedding has shape {list(f.shape)}, expected [{EMBED_DIM}]")
        if c1.ndim != 4 or c1.shape[0] != r or c1.shape[3] != 3 or c1.shape[1] != c1.shape[2]:
            problems.append(f"crops112 has shape {list(c1.shape)}, expected [{r}, 112, 112, 3]")
        if c.ndim != 4 or c.shape[0] != r or c.shape[3] != 3 or c.shape[1] != c.shape[2]:
            problems.append(f"crops has shape {list(c.shape)}, expected [{r}, S, S, 3]")
        if len(self.quality) != r:
            problems.append(f"{len(self.quality)} quality records for {r} references")
        if not problems and not (torch.isfinite(e).all() and torch.isfinite(f).all()):
            problems.append("embeddings contain NaN or infinity")
        if self.fusion not in ("mean", "separate"):
            problems.append(f"unknown fusion {self.fusion!r}")
        if problems:
            raise FaceIdentityFileError("Inconsistent face identity: " + "; ".join(problems) + ".")

    # ------------------------------------------------------------------ file
    def save(self, path, overwrite: bool = False) -> Path:
        """Write a ``.safetensors`` identity file atomically; refuse to replace one unless ``overwrite``."""
        from safetensors.torch import save

        path = Path(os.path.expanduser(str(path)))
        tensors = {
            "arcface": self.embeddings.detach().float().cpu().contiguous(),
            "embedding": self.embedding.detach().float().cpu().contiguous(),
            "crops112": _uint8(self.crops112),
            "crops": _uint8(self.crops),
        }
        meta = {
            "format": FORMAT,
            "format_version": str(FORMAT_VERSION),
            "fusion": "concat" if self.fusion == "separate" else "mean",     # the identity file's names
            "info": json.dumps({"source": "moca_model.face", "pack": self.metadata.get("pack")}, default=str),
            "quality": json.dumps([q.as_dict() for q in self.quality]),
            "skipped": json.dumps([int(i) for i in self.skipped]),
            "dropped": json.dumps(self.dropped),
            "metadata": json.dumps(self.metadata, default=str),
        }
        from ..provenance import header
        meta.update(header(self.recognizer))
        data = save(tensors, metadata=meta)
        with atomic_target(path, overwrite) as tmp:
            Path(tmp).write_bytes(data)
        return path

    @classmethod
    def load(cls, path, device=None) -> "FaceIdentity":
        """Read an identity file; :class:`FaceIdentityFileError` with the reason if it is not a valid one."""
        from safetensors import safe_open

        path = Path(os.path.expanduser(str(path)))
        if not path.is_file():
            raise FaceIdentityNotFoundError(
                f"Face identity file {path} does not exist"
                + (" (it is a folder)" if path.is_dir() else "") + ". Encode the reference photos and save them first."
            )
        fix = "Re-create it by encoding the reference photos again."
        try:
            with safe_open(str(path), framework="pt", device="cpu") as f:
                meta = f.metadata() or {}
                keys = set(f.keys())
                tensors = {k: f.get_tensor(k) for k in keys if k in _TENSORS + _LEGACY_TENSORS}
        except Exception as e:
            raise FaceIdentityFileError(
                f"{path} is not a readable safetensors file (truncated or corrupt: {type(e).__name__}: {e}). {fix}"
            ) from e
        legacy = meta.get("format") == LEGACY_FORMAT
        if meta.get("format") != FORMAT and not legacy:
            raise FaceIdentityFileError(
                f"{path} is a safetensors file but not a MoCA face identity (format "
                f"{meta.get('format')!r}, tensors: {', '.join(sorted(keys)[:6]) or 'none'}). Did you pick a model "
                f"checkpoint? Choose a file written by the identity save node or FaceIdentity.save()."
            )
        try:
            version = int(meta.get("format_version", "0"))
        except ValueError:
            version = -1
        if version > (1 if legacy else FORMAT_VERSION):
            raise FaceIdentityFileError(
                f"{path} was written by a newer MoCA (identity format {version}, this version reads up to "
                f"{FORMAT_VERSION}). Update ComfyUI-MoCA."
            )
        if version < 1:
            raise FaceIdentityFileError(f"{path} has an invalid identity format version {meta.get('format_version')!r}. {fix}")
        missing = [k for k in (_LEGACY_TENSORS if legacy else _TENSORS) if k not in tensors]
        if missing == ["crops112"] and not legacy:
            raise FaceIdentityFileError(
                f"{path} is a MoCA identity without the 112 px ArcFace crops (MoCA Save Identity writes it so): load "
                "it with moca_model.load_identity, or encode the reference photos with FaceAnalyzer to get a "
                "FaceIdentity.")
        if missing:
            raise FaceIdentityFileError(f"{path} lacks the tensors {', '.join(missing)}. {fix}")
        try:
            quality = [FaceQuality.from_dict(d) for d in json.loads(meta.get("quality", "[]"))]
            skipped = [int(i) for i in json.loads(meta.get("skipped", "[]"))]
            dropped = list(json.loads(meta.get("dropped", "[]")))
            metadata = dict(json.loads(meta.get("metadata", "{}")))
        except (ValueError, TypeError) as e:
            raise FaceIdentityFileError(f"{path} has unreadable metadata ({e}). {fix}") from e

        def img(t):
            return t.float() / 255.0 if t.dtype == torch.uint8 else t.float()

        if legacy:
            embeddings, embedding = tensors["embeddings"].float(), tensors["embedding"].float()
            fusion = meta.get("fusion", "mean")
        else:
            embeddings = tensors["arcface"].float()
            embedding = tensors["embedding"].float() if "embedding" in tensors else \
                fused_embedding(embeddings) if embeddings.ndim == 2 else embeddings.new_zeros(0)
            fusion = "separate" if meta.get("fusion") == "concat" else "mean"
        from ..provenance import HEADER_KEY, Recognizer, notice_unrecorded
        try:
            rec = Recognizer.from_value(meta.get(HEADER_KEY) or metadata.get("face_recognizer"), str(path))
        except ValueError as e:
            raise FaceIdentityFileError(f"{e}. {fix}") from e
        if rec is None:
            notice_unrecorded("identity file", path)
        else:
            metadata["face_recognizer"] = rec.as_dict()
        try:
            ident = cls(embeddings, embedding, img(tensors["crops112"]), img(tensors["crops"]), quality, skipped,
                        dropped, fusion, metadata)
        except FaceIdentityFileError as e:
            raise FaceIdentityFileError(f"{path}: {e} {fix}") from e
        return ident.to(device) if device is not None else ident
