"""Checkpoints: safetensors only, with a format version and the config in the header, validated on load.

- An *adapter* file holds `MoCAAdapter.state_dict()` (what the ComfyUI nodes load next to a native Wan).
- A *combined* file holds `MoCADiT.state_dict()`: Wan 2.1 backbone keys plus `adapter.*`.
Both record in their header which face recogniser the adapter was trained on ("face_recognizer", see
`moca_model.provenance`; `MoCAFile.recognizer`), when the trainer knew it.
Writes go to a temporary file in the same folder, then `os.replace`, so no half-written file is left.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .adapter import MoCAAdapter
from .atomic import atomic_target
from .config import MoCAConfig
from .provenance import HEADER_KEY, Recognizer, from_header, notice_unrecorded

FORMAT = "moca"
FORMAT_VERSION = 1
COMFY_PREFIXES = ("model.diffusion_model.", "diffusion_model.")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message says what is wrong and how to fix it."""


@dataclass
class MoCAFile:
    kind: str                      # "adapter" or "combined"
    config: MoCAConfig
    adapter_state: dict
    backbone_state: dict | None    # Wan 2.1 keys (combined files only)
    metadata: dict
    recognizer: Recognizer | None = None   # the face recogniser of the training embeddings (None: not recorded)


# ---------------------------------------------------------------------------------------------- writing
def atomic_save_safetensors(tensors: dict, path, metadata: dict | None = None, overwrite: bool = False):
    """Write tensors to `path` via a temp file + rename. Refuses to replace an existing file unless
    overwrite=True."""
    from safetensors.torch import save_file
    tensors = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    meta = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    with atomic_target(path, overwrite) as tmp:
        save_file(tensors, tmp, metadata=meta)
    return Path(path)


def save_moca(path, model_or_adapter, metadata: dict | None = None, overwrite: bool = False,
              adapter_only: bool = False, recognizer: Recognizer | None = None):
    """Save a MoCAAdapter (adapter file) or a MoCADiT (combined file, or adapter only with adapter_only=True).
    `recognizer`: the face recogniser of the embeddings it was trained on (recorded in the header)."""
    from .dit import MoCADiT
    if isinstance(model_or_adapter, MoCADiT):
        config = model_or_adapter.config
        if adapter_only:
            tensors, kind = model_or_adapter.adapter.state_dict(), "adapter"
        else:
            tensors, kind = model_or_adapter.state_dict(), "combined"
    elif isinstance(model_or_adapter, MoCAAdapter):
        config, tensors, kind = model_or_adapter.config, model_or_adapter.state_dict(), "adapter"
    else:
        raise TypeError(f"save_moca takes a MoCADiT or a MoCAAdapter, not {type(model_or_adapter).__name__}")
    header = dict(metadata or {})
    header.update({"format": FORMAT, "format_version": str(FORMAT_VERSION), "kind": kind,
                   "config": config.to_json()})
    if recognizer is not None:
        header[HEADER_KEY] = recognizer.to_json()
    return atomic_save_safetensors(tensors, path, header, overwrite=overwrite)


# ---------------------------------------------------------------------------------------------- reading
def read_safetensors(path) -> tuple[dict, dict]:
    """(tensors, metadata) of a .safetensors file, with clear errors for pickles and damaged files."""
    from safetensors import safe_open
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(9)
    # safetensors = 8-byte little-endian header length, then the JSON header; the length's first byte can be
    # 0x80, like a pickle's opcode, so only call it a pickle when no JSON header follows.
    is_safetensors = head[8:9] == b"{"
    if not is_safetensors and (head[:2] == b"PK" or head[:1] == b"\x80" or
                               path.suffix in (".pt", ".pth", ".ckpt", ".bin")):
        raise CheckpointError(
            f"{path.name} is not a .safetensors file (it looks like a PyTorch pickle). MoCA loads only "
            "safetensors, because pickles can run arbitrary code. Convert it once with: "
            "python -c \"import torch,safetensors.torch as s; "
            "s.save_file(torch.load('IN', weights_only=True), 'OUT.safetensors')\"")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises SafetensorError / OSError subclasses for damaged files
        size = path.stat().st_size
        raise CheckpointError(f"{path.name} ({size} bytes) is truncated or corrupt and cannot be read as "
                              f"safetensors ({e}). Re-download or re-export it.") from e
    return tensors, metadata


def check_header(meta: dict, name: str, fmt: str, max_version: int, what: str, written_by: str,
                 error=CheckpointError) -> int:
    """Check a safetensors header's format name and version (every MoCA file kind has both); returns the
    version. `what` names the kind ("MoCA identity file"), `written_by` says where such files come from."""
    if meta.get("format") != fmt:
        raise error(f"{name} is not a {what} (no 'format: {fmt}' in its safetensors header); {written_by}")
    version = int(meta.get("format_version", "0"))
    if version > max_version:
        raise error(f"{name} uses {what} format version {version}; this code reads up to {max_version}. "
                    "Update the node pack.")
    return version


def read_moca(path) -> MoCAFile:
    """Read and validate a MoCA adapter or combined file without building any module."""
    tensors, meta = read_safetensors(path)
    name = Path(path).name
    if meta.get("format") != FORMAT and any(k.startswith(("blocks.", "model.diffusion_model.")) for k in tensors):
        raise CheckpointError(f"{name} is a plain Wan checkpoint, not a MoCA adapter: load it with "
                              "ComfyUI's Load Diffusion Model (or MoCADiT.load_backbone) instead")
    check_header(meta, name, FORMAT, FORMAT_VERSION, "MoCA file", "adapters are written by save_moca / train_moca.py")
    try:
        config = MoCAConfig.from_json(meta["config"])
    except Exception as e:
        raise CheckpointError(f"{name}: the config in its header is invalid ({e})") from e
    kind = meta.get("kind", "adapter")
    try:
        recognizer = from_header(meta, name)
    except ValueError as e:
        raise CheckpointError(str(e)) from e
    if recognizer is None:
        notice_unrecorded("adapter", name)
    user_meta = {k: v for k, v in meta.items() if k not in ("format", "format_version", "kind", "config", HEADER_KEY)}
    if kind == "combined":
        adapter = {k[len("adapter."):]: v for k, v in tensors.items() if k.startswith("adapter.")}
        backbone = normalize_wan_keys({k: v for k, v in tensors.items() if not k.startswith("adapter.")})
    else:
        adapter, backbone = tensors, None
    check_state_dict(MoCAAdapter(config, device="meta").state_dict(), adapter, f"{name} (MoCA adapter)")
    return MoCAFile(kind, config, adapter, backbone, user_meta, recognizer)


def load_moca(path, device="cpu", dtype=None, operations=None):
    """Build and return the module a file holds: a MoCAAdapter (adapter file) or a MoCADiT (combined)."""
    from .dit import MoCADiT
    f = read_moca(path)
    if f.kind == "combined":
        model = MoCADiT(f.config, operations=operations, device="meta")
        model.load_state_dict({**f.backbone_state, **{"adapter." + k: v for k, v in f.adapter_state.items()}},
                              assign=True, strict=True)
        model = model.to(device=device, dtype=dtype) if dtype else model.to(device)
        if dtype is not None:
            model.patch_embedding.float()
    else:
        model = MoCAAdapter(f.config, operations=operations, device="meta")
        model.load_state_dict(f.adapter_state, assign=True, strict=True)
        model = model.to(device=device, dtype=dtype) if dtype else model.to(device)
    model.moca_metadata = f.metadata
    model.moca_recognizer = f.recognizer
    return model


def check_state_dict(expected: dict, given: dict, what: str):
    """Raise a CheckpointError listing missing, unexpected and mis-shaped keys."""
    missing = sorted(set(expected) - set(given))
    unexpected = sorted(set(given) - set(expected))
    misshaped = sorted(f"{k}: file {list(given[k].shape)} vs model {list(expected[k].shape)}"
                       for k in set(expected) & set(given) if tuple(given[k].shape) != tuple(expected[k].shape))
    if missing or unexpected or misshaped:
        def show(items):
            return ", ".join(items[:8]) + (f" ... (+{len(items) - 8} more)" if len(items) > 8 else "")
        lines = [f"{what} does not match the model:"]
        if missing:
            lines.append(f"  missing {len(missing)} keys: {show(missing)}")
        if unexpected:
            lines.append(f"  unexpected {len(unexpected)} keys: {show(unexpected)}")
        if misshaped:
            lines.append(f"  mis-shaped {len(misshaped)} keys: {show(misshaped)}")
        raise CheckpointError("\n".join(lines))


# ---------------------------------------------------------------------------------------------- Wan backbone
def normalize_wan_keys(sd: dict) -> dict:
    """Strip ComfyUI's `model.diffusion_model.` prefix; reject layouts that are not Wan 2.1 T2V."""
    for prefix in COMFY_PREFIXES:
        if any(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
            break
    if any(k.startswith("img_emb.") or ".k_img." in k for k in sd):
        raise CheckpointError("This is a Wan image-to-video (I2V/FLF) checkpoint; MoCA uses the Wan 2.1 "
                              "text-to-video model (wan2.1_t2v_1.3B / wan2.1_t2v_14B)")
    if any(".attn1.to_q." in k or k.startswith("condition_embedder.") for k in sd):
        raise CheckpointError("This Wan checkpoint is in diffusers layout; use the original or ComfyUI "
                              "repackaged single file (e.g. wan2.1_t2v_1.3B_fp16.safetensors)")
    return sd


def load_backbone_into(model, source, strict: bool = True):
    """Load Wan 2.1 T2V weights (path or state dict) into a MoCADiT's backbone, casting dtypes."""
    if isinstance(source, (str, os.PathLike)):
        sd, _ = read_safetensors(source)
        what = Path(source).name
    elif isinstance(source, dict):
        sd, what = source, "the Wan state dict"
    else:
        raise TypeError(f"load_backbone takes a path or a state dict, not {type(source).__name__}")
    sd = normalize_wan_keys(dict(sd))
    expected = model.backbone_state_dict()
    if strict:
        check_state_dict(expected, sd, f"{what} (Wan 2.1 backbone)")
    with torch.no_grad():
        for k, v in sd.items():
            if k in expected:
                expected[k].copy_(v.to(expected[k].dtype))
    return model


def save_wan_checkpoint(path, model, prefix: str = "", dtype=None, overwrite: bool = False):
    """Write a MoCADiT's backbone as a Wan 2.1 checkpoint (e.g. a tiny random one for tests).
    prefix="model.diffusion_model." gives ComfyUI's repackaged naming."""
    sd = {prefix + k: (v.to(dtype) if dtype is not None and v.is_floating_point() else v)
          for k, v in model.backbone_state_dict().items()}
    return atomic_save_safetensors(sd, path, {"format": "wan2.1-t2v"}, overwrite=overwrite)
