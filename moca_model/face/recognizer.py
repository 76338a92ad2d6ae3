"""ArcFace recognition (insightface's recogniser) run directly with onnxruntime.

insightface ``model_zoo/arcface_onnx.py`` conventions, kept exactly: the network reads RGB (insightface
swaps its BGR crops with ``swapRB=True``), NCHW, normalised as ``(x - 127.5) / 127.5`` - except for models
converted from MXNet, recognised by ``Sub`` and ``Mul`` nodes among the first 8 graph nodes, which
normalise inside the graph and get ``(x - 0) / 1``. Both antelopev2's glintr100 and buffalo_l's w600k_r50
take the first branch. The raw output is L2-normalised by the caller.
"""
from __future__ import annotations

import mmap

import numpy as np
import torch

from .errors import FacePackError


def _varint(buf, pos: int):
    result, shift = 0, 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _fields(buf, start: int, end: int):
    """Iterate (field number, wire type, value start, value end) of a protobuf message in buf[start:end]."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos)
        num, wt = key >> 3, key & 7
        if wt == 0:
            _, pos2 = _varint(buf, pos)
            yield num, wt, pos, pos2
        elif wt == 1:
            pos2 = pos + 8
            yield num, wt, pos, pos2
        elif wt == 2:
            n, pos = _varint(buf, pos)
            pos2 = pos + n
            yield num, wt, pos, pos2
        elif wt == 5:
            pos2 = pos + 4
            yield num, wt, pos, pos2
        else:
            raise ValueError(f"unsupported protobuf wire type {wt}")
        pos = pos2


def first_node_names(path, n: int = 8) -> list:
    """Names of the first ``n`` nodes of an ONNX graph, read from the protobuf without the onnx package.

    (ModelProto.graph = field 7, GraphProto.node = field 1, NodeProto.name = field 3.)
    """
    names = []
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        for num, wt, s, e in _fields(buf, 0, len(buf)):
            if num == 7 and wt == 2:
                for gnum, gwt, gs, ge in _fields(buf, s, e):
                    if gnum == 1 and gwt == 2:
                        name = ""
                        for nnum, nwt, ns, ne in _fields(buf, gs, ge):
                            if nnum == 3 and nwt == 2:
                                name = bytes(buf[ns:ne]).decode("utf-8", "replace")
                        names.append(name)
                        if len(names) >= n:
                            return names
                return names
    return names


def arcface_normalization(path) -> tuple:
    """(input_mean, input_std) insightface uses for this recognition model."""
    try:
        names = first_node_names(path)
    except Exception:  # unreadable graph: use the common convention, session creation reports real damage
        names = []
    find_sub = any(s.startswith("Sub") or s.startswith("_minus") for s in names)
    find_mul = any(s.startswith("Mul") or s.startswith("_mul") for s in names)
    return (0.0, 1.0) if find_sub and find_mul else (127.5, 127.5)


def crops_to_blob(crops: torch.Tensor) -> np.ndarray:
    """Aligned crops [B, S, S, 3] float 0..1 RGB -> [B, 3, S, S] float32 in 0..255 (before mean/std)."""
    return np.ascontiguousarray((crops.detach().float().cpu() * 255.0).permute(0, 3, 1, 2).numpy())


class ArcFaceOnnx:
    """ArcFace recogniser run directly with onnxruntime."""

    def __init__(self, session, path: str = ""):
        self.session = session
        inp = session.get_inputs()[0]
        shape = list(inp.shape)
        if len(shape) != 4 or not isinstance(shape[2], int) or shape[2] != shape[3] or shape[2] % 112:
            raise FacePackError(
                f"{path} does not look like an ArcFace recogniser (input {shape}, expected [N, 3, 112, 112])."
            )
        self.input_name = inp.name
        self.input_size = int(shape[2])
        self.fixed_batch = shape[0] if isinstance(shape[0], int) and shape[0] > 0 else None
        self.output_names = [o.name for o in session.get_outputs()]
        self.input_mean, self.input_std = arcface_normalization(path)

    def forward(self, blob: np.ndarray) -> np.ndarray:
        """blob [B, 3, S, S] RGB 0..255 -> raw features [B, D]."""
        x = ((blob - self.input_mean) / self.input_std).astype(np.float32)
        if self.fixed_batch == 1 and x.shape[0] != 1:
            return np.concatenate([self.session.run(self.output_names, {self.input_name: x[i:i + 1]})[0]
                                   for i in range(x.shape[0])])
        return self.session.run(self.output_names, {self.input_name: x})[0]
