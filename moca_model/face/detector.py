"""SCRFD face detection (insightface's detector) decoded in numpy, for the onnxruntime backend.

Mirrors insightface ``model_zoo/scrfd.py``: the image is resized keeping its aspect ratio into the top-left
corner of a ``size x size`` black canvas, normalised as ``(x - 127.5) / 128`` in RGB order, and the
network's 9 outputs (scores, box distances, keypoint offsets for strides 8, 16, 32; 2 anchors per cell)
are decoded around the anchor centres, filtered by the score threshold and merged by NMS (IoU 0.4).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import FacePackError

NMS_THRESH = 0.4
DEFAULT_DET_THRESH = 0.5
INPUT_MEAN, INPUT_STD = 127.5, 128.0
# output count -> (feature map count, strides, anchors per cell, has keypoints)
LAYOUTS = {
    6: (3, (8, 16, 32), 2, False),
    9: (3, (8, 16, 32), 2, True),
    10: (5, (8, 16, 32, 64, 128), 1, False),
    15: (5, (8, 16, 32, 64, 128), 1, True),
}


@dataclass
class Detection:
    """One detected face, in the coordinates of the image given to the detector."""

    box: np.ndarray  # [4] x1, y1, x2, y2
    score: float
    kps: np.ndarray  # [5, 2] left eye, right eye, nose, left mouth, right mouth
    det_size: int = 0

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))

    @property
    def center(self) -> tuple:
        return (float(self.box[0] + self.box[2]) / 2, float(self.box[1] + self.box[3]) / 2)


def fallback_sizes(det_size: int) -> list[int]:
    """Detector sizes to try in order: ``det_size`` then smaller (multiples of 32, at least 128).

    Faces that fill the photo are often missed at 640 (too large for SCRFD's anchors) and found smaller.
    """
    det_size = int(det_size)
    out = []
    for f in (1.0, 0.75, 0.5, 0.25):
        s = det_size if f == 1.0 else max(128, int(det_size * f) // 32 * 32)
        if s not in out and s <= det_size:
            out.append(s)
    return out


def letterbox(img: np.ndarray, size: int):
    """insightface's resize-and-pad: img [H, W, 3] uint8 -> ([size, size, 3] uint8, det_scale)."""
    h, w = img.shape[:2]
    im_ratio = float(h) / w
    if im_ratio > 1.0:
        new_h = size
        new_w = int(new_h / im_ratio)
    else:
        new_w = size
        new_h = int(new_w * im_ratio)
    new_w, new_h = max(1, new_w), max(1, new_h)
    det_scale = float(new_h) / h
    resized = resize_uint8(img, new_w, new_h)
    canvas = np.zeros((size, size, 3), dtype=np.uint8)
    canvas[:new_h, :new_w] = resized
    return canvas, det_scale


def resize_uint8(img: np.ndarray, new_w: int, new_h: int) -> np.ndarray:
    """Bilinear resize of a uint8 image, with OpenCV when present (bit-identical to insightface)."""
    if img.shape[1] == new_w and img.shape[0] == new_h:
        return img
    try:
        import cv2
    except Exception:  # no OpenCV (or a broken one): torch gives the same up to rounding
        cv2 = None
    if cv2 is not None:
        return cv2.resize(img, (new_w, new_h))
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
    y = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    return y[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()


def to_blob(det_img: np.ndarray) -> np.ndarray:
    """[S, S, 3] uint8 RGB -> [1, 3, S, S] float32, ``(x - 127.5) / 128``."""
    x = np.ascontiguousarray(det_img.transpose(2, 0, 1), dtype=np.float32)
    x -= INPUT_MEAN
    x /= INPUT_STD
    return x[None]


_centers_cache: dict = {}


def anchor_centers(height: int, width: int, stride: int, num_anchors: int) -> np.ndarray:
    """Anchor centres [height * width * num_anchors, 2] (x, y) in input pixels, row-major, anchors innermost."""
    key = (height, width, stride, num_anchors)
    c = _centers_cache.get(key)
    if c is None:
        c = np.stack(np.mgrid[:height, :width][::-1], axis=-1).astype(np.float32)
        c = (c * stride).reshape(-1, 2)
        if num_anchors > 1:
            c = np.stack([c] * num_anchors, axis=1).reshape(-1, 2)
        if len(_centers_cache) < 100:
            _centers_cache[key] = c
    return c


def decode(net_outs: list, input_h: int, input_w: int, threshold: float, n_outputs: int):
    """Raw SCRFD outputs -> (scores [K], boxes [K, 4], kps [K, 5, 2]) above ``threshold``, input pixels."""
    fmc, strides, num_anchors, use_kps = LAYOUTS[n_outputs]
    scores_l, boxes_l, kps_l = [], [], []
    for idx, stride in enumerate(strides):
        scores = np.asarray(net_outs[idx])
        boxes = np.asarray(net_outs[idx + fmc])
        if scores.ndim == 3:  # batched export: [1, N, C]
            scores, boxes = scores[0], boxes[0]
        scores = scores.reshape(-1)
        boxes = boxes.reshape(-1, 4) * stride
        centers = anchor_centers(input_h // stride, input_w // stride, stride, num_anchors)
        if centers.shape[0] != scores.shape[0]:
            raise FacePackError(
                f"The detector returned {scores.shape[0]} scores at stride {stride} for a {input_w}x{input_h} "
                f"input, expected {centers.shape[0]}: it is not an SCRFD detector (wrong file in the pack?)."
            )
        pos = np.where(scores >= threshold)[0]
        scores_l.append(scores[pos])
        b = boxes[pos]
        c = centers[pos]
        boxes_l.append(np.stack([c[:, 0] - b[:, 0], c[:, 1] - b[:, 1], c[:, 0] + b[:, 2], c[:, 1] + b[:, 3]], -1))
        if use_kps:
            k = np.asarray(net_outs[idx + 2 * fmc])
            k = (k[0] if k.ndim == 3 else k).reshape(-1, 10)[pos] * stride
            k = k.reshape(-1, 5, 2) + c[:, None, :]
            kps_l.append(k)
    scores = np.concatenate(scores_l).astype(np.float32)
    boxes = np.concatenate(boxes_l).astype(np.float32).reshape(-1, 4)
    kps = np.concatenate(kps_l).astype(np.float32).reshape(-1, 5, 2) if use_kps else None
    return scores, boxes, kps


def nms(dets: np.ndarray, thresh: float = NMS_THRESH) -> list:
    """Greedy NMS on dets [K, 5] (x1, y1, x2, y2, score), insightface's "+1" area convention."""
    x1, y1, x2, y2, scores = dets[:, 0], dets[:, 1], dets[:, 2], dets[:, 3], dets[:, 4]
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order = np.argsort(-scores, kind="stable")
    keep = []
    while order.size > 0:
        i = order[0]
        keep.append(int(i))
        xx1 = np.maximum(x1[i], x1[order[1:]])
        yy1 = np.maximum(y1[i], y1[order[1:]])
        xx2 = np.minimum(x2[i], x2[order[1:]])
        yy2 = np.minimum(y2[i], y2[order[1:]])
        w = np.maximum(0.0, xx2 - xx1 + 1)
        h = np.maximum(0.0, yy2 - yy1 + 1)
        inter = w * h
        ovr = inter / (areas[i] + areas[order[1:]] - inter)
        order = order[np.where(ovr <= thresh)[0] + 1]
    return keep


def finish(scores: np.ndarray, boxes: np.ndarray, kps: np.ndarray, det_scale: float, nms_thresh: float = NMS_THRESH):
    """Scale back to image pixels, sort by score, NMS -> (dets [K, 5], kps [K, 5, 2])."""
    order = np.argsort(-scores, kind="stable")
    dets = np.hstack([boxes / det_scale, scores[:, None]]).astype(np.float32)[order]
    kps = (kps / det_scale)[order]
    keep = nms(dets, nms_thresh)
    return dets[keep], kps[keep]


class SCRFDOnnx:
    """SCRFD run directly with onnxruntime (no insightface)."""

    def __init__(self, session, path: str = ""):
        self.session = session
        inp = session.get_inputs()[0]
        self.input_name = inp.name
        shape = list(inp.shape)
        self.fixed_size = None
        if len(shape) == 4 and isinstance(shape[2], int) and isinstance(shape[3], int) and shape[2] > 0:
            if shape[2] != shape[3]:
                raise FacePackError(f"Detector {path} has a fixed non-square input {shape}; expected [1, 3, ?, ?].")
            self.fixed_size = int(shape[2])
        self.output_names = [o.name for o in session.get_outputs()]
        n = len(self.output_names)
        if n not in LAYOUTS:
            raise FacePackError(
                f"{path} has {n} outputs; an SCRFD detector has 6, 9, 10 or 15. Is the right file in the pack?"
            )
        if not LAYOUTS[n][3]:
            raise FacePackError(
                f"{path} is an SCRFD detector without the 5 face landmarks (a *_bnkps / det_* model is needed)."
            )

    def detect(self, img: np.ndarray, size: int, threshold: float):
        """img [H, W, 3] uint8 RGB -> (dets [K, 5] image pixels + score, kps [K, 5, 2])."""
        det_img, det_scale = letterbox(img, size)
        outs = self.session.run(self.output_names, {self.input_name: to_blob(det_img)})
        scores, boxes, kps = decode(outs, size, size, threshold, len(self.output_names))
        if scores.size == 0:
            return np.zeros((0, 5), np.float32), np.zeros((0, 5, 2), np.float32)
        return finish(scores, boxes, kps, det_scale)
