"""Tiny stand-ins for an insightface pack, built with the ``onnx`` package (tests, benchmark, CPU demo).

They keep the exact contracts insightface and our onnxruntime path rely on:

* detector: input ``input.1`` ``[1, 3, H, W]`` float (H, W symbolic), 9 outputs in insightface's order -
  scores, box distances and keypoint offsets for strides 8, 16, 32, each ``[(H/s) * (W/s) * 2, C]`` with
  C = 1, 4, 10. The graph places each configured face (given in the pixels of the photo it belongs to) on
  the anchor under its centre, at the stride SCRFD would use for its size, scaled to the part of the input
  the photo occupies after insightface's resize-and-pad - so the real decoder maps it back to exactly the
  configured box and landmarks. A black input has no content and therefore no face; ``max_det_px`` makes a
  face invisible when it is wider than that in detector pixels (real SCRFD misses faces that fill the
  frame at 640 and finds them at smaller sizes).
* recogniser: input ``[N, 3, 112, 112]``, output ``[N, 512]``: 8x8 average pooling, tanh, centring and a
  fixed random projection - a real function of the pixels (identical crops give identical embeddings,
  different faces different ones, and a wrong input normalisation changes the result). ``mxnet_style``
  builds the MXNet-converted variant whose first nodes ``_minus0`` / ``_mul0`` normalise inside the graph.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from .packs import pack_spec

OPSET = 17
IR_VERSION = 8  # readable by onnxruntime >= 1.14
EMBED_DIM = 512
# SCRFD assigns faces to strides by size: (stride, min width, max width) in detector pixels
STRIDE_RANGES = ((8, 0.0, 64.0), (16, 64.0, 128.0), (32, 128.0, 1e9))


@dataclass(frozen=True)
class TinyFace:
    """A face the tiny detector reports, in the pixels of an image of ``image_size`` (W, H)."""

    box: tuple  # x1, y1, x2, y2
    kps: tuple  # ((x, y),) * 5: left eye, right eye, nose, left mouth corner, right mouth corner
    score: float = 0.9
    max_det_px: float = 1e9  # invisible when wider than this in detector pixels


# skimage.data.astronaut() (512x512): hand-measured on 10x zooms of the photo (pupil centres, nose tip,
# mouth corners); the box spans hairline to chin and cheek to cheek.
ASTRONAUT_SIZE = (512, 512)
ASTRONAUT_FACE = TinyFace(
    box=(178.0, 68.0, 272.0, 180.0),
    kps=((204.0, 100.8), (246.5, 103.2), (223.5, 128.0), (203.0, 140.0), (243.5, 142.0)),
    score=0.92,
)


def _onnx():
    try:
        import onnx
        from onnx import TensorProto, helper, numpy_helper
    except ImportError as e:  # pragma: no cover
        raise ImportError("The tiny test models need the `onnx` package: python -m pip install onnx") from e
    return onnx, TensorProto, helper, numpy_helper


def build_detector(faces=(), image_size=ASTRONAUT_SIZE, with_kps: bool = True, batched: bool = False):
    """An SCRFD-contract ``onnx.ModelProto`` reporting ``faces`` (see module doc)."""
    onnx, TP, h, nh = _onnx()
    faces = [_face(f) for f in faces]
    W0, H0 = float(image_size[0]), float(image_size[1])
    nodes, inits = [], []

    def const(name, arr, dtype=np.float32):
        inits.append(nh.from_array(np.asarray(arr, dtype=dtype), name))
        return name

    def node(op, ins, outs, **kw):
        nodes.append(h.make_node(op, ins, outs, name=f"n{len(nodes)}_{op}", **kw))
        return outs[0]

    F = len(faces)
    bn = np.array([[f.box[0] / W0, f.box[1] / H0, f.box[2] / W0, f.box[3] / H0] for f in faces], np.float32).reshape(F, 4)
    kn = np.array([[c / (W0 if j % 2 == 0 else H0) for j, c in enumerate(np.ravel(f.kps))] for f in faces],
                  np.float32).reshape(F, 10)
    const("BN", bn), const("KN", kn)
    const("SC", np.array([f.score for f in faces], np.float32).reshape(F))
    const("MAXW", np.array([f.max_det_px for f in faces], np.float32).reshape(F))
    const("i2", [2], np.int64), const("i3", [3], np.int64), const("one64", 1, np.int64), const("zero64", 0, np.int64)
    const("c1", [1], np.int64)
    const("thr", -0.95), const("zf", 0.0), const("onef", 1.0)
    # input size and the extent of the photo inside it (non-black pixels; the padding is black)
    node("Shape", ["input.1"], ["shape"])
    node("Gather", ["shape", "i2"], ["H1"], axis=0)
    node("Gather", ["shape", "i3"], ["W1"], axis=0)
    node("Squeeze", ["H1"], ["H"]), node("Squeeze", ["W1"], ["W"])
    node("ReduceMax", ["input.1"], ["chmax"], axes=[1], keepdims=0)  # [1, H, W]
    node("Greater", ["chmax", "thr"], ["isc"])
    node("Cast", ["isc"], ["content"], to=TP.FLOAT)
    node("ReduceMax", ["content"], ["colany"], axes=[1], keepdims=0)  # [1, W]
    node("ReduceMax", ["content"], ["rowany"], axes=[2], keepdims=0)  # [1, H]
    for ax, n in (("col", "W"), ("row", "H")):
        node("Add", [n, "one64"], [f"{ax}lim"])
        node("Range", ["one64", f"{ax}lim", "one64"], [f"{ax}r"])
        node("Cast", [f"{ax}r"], [f"{ax}rf"], to=TP.FLOAT)
        node("Mul", [f"{ax}any", f"{ax}rf"], [f"{ax}ext"])
        node("ReduceMax", [f"{ax}ext"], [f"{ax}e"], axes=[0, 1], keepdims=0)  # last content index + 1
    node("Greater", ["cole", "zf"], ["pres_b"])
    node("Cast", ["pres_b"], ["present"], to=TP.FLOAT)
    node("Unsqueeze", ["cole", "zero64"], ["cw1"]), node("Unsqueeze", ["rowe", "zero64"], ["ch1"])
    node("Concat", ["cw1", "ch1"], ["cwh"], axis=0)  # [2]
    const("rep2", [2], np.int64), const("rep5", [5], np.int64)
    node("Tile", ["cwh", "rep2"], ["s4"]), node("Tile", ["cwh", "rep5"], ["s10"])
    node("Mul", ["BN", "s4"], ["boxd"])  # [F, 4] detector pixels
    node("Mul", ["KN", "s10"], ["kpsd"])  # [F, 10]
    const("Mctr", [[0.5, 0], [0, 0.5], [0.5, 0], [0, 0.5]])
    node("MatMul", ["boxd", "Mctr"], ["ctr"])  # [F, 2]
    const("Mw", [-1.0, 0.0, 1.0, 0.0])
    node("Mul", ["boxd", "Mw"], ["wparts"])
    node("ReduceSum", ["wparts", "c1"], ["wdet"], keepdims=0)  # [F] box width
    node("Less", ["wdet", "MAXW"], ["vis_b"])
    node("Cast", ["vis_b"], ["vis"], to=TP.FLOAT)
    node("Mul", ["SC", "vis"], ["sc0"])
    node("Mul", ["sc0", "present"], ["sc1"])
    const("M4", [[1, 0, 1, 0], [0, 1, 0, 1]]), const("M10", [[1, 0] * 5, [0, 1] * 5])
    const("sign4", [-1.0, -1.0, 1.0, 1.0]), const("two", 2.0)
    const("c4", [4], np.int64), const("c10", [10], np.int64)
    if batched:
        const("axes0", [0], np.int64)
    outputs = {"score": [], "bbox": [], "kps": []}
    for stride, lo, hi in STRIDE_RANGES:
        p = f"s{stride}_"
        const(p + "s", float(stride)), const(p + "si", stride, np.int64)
        const(p + "lo", lo), const(p + "hi", hi)
        node("Div", ["H", p + "si"], [p + "Hs"]), node("Div", ["W", p + "si"], [p + "Ws"])
        node("Mul", [p + "Hs", p + "Ws"], [p + "HW"])
        const(p + "a2", 2, np.int64)
        node("Mul", [p + "HW", p + "a2"], [p + "N"])
        node("Unsqueeze", [p + "N", "zero64"], [p + "N1"])
        node("Cast", [p + "Ws"], [p + "Wsf"], to=TP.FLOAT), node("Cast", [p + "Hs"], [p + "Hsf"], to=TP.FLOAT)
        node("Sub", [p + "Wsf", "onef"], [p + "Wm"]), node("Sub", [p + "Hsf", "onef"], [p + "Hm"])
        node("Unsqueeze", [p + "Wm", "zero64"], [p + "Wm1"]), node("Unsqueeze", [p + "Hm", "zero64"], [p + "Hm1"])
        node("Concat", [p + "Wm1", p + "Hm1"], [p + "gmax"], axis=0)  # [2]
        node("Div", ["ctr", p + "s"], [p + "cg"])
        node("Floor", [p + "cg"], [p + "cf"])
        node("Min", [p + "cf", p + "gmax"], [p + "cmin"])
        node("Max", [p + "cmin", "zf"], [p + "cell"])  # [F, 2] (ix, iy)
        node("Mul", [p + "cell", p + "s"], [p + "anc"])  # anchor centre (x, y)
        node("Mul", [p + "Wsf", "two"], [p + "W2"])
        node("Unsqueeze", [p + "W2", "zero64"], [p + "W21"])
        # flat index = (iy * Ws + ix) * 2 = cell @ [2, 2 * Ws]
        node("Unsqueeze", ["two", "zero64"], [p + "two1"])
        node("Concat", [p + "two1", p + "W21"], [p + "coef"], axis=0)  # [2]
        node("Mul", [p + "cell", p + "coef"], [p + "terms"])
        node("ReduceSum", [p + "terms", "c1"], [p + "kf"], keepdims=1)  # [F, 1]
        node("Cast", [p + "kf"], [p + "k"], to=TP.INT64)
        node("MatMul", [p + "anc", "M4"], [p + "a4"])
        node("Sub", ["boxd", p + "a4"], [p + "d0"])
        node("Mul", [p + "d0", "sign4"], [p + "d1"])
        node("Div", [p + "d1", p + "s"], [p + "dist"])  # [F, 4]
        node("MatMul", [p + "anc", "M10"], [p + "a10"])
        node("Sub", ["kpsd", p + "a10"], [p + "k0"])
        node("Div", [p + "k0", p + "s"], [p + "kd"])  # [F, 10]
        node("GreaterOrEqual", ["wdet", p + "lo"], [p + "ge"])
        node("Less", ["wdet", p + "hi"], [p + "lt"])
        node("And", [p + "ge", p + "lt"], [p + "in"])
        node("Cast", [p + "in"], [p + "inf"], to=TP.FLOAT)
        node("Mul", ["sc1", p + "inf"], [p + "sc"])
        node("Unsqueeze", [p + "sc", "c1"], [p + "sc2"])  # [F, 1]
        for kind, width, upd in (("score", "c1", p + "sc2"), ("bbox", "c4", p + "dist"), ("kps", "c10", p + "kd")):
            node("Concat", [p + "N1", width], [p + kind + "shape"], axis=0)
            node("ConstantOfShape", [p + kind + "shape"], [p + kind + "zeros"],
                 value=h.make_tensor("v", TP.FLOAT, [1], [0.0]))
            out = f"{kind}_{stride}"
            if F:
                node("ScatterND", [p + kind + "zeros", p + "k", upd], [out + ("_b" if batched else "")])
            else:
                node("Identity", [p + kind + "zeros"], [out + ("_b" if batched else "")])
            if batched:
                node("Unsqueeze", [out + "_b", "axes0"], [out])
            outputs[kind].append(out)
    names = outputs["score"] + outputs["bbox"] + (outputs["kps"] if with_kps else [])
    widths = {"score": 1, "bbox": 4, "kps": 10}
    outs = []
    for n in names:
        kind, stride = n.split("_")
        dims = [f"n{stride}", widths[kind]]
        outs.append(h.make_tensor_value_info(n, TP.FLOAT, ([1] if batched else []) + dims))
    graph = h.make_graph(nodes, "tiny_scrfd", [h.make_tensor_value_info("input.1", TP.FLOAT, [1, 3, "H", "W"])],
                         outs, initializer=inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], producer_name="moca-tiny-scrfd")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def recognizer_weights(seed: int = 0) -> np.ndarray:
    """The fixed projection [588, 512] of the tiny recogniser."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((3 * 14 * 14, EMBED_DIM)) / math.sqrt(3 * 14 * 14)).astype(np.float32)


def build_recognizer(seed: int = 0, mxnet_style: bool = False, fixed_batch: bool = False):
    """An ArcFace-contract ``onnx.ModelProto``: [N, 3, 112, 112] -> [N, 512] (see module doc)."""
    onnx, TP, h, nh = _onnx()
    nodes, inits = [], []
    x = "input.1"
    if mxnet_style:  # the graph normalises raw 0..255 input itself, like the MXNet-converted ArcFace models
        inits += [nh.from_array(np.array(127.5, np.float32), "mx_mean"),
                  nh.from_array(np.array(1 / 127.5, np.float32), "mx_scale")]
        nodes += [h.make_node("Sub", [x, "mx_mean"], ["xm"], name="_minus0"),
                  h.make_node("Mul", ["xm", "mx_scale"], ["xn"], name="_mul0")]
        x = "xn"
    inits.append(nh.from_array(recognizer_weights(seed), "proj"))
    nodes += [
        h.make_node("AveragePool", [x], ["pool"], name="pool0", kernel_shape=[8, 8], strides=[8, 8]),
        h.make_node("Flatten", ["pool"], ["flat"], name="flatten0", axis=1),
        h.make_node("Tanh", ["flat"], ["act"], name="act0"),
        h.make_node("ReduceMean", ["act"], ["mu"], name="mean0", axes=[1], keepdims=1),
        h.make_node("Sub", ["act", "mu"], ["cen"], name="center0"),
        h.make_node("MatMul", ["cen", "proj"], ["embedding"], name="fc0"),
    ]
    batch = 1 if fixed_batch else "None"
    graph = h.make_graph(nodes, "tiny_arcface", [h.make_tensor_value_info("input.1", TP.FLOAT, [batch, 3, 112, 112])],
                         [h.make_tensor_value_info("embedding", TP.FLOAT, [batch, EMBED_DIM])], initializer=inits)
    model = h.make_model(graph, opset_imports=[h.make_opsetid("", OPSET)], producer_name="moca-tiny-arcface")
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model)
    return model


def reference_embedding(crops: np.ndarray, seed: int = 0) -> np.ndarray:
    """numpy re-implementation of the tiny recogniser on ArcFace-normalised input [N, 3, 112, 112]."""
    n = crops.shape[0]
    pooled = crops.reshape(n, 3, 14, 8, 14, 8).mean((3, 5)).reshape(n, -1)
    act = np.tanh(pooled)
    act = act - act.mean(1, keepdims=True)
    return act @ recognizer_weights(seed)


def make_tiny_pack(root, pack: str = "antelopev2", faces=(ASTRONAUT_FACE,), image_size=ASTRONAUT_SIZE,
                   nested: bool = False, optional: bool = False, batched: bool = False, with_kps: bool = True,
                   mxnet_style: bool = False, rec_seed: int = 0, fixed_batch: bool = False) -> Path:
    """Write a tiny ``pack`` under ``root`` in ComfyUI's layout and return the pack folder.

    Layout: ``<root>/models/<pack>/`` (``nested``: ``<root>/models/<pack>/<pack>/``). ``root`` plays the
    part of ``ComfyUI/models/insightface``. ``faces``: TinyFace (or dicts) in pixels of ``image_size``.
    """
    spec = pack_spec(pack)
    folder = Path(root) / "models" / spec.name
    if nested:
        folder = folder / spec.name
    folder.mkdir(parents=True, exist_ok=True)
    faces = tuple(_face(f) for f in faces)
    (folder / spec.detector).write_bytes(_detector_bytes(faces, tuple(image_size), with_kps, batched))
    (folder / spec.recognizer).write_bytes(_recognizer_bytes(rec_seed, mxnet_style, fixed_batch))
    if optional:
        for name in spec.optional:  # present but unused by MoCA; any valid ONNX file will do
            (folder / name).write_bytes(_recognizer_bytes(rec_seed, False, False))
    return folder


def _face(f) -> TinyFace:
    if isinstance(f, TinyFace):
        return TinyFace(tuple(map(float, f.box)), tuple(tuple(map(float, p)) for p in f.kps), float(f.score),
                        float(f.max_det_px))
    return _face(TinyFace(**f))


@lru_cache(maxsize=64)
def _detector_bytes(faces, image_size, with_kps, batched) -> bytes:
    return build_detector(faces, image_size, with_kps, batched).SerializeToString()


@lru_cache(maxsize=8)
def _recognizer_bytes(seed, mxnet_style, fixed_batch) -> bytes:
    return build_recognizer(seed, mxnet_style, fixed_batch).SerializeToString()
