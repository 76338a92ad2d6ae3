"""Finding and validating insightface model packs on disk (never downloads anything).

A pack is a folder of ONNX files. ComfyUI keeps them in ``ComfyUI/models/insightface/models/<pack>/``
(the folder PuLID, InstantID and IPAdapter FaceID already use); the pack zip often unpacks one level
deeper, as ``<pack>/<pack>/``, and that layout is accepted too. Only the detector and the recogniser are
required; the other files of a pack (landmarks, gender/age) are listed but not used.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import FaceOptionError, FacePackError


@dataclass(frozen=True)
class PackSpec:
    """The files of one insightface pack."""

    name: str
    detector: str  # SCRFD with 5 keypoints
    recognizer: str  # ArcFace, 112x112 -> 512
    optional: tuple[str, ...] = ()

    @property
    def required(self) -> tuple[str, str]:
        return (self.detector, self.recognizer)

    @property
    def files(self) -> tuple[str, ...]:
        return self.required + self.optional


PACKS: dict[str, PackSpec] = {
    "antelopev2": PackSpec(
        "antelopev2", "scrfd_10g_bnkps.onnx", "glintr100.onnx",
        ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx"),
    ),
    "buffalo_l": PackSpec(
        "buffalo_l", "det_10g.onnx", "w600k_r50.onnx",
        ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx"),
    ),
    # the toy world's pack (toy_models/insightface/models/toyface, trained by moca_model.toy.face_train)
    "toyface": PackSpec("toyface", "det_toy.onnx", "rec_toy.onnx"),
}
DEFAULT_PACK = "antelopev2"


@dataclass(frozen=True)
class FacePack:
    """A pack found on disk: the folder and the paths of the files MoCA uses."""

    name: str
    folder: Path
    detector: Path
    recognizer: Path
    optional: dict = field(default_factory=dict)  # file name -> Path, the optional files present

    @property
    def spec(self) -> PackSpec:
        return PACKS[self.name]


def pack_spec(pack: str) -> PackSpec:
    """The :class:`PackSpec` of ``pack``; a clear error for an unknown name."""
    key = str(pack).strip()
    if key not in PACKS:
        raise FaceOptionError(
            f"Unknown face model pack {pack!r}. Supported packs: {', '.join(PACKS)} "
            f"(antelopev2 is the default and the one MoCA identities are meant for)."
        )
    return PACKS[key]


def expected_files(pack: str = DEFAULT_PACK) -> tuple[str, ...]:
    """All ``.onnx`` file names of a pack, required ones first."""
    return pack_spec(pack).files


def candidate_folders(models_root, pack: str = DEFAULT_PACK) -> list[Path]:
    """Folders searched for ``pack``, in order of preference.

    ``models_root`` is the insightface root (``ComfyUI/models/insightface``); its ``models`` subfolder,
    or the pack folder itself, are accepted too.
    """
    root = Path(os.path.expanduser(str(models_root)))
    out = [
        root / "models" / pack,
        root / "models" / pack / pack,
        root / pack,
        root / pack / pack,
    ]
    if root.name == pack:
        out += [root, root / pack]
    return list(dict.fromkeys(out))


def file_problem(path: Path) -> str | None:
    """Why ``path`` cannot be an ONNX model (None when it looks fine)."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError as e:
        return f"cannot be read ({e.strerror or e})"
    if size == 0:
        return "is empty (0 bytes): an interrupted download or copy"
    if head.startswith(b"version https://git-lfs"):
        return "is a Git LFS pointer, not the model: download the real file (git lfs pull, or the zip)"
    low = head.lstrip().lower()
    if low.startswith(b"<!doctype html") or low.startswith(b"<html"):
        return "is an HTML page (a failed download), not the model"
    return None


def _describe(spec: PackSpec) -> str:
    return (
        f"{spec.detector} (face detector, required), {spec.recognizer} (ArcFace recogniser, required)"
        + (f"; optional, not used by MoCA: {', '.join(spec.optional)}" if spec.optional else "")
    )


def find_pack(models_root, pack: str = DEFAULT_PACK) -> FacePack:
    """Locate ``pack`` under ``models_root`` and check its required files.

    Raises :class:`FacePackError` naming the exact folder and the expected ``.onnx`` files when the pack is
    missing, incomplete, or holds files that cannot be models (empty, Git LFS pointers, HTML pages).
    """
    spec = pack_spec(pack)
    root = Path(os.path.expanduser(str(models_root)))
    preferred = root / "models" / spec.name
    if root.name == spec.name:
        preferred = root
    fix_path = preferred / spec.recognizer
    if not root.is_dir():
        raise FacePackError(
            f"Face models folder {root} does not exist. Put the {spec.name} pack in "
            f"{preferred}{os.sep} so that {fix_path} exists. Expected files: {_describe(spec)}. "
            f"MoCA never downloads models."
        )
    best: tuple[int, Path, list[str], list[str]] | None = None  # (score, folder, missing, bad)
    zip_name = f"{spec.name}.zip"
    zips = [p for p in dict.fromkeys([root / "models" / zip_name, root / zip_name] + [
        f / zip_name for f in candidate_folders(root, spec.name)]) if p.is_file()]
    for folder in candidate_folders(root, spec.name):
        if not folder.is_dir():
            continue
        missing = [f for f in spec.required if not (folder / f).is_file()]
        bad = []
        for f in spec.required:
            if f not in missing:
                problem = file_problem(folder / f)
                if problem:
                    bad.append(f"{f} {problem}")
        if not missing and not bad:
            optional = {f: folder / f for f in spec.optional if (folder / f).is_file()}
            return FacePack(spec.name, folder, folder / spec.detector, folder / spec.recognizer, optional)
        score = 2 * (len(spec.required) - len(missing)) - len(bad) + (1 if any(folder.glob("*.onnx")) else 0)
        if best is None or score > best[0]:
            best = (score, folder, missing, bad)

    looked = ", ".join(str(p) for p in candidate_folders(root, spec.name))
    zip_hint = f" Found {zips[0]}: unzip it there." if zips else ""
    if best is None or not any(best[1].glob("*.onnx")):
        raise FacePackError(
            f"Face model pack '{spec.name}' not found. Put its files in {preferred}{os.sep} "
            f"(a nested {preferred / spec.name}{os.sep} also works). Expected files: {_describe(spec)}. "
            f"Looked in: {looked}.{zip_hint} MoCA never downloads models; the {spec.name} pack is the "
            f"one PuLID / InstantID use, so an existing copy can be reused."
        )
    _, folder, missing, bad = best
    present = sorted(p.name for p in folder.glob("*.onnx"))
    parts = []
    if missing:
        parts.append("missing " + ", ".join(missing))
    if bad:
        parts.append("; ".join(bad))
    other = [n for n in present if n not in spec.files]
    other_hint = ""
    if other:
        owner = [p.name for p in PACKS.values() if p.name != spec.name and p.detector in other]
        other_hint = (f" The folder holds {', '.join(other)}"
                      + (f", which belong to the {owner[0]} pack (choose pack='{owner[0]}' instead)" if owner else "")
                      + ".")
    raise FacePackError(
        f"Face model pack '{spec.name}' in {folder} is incomplete: {'; '.join(parts)}. "
        f"Present .onnx files: {', '.join(present) or 'none'}. Expected files: {_describe(spec)}. "
        f"Copy the missing files into {folder}{os.sep}.{other_hint}{zip_hint} MoCA never downloads models."
    )
