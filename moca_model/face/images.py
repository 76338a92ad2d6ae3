"""Input normalisation: anything a user can hand us -> RGB float images ``[H, W, 3]`` in 0..1.

Accepted: ComfyUI IMAGE tensors ``[N, H, W, C]`` (and ``[H, W, C]``, ``[H, W]``), numpy arrays of the same
shapes (uint8, uint16, other ints, bool, float), PIL images (any mode, 16-bit included), file paths (EXIF
orientation honoured), and lists mixing these. Alpha is composited over white, grayscale is repeated to
three channels, and images larger than ``MAX_SIDE`` are downscaled (antialiased) on load.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import FaceImageNotFoundError, FaceInputError
from .threads import single_thread

MAX_SIDE = 4096  # longer side kept after loading; faces stay far larger than the 256 px crops
ALPHA_BACKGROUND = 1.0  # transparent pixels become white (cut-out portraits usually sit on white)


@dataclass
class LoadedImage:
    """One normalised input image.

    ``data`` is ``[H, W, 3]`` RGB, uint8 for 8-bit sources (4x less memory; alignment converts only the
    face region) or float32 0..1 (IMAGE tensors are kept as views, 16-bit and float sources converted).
    """

    data: torch.Tensor  # [H, W, 3] uint8 or float32 0..1, RGB
    index: int  # position in the flattened input (0-based), used in every message
    source: str  # "IMAGE[2]", a file path, "numpy", "PIL"
    original_size: tuple  # (W, H) before any downscale
    notes: list = field(default_factory=list)

    @property
    def pixels(self) -> torch.Tensor:
        """``[H, W, 3]`` float32 0..1 (a conversion for uint8 data, not cached)."""
        return self.data.float().div_(255.0) if self.data.dtype == torch.uint8 else self.data

    @property
    def size(self) -> tuple:
        return (int(self.data.shape[1]), int(self.data.shape[0]))

    @property
    def scale(self) -> float:
        """working width / original width (1.0 unless downscaled on load)."""
        return self.size[0] / max(1, self.original_size[0])

    def uint8(self) -> np.ndarray:
        """``[H, W, 3]`` uint8 RGB (what insightface-style detectors read)."""
        if self.data.dtype == torch.uint8:
            return self.data.cpu().numpy()
        with single_thread(self.data.device):
            return (self.data * 255.0).round_().clamp_(0, 255).to(torch.uint8).cpu().numpy()


def load_images(images: Any, max_side: int | None = None) -> list[LoadedImage]:
    """Flatten and normalise ``images`` (see module doc). Raises :class:`FaceInputError` on bad input.

    max_side: longer side kept (default ``MAX_SIDE``); larger images are downscaled on load.
    """
    max_side = int(max_side or MAX_SIDE)
    out: list[LoadedImage] = []
    _collect(images, out, max_side, top=True)
    if not out:
        raise FaceInputError("No images were given (an empty batch or list). Connect at least one face photo.")
    return out


def _collect(obj: Any, out: list, max_side: int, top: bool = False) -> None:
    if isinstance(obj, (list, tuple)):
        for item in obj:
            _collect(item, out, max_side)
        return
    if isinstance(obj, torch.Tensor):
        _from_array(obj, out, max_side, "IMAGE")
        return
    if isinstance(obj, np.ndarray):
        _from_array(obj, out, max_side, "numpy")
        return
    if isinstance(obj, (str, os.PathLike)):
        out.append(_from_path(Path(obj), len(out), max_side))
        return
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a requirement
        Image = None
    if Image is not None and isinstance(obj, Image.Image):
        out.append(_from_pil(obj, len(out), "PIL", max_side))
        return
    raise FaceInputError(
        f"Image {len(out)}: unsupported input type {type(obj).__name__}. Give a ComfyUI IMAGE tensor "
        f"[N, H, W, C], a numpy array, a PIL image, a file path, or a list of these."
    )


def _from_array(arr, out: list, max_side: int, kind: str) -> None:
    if isinstance(arr, np.ndarray):
        if arr.dtype.kind not in "biuf":
            raise FaceInputError(
                f"Image {len(out)}: unsupported numpy dtype {arr.dtype}; use uint8, uint16 or float 0..1.")
        if arr.dtype in (np.uint32, np.uint64):
            arr = arr.astype(np.int64)
    t = _as_tensor(arr) if isinstance(arr, np.ndarray) else arr
    if t.dtype == torch.bool:
        t = t.to(torch.uint8) * 255
    if t.is_complex() or t.dtype not in _KNOWN_DTYPES:
        raise FaceInputError(f"Image {len(out)}: unsupported {kind} dtype {t.dtype}; use uint8, uint16 or float 0..1.")
    if t.ndim == 2:
        t = t[None, :, :, None]
    elif t.ndim == 3:
        t = t[None]
    if t.ndim != 4 or t.shape[-1] not in (1, 2, 3, 4):
        raise FaceInputError(
            f"Image {len(out)}: {kind} of shape {list(arr.shape)} is not an image. Expected [N, H, W, C] "
            f"(ComfyUI IMAGE), [H, W, C] or [H, W] with C = 1 (gray), 2 (gray+alpha), 3 (RGB) or 4 (RGBA)."
        )
    if t.shape[0] == 0:
        return
    if t.shape[1] < 2 or t.shape[2] < 2:
        raise FaceInputError(f"Image {len(out)}: {kind} of shape {list(arr.shape)} is too small to hold a face.")
    for i in range(t.shape[0]):
        src = f"{kind}[{i}]" if kind == "IMAGE" else kind
        out.append(_normalise(t[i], len(out), src, [], max_side))


def _normalise(t: torch.Tensor, index: int, source: str, notes: list, max_side: int) -> LoadedImage:
    """[H, W, C] any supported dtype -> LoadedImage (8-bit RGB within max_side is kept as it is)."""
    h, w, c = t.shape
    if c == 3 and max(h, w) <= max_side and (t.dtype == torch.uint8 or t.dtype == torch.float32):
        if t.dtype == torch.uint8:
            return LoadedImage(t, index, source, (w, h), notes)
        with single_thread(t.device):
            lo, hi = torch.aminmax(t)
        if float(lo) >= 0.0 and float(hi) <= 1.0:  # ComfyUI IMAGE: kept as a view, no copy
            return LoadedImage(t, index, source, (w, h), notes)
    with single_thread(t.device):
        img = _to_unit_float(t, notes)
        return _finish(img, index, source, notes, max_side, keep_uint8=t.dtype == torch.uint8)


def _as_tensor(arr: np.ndarray) -> torch.Tensor:
    """Share memory with a (possibly read-only) array; it is only ever read."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(np.ascontiguousarray(arr))


_KNOWN_DTYPES = {torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.float16, torch.bfloat16,
                 torch.float32, torch.float64} | ({torch.uint16} if hasattr(torch, "uint16") else set())


def _to_unit_float(t: torch.Tensor, notes: list) -> torch.Tensor:
    """``[H, W, C]`` any dtype -> float32 0..1 (C unchanged)."""
    if t.dtype == torch.uint8:
        return t.float().div_(255.0)
    if t.is_floating_point():
        t = t.float()
        hi = float(t.max()) if t.numel() else 0.0
        if hi > 1.5:  # a 0..255 float image (OpenCV style)
            notes.append("float values above 1 read as 0..255")
            t = t / 255.0
        return t.clamp(0.0, 1.0)
    if hasattr(torch, "uint16") and t.dtype == torch.uint16:
        t = t.to(torch.int32)
    t = t.to(torch.int64)
    hi = int(t.max()) if t.numel() else 0
    if hi > 255:
        notes.append("16-bit")
        return (t.float() / (65535.0 if hi <= 65535 else float(hi))).clamp_(0.0, 1.0)
    return t.float().div_(255.0).clamp_(0.0, 1.0)


def _finish(img: torch.Tensor, index: int, source: str, notes: list, max_side: int,
            keep_uint8: bool = False) -> LoadedImage:
    """float ``[H, W, C]`` -> RGB ``[H, W, 3]``, downscaled to ``max_side`` (back to uint8 for 8-bit sources)."""
    h, w, c = img.shape
    if c in (2, 4):
        alpha = img[..., -1:]
        if float(alpha.min()) < 1.0:
            notes.append("alpha composited over white")
        img = img[..., :-1] * alpha + ALPHA_BACKGROUND * (1.0 - alpha)
        c -= 1
    if c == 1:
        img = img.expand(h, w, 3)
        notes.append("grayscale")
    img = img.float()
    if max(h, w) > max_side:
        s = max_side / max(h, w)
        nh, nw = max(1, round(h * s)), max(1, round(w * s))
        x = img.permute(2, 0, 1)[None]
        img = torch.nn.functional.interpolate(x, size=(nh, nw), mode="bilinear", antialias=True,
                                              align_corners=False)[0].permute(1, 2, 0).clamp_(0, 1)
        notes.append(f"downscaled from {w}x{h} to {nw}x{nh}")
    if keep_uint8:
        img = (img * 255.0).round_().clamp_(0, 255).to(torch.uint8)
    return LoadedImage(img.contiguous(), index, source, (w, h), notes)


def _from_path(path: Path, index: int, max_side: int) -> LoadedImage:
    from PIL import Image, UnidentifiedImageError

    path = Path(os.path.expanduser(str(path)))
    if not path.is_file():
        raise FaceImageNotFoundError(
            f"Image {index}: file {path} does not exist" + (" (it is a folder)" if path.is_dir() else "") + "."
        )
    old = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None  # a local photo, not an untrusted upload: huge is allowed
        img = Image.open(path)
        file_size = img.size
        if img.format == "JPEG" and max(img.size) > 2 * max_side:
            img.draft("RGB", (img.size[0] // 2, img.size[1] // 2))  # decode at reduced scale, fast
        img.load()
    except UnidentifiedImageError as e:
        raise FaceInputError(f"Image {index}: {path} is not an image file Pillow can read ({e}).") from e
    except OSError as e:
        raise FaceInputError(f"Image {index}: {path} cannot be decoded ({e}); the file may be truncated.") from e
    finally:
        Image.MAX_IMAGE_PIXELS = old
    return _from_pil(img, index, str(path), max_side, file_size)


def _from_pil(img, index: int, source: str, max_side: int, file_size=None) -> LoadedImage:
    from PIL import ImageOps

    notes: list[str] = []
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:
        orientation = 1
    original = tuple(file_size or img.size)  # before any JPEG draft reduction
    if orientation not in (None, 1):
        try:
            img = ImageOps.exif_transpose(img)
            notes.append(f"EXIF orientation {orientation} applied")
        except Exception:
            notes.append("EXIF orientation unreadable, ignored")
    if max(img.size) > 2 * max_side and img.mode in ("RGB", "RGBA", "L", "LA", "P"):
        f = max(1, max(img.size) // max_side)
        img = img.reduce(f)  # cheap box reduction before the float conversion
    mode = img.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.array(img).astype(np.int32)
        arr = arr.reshape(img.size[1], img.size[0], -1)
    elif mode == "F":
        arr = np.array(img, dtype=np.float32).reshape(img.size[1], img.size[0], 1)
    elif mode in ("RGBA", "LA", "PA", "P", "RGBa", "La"):
        arr = np.array(img.convert("RGBA"))
    elif mode in ("L", "1"):
        arr = np.array(img.convert("L"))[..., None]
    else:
        arr = np.array(img.convert("RGB"))
    out = _normalise(torch.from_numpy(np.ascontiguousarray(arr)), index, source, notes, max_side)
    out.original_size = (original[1], original[0]) if orientation in (5, 6, 7, 8) else original
    out.notes = [n for n in out.notes if not n.startswith("downscaled")]
    if out.size != out.original_size:  # JPEG draft, box reduction and/or the antialiased resize
        w, h = out.original_size
        out.notes.append(f"downscaled from {w}x{h} to {out.size[0]}x{out.size[1]}")
    return out
