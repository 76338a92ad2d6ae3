"""5-point face alignment: least-squares similarity transform to the ArcFace template, warped with kornia.

Coordinates are OpenCV pixel coordinates (pixel centres at integers), the convention of insightface's
landmarks and of ``kornia.geometry.transform.warp_affine(..., align_corners=True)``. Everything is batched
torch and runs on whatever device the inputs are on.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .threads import single_thread

# insightface ``utils/face_align.py: arcface_dst``: left eye, right eye, nose tip, left and right mouth
# corner ("left" = image left) in the 112x112 ArcFace crop.
ARCFACE_TEMPLATE = torch.tensor(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=torch.float64,
)
ARCFACE_SIZE = 112
# The local (reference) crop shows LOCAL_MARGIN times the extent of the 112 crop, centred a little above
# its centre so the whole face, the hair and the chin fit: in 112-template units the crop spans
# x -44.8..156.8, y -50.8..150.8 (the ArcFace crop itself cuts the forehead and the chin).
LOCAL_MARGIN = 1.8
LOCAL_CENTER = (56.0, 50.0)
DOWNSCALE_ANTIALIAS_BELOW = 0.75  # warp scales below this are pre-filtered (no aliasing on big faces)


def template(size: int = ARCFACE_SIZE, margin: float = 1.0, center=(56.0, 56.0)) -> torch.Tensor:
    """The 5 template points ``[5, 2]`` for a ``size`` crop that shows ``margin`` times the ArcFace crop.

    ``template(112)`` is the ArcFace template itself; ``template(224)`` equals insightface's ``arcface_dst * 2``.
    """
    c = torch.tensor(center, dtype=torch.float64)
    return (ARCFACE_TEMPLATE - c) * (size / (ARCFACE_SIZE * margin)) + size / 2.0


def local_template(size: int = 256) -> torch.Tensor:
    """Template points ``[5, 2]`` of the larger local crop (face + hair + chin)."""
    return template(size, LOCAL_MARGIN, LOCAL_CENTER)


def estimate_similarity(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity (rotation, uniform scale, translation) mapping ``src`` onto ``dst``.

    src: [B, K, 2] (or [K, 2]); dst: [K, 2] or [B, K, 2]. Returns M [B, 2, 3] (float32, src device), the
    closed form of Umeyama's estimate without reflection - what ``skimage.transform.SimilarityTransform``
    (insightface's ``estimate_norm``) computes. Same dtype as ``src`` (float32 for integer input).
    """
    squeeze = src.ndim == 2
    s = (src[None] if squeeze else src).to(torch.float64)
    d = dst.to(device=s.device, dtype=torch.float64)
    d = d.expand(s.shape[0], -1, -1) if d.ndim == 2 else d
    ms, md = s.mean(1, keepdim=True), d.mean(1, keepdim=True)
    xs, xd = s - ms, d - md  # [B, K, 2]
    var = (xs ** 2).sum((1, 2)).clamp_min(1e-12)  # [B]
    a = (xs * xd).sum((1, 2)) / var
    b = (xs[..., 0] * xd[..., 1] - xs[..., 1] * xd[..., 0]).sum(1) / var
    rot = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], -2)  # [B, 2, 2]
    t = md[:, 0] - (rot @ ms[:, 0, :, None])[..., 0]  # [B, 2]
    m = torch.cat([rot, t[..., None]], -1)  # [B, 2, 3]
    return m.to(src.dtype if src.is_floating_point() else torch.float32)


def transform_points(m: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Apply M [B, 2, 3] to points [B, K, 2]."""
    return pts @ m[:, :, :2].transpose(1, 2) + m[:, None, :, 2]


def similarity_scale(m: torch.Tensor) -> torch.Tensor:
    """Scale factor of each similarity M [B, 2, 3] -> [B]."""
    return m[:, :, :2].det().abs().sqrt()


def warp(images: torch.Tensor, m: torch.Tensor, size: int) -> torch.Tensor:
    """Batched warp: images [B, C, H, W] float, M [B, 2, 3] (source -> crop pixels) -> [B, C, size, size].

    Plain bilinear sampling with zero padding, like ``cv2.warpAffine`` in insightface's ``norm_crop``.
    """
    from kornia.geometry.transform import warp_affine

    return warp_affine(images, m.to(images.dtype), (size, size), mode="bilinear", padding_mode="zeros",
                       align_corners=True)


def _warp_one(img: torch.Tensor, m: torch.Tensor, size: int, antialias: bool) -> torch.Tensor:
    """img [C, H, W], M [2, 3] -> [C, size, size], reading only the region the crop needs.

    Large images are cropped to that region first; when the crop shrinks the face by more than
    DOWNSCALE_ANTIALIAS_BELOW the region is first resized with an antialiasing filter.
    """
    c, h, w = img.shape
    m = m.to(torch.float64)
    full = torch.cat([m, torch.tensor([[0.0, 0.0, 1.0]], dtype=m.dtype, device=m.device)], 0)
    inv = torch.linalg.inv(full)[:2]
    corners = torch.tensor([[-1.0, -1.0], [size, -1.0], [-1.0, size], [size, size]], dtype=m.dtype, device=m.device)
    src = corners @ inv[:, :2].T + inv[:, 2]
    x0 = int(max(0, math.floor(float(src[:, 0].min())) - 2))
    y0 = int(max(0, math.floor(float(src[:, 1].min())) - 2))
    x1 = int(min(w, math.ceil(float(src[:, 0].max())) + 3))
    y1 = int(min(h, math.ceil(float(src[:, 1].max())) + 3))
    if x1 <= x0 or y1 <= y0:  # the crop lies entirely outside the image
        return torch.zeros(c, size, size, dtype=torch.float32, device=img.device)
    roi = img[:, y0:y1, x0:x1]
    roi = roi.float().div_(255.0) if roi.dtype == torch.uint8 else roi.float()
    a, t = m[:, :2], m[:, 2] + m[:, :2] @ torch.tensor([x0, y0], dtype=m.dtype, device=m.device)
    s = float(a.det().abs().sqrt())
    if antialias and s < DOWNSCALE_ANTIALIAS_BELOW:
        rh, rw = roi.shape[1:]
        nh, nw = max(2, round(rh * s)), max(2, round(rw * s))
        roi = F.interpolate(roi[None], size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)[0]
        fx, fy = nw / rw, nh / rh
        # p_roi = (p_small + 0.5) / f - 0.5  (half-pixel convention of align_corners=False)
        a_new = a @ torch.diag(torch.tensor([1.0 / fx, 1.0 / fy], dtype=m.dtype, device=m.device))
        t = t + a @ torch.tensor([0.5 / fx - 0.5, 0.5 / fy - 0.5], dtype=m.dtype, device=m.device)
        a = a_new
    m2 = torch.cat([a, t[:, None]], 1)
    return warp(roi[None], m2[None].to(roi.dtype), size)[0]


def align_faces(image: torch.Tensor, kps: torch.Tensor, size: int = ARCFACE_SIZE, margin: float = 1.0,
                center=(56.0, 56.0), antialias: bool = True):
    """Aligned crops of the faces of one image.

    image: [H, W, 3] float 0..1 or uint8 (only the face regions are converted); kps: [F, 5, 2] image pixels.
    Returns (crops [F, size, size, 3] float 0..1, M [F, 2, 3] image -> crop, kps_in_crop [F, 5, 2]).
    """
    kps = torch.as_tensor(kps, dtype=torch.float32, device=image.device).reshape(-1, 5, 2)
    m = estimate_similarity(kps, template(size, margin, center))  # [F, 2, 3]
    chw = image.permute(2, 0, 1)
    if kps.shape[0] == 0:
        return torch.zeros(0, size, size, 3, device=image.device), m, kps
    with single_thread(image.device):
        crops = torch.stack([_warp_one(chw, m[i], size, antialias) for i in range(kps.shape[0])])
        crops = crops.permute(0, 2, 3, 1).clamp(0, 1).contiguous()
    return crops, m, transform_points(m, kps)


def align_batch(images: torch.Tensor, kps: torch.Tensor, size: int = ARCFACE_SIZE, margin: float = 1.0,
                center=(56.0, 56.0), antialias: bool = True):
    """One face per image, for a batch of same-size images (video frames).

    images: [B, H, W, 3] float 0..1 (or uint8); kps: [B, 5, 2]. Returns (crops [B, size, size, 3], M [B, 2, 3]).
    One kornia call for the whole batch unless some face needs the antialiased path.
    """
    kps = torch.as_tensor(kps, dtype=torch.float32, device=images.device).reshape(-1, 5, 2)
    m = estimate_similarity(kps, template(size, margin, center))
    if kps.shape[0] == 0:
        return torch.zeros(0, size, size, 3, device=images.device), m
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)
    if antialias and bool((similarity_scale(m) < DOWNSCALE_ANTIALIAS_BELOW).any()):
        crops = torch.stack([_warp_one(images[i].permute(2, 0, 1), m[i], size, True) for i in range(len(m))])
    else:
        crops = warp(images.permute(0, 3, 1, 2).float(), m, size)
    return crops.permute(0, 2, 3, 1).clamp(0, 1).contiguous(), m
