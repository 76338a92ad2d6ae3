"""Toy SCRFD: a small fully-convolutional face detector with insightface's SCRFD output contract.

One small "band" network (``ToyDetector``, ~0.15 M parameters; conv-GroupNorm-ReLU backbone to stride 32
with residual depthwise (dilated) blocks for face-sized context, a top-down FPN into stride 8, a 48-channel
head: 1 score + 4 box distances + 10 keypoint offsets per stride-8 cell) finds faces of BAND = 16..112 px.
The exported graph (``SCRFDExport``, ~0.75 MB) runs it on an image pyramid built inside the graph: level k
(stride 8 * 2**k = 8, 16, 32) is the band network on the input average-pooled by 2**k, so faces of
16..~450 px are found at the stride SCRFD would use, and every training sample teaches all three levels
(a 380-px face at det size 640 is a 95-px face at level 2). Regressions are voted over 3x3 cells
(``vote``) and both SCRFD anchors of a cell share its prediction, giving exactly SCRFD's 9 outputs::

    score_8, score_16, score_32   [(H/s) * (W/s) * 2, 1]    sigmoid scores
    bbox_8,  bbox_16,  bbox_32    [(H/s) * (W/s) * 2, 4]    left, top, right, bottom distances / stride
    kps_8,   kps_16,   kps_32     [(H/s) * (W/s) * 2, 10]   keypoint offsets from the anchor / stride

for an input ``input.1`` ``[1, 3, H, W]`` (H, W dynamic multiples of 32) normalised ``(x - 127.5) / 128``
in RGB order - exactly what ``moca_model.face.detector`` feeds and decodes.

Targets (``assign_targets``, FCOS-style at the network's stride 8): a face in BAND makes the cells within
``CENTER_RADIUS`` strides of its box centre positive (centre sampling) and the ring around them ignored;
faces just outside the band (IGNORE) or cut by the canvas edge are ignored, larger faces stay negative
(the network must not fire on the parts of a face too big for it). Scores learn with plain BCE (not
focal: the pipeline cuts at 0.5), boxes with L1 + GIoU, keypoints with smooth L1, in stride units.

Training samples (``make_det_sample``) are mostly exactly what a pyramid level reads: a toy picture
(reference 256 px, clip frame 128 px, two-person frame, or nobody) letterboxed by the analyzer's own
``letterbox`` to 160/320/480/640, average-pooled by 1/2/4, a 160 or 256 window of it; the rest zoom a
face to 10..600 px at random places. Flips, blur, down-up scaling, colour and noise on top.
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

STRIDES = (8, 16, 32)  # SCRFD's output strides = NET_STRIDE * 2**k for pyramid level k
NET_STRIDE = 8
NUM_ANCHORS = 2
INPUT_MEAN, INPUT_STD = 127.5, 128.0  # SCRFD normalisation (moca_model.face.detector)
# face size (sqrt of the box area, in pixels of the network's own input) -> role at the network's stride 8:
BAND = (16.0, 112.0)  # positive: the band the network reports
IGNORE = (12.0, 150.0)  # just outside the band: neither positive nor negative (the next pyramid level's job)
CENTER_RADIUS = 1.5  # positives: anchors within this many strides of the box centre (and inside the box)
IGNORE_RADIUS = 2.5  # the ring between the two radii is ignored by the score loss
MAX_FACES = 8
FLIP_KPS = (1, 0, 2, 4, 3)  # insightface order under a horizontal flip
DET_SIZES = (160, 320, 480, 640)  # the analyzer's detector sizes (640 and its fallbacks)


# ---------------------------------------------------------------------------------------------- network
def norm(c: int) -> nn.Module:
    """GroupNorm, not BatchNorm: batches hold a few canvases, and BN's running averages misfire when
    inference inputs (a 5x upscaled 128-px frame at det size 640) differ from the training mix."""
    return nn.GroupNorm(8, c)


class CBR(nn.Sequential):
    def __init__(self, cin, cout, k=3, s=1):
        super().__init__(nn.Conv2d(cin, cout, k, s, k // 2, bias=False), norm(cout), nn.ReLU(inplace=True))


class DWRes(nn.Module):
    """Residual depthwise-separable 3x3 (optionally dilated) block: cheap extra context at low resolution."""

    def __init__(self, c, dilation=1):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, 1, dilation, dilation=dilation, groups=c, bias=False),
                                  norm(c), nn.ReLU(inplace=True), nn.Conv2d(c, c, 1, bias=False), norm(c))

    def forward(self, x):
        return F.relu(x + self.body(x))


KPS_WINDOW = 15  # cells: each cell reads its keypoints by soft-argmax over this window of keypoint heatmaps


class ToyDetector(nn.Module):
    """The band network: [B, 3, H, W] normalised -> map [B, 15, H/8, W/8] (score logit, 4 box distances,
    10 keypoint offsets, in units of its stride 8) for faces of BAND pixels.

    Keypoints are not regressed from the cell: the head predicts, per keypoint, a heatmap logit and a
    sub-cell offset at every cell, and each cell's keypoints are the soft-argmax of those heatmaps over the
    KPS_WINDOW x KPS_WINDOW cells around it (integral regression) - a local, translation-equivariant job
    that a small network learns precisely, where a 5-point offset regression from the face centre stays
    close to an average face."""

    def __init__(self, width: int = 48):
        super().__init__()
        self.stem = nn.Sequential(CBR(3, 16, 3, 2), CBR(16, 24, 3, 2))  # /4
        self.c3 = nn.Sequential(CBR(24, 32, 3, 2), CBR(32, 32))  # /8
        self.c4 = nn.Sequential(CBR(32, 48, 3, 2), CBR(48, 48), DWRes(48, 2))  # /16
        self.c5 = nn.Sequential(CBR(48, 64, 3, 2), DWRes(64), DWRes(64, 2))  # /32: context of a whole face
        self.lat = nn.ModuleList([nn.Conv2d(c, width, 1) for c in (32, 48, 64)])
        # 20 channels: score, 4 box distances, 5 keypoint heatmap logits, 5 x (dx, dy) sub-cell offsets
        self.head = nn.Sequential(CBR(width, width), CBR(width, width), nn.Conv2d(width, 20, 1))
        self.reg_scale = nn.Parameter(torch.ones(1))
        nn.init.constant_(self.head[-1].bias, 0.0)
        with torch.no_grad():
            self.head[-1].bias[0] = -4.6  # prior score 0.01
            self.head[-1].bias[1:5] = 4.0  # distances of ~4 strides

    def raw(self, x):
        """[B, 20, H/8, W/8]: score, distances, heatmap logits, sub-cell offsets."""
        c3 = self.c3(self.stem(x))
        c4 = self.c4(c3)
        c5 = self.c5(c4)
        p4 = self.lat[1](c4) + F.interpolate(self.lat[2](c5), size=c4.shape[-2:], mode="nearest")
        p3 = self.lat[0](c3) + F.interpolate(p4, size=c3.shape[-2:], mode="nearest")
        o = self.head(p3)
        return torch.cat([o[:, :1], o[:, 1:5] * self.reg_scale, o[:, 5:]], 1)

    def forward(self, x):
        o = self.raw(x)
        return torch.cat([o[:, :5], soft_argmax_kps(o, NET_STRIDE)], 1)


def soft_argmax_kps(o: torch.Tensor, stride: int, win: int = KPS_WINDOW) -> torch.Tensor:
    """Raw head maps [B, 20, h, w] -> keypoint offsets [B, 10, h, w] (x0, y0, ..., stride units from each
    cell's anchor): per keypoint, the heatmap-weighted mean over the ``win`` x ``win`` cells around the cell
    of (that cell's anchor + its sub-cell offset)."""
    b, _, h, w = o.shape
    cx = (torch.arange(w, dtype=o.dtype, device=o.device) * stride).view(1, 1, 1, w)
    cy = (torch.arange(h, dtype=o.dtype, device=o.device) * stride).view(1, 1, h, 1)
    e = torch.exp(o[:, 5:10].clamp(-20.0, 20.0))
    px = o[:, 10::2] * stride + cx
    py = o[:, 11::2] * stride + cy
    pad = win // 2
    s = F.avg_pool2d(e, win, 1, pad)
    kx = F.avg_pool2d(e * px, win, 1, pad) / s
    ky = F.avg_pool2d(e * py, win, 1, pad) / s
    return torch.stack([(kx - cx) / stride, (ky - cy) / stride], 2).reshape(b, 10, h, w)


def vote(o: torch.Tensor, stride: int, power: float = 4.0) -> torch.Tensor:
    """Score-weighted 3x3 voting of raw maps [B, 15, h, w]: every cell's box and keypoints become the average
    of the ABSOLUTE positions its neighbours predict (weights sigmoid(score) ** power), expressed again as
    distances / offsets from its own anchor. The decoder keeps the best cell after NMS; voting makes its
    landmarks the consensus of the confident cells around it instead of one cell's guess."""
    b, _, h, w = o.shape
    cx = (torch.arange(w, dtype=o.dtype, device=o.device) * stride).view(1, 1, 1, w).expand(b, 1, h, w)
    cy = (torch.arange(h, dtype=o.dtype, device=o.device) * stride).view(1, 1, h, 1).expand(b, 1, h, w)
    d, k = o[:, 1:5] * stride, o[:, 5:] * stride
    pts = torch.cat([cx - d[:, 0:1], cy - d[:, 1:2], cx + d[:, 2:3], cy + d[:, 3:4], k[:, 0::2] + cx, k[:, 1::2] + cy], 1)
    wt = torch.sigmoid(o[:, :1]).pow(power)
    eps = 1e-3  # the cell's own guess, which wins where nobody around is confident (and keeps fp32 stable)
    avg = (F.avg_pool2d(pts * wt, 3, 1, 1) + eps * pts) / (F.avg_pool2d(wt, 3, 1, 1) + eps)
    dist = torch.cat([cx - avg[:, 0:1], cy - avg[:, 1:2], avg[:, 2:3] - cx, avg[:, 3:4] - cy], 1) / stride
    kx, ky = (avg[:, 4:9] - cx) / stride, (avg[:, 9:14] - cy) / stride
    kps = torch.stack([kx, ky], 2).reshape(b, 10, h, w)
    return torch.cat([o[:, :1], dist, kps], 1)


def level_shift(k: int) -> float:
    """Pyramid level k (input average-pooled by 2**k): a point u of the pooled input sits at
    u * 2**k + (2**k - 1) / 2 in the full input (pixel centres), i.e. this many output strides
    (NET_STRIDE * 2**k) beyond where the anchor arithmetic alone puts it."""
    f = 2 ** k
    return (f - 1) / (2.0 * NET_STRIDE * f)


class SCRFDExport(nn.Module):
    """The ONNX face of :class:`ToyDetector`: input ``[1, 3, H, W]`` -> SCRFD's 9 outputs (module doc).

    Level k of the outputs (stride 8 * 2**k) is the band network run on the input average-pooled by 2**k,
    so one small network covers faces of 16..~450 px; regressions are voted (:func:`vote`) unless
    ``voting=False``."""

    def __init__(self, net: ToyDetector, voting: bool = True):
        super().__init__()
        self.net, self.voting = net, voting
        for k in range(len(STRIDES)):
            c = level_shift(k)
            self.register_buffer(f"shift{k}", torch.tensor([-c, -c, c, c] + [c] * 10).view(1, 14, 1, 1), False)

    def forward(self, x):
        scores, boxes, kps = [], [], []
        for k in range(len(STRIDES)):
            o = self.net(x if k == 0 else F.avg_pool2d(x, 2 ** k))
            if self.voting:
                o = vote(o, NET_STRIDE)
            if k:
                o = torch.cat([o[:, :1], o[:, 1:] + getattr(self, f"shift{k}")], 1)
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
def assign_targets(faces: list, height: int, width: int) -> dict:
    """Targets of one canvas at the network's stride. faces: list of (box [4], kps [5, 2], valid bool) in
    canvas pixels. Returns dict(score [h*w] float, weight [h*w] float (0 = ignored), pos [h*w] bool,
    dist [h*w, 4], kps [h*w, 10] (stride units)). Faces that are not ``valid`` (cut by the canvas edge) or
    outside BAND only add ignores (sizes beyond IGNORE[1] stay negative: the network must not fire on the
    parts of a face too big for it)."""
    stride = NET_STRIDE
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
        in_band = BAND[0] <= size < BAND[1]
        near = IGNORE[0] <= size < IGNORE[1] or size < BAND[0]
        fx, fy = (box[2] + box[0]) / 2, (box[3] + box[1]) / 2
        dx, dy = np.abs(cx - fx), np.abs(cy - fy)
        inside = (cx > box[0]) & (cx < box[2]) & (cy > box[1]) & (cy < box[3])
        r = CENTER_RADIUS * stride
        core = (dx <= r) & (dy <= r) & inside
        ring = (dx <= IGNORE_RADIUS * stride) & (dy <= IGNORE_RADIUS * stride)
        if not (valid and in_band):
            if in_band or near:
                weight[ring & (score == 0)] = 0.0
            continue
        if not core.any():  # a small face between anchors: take the nearest one
            core[int(np.argmin(dx ** 2 + dy ** 2))] = True
        take = core & (size < best)
        weight[ring & ~core & (score == 0)] = 0.0
        best[take] = size
        score[take] = 1.0
        weight[take] = 1.0
        dist[take] = np.stack([cx[take] - box[0], cy[take] - box[1], box[2] - cx[take], box[3] - cy[take]], -1) / stride
        k = np.asarray(kps, np.float32).reshape(5, 2)
        kpt[take] = ((k[None] - np.stack([cx[take], cy[take]], -1)[:, None]) / stride).reshape(-1, 10)
    kp_faces = np.zeros((MAX_FACES, 5, 2), np.float32)  # in-band faces, for the heatmap loss
    bands = [np.asarray(k, np.float32).reshape(5, 2) for b_, k, v in faces
             if v and BAND[0] <= math.sqrt(max(0.0, (b_[2] - b_[0]) * (b_[3] - b_[1]))) < BAND[1]][:MAX_FACES]
    for i, k in enumerate(bands):
        kp_faces[i] = k
    return dict(score=score, weight=weight, pos=score > 0, dist=dist, kps=kpt, kp_faces=kp_faces,
                n_kp=np.int64(len(bands)))


def collate_targets(per_image: list) -> dict:
    """List (images) of target dicts -> dict of batched tensors."""
    return {k: torch.from_numpy(np.stack([t[k] for t in per_image])) for k in per_image[0]}


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


def heatmap_loss(raw: torch.Tensor, t: dict, stride: int = NET_STRIDE) -> tuple:
    """Auxiliary keypoint losses on the raw maps [B, 20, h, w]: cross-entropy of each keypoint's heatmap over
    the window around its face (target: the cell nearest the keypoint) and smooth L1 of that cell's
    sub-cell offset. Returns (ce, offset) summed over keypoints, averaged over faces."""
    b_, _, h, w = raw.shape
    r = KPS_WINDOW // 2
    ce, off, n = raw.new_zeros(()), raw.new_zeros(()), 0
    j = torch.arange(5)
    for b in range(b_):
        for f in range(int(t["n_kp"][b])):
            k = t["kp_faces"][b, f]  # [5, 2] canvas px
            c = k.mean(0) / stride
            x0, x1 = max(0, int(round(float(c[0]))) - r), min(w, int(round(float(c[0]))) + r + 1)
            y0, y1 = max(0, int(round(float(c[1]))) - r), min(h, int(round(float(c[1]))) + r + 1)
            if x1 <= x0 or y1 <= y0:
                continue
            tx = (k[:, 0] / stride).round().long().clamp(x0, x1 - 1)
            ty = (k[:, 1] / stride).round().long().clamp(y0, y1 - 1)
            logits = raw[b, 5:10, y0:y1, x0:x1].reshape(5, -1)
            ce = ce + F.cross_entropy(logits, (ty - y0) * (x1 - x0) + (tx - x0), reduction="sum")
            pred = torch.stack([raw[b, 10 + 2 * j, ty, tx], raw[b, 11 + 2 * j, ty, tx]], -1)  # [5, 2]
            tgt = torch.stack([k[:, 0] / stride - tx, k[:, 1] / stride - ty], -1)
            off = off + F.smooth_l1_loss(pred, tgt, beta=0.05, reduction="sum")
            n += 1
    return ce / max(1, n), off / max(1, n)


def detector_loss(out: torch.Tensor, t: dict, raw: torch.Tensor | None = None) -> tuple:
    """(total, parts dict). out: [B, 15, h, w] (the network's forward); t: collate_targets output; raw: the
    [B, 20, h, w] head maps for the auxiliary heatmap losses (optional)."""
    o = out.permute(0, 2, 3, 1).reshape(out.shape[0], -1, 15)  # [B, h*w, 15]
    norm_ = max(1.0, float(t["pos"].sum()))
    # plain BCE, not focal: the pipeline thresholds scores at 0.5, so the loss must not go soft there
    bce = F.binary_cross_entropy_with_logits(o[..., 0], t["score"], reduction="none")
    cls_l = (bce * t["weight"]).sum() / norm_
    pos = t["pos"]
    box_l = kps_l = out.new_zeros(())
    if pos.any():
        d, td = o[..., 1:5][pos], t["dist"][pos]
        box_l = (F.l1_loss(d, td, reduction="sum") * 0.5 + giou_loss(d, td).sum() * 2.0) / norm_
        kps_l = F.smooth_l1_loss(o[..., 5:][pos], t["kps"][pos], beta=0.05, reduction="sum") / norm_
    total = cls_l + box_l + kps_l
    hm_ce = hm_off = out.new_zeros(())
    if raw is not None:
        hm_ce, hm_off = heatmap_loss(raw, t)
        total = total + 0.2 * hm_ce + hm_off
    parts = {k: float(v.detach()) for k, v in (("cls", cls_l), ("box", box_l), ("kps", kps_l), ("hm_ce", hm_ce),
                                                ("hm_off", hm_off))}
    return total, {**parts, "npos": float(pos.sum())}


# ---------------------------------------------------------------------------------------------- samples
def photometric(img: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Random blur / down-up scaling / brightness-contrast / noise on a uint8 RGB image."""
    import cv2

    x = img
    r = rng.random()
    if r < 0.25 * strength:
        x = cv2.GaussianBlur(x, (0, 0), rng.uniform(0.4, 1.3))
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


def _pool(x: np.ndarray, f: int) -> np.ndarray:
    """[H, W, 3] float average-pooled by f (what the export's F.avg_pool2d does; H, W multiples of f)."""
    if f == 1:
        return x
    h, w = x.shape[0] // f, x.shape[1] // f
    return x[:h * f, :w * f].reshape(h, f, w, f, 3).mean((1, 3))


def make_det_sample(img: np.ndarray, boxes: np.ndarray, kps: np.ndarray, size: int, rng: np.random.Generator,
                    mode: str | None = None, augment: bool = True):
    """One training canvas [size, size, 3] float32 (0..255) and its faces [(box, kps, valid)] in canvas pixels.

    mode ``pyramid`` (80% by default): exactly what a pyramid level of the exported detector reads - the
    picture letterboxed to a detector size (DET_SIZES) by the analyzer's own ``letterbox``, average-pooled
    by 1, 2 or 4, and a ``size`` window of it (biased towards a face; black beyond the picture).
    mode ``zoom``: the picture scaled so its first face is 10..600 px, placed at random.
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
        mode = "pyramid" if rng.random() < 0.8 else "zoom"
    if mode == "pyramid":
        if augment and rng.random() < 0.15:  # another aspect ratio: a crop, letterboxed with black
            cw, ch = int(w0 * rng.uniform(0.6, 1.0)), int(h0 * rng.uniform(0.6, 1.0))
            x0, y0 = int(rng.integers(0, w0 - cw + 1)), int(rng.integers(0, h0 - ch + 1))
            img = np.ascontiguousarray(img[y0:y0 + ch, x0:x0 + cw])
            boxes = boxes - np.array([x0, y0, x0, y0], np.float32)
            kps = kps - np.array([x0, y0], np.float32)
            h0, w0 = img.shape[:2]
        choices = [(d, f) for d in DET_SIZES for f in (1, 2, 4) if d // f >= 80]
        # 3x the weight for the levels where the face lands in the band (e.g. det size 640, level 2: the
        # level that finds a toy reference or frame in the analyzer's first try); the others teach negatives
        frac = float(np.sqrt(max(1.0, (boxes[0, 2] - boxes[0, 0]) * (boxes[0, 3] - boxes[0, 1])))) / max(h0, w0) \
            if len(boxes) else 0.5
        wts = np.array([3.0 if BAND[0] <= frac * d / fl < BAND[1] else 1.0 for d, fl in choices])
        det, f = choices[int(rng.choice(len(choices), p=wts / wts.sum()))]
        lb, s = letterbox(img, det)
        new_w = int(det / (h0 / w0)) if h0 / w0 > 1.0 else det
        scale = np.array([new_w / w0, round(h0 * s) / h0], np.float32)  # cv2.resize: x_c -> (x_c + .5) f - .5
        off = 0.5 * scale - 0.5
        big = _pool(lb.astype(np.float32), f)
        scale, off = scale / f, (off - (f - 1) / 2) / f
        b = map_points(boxes.reshape(-1, 2, 2), scale, off).reshape(-1, 4)
        k = map_points(kps, scale, off)
        # a size x size window: around a face 70% of the time
        hb, wb = big.shape[:2]
        if len(b) and rng.random() < 0.7:
            c = (b[0, :2] + b[0, 2:]) / 2
            x0 = int(np.clip(c[0] - rng.uniform(0.2, 0.8) * size, min(0, wb - size), max(0, wb - size)))
            y0 = int(np.clip(c[1] - rng.uniform(0.2, 0.8) * size, min(0, hb - size), max(0, hb - size)))
        elif wb < size and hb < size and rng.random() < 0.5:  # a small picture: top-left, like the letterbox
            x0 = y0 = 0
        else:
            x0 = int(rng.integers(min(0, wb - size), max(0, wb - size) + 1))
            y0 = int(rng.integers(min(0, hb - size), max(0, hb - size) + 1))
        canvas = np.zeros((size, size, 3), np.float32)
        sx0, sy0 = max(0, x0), max(0, y0)
        sx1, sy1 = min(wb, x0 + size), min(hb, y0 + size)
        canvas[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = big[sy0:sy1, sx0:sx1]
        b = b - np.array([x0, y0, x0, y0], np.float32)
        k = k - np.array([x0, y0], np.float32)
    else:
        fsize = float(np.sqrt(max(1.0, (boxes[0, 2] - boxes[0, 0]) * (boxes[0, 3] - boxes[0, 1])))) if len(boxes) \
            else w0 / 2
        s = math.exp(rng.uniform(math.log(10), math.log(600))) / fsize
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
        canvas = cv2.warpAffine(src, m, (size, size), flags=cv2.INTER_LINEAR, borderValue=(0, 0, 0)).astype(np.float32)
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
    """[B, S, S, 3] RGB 0..255 (uint8 or float) -> [B, 3, S, S] float, SCRFD normalisation."""
    x = torch.from_numpy(np.ascontiguousarray(canvases)).permute(0, 3, 1, 2).float()
    return (x - INPUT_MEAN) / INPUT_STD


# ---------------------------------------------------------------------------------------------- training
KIND_P = {"ref": 0.38, "frame": 0.32, "two": 0.12, "bg": 0.18}
SIZE_P = {160: 0.4, 256: 0.6}  # training canvas sizes (256: a mosaic of four 128 samples)
MOSAIC_TILE = 128
PIXELS_PER_STEP = 160 * 160 * 12


def _one_sample(pool: dict, rng: np.random.Generator, size: int):
    import cv2

    kind = str(rng.choice(list(KIND_P), p=list(KIND_P.values())))
    imgs, boxes, kps, ns = pool[kind]
    i = int(rng.integers(len(imgs)))
    img, n = np.asarray(imgs[i]), int(ns[i])
    if kind == "bg" and rng.random() < 0.5:
        img = cv2.resize(img, (128, 128), interpolation=cv2.INTER_AREA)
    return make_det_sample(img, boxes[i, :n], kps[i, :n], size, rng)


def sample_batch(pool: dict, rng: np.random.Generator, size: int | None = None, batch: int | None = None,
                 pixels: int = PIXELS_PER_STEP):
    """(input [B, 3, S, S], targets, faces per canvas) drawn from a detection pool. A 256 canvas is a 2x2
    mosaic of 128 samples (most pyramid-level pictures are small: no compute spent on empty canvas)."""
    if size is None:
        size = int(rng.choice(list(SIZE_P), p=list(SIZE_P.values())))
    if batch is None:
        batch = max(1, int(round(pixels / size ** 2)))
    canvases, targets, faces_l = [], [], []
    for _ in range(batch):
        if size == 2 * MOSAIC_TILE:
            canvas = np.zeros((size, size, 3), np.float32)
            faces = []
            for ty in (0, MOSAIC_TILE):
                for tx in (0, MOSAIC_TILE):
                    tile, tf = _one_sample(pool, rng, MOSAIC_TILE)
                    canvas[ty:ty + MOSAIC_TILE, tx:tx + MOSAIC_TILE] = tile
                    off = np.array([tx, ty], np.float32)
                    faces += [(b + np.concatenate([off, off]), k + off, v) for b, k, v in tf  # centre in its tile
                              if 0 <= (b[0] + b[2]) / 2 < MOSAIC_TILE and 0 <= (b[1] + b[3]) / 2 < MOSAIC_TILE]
        else:
            canvas, faces = _one_sample(pool, rng, size)
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
        raw = net.raw(x)
        out = torch.cat([raw[:, :5], soft_argmax_kps(raw, NET_STRIDE)], 1)
        loss, parts = detector_loss(out, targets, raw)
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
                f"kps {np.mean([h['kps'] for h in recent]):.3f} hm {np.mean([h['hm_ce'] for h in recent]):.2f}/{np.mean([h['hm_off'] for h in recent]):.3f}) "
                f"cpu {cpu0 + time.process_time() - t_cpu:.0f} s")
        if step % ckpt_every == 0 or step == steps:
            _save_ckpt(ckpt, {"net": net.state_dict(), "opt": opt.state_dict(), "step": step, "history": history,
                              "np_rng": rng.bit_generator.state, "torch_rng": torch.get_rng_state(),
                              "cpu_s": cpu0 + time.process_time() - t_cpu, "seed": seed, "steps": steps})
    net.eval()
    out = {"net": net, "history": history, "cpu_s": cpu0 + time.process_time() - t_cpu}
    if export:
        out["onnx"] = export_detector(net, out_dir / "det_toy.onnx")
    return out
