"""MoCAIdentity: the adapter-independent description of a person that identity tokens are made from.

It holds what the IdentityTokenizer takes -- the ArcFace embeddings of R reference faces [R, 512] and the
Wan VAE latents of their aligned crops in model space [R, 16, 1, h, w] -- plus how to fuse them, so the
same identity can drive any adapter (tokens depend on the adapter's weights, the identity does not).
Saved as a small safetensors file, so later runs need neither face detector nor VAE. There is one identity
file format, "moca-identity" version 2, written both by MoCA Save Identity (this class) and by
`moca_model.face.FaceIdentity.save`:
    tensors   "arcface" [R, 512] float32, "face_latent" [R, 16, 1, h, w] (optional), "crops" [R, S, S, 3] uint8
              (optional), "crops112" [R, 112, 112, 3] uint8 and "embedding" [512] (optional: the ArcFace crops and
              the fused embedding, written by FaceIdentity)
    header    "format", "format_version", "fusion" ("mean" / "concat"), "info" (JSON), "face_recognizer" (JSON:
              the recogniser that made "arcface", see moca_model.provenance), and from FaceIdentity
              "quality", "skipped", "dropped", "metadata" (JSON)
Files of the older formats still load: "moca-identity" version 1 (the same tensors) and "moca-face-identity"
version 1 ("embeddings" instead of "arcface").
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .checkpoint import CheckpointError, atomic_save_safetensors, check_header, read_safetensors
from .provenance import Recognizer, from_header, header, notice_unrecorded

IDENTITY_FORMAT = "moca-identity"
IDENTITY_FORMAT_VERSION = 2
LEGACY_FACE_FORMAT = "moca-face-identity"
FUSIONS = ("mean", "concat")


@dataclass(eq=False)
class MoCAIdentity:
    arcface: torch.Tensor | None            # [R, 512] ArcFace embeddings (any norm; the tokenizer L2-normalises)
    face_latent: torch.Tensor | None        # [R, 16, 1, h, w] face-crop latents in model space
    fusion: str = "mean"                    # "mean": average the references' tokens; "concat": keep them all
    crops: torch.Tensor | None = None       # [R, S, S, 3] aligned crops in 0..1 (for looking at; optional)
    info: dict = field(default_factory=dict)
    recognizer: Recognizer | None = None    # which face recogniser made `arcface` (None: unknown, an old file)

    def __post_init__(self):
        if self.fusion not in FUSIONS:
            raise ValueError(f"MoCAIdentity: fusion must be one of {FUSIONS}, not {self.fusion!r}")
        if self.arcface is None and self.face_latent is None:
            raise ValueError("MoCAIdentity needs an ArcFace embedding, a face-crop latent, or both")
        if self.arcface is not None:
            if self.arcface.ndim == 1:
                self.arcface = self.arcface[None]
            if self.arcface.ndim != 2:
                raise ValueError(f"MoCAIdentity: arcface must be [R, 512], got {list(self.arcface.shape)}")
            self.arcface = self.arcface.detach().float().cpu()
        if self.face_latent is not None:
            if self.face_latent.ndim == 4:
                self.face_latent = self.face_latent[:, :, None]
            if self.face_latent.ndim != 5:
                raise ValueError("MoCAIdentity: face_latent must be [R, 16, 1, h, w], "
                                 f"got {list(self.face_latent.shape)}")
            self.face_latent = self.face_latent.detach().float().cpu()
        for name in ("arcface", "face_latent"):
            t = getattr(self, name)
            if t is not None and not torch.isfinite(t).all():
                raise ValueError(f"MoCAIdentity: {name} holds NaN or infinity "
                                 f"({int((~torch.isfinite(t)).sum())} of {t.numel()} values)")
        if self.arcface is not None and self.face_latent is not None and \
                self.arcface.shape[0] != self.face_latent.shape[0]:
            raise ValueError(f"MoCAIdentity: {self.arcface.shape[0]} ArcFace embeddings but "
                             f"{self.face_latent.shape[0]} face latents; give one of each per reference")

    @property
    def num_references(self) -> int:
        return int((self.arcface if self.arcface is not None else self.face_latent).shape[0])

    def mean_embedding(self) -> torch.Tensor | None:
        """The references' L2-normalised mean ArcFace embedding [512] (the likeness reference)."""
        if self.arcface is None:
            return None
        e = torch.nn.functional.normalize(self.arcface.float(), dim=-1).mean(0)
        return e / e.norm().clamp_min(1e-12)

    def tokens(self, tokenizer, device=None) -> torch.Tensor:
        """Identity tokens [1, M, D_id] from an adapter's IdentityTokenizer."""
        arc = None if self.arcface is None else self.arcface[None].to(device)
        lat = None if self.face_latent is None else self.face_latent[None].to(device)
        return tokenizer(arcface=arc, face_latent=lat, fusion=self.fusion)

    def summary(self) -> str:
        parts = [f"{self.num_references} reference(s), fusion {self.fusion}"]
        parts.append("ArcFace: yes" if self.arcface is not None else "ArcFace: no")
        if self.face_latent is not None:
            parts.append(f"face latent {list(self.face_latent.shape[-2:])}")
        else:
            parts.append("face latent: none (global tokens only)")
        if self.arcface is not None:
            parts.append(f"recogniser {self.recognizer.label()}" if self.recognizer else "recogniser not recorded")
        return ", ".join(parts)

    # ------------------------------------------------------------------ files
    def save(self, path, overwrite: bool = False, metadata: dict | None = None) -> Path:
        tensors = {}
        if self.arcface is not None:
            tensors["arcface"] = self.arcface
        if self.face_latent is not None:
            tensors["face_latent"] = self.face_latent
        if self.crops is not None:
            tensors["crops"] = (self.crops.clamp(0, 1) * 255).round().to(torch.uint8)
        meta = dict(metadata or {})
        meta.update({"format": IDENTITY_FORMAT, "format_version": str(IDENTITY_FORMAT_VERSION),
                     "fusion": self.fusion, "info": json.dumps(self.info, default=str)})
        if self.arcface is not None:
            meta.update(header(self.recognizer))
        return atomic_save_safetensors(tensors, path, meta, overwrite=overwrite)

    @classmethod
    def load(cls, path) -> "MoCAIdentity":
        """Any identity file: this format (versions 1 and 2, whoever wrote it) or a former face identity file."""
        tensors, meta = read_safetensors(path)
        name = Path(path).name
        if meta.get("format") == LEGACY_FACE_FORMAT:
            check_header(meta, name, LEGACY_FACE_FORMAT, 1, "MoCA face identity file", "")
            arcface, fusion = tensors.get("embeddings"), ("concat" if meta.get("fusion") == "separate" else "mean")
        else:
            check_header(meta, name, IDENTITY_FORMAT, IDENTITY_FORMAT_VERSION, "MoCA identity file",
                         "identity files are written by MoCA Save Identity")
            arcface, fusion = tensors.get("arcface"), meta.get("fusion", "mean")
        crops = tensors.get("crops")
        try:
            recognizer = from_header(meta, name)
        except ValueError as e:
            raise CheckpointError(str(e)) from e
        if recognizer is None and arcface is not None:
            notice_unrecorded("identity file", path)
        info = {}
        for key in ("info", "quality", "skipped", "dropped", "metadata"):
            if key in meta:
                try:
                    value = json.loads(meta[key])
                except ValueError:
                    continue
                if key == "info" and isinstance(value, dict):
                    info.update(value)
                else:
                    info[key] = value
        try:
            return cls(arcface, tensors.get("face_latent"), fusion,
                       None if crops is None else crops.float() / 255.0, info, recognizer)
        except ValueError as e:
            raise CheckpointError(f"{name}: {e}") from e


def load_identity(path) -> MoCAIdentity:
    """Read any identity file (see the module docstring); the same as MoCAIdentity.load."""
    return MoCAIdentity.load(path)
