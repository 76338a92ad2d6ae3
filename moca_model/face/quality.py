"""Per-face quality: detection score, face size, rough head pose from the 5 landmarks, sharpness.

The pose angles are estimates from 2-D landmarks (a nose-offset model of an average head), good to tell
a frontal photo from a three-quarter view or a profile, not a measurement.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

# Thresholds behind the warnings (documented in docs/faces.md).
MIN_EYE_DISTANCE_PX = 24.0  # below: the 112 crop is an upscale of a tiny face
MAX_ABS_YAW = 35.0  # degrees
MAX_ABS_PITCH = 40.0
MIN_SHARPNESS = 40.0  # variance of the Laplacian of the 112 crop, 0..255 gray scale
MIN_DET_SCORE = 0.6
# Average head: nose tip depth in front of the eyes, in half eye distances; eye-mouth height in eye distances.
_NOSE_DEPTH = 1.0
_EYE_MOUTH = 1.156  # ArcFace template: (92.28 - 51.60) / 35.24
_NOSE_T0 = 0.4946  # ArcFace template: nose height between the eye line and the mouth line


@dataclass
class FaceQuality:
    """Quality record of one reference face (JSON-serialisable via :meth:`as_dict`)."""

    image_index: int
    det_score: float
    box: list  # [x1, y1, x2, y2] in the (working) image pixels
    kps: list  # [[x, y]] * 5
    face_px: float  # eye distance in original image pixels
    yaw: float  # degrees, + = face turned towards the image's right
    pitch: float  # degrees, + = chin up
    roll: float  # degrees, + = clockwise in the image
    sharpness: float  # variance of the Laplacian of the aligned 112 crop (higher = sharper)
    det_size: int = 0  # detector input size that found the face
    similarity_to_others: float | None = None  # cosine to the mean of the other references
    warnings: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "FaceQuality":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})

    def short(self) -> str:
        s = (f"image {self.image_index}: score {self.det_score:.2f}, eyes {self.face_px:.0f}px, "
             f"yaw {self.yaw:+.0f} pitch {self.pitch:+.0f} roll {self.roll:+.0f}, sharpness {self.sharpness:.0f}")
        if self.similarity_to_others is not None:
            s += f", sim to others {self.similarity_to_others:.2f}"
        if self.warnings:
            s += " [" + "; ".join(self.warnings) + "]"
        return s


def pose_from_landmarks(kps: torch.Tensor) -> torch.Tensor:
    """Rough (yaw, pitch, roll) in degrees from landmarks [B, 5, 2] -> [B, 3]."""
    k = kps.to(torch.float64).reshape(-1, 5, 2)
    le, re, nose, lm, rm = k.unbind(1)
    d = re - le
    roll = torch.atan2(d[:, 1], d[:, 0])
    eye_dist = d.norm(dim=1).clamp_min(1e-6)
    c, s = torch.cos(-roll), torch.sin(-roll)
    rot = torch.stack([torch.stack([c, -s], -1), torch.stack([s, c], -1)], -2)  # undo the roll
    eye_mid = (le + re) / 2
    p = ((k - eye_mid[:, None]) @ rot.transpose(1, 2)) / eye_dist[:, None, None]  # eye distance = 1
    nose_p, mouth_mid = p[:, 2], (p[:, 3] + p[:, 4]) / 2
    mid_x = mouth_mid[:, 0] / 2  # midline between the eye midpoint (x=0) and the mouth midpoint
    r = (nose_p[:, 0] - mid_x) / 0.5  # in half eye distances
    yaw = torch.atan(r / _NOSE_DEPTH)
    t = nose_p[:, 1] / mouth_mid[:, 1].clamp_min(1e-6)  # nose height between eye line (0) and mouth (1)
    pitch = torch.asin(((_NOSE_T0 - t) * _EYE_MOUTH / (_NOSE_DEPTH / 2)).clamp(-1, 1))
    return torch.stack([yaw, pitch, roll], 1).rad2deg().float()


def sharpness(crops: torch.Tensor) -> torch.Tensor:
    """Variance of the Laplacian of crops [B, H, W, 3] float 0..1 (gray, 0..255 scale) -> [B]."""
    w = torch.tensor([0.299, 0.587, 0.114], dtype=crops.dtype, device=crops.device)
    gray = (crops * 255.0) @ w  # [B, H, W]
    lap = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]], dtype=crops.dtype, device=crops.device)
    out = F.conv2d(gray[:, None], lap[None, None])  # valid region only
    return out.flatten(1).var(1)


def warnings_for(q: FaceQuality) -> list:
    """Human-readable warnings for a quality record (empty when the face looks usable)."""
    out = []
    if q.det_score < MIN_DET_SCORE:
        out.append(f"low detection score {q.det_score:.2f}")
    if q.face_px < MIN_EYE_DISTANCE_PX:
        out.append(f"small face ({q.face_px:.0f}px between the eyes): use a larger photo or a closer crop")
    if abs(q.yaw) > MAX_ABS_YAW:
        out.append(f"turned away (yaw {q.yaw:+.0f}): a frontal photo works better")
    if abs(q.pitch) > MAX_ABS_PITCH:
        out.append(f"tilted (pitch {q.pitch:+.0f})")
    if q.sharpness < MIN_SHARPNESS:
        out.append(f"blurry (sharpness {q.sharpness:.0f})")
    return out


def eye_distance(kps: torch.Tensor) -> torch.Tensor:
    """Distance between the eye landmarks of kps [B, 5, 2] -> [B]."""
    k = kps.reshape(-1, 5, 2)
    return (k[:, 1] - k[:, 0]).norm(dim=1)


__all__ = ["FaceQuality", "pose_from_landmarks", "sharpness", "warnings_for", "eye_distance"]
