"""Finding and validating insightface model packs on disk (never downloads anything).

A pack is a folder of ONNX files. ComfyUI keeps them in ``ComfyUI/models/insightface/models/<pack>/``
(the folder PuLID, InstantID and IPAdapter FaceID already use); the pack zip often unpacks one level
deeper, as ``<pack>/<pack>/``, and that layout is accepted too. Only the detector and the recogniser are
required; the other files of a pack (landmarks, gender/age) are listed but not used.

Packs are described by manifests: antelopev2, buffalo_l and the toy world's toyface are built in, and any
other pack is registered by a ``moca_pack.json`` in its folder (a manifest there also overrides a built-in):

    {"format": "moca-face-pack", "version": 1, "name": "myface",
     "detector": {"file": "det.onnx", "type": "scrfd"},
     "recognizer": {"file": "rec.onnx", "input_size": 112, "embedding_size": 512,
                    "input_mean": 127.5, "input_std": 127.5},
     "licence": "...", "source": "..."}

The detector follows insightface's SCRFD contract (boxes, scores, 5 landmarks); the recogniser takes aligned
RGB crops [N, 3, S, S] (S a multiple of 112) normalised as (x - input_mean) / input_std (both omitted = the
insightface rule, see recognizer.py) and returns [N, 512] embeddings (MoCA's identity tokenizer takes 512).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from .errors import FaceOptionError, FacePackError

MANIFEST = "moca_pack.json"
MANIFEST_FORMAT = "moca-face-pack"
EMBED_DIM = 512


@dataclass(frozen=True)
class PackSpec:
    """The files of one face pack and its recogniser's contract."""

    name: str
    detector: str  # SCRFD with 5 keypoints
    recognizer: str  # ArcFace-style, [N, 3, S, S] -> [N, 512]
    optional: tuple[str, ...] = ()
    input_size: int = 112                       # recogniser input side in pixels (a multiple of 112)
    input_mean: float | None = None             # None: insightface's rule (recognizer.arcface_normalization)
    input_std: float | None = None
    embedding_size: int = EMBED_DIM
    manifest: str | None = None                 # the moca_pack.json it came from (None: built in)
    licence: str = ""

    @property
    def required(self) -> tuple[str, str]:
        return (self.detector, self.recognizer)

    @property
    def files(self) -> tuple[str, ...]:
        return self.required + self.optional

    @classmethod
    def from_manifest(cls, data: dict, where: str = "manifest", default_name: str | None = None) -> "PackSpec":
        """A spec from a manifest dict (the module docstring's format); FacePackError naming ``where`` and the
        field when it is not one."""
        def bad(msg):
            return FacePackError(f"Face pack manifest {where}: {msg}. See docs/faces.md, 'Other face packs'.")

        if not isinstance(data, dict):
            raise bad(f"expected a JSON object, got {type(data).__name__}")
        if data.get("format", MANIFEST_FORMAT) != MANIFEST_FORMAT:
            raise bad(f"'format' is {data.get('format')!r}, expected {MANIFEST_FORMAT!r}")
        if str(data.get("version", 1)).strip() != "1":
            raise bad(f"version {data.get('version')!r} is not 1, the version this MoCA reads; update the node pack")
        det, rec = data.get("detector"), data.get("recognizer")
        det = {"file": det} if isinstance(det, str) else det
        rec = {"file": rec} if isinstance(rec, str) else rec
        if not isinstance(det, dict) or not det.get("file") or not isinstance(rec, dict) or not rec.get("file"):
            raise bad('needs "detector": {"file": ...} and "recognizer": {"file": ...}')
        if str(det.get("type", "scrfd")).lower() != "scrfd":
            raise bad(f"detector type {det.get('type')!r} is not supported; MoCA runs SCRFD-contract detectors "
                      "(insightface's: boxes, scores and 5 landmarks)")
        try:
            size = int(rec.get("input_size", 112))
            dim = int(rec.get("embedding_size", EMBED_DIM))
            mean = None if rec.get("input_mean") is None else float(rec["input_mean"])
            std = None if rec.get("input_std") is None else float(rec["input_std"])
        except (TypeError, ValueError) as e:
            raise bad(f"recognizer fields must be numbers ({e})") from e
        if size <= 0 or size % 112:
            raise bad(f"recognizer input_size {size} must be a multiple of 112 (the ArcFace alignment template)")
        if dim != EMBED_DIM:
            raise bad(f"recognizer embedding_size {dim}: MoCA's identity tokenizer takes {EMBED_DIM}-d embeddings")
        if (mean is None) != (std is None) or (std is not None and std <= 0):
            raise bad("give both recognizer input_mean and input_std (std > 0), or neither (insightface's rule)")
        name = str(data.get("name") or default_name or "").strip()
        if not name:
            raise bad("needs a 'name'")
        optional = data.get("optional", [])
        if not isinstance(optional, list):
            raise bad(f"'optional' must be a list of file names, got {optional!r}")
        files = [str(det["file"]), str(rec["file"])] + [str(f) for f in optional]
        if any(os.sep in f or "/" in f or f.startswith(".") for f in files):
            raise bad(f"file names must be plain names inside the pack folder, got {files}")
        return cls(name, files[0], files[1], tuple(files[2:]), size, mean, std, dim, None, str(data.get("licence", "")))

    def as_manifest(self) -> dict:
        """This spec as a manifest dict (what ``write_manifest`` writes)."""
        rec = {"file": self.recognizer, "input_size": self.input_size, "embedding_size": self.embedding_size}
        if self.input_mean is not None:
            rec.update(input_mean=self.input_mean, input_std=self.input_std)
        out = {"format": MANIFEST_FORMAT, "version": 1, "name": self.name,
               "detector": {"file": self.detector, "type": "scrfd"}, "recognizer": rec}
        if self.optional:
            out["optional"] = list(self.optional)
        if self.licence:
            out["licence"] = self.licence
        return out


def read_manifest(path, default_name: str | None = None) -> PackSpec:
    """The PackSpec of a ``moca_pack.json`` file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise FacePackError(f"Face pack manifest {path} cannot be read as JSON ({e}). Fix or remove it; see "
                            "docs/faces.md, 'Other face packs'.") from e
    return replace(PackSpec.from_manifest(data, str(path), default_name), manifest=str(path))


def write_manifest(folder, spec: PackSpec, overwrite: bool = False) -> Path:
    """Write ``spec`` as ``<folder>/moca_pack.json`` (atomically)."""
    from ..atomic import atomic_target
    path = Path(folder) / MANIFEST
    with atomic_target(path, overwrite) as tmp:
        Path(tmp).write_text(json.dumps(spec.as_manifest(), indent=1) + "\n", encoding="utf-8")
    return path


_BUILTIN = (
    {"name": "antelopev2", "detector": "scrfd_10g_bnkps.onnx", "recognizer": "glintr100.onnx",
     "optional": ["1k3d68.onnx", "2d106det.onnx", "genderage.onnx"]},
    {"name": "buffalo_l", "detector": "det_10g.onnx", "recognizer": "w600k_r50.onnx",
     "optional": ["1k3d68.onnx", "2d106det.onnx", "genderage.onnx"]},
    # the toy world's pack (toy_models/insightface/models/toyface, trained by moca_model.toy.face_train)
    {"name": "toyface", "detector": "det_toy.onnx",
     "recognizer": {"file": "rec_toy.onnx", "input_size": 112, "embedding_size": 512, "input_mean": 127.5,
                    "input_std": 127.5}},
)
PACKS: dict[str, PackSpec] = {d["name"]: PackSpec.from_manifest(d, f"built-in {d['name']}") for d in _BUILTIN}
DEFAULT_PACK = "antelopev2"


@dataclass(frozen=True)
class FacePack:
    """A pack found on disk: the folder and the paths of the files MoCA uses."""

    name: str
    folder: Path
    detector: Path
    recognizer: Path
    optional: dict = field(default_factory=dict)  # file name -> Path, the optional files present
    spec: PackSpec | None = None                  # the manifest (or built-in) it was found with


def pack_spec(pack: str, looked: str = "") -> PackSpec:
    """The built-in :class:`PackSpec` of ``pack``; a clear error for an unknown name."""
    key = str(pack).strip()
    if key not in PACKS:
        raise FaceOptionError(
            f"Unknown face model pack {pack!r}. Built-in packs: {', '.join(PACKS)} "
            f"(antelopev2 is the default and the one MoCA identities are meant for). Any other pack needs a "
            f"{MANIFEST} in its folder naming its detector and recogniser files"
            + (f" (none found in {looked})" if looked else "") + "; see docs/faces.md, 'Other face packs'."
        )
    return PACKS[key]


def pack_manifest(models_root, pack: str) -> PackSpec | None:
    """The spec of the first ``moca_pack.json`` in ``pack``'s candidate folders (None when there is none)."""
    for folder in candidate_folders(models_root, str(pack).strip()):
        if (folder / MANIFEST).is_file():
            spec = read_manifest(folder / MANIFEST, default_name=str(pack).strip())
            return replace(spec, name=str(pack).strip())                  # the folder's name is the pack's
    return None


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
    root = Path(os.path.expanduser(str(models_root)))
    spec = pack_manifest(root, pack) or pack_spec(
        pack, ", ".join(str(p) for p in candidate_folders(root, str(pack).strip())))
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
            return FacePack(spec.name, folder, folder / spec.detector, folder / spec.recognizer, optional, spec)
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
