"""Toy SCRFD: a small fully-convolutional face detector with insightface's SCRFD output contract.

Network (``ToyDetector``, ~0.21 M parameters, ~0.9 MB as ONNX): a plain conv-BN-ReLU backbone down to
stride 64 with residual depthwise (dilated) blocks at strides 16/32/64 for the context large faces need,
a small FPN (stride 8/16/32 maps, 48 channels, the stride-64 context added into stride 32) and ONE head
shared by the three levels (two 3x3 convs + a 1x1 conv to 1 score + 4 box distances + 10 keypoint
offsets), with a learnt scale per level for the regression outputs. The export (``SCRFDExport``) adds a
score-weighted 3x3 vote of the regressions (``vote``) and gives both SCRFD anchors of a cell the cell's
prediction, so the graph has exactly SCRFD's 9 outputs::

    score_8, score_16, score_32   [(H/s) * (W/s) * 2, 1]    sigmoid scores
    bbox_8,  bbox_16,  bbox_32    [(H/s) * (W/s) * 2, 4]    left, top, right, bottom distances / stride
    kps_8,   kps_16,   kps_32     [(H/s) * (W/s) * 2, 10]   keypoint offsets from the anchor / stride

for an input ``input.1`` ``[1, 3, H, W]`` (H, W dynamic multiples of 32) normalised ``(x - 127.5) / 128``
in RGB order - exactly what ``moca_model.face.detector`` feeds and decodes.

Targets (``assign_targets``) follow SCRFD/FCOS: a face belongs to the levels whose size range holds it
(``LEVEL_RANGES``, overlapping, with ignore margins), the anchors within ``CENTER_RADIUS`` strides of the
box centre are positives (centre sampling), the ring around them is ignored; scores learn with plain BCE
(not focal: the pipeline cuts at 0.5), boxes with L1 + GIoU, keypoints with smooth L1 - all in stride
units, what the decoder inverts.

Training samples (``make_det_sample``) are the toy renders as the pipeline sees them: the whole picture
letterboxed to a detector size (160/320/480/640, the analyzer's fallback sizes), or zoomed/shifted so a
face is 24..~420 detector pixels, flipped, blurred, recoloured; plus background-only pictures.
"""
from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .render import PIXEL_CENTER

STRIDES = (8, 16, 32)
NUM_ANCHORS = 2
INPUT_MEAN, INPUT_STD = 127.5, 128.0
# face size (sqrt of box area, detector pixels) -> levels: (lo, hi) positive range per stride;
# sizes within IGNORE_FACTOR outside the range are neither positive nor negative there.
LEVEL_RANGES = {8: (0.0, 72.0), 16: (56.0, 160.0), 32: (128.0, 1e9)}
IGNORE_FACTOR = 1.35
CENTER_RADIUS = 1.5  # positives: anchors within this many strides of the box centre (and inside the box)
IGNORE_RADIUS = 2.5  # the ring between the two radii is ignored by the score loss
FLIP_KPS = (1, 0, 2, 4, 3)  # insightface order under a horizontal flip
DET_SIZES = (160, 320, 480, 640)


# ---------------------------------------------------------------------------------------------- network
class CBR(nn.Sequential):
    def __init__(self, cin, cout, k=3, s=1):
        super().__init__(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class DWRes(nn.Module):
    """Residual depthwise-separable 3x3 (optionally dilated) block: cheap extra context at low resolution."""

    def __init__(self, c, dilation=1):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, 1, dilation, dilation=dilation, groups=c, bias=False),
                                  nn.BatchNorm2d(c), nn.ReLU(inplace=True), nn.Conv2d(c, c, 1, bias=False),
                                  nn.BatchNorm2d(c))

    def forward(self, x):
        return F.relu(x + self.body(x))


class ToyDetector(nn.Module):
    """[B, 3, H, W] normalised -> per level raw maps [B, 15, H/s, W/s] (score logit, 4 dist, 10 kps)."""

    def __init__(self, width: int = 48):
        super().__init__()
        self.stem = nn.Sequential(CBR(3, 16, 3, 2), CBR(16, 24, 3, 2))  # /4
        self.c3 = nn.Sequential(CBR(24, 32, 3, 2), CBR(32, 32))  # /8
        self.c4 = nn.Sequential(CBR(32, 48, 3, 2), CBR(48, 48), DWRes(48, 2))  # /16
        self.c5 = nn.Sequential(CBR(48, 64, 3, 2), CBR(64, 64), DWRes(64, 2))  # /32
        self.c6 = nn.Sequential(CBR(64, 48, 3, 2), DWRes(48), DWRes(48, 2))  # /64: context for large faces
        self.lat = nn.ModuleList([nn.Conv2d(c, width, 1) for c in (32, 48, 64, 48)])
        self.head = nn.Sequential(CBR(width, width), CBR(width, width), nn.Conv2d(width, 15, 1))
        self.reg_scale = nn.Parameter(torch.ones(len(STRIDES), 2))  # per level: box, kps
        nn.init.constant_(self.head[-1].bias, 0.0)
        with torch.no_grad():
            self.head[-1].bias[0] = -4.6  # prior score 0.01
            self.head[-1].bias[1:5] = 2.0  # distances of ~2 strides

    def forward(self, x):
        x = self.stem(x)
        c3 = self.c3(x)
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        c6 = self.c6(c5)
        p5 = self.lat[2](c5) + F.interpolate(self.lat[3](c6), size=c5.shape[-2:], mode="nearest")
        p4 = self.lat[1](c4) + F.interpolate(p5, size=c4.shape[-2:], mode="nearest")
        p3 = self.lat[0](c3) + F.interpolate(p4, size=c3.shape[-2:], mode="nearest")
        outs = []
        for i, p in enumerate((p3, p4, p5)):
            o = self.head(p)
            outs.append(torch.cat([o[:, :1], o[:, 1:5] * self.reg_scale[i, 0], o[:, 5:] * self.reg_scale[i, 1]], 1))
        return outs


def vote(o: torch.Tensor, stride: int, power: float = 4.0) -> torch.Tensor:
    """Score-weighted 3x3 voting of one level's raw maps [B, 15, h, w]: every cell's box and keypoints become
    the average of the ABSOLUTE positions its neighbours predict (weights sigmoid(score) ** power), expressed
    again as distances / offsets from its own anchor. The decoder keeps the best cell after NMS; voting
    makes its landmarks the consensus of the confident cells around it instead of one cell's guess."""
    b, _, h, w = o.shape
    cx = (torch.arange(w, dtype=o.dtype, device=o.device) * stride).view(1, 1, 1, w).expand(b, 1, h, w)
    cy = (torch.arange(h, dtype=o.dtype, device=o.device) * stride).view(1, 1, h, 1).expand(b, 1, h, w)
    d, k = o[:, 1:5] * stride, o[:, 5:] * stride
    pts = torch.cat([cx - d[:, 0:1], cy - d[:, 1:2], cx + d[:, 2:3], cy + d[:, 3:4], k[:, 0::2] + cx, k[:, 1::2] + cy], 1)
    wt = torch.sigmoid(o[:, :1]).pow(power)
    avg = F.avg_pool2d(pts * wt, 3, 1, 1) / F.avg_pool2d(wt, 3, 1, 1).clamp_min(1e-12)
    dist = torch.cat([cx - avg[:, 0:1], cy - avg[:, 1:2], avg[:, 2:3] - cx, avg[:, 3:4] - cy], 1) / stride
    kx, ky = (avg[:, 4:9] - cx) / stride, (avg[:, 9:14] - cy) / stride
    kps = torch.stack([kx, ky], 2).reshape(b, 10, h, w)
    return torch.cat([o[:, :1], dist, kps], 1)


class SCRFDExport(nn.Module):
    """The ONNX face of :class:`ToyDetector`: input ``[1, 3, H, W]`` -> SCRFD's 9 outputs (module doc),
    with 3x3 score-weighted voting of the regressions (:func:`vote`) unless ``vote=False``."""

    def __init__(self, net: ToyDetector, voting: bool = True):
        super().__init__()
        self.net, self.voting = net, voting

    def forward(self, x):
        scores, boxes, kps = [], [], []
        for o, stride in zip(self.net(x), STRIDES):
            if self.voting:
                o = vote(o, stride)
            t = o[0].permute(1, 2, 0).reshape(-1, 1, 15).expand(-1, NUM_ANCHORS, 15).reshape(-1, 15)  # [h*w*2, 15]
            scores.append(torch.sigmoid(t[:, :1]))
            boxes.append(t[:, 1:5])
            kps.append(t[:, 5:])
        return tuple(scores + boxes + kps)


OUTPUT_NAMES = [f"{k}_{s}" for k in ("score", "bbox", "kps") for s in STRIDES]


def export_detector(net: ToyDetector, path, check: bool = True, atol: float = 1e-4, voting: bool = True) -> dict:
    """Write the SCRFD-contract ONNX file (opset 17, dynamic H/W) and check onnxruntime against torch."""
    from moca_model.atomic import atomic_target

    net = net.eval()
    wrapper = SCRFDExport(net, voting).eval()
    dummy = torch.zeros(1, 3, 160, 160)
    axes = {"input.1": {2: "H", 3: "W"}}
    axes.update({n: {0: f"n{n.split('_')[1]}"} for n in OUTPUT_NAMES})
    with atomic_target(path, overwrite=True, suffix=".onnx") as tmp:
        with warnings.catch_warnings():  # the legacy exporter is deliberate (no onnxscript needed)
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(wrapper, (dummy,), tmp, input_names=["input.1"], output_names=OUTPUT_NAMES,
                              dynamic_axes=axes, opset_version=17, dynamo=False, do_constant_folding=True)
    report = {"path": str(path), "bytes": Path(path).stat().st_size}
    if check:
        import onnxruntime as ort

        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        g = torch.Generator().manual_seed(0)
        worst = 0.0
        for s in (160, 320, 224):
            x = torch.randn(1, 3, s, s, generator=g)
            with torch.no_grad():
                ref = [t.numpy() for t in wrapper(x)]
            got = sess.run(OUTPUT_NAMES, {"input.1": x.numpy()})
            for a, b in zip(ref, got):
                assert a.shape == b.shape, (a.shape, b.shape)
                worst = max(worst, float(np.abs(a - b).max()))
        if worst > atol:
            raise AssertionError(f"onnxruntime differs from torch by {worst:.2e} > {atol:g} for {path}")
        report["ort_max_abs_diff"] = worst
    return report


# ---------------------------------------------------------------------------------------------- targets
def level_weights(size: np.ndarray, stride: int):
    """(positive, ignore) bool arrays for faces of ``size`` at ``stride``."""
    lo, hi = LEVEL_RANGES[stride]
    pos = (size >= lo) & (size < hi)
    near = (size >= lo / IGNORE_FACTOR) & (size < hi * IGNORE_FACTOR)
    return pos, near & ~pos


def assign_targets(faces: list, height: int, width: int):
    """Targets of one image. faces: list of (box [4], kps [5, 2], valid bool) in detector pixels.

    Returns per level dict(score [h*w] float, weight [h*w] float (0 = ignored), pos [h*w] bool,
    dist [h*w, 4] (stride units), kps [h*w, 10] (stride units)). ``valid`` False faces only add ignores.
    """
    out = []
    for stride in STRIDES:
        h, w = height // stride, width // stride
        ys, xs = np.mgrid[:h, :w]
        cx = (xs * stride).reshape(-1).astype(np.float32)
        cy = (ys * stride).reshape(-1).astype(np.float32)
        n = h * w
        score = np.zeros(n, np.float32)
        weight = np.ones(n, np.float32)
        dist = np.zeros((n, 4), np.float32)
        kpt = np.zeros((n, 10), np.float32)
        best = np.full(n, np.inf, np.float32)  # size of the face owning each positive (smallest wins)
        for box, kps, valid in faces:
            bw, bh = box[2] - box[0], box[3] - box[1]
            if bw <= 1 or bh <= 1:
                continue
            size = math.sqrt(bw * bh)
            pos_l, ign_l = level_weights(np.array([size]), stride)
            fx, fy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            dx, dy = np.abs(cx - fx), np.abs(cy - fy)
            inside = (cx > box[0]) & (cx < box[2]) & (cy > box[1]) & (cy < box[3])
            r = CENTER_RADIUS * stride
            core = (dx <= r) & (dy <= r) & inside
            ring = (dx <= IGNORE_RADIUS * stride) & (dy <= IGNORE_RADIUS * stride)
            if not core.any() and pos_l[0] and valid:  # tiny face between anchors: take the nearest one
                k = int(np.argmin(dx ** 2 + dy ** 2))
                core[k] = True
            if not (valid and pos_l[0]):
                if pos_l[0] or ign_l[0]:
                    weight[ring & (score == 0)] = 0.0
                continue
            take = core & (size < best)
            weight[ring & ~core & (score == 0)] = 0.0
            best[take] = size
            score[take] = 1.0
            weight[take] = 1.0
            dist[take] = np.stack([cx[take] - box[0], cy[take] - box[1], box[2] - cx[take], box[3] - cy[take]], -1) / stride
            k = np.asarray(kps, np.float32).reshape(5, 2)
            kpt[take] = ((k[None] - np.stack([cx[take], cy[take]], -1)[:, None]) / stride).reshape(-1, 10)
        out.append(dict(score=score, weight=weight, pos=score > 0, dist=dist, kps=kpt))
    return out


def collate_targets(per_image: list) -> list:
    """List (images) of lists (levels) of dicts -> list (levels) of dicts of batched tensors."""
    levels = []
    for li in range(len(STRIDES)):
        levels.append({k: torch.from_numpy(np.stack([t[li][k] for t in per_image])) for k in per_image[0][li]})
    return levels


def giou_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """GIoU loss of ltrb distances [P, 4] sharing their anchor point."""
    pl, pt, pr, pb = pred.clamp_min(0).unbind(-1)
    tl, tt, tr, tb = target.unbind(-1)
    pa, ta = (pl + pr) * (pt + pb), (tl + tr) * (tt + tb)
    iw = torch.minimum(pl, tl) + torch.minimum(pr, tr)
    ih = torch.minimum(pt, tt) + torch.minimum(pb, tb)
    inter = iw * ih
    union = pa + ta - inter + 1e-6
    ew = torch.maximum(pl, tl) + torch.maximum(pr, tr)
    eh = torch.maximum(pt, tt) + torch.maximum(pb, tb)
    enc = ew * eh + 1e-6
    return 1 - inter / union + (enc - union) / enc


def detector_loss(outs: list, targets: list) -> tuple:
    """(total, parts dict). outs: per level [B, 15, h, w]; targets: collate_targets output."""
    cls_l, box_l, kps_l = 0.0, 0.0, 0.0
    npos = sum(float(t["pos"].sum()) for t in targets)
    norm = max(1.0, npos)
    for o, t in zip(outs, targets):
        o = o.permute(0, 2, 3, 1).reshape(o.shape[0], -1, 15)  # [B, h*w, 15]
        logit = o[..., 0]
        y = t["score"]
        # plain BCE, not focal: the pipeline thresholds scores at 0.5, so the loss must not go soft there
        bce = F.binary_cross_entropy_with_logits(logit, y, reduction="none")
        cls_l = cls_l + (bce * t["weight"]).sum() / norm
        pos = t["pos"]
        if pos.any():
            d, td = o[..., 1:5][pos], t["dist"][pos]
            box_l = box_l + (F.l1_loss(d, td, reduction="sum") * 0.5 + giou_loss(d, td).sum() * 2.0) / norm
            kps_l = kps_l + F.smooth_l1_loss(o[..., 5:][pos], t["kps"][pos], beta=0.1, reduction="sum") / norm
    total = cls_l + box_l + kps_l
    parts = {k: float(v.detach() if torch.is_tensor(v) else v) for k, v in (("cls", cls_l), ("box", box_l), ("kps", kps_l))}
    return total, {**parts, "npos": npos}


# ---------------------------------------------------------------------------------------------- samples
def _resize(img: np.ndarray, w: int, h: int) -> np.ndarray:
    from moca_model.face.detector import resize_uint8

    return resize_uint8(img, w, h)


def photometric(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Random blur / down-up scaling / brightness-contrast / noise on a uint8 RGB image."""
    import cv2

    x = img
    r = rng.random()
    if r < 0.25 * strength:
        s = rng.uniform(0.4, 1.3)
        x = cv2.GaussianBlur(x, (0, 0), s)
    elif r < 0.45 * strength:
        f = rng.uniform(0.35, 0.8)
        h, w = x.shape[:2]
        small = cv2.resize(x, (max(8, int(w * f)), max(8, int(h * f))), interpolation=cv2.INTER_AREA)
        x = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if rng.random() < 0.6 * strength:
        a = rng.uniform(0.7, 1.3)
        b = rng.uniform(-30, 30)
        gain = rng.uniform(0.9, 1.1, size=3)
        x = np.clip((x.astype(np.float32) - 128) * a * gain + 128 + b, 0, 255)
    if rng.random() < 0.3 * strength:
        x = np.clip(x.astype(np.float32) + rng.normal(0, rng.uniform(2, 8), x.shape), 0, 255)
    return x.astype(np.uint8) if x.dtype != np.uint8 else x


# PIXEL_CENTER (imported from the world): coordinate of pixel (0, 0)'s centre in the annotations


def map_points(pts: np.ndarray, scale, off_c) -> np.ndarray:
    """Points [..., 2] (world convention) under x_c -> scale * x_c + off_c (pixel-centre convention)."""
    scale = np.asarray(scale, np.float32)
    return (pts - PIXEL_CENTER) * scale + np.asarray(off_c, np.float32) + PIXEL_CENTER


def flip_faces(boxes: np.ndarray, kps: np.ndarray, width: int):
    """Boxes [F, 4] and keypoints [F, 5, 2] of a picture flipped left-right (keypoint order swapped)."""
    m = width - 1 + 2 * PIXEL_CENTER  # x -> m - x
    boxes = np.stack([m - boxes[:, 2], boxes[:, 1], m - boxes[:, 0], boxes[:, 3]], -1)
    kps = kps[:, FLIP_KPS].copy()
    kps[..., 0] = m - kps[..., 0]
    return boxes, kps


def make_det_sample(img: np.ndarray, boxes: np.ndarray, kps: np.ndarray, size: int, rng: np.random.Generator,
                    mode: str | None = None, augment: bool = True):
    """One training canvas [size, size, 3] uint8 and its faces [(box, kps, valid)] in canvas pixels.

    mode: ``letterbox`` (the analyzer's resize-and-pad of the whole picture; 60% by default), ``zoom``
    (random scale so the first face is 24..min(420, 1.3*size) px, random placement, black outside the
    picture), or ``aspect`` (a random crop of another aspect ratio, letterboxed).
    """
    import cv2

    from moca_model.face.detector import letterbox

    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    kps = np.asarray(kps, np.float32).reshape(-1, 5, 2)
    h0, w0 = img.shape[:2]
    if augment and rng.random() < 0.5:
        img = np.ascontiguousarray(img[:, ::-1])
        boxes, kps = flip_faces(boxes, kps, w0)
    if augment:
        img = photometric(img, rng)
    if mode is None:
        r = rng.random()
        mode = "letterbox" if r < 0.6 else ("zoom" if r < 0.9 else "aspect")
    if mode == "aspect":
        cw, ch = int(w0 * rng.uniform(0.6, 1.0)), int(h0 * rng.uniform(0.6, 1.0))
        x0, y0 = int(rng.integers(0, w0 - cw + 1)), int(rng.integers(0, h0 - ch + 1))
        img = np.ascontiguousarray(img[y0:y0 + ch, x0:x0 + cw])
        boxes = boxes - np.array([x0, y0, x0, y0], np.float32)
        kps = kps - np.array([x0, y0], np.float32)
        h0, w0 = img.shape[:2]
        mode = "letterbox"
    if mode == "letterbox":
        canvas, s = letterbox(img, size)
        new_w = int(size / (h0 / w0)) if h0 / w0 > 1.0 else size
        new_h = int(round(h0 * s))
        scale = np.array([new_w / w0, new_h / h0], np.float32)  # cv2.resize: x_c -> (x_c + .5) * f - .5
        off = 0.5 * scale - 0.5
    else:
        fsize = float(np.sqrt(max(1.0, (boxes[0, 2] - boxes[0, 0]) * (boxes[0, 3] - boxes[0, 1])))) if len(boxes) \
            else w0 / 2
        target = math.exp(rng.uniform(math.log(24), math.log(min(420, 1.3 * size))))
        s = target / fsize
        if len(boxes):
            c = np.array([(boxes[0, 0] + boxes[0, 2]) / 2, (boxes[0, 1] + boxes[0, 3]) / 2]) * s
            o = rng.uniform(0.15 * size, 0.85 * size, 2) - c
        else:
            o = rng.uniform(-w0 * s * 0.5, size * 0.5, 2)
        if s < 0.7:  # cv2.warpAffine has no area filter: shrink with INTER_AREA first, then shift
            src = cv2.resize(img, (max(1, int(round(w0 * s))), max(1, int(round(h0 * s)))), interpolation=cv2.INTER_AREA)
            scale = np.array([src.shape[1] / w0, src.shape[0] / h0], np.float32)
            off = 0.5 * scale - 0.5 + o
            m = np.array([[1, 0, o[0]], [0, 1, o[1]]], np.float64)
        else:
            src = img
            scale = np.array([s, s], np.float32)
            off = (0.5 * scale - 0.5 + o).astype(np.float32)
            m = np.array([[s, 0, off[0]], [0, s, off[1]]], np.float64)
        canvas = cv2.warpAffine(src, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0))
    b = map_points(boxes.reshape(-1, 2, 2), scale, off).reshape(-1, 4)
    k = map_points(kps, scale, off)
    faces = []
    for bi, ki in zip(b, k):
        cx, cy = (bi[0] + bi[2]) / 2, (bi[1] + bi[3]) / 2
        vis_w = max(0.0, min(bi[2], size) - max(bi[0], 0))
        vis_h = max(0.0, min(bi[3], size) - max(bi[1], 0))
        visible = vis_w * vis_h / max(1e-6, (bi[2] - bi[0]) * (bi[3] - bi[1]))
        if visible <= 0.0:
            continue
        valid = visible > 0.8 and 0 <= cx < size and 0 <= cy < size
        faces.append((bi.astype(np.float32), ki.astype(np.float32), bool(valid)))
    return canvas, faces


def to_input(canvases: np.ndarray) -> torch.Tensor:
    """[B, S, S, 3] uint8 RGB -> [B, 3, S, S] float, SCRFD normalisation."""
    x = torch.from_numpy(np.ascontiguousarray(canvases)).permute(0, 3, 1, 2).float()
    return (x - INPUT_MEAN) / INPUT_STD


# ---------------------------------------------------------------------------------------------- training
KIND_P = {"ref": 0.42, "frame": 0.33, "two": 0.13, "bg": 0.12}
SIZE_P = {160: 0.25, 224: 0.1, 320: 0.25, 480: 0.15, 640: 0.25}
PIXELS_PER_STEP = 160 * 160 * 10


def sample_batch(pool: dict, rng: np.random.Generator, size: int | None = None, batch: int | None = None,
                 pixels: int = PIXELS_PER_STEP):
    """(input [B, 3, S, S], targets per level, faces per image) drawn from a detection pool."""
    import cv2

    if size is None:
        size = int(rng.choice(list(SIZE_P), p=list(SIZE_P.values())))
    if batch is None:
        batch = max(1, int(round(pixels / size ** 2)))
    kinds = list(KIND_P)
    canvases, targets, faces_l = [], [], []
    for _ in range(batch):
        kind = str(rng.choice(kinds, p=list(KIND_P.values())))
        imgs, boxes, kps, ns = pool[kind]
        i = int(rng.integers(len(imgs)))
        img, n = np.asarray(imgs[i]), int(ns[i])
        if kind == "bg" and rng.random() < 0.5:
            img = cv2.resize(img, (128, 128), interpolation=cv2.INTER_AREA)
        canvas, faces = make_det_sample(img, boxes[i, :n], kps[i, :n], size, rng)
        canvases.append(canvas)
        targets.append(assign_targets(faces, size, size))
        faces_l.append(faces)
    return to_input(np.stack(canvases)), collate_targets(targets), faces_l


def _lr_at(step: int, steps: int, lr: float, warmup: int = 100) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _save_ckpt(path: Path, state: dict):
    from moca_model.atomic import atomic_target

    with atomic_target(path, overwrite=True, suffix=".pt") as tmp:
        torch.save(state, tmp)


def train_toy_detector(out_dir, steps: int = 2500, seed: int = 0, resume: bool = True, data_dir=None,
                       pool: dict | None = None, lr: float = 3e-3, pixels: int = PIXELS_PER_STEP,
                       ckpt_every: int = 250, threads: int = 1, log=print, export: bool = True) -> dict:
    """Train the toy SCRFD detector; ``out_dir/det_ckpt.pt`` (atomic, every ``ckpt_every`` steps) makes it
    resumable exactly (weights, optimiser, step, numpy and torch RNG). Exports ``out_dir/det_toy.onnx``.

    Returns {"net", "history" (per-step loss parts), "onnx" (export report), "cpu_s"}.
    """
    from .face_data import DEFAULT_DATA, load_detection_pool

    torch.set_num_threads(threads)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ckpt = out_dir / "det_ckpt.pt"
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = ToyDetector()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    step, history, cpu0 = 0, [], 0.0
    if resume and ckpt.is_file():
        st = torch.load(ckpt, map_location="cpu", weights_only=False)
        net.load_state_dict(st["net"])
        opt.load_state_dict(st["opt"])
        step, history, cpu0 = st["step"], st["history"], st.get("cpu_s", 0.0)
        rng.bit_generator.state = st["np_rng"]
        torch.set_rng_state(st["torch_rng"])
        log(f"[toy-face] detector: resumed at step {step}")
    if pool is None:
        pool = load_detection_pool(data_dir or DEFAULT_DATA)
    t_cpu = time.process_time()
    net.train()
    while step < steps:
        for g in opt.param_groups:
            g["lr"] = _lr_at(step, steps, lr)
        x, targets, _ = sample_batch(pool, rng, pixels=pixels)
        loss, parts = detector_loss(net(x), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        opt.step()
        step += 1
        history.append({"step": step, "loss": float(loss.detach()), **parts, "size": int(x.shape[-1])})
        if step % 50 == 0 or step == steps:
            recent = history[-50:]
            log(f"[toy-face] detector step {step}/{steps} loss {np.mean([h['loss'] for h in recent]):.3f} "
                f"(cls {np.mean([h['cls'] for h in recent]):.3f} box {np.mean([h['box'] for h in recent]):.3f} "
                f"kps {np.mean([h['kps'] for h in recent]):.3f}) cpu {cpu0 + time.process_time() - t_cpu:.0f} s")
        if step % ckpt_every == 0 or step == steps:
            _save_ckpt(ckpt, {"net": net.state_dict(), "opt": opt.state_dict(), "step": step, "history": history,
                              "np_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                              "cpu_s": cpu0 + time.process_time() - t_cpu, "seed": seed, "steps": steps})
    net.eval()
    out = {"net": net, "history": history, "cpu_s": cpu0 + time.process_time() - t_cpu}
    if export:
        out["onnx"] = export_detector(net, out_dir / "det_toy.onnx")
    return out
