"""Tiny insightface-contract ONNX packs and test images for the face tests (and the node tests).

The builders live in ``moca_model.face.tiny_models`` (the benchmark and the CPU demo use them too); this
module re-exports them and adds test images: the astronaut photo from scikit-image, multi-face canvases
with known boxes and landmarks, and landmark marker images for checking the warp.
"""
from __future__ import annotations

import math

import numpy as np

from moca_model.face.tiny_models import (  # noqa: F401  (re-exported for other test files)
    ASTRONAUT_FACE,
    ASTRONAUT_SIZE,
    TinyFace,
    build_detector,
    build_recognizer,
    make_tiny_pack,
    recognizer_weights,
    reference_embedding,
)

FACE_REGION = (140, 40, 310, 210)  # square around the astronaut's head in the 512x512 photo


def astronaut() -> np.ndarray:
    """skimage.data.astronaut(): [512, 512, 3] uint8, a real portrait photo shipped with scikit-image."""
    from skimage import data

    return data.astronaut()


def map_face(face: TinyFace, scale: float, dx: float, dy: float, **kw) -> TinyFace:
    """``face`` under p -> p * scale + (dx, dy)."""
    b = face.box
    return TinyFace((b[0] * scale + dx, b[1] * scale + dy, b[2] * scale + dx, b[3] * scale + dy),
                    tuple((x * scale + dx, y * scale + dy) for x, y in face.kps), kw.get("score", face.score),
                    kw.get("max_det_px", face.max_det_px))


def canvas_with_faces(size=(768, 512), placements=((40, 200, 0.6), (260, 120, 1.2), (560, 220, 0.9)),
                      background=128, src=None):
    """Paste the astronaut's head (FACE_REGION) at (x, y) with scale s for each placement.

    Returns (image [H, W, 3] uint8, [TinyFace] in canvas pixels, in placement order).
    """
    from PIL import Image

    src = astronaut() if src is None else src
    x0, y0, x1, y1 = FACE_REGION
    head = Image.fromarray(src[y0:y1, x0:x1])
    canvas = np.full((size[1], size[0], 3), background, np.uint8)
    faces = []
    for x, y, s in placements:
        n = round((x1 - x0) * s)
        patch = np.asarray(head.resize((n, n), Image.BILINEAR))
        cx0, cy0 = max(0, x), max(0, y)  # the part of the patch inside the canvas
        cx1, cy1 = min(size[0], x + n), min(size[1], y + n)
        canvas[cy0:cy1, cx0:cx1] = patch[cy0 - y:cy1 - y, cx0 - x:cx1 - x]
        k = n / (x1 - x0)
        faces.append(map_face(ASTRONAUT_FACE, k, x - x0 * k, y - y0 * k))
    return canvas, faces


def marker_image(points, size=(512, 512), sigma: float = 1.5) -> np.ndarray:
    """Black float image [H, W, 3] with a Gaussian blob (peak 1) at each float point (x, y)."""
    w, h = size
    img = np.zeros((h, w), np.float32)
    r = int(np.ceil(5 * sigma))
    for x, y in points:
        x0, x1 = max(0, int(x) - r), min(w, int(x) + r + 2)
        y0, y1 = max(0, int(y) - r), min(h, int(y) + r + 2)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        blob = np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2))
        img[y0:y1, x0:x1] = np.maximum(img[y0:y1, x0:x1], blob)
    return np.repeat(img[..., None], 3, -1)


def blob_centroids(img: np.ndarray, near, radius: float = 5.0) -> np.ndarray:
    """Intensity-weighted centroid of ``img`` [H, W(, C)] within ``radius`` of each expected point."""
    g = (img[..., 0] if img.ndim == 3 else img).astype(np.float64)
    h, w = g.shape
    r = int(np.ceil(radius)) + 1
    out = []
    for x, y in near:
        x0, x1 = max(0, int(x) - r), min(w, int(x) + r + 2)
        y0, y1 = max(0, int(y) - r), min(h, int(y) + r + 2)
        yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
        m = ((xx - x) ** 2 + (yy - y) ** 2 <= radius ** 2) * g[y0:y1, x0:x1]
        out.append([(m * xx).sum() / m.sum(), (m * yy).sum() / m.sum()])
    return np.array(out)


def similar_points(points, scale: float, angle_deg: float, dx: float, dy: float) -> np.ndarray:
    """points [K, 2] under a similarity transform."""
    a = math.radians(angle_deg)
    r = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) * scale
    return np.asarray(points, np.float64) @ r.T + np.array([dx, dy])
