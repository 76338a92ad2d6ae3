"""Writing the training files of one video: clips (mp4), face-mask videos (mp4, white = face) and reference
photos (png), each atomically, an existing file kept (so a re-run resumes).

A clip is the largest window of the output aspect ratio inside the frame, centred (as far as the frame
allows) on the track's mean face centre and fixed for the whole clip, resized to ``height x width``. Its
mask, per frame, is the ellipse inscribed in the track's face box grown by ``MASK_GROW`` (the pipeline has
boxes and landmarks, not segmentations; LVPL only needs the face region). A reference photo is the square
``PHOTO_SCALE`` x the face box around the face (clipped to the frame), at source resolution.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..atomic import atomic_target
from ..video import iter_video, write_video

MASK_GROW = 1.15
PHOTO_SCALE = 2.2


def crop_region(frame_w: int, frame_h: int, aspect: float, cx: float, cy: float) -> tuple:
    """(x0, y0, w, h): the largest w/h = aspect window inside the frame, centred on (cx, cy) where it fits."""
    w, h = float(frame_w), frame_w / aspect
    if h > frame_h:
        w, h = frame_h * aspect, float(frame_h)
    x0 = float(np.clip(cx - w / 2, 0, frame_w - w))
    y0 = float(np.clip(cy - h / 2, 0, frame_h - h))
    return x0, y0, w, h


def crop_resize(frame: np.ndarray, region: tuple, width: int, height: int) -> np.ndarray:
    """frame [H, W, 3] uint8 -> the region resized to [height, width, 3] uint8."""
    x0, y0, w, h = region
    return np.asarray(Image.fromarray(frame).resize((width, height), Image.LANCZOS, box=(x0, y0, x0 + w, y0 + h)))


def face_mask(box: np.ndarray, region: tuple, width: int, height: int) -> np.ndarray:
    """The face ellipse of box [4] (source pixels) in the output frame -> [height, width] uint8 0/255."""
    x0, y0, w, h = region
    sx, sy = width / w, height / h
    cx, cy = ((box[0] + box[2]) / 2 - x0) * sx, ((box[1] + box[3]) / 2 - y0) * sy
    rx, ry = (box[2] - box[0]) / 2 * MASK_GROW * sx, (box[3] - box[1]) / 2 * MASK_GROW * sy
    im = Image.new("L", (width, height), 0)
    ImageDraw.Draw(im).ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    return np.asarray(im)


def photo_crop(frame: np.ndarray, box: np.ndarray) -> np.ndarray:
    """The square of PHOTO_SCALE x the face box around the face, clipped to the frame -> [h, w, 3] uint8."""
    H, W = frame.shape[:2]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    half = max(box[2] - box[0], box[3] - box[1]) * PHOTO_SCALE / 2
    x0, x1 = int(max(0, round(cx - half))), int(min(W, round(cx + half)))
    y0, y1 = int(max(0, round(cy - half))), int(min(H, round(cy + half)))
    return np.ascontiguousarray(frame[y0:y1, x0:x1])


def frame_motion(frames: np.ndarray) -> float:
    """Mean |x_t - x_{t-1}| of frames [T, H, W, 3] uint8, in 0..1 units."""
    if len(frames) < 2:
        return 0.0
    return float(np.abs(np.diff(frames.astype(np.int16), axis=0)).mean() / 255.0)


def extract_video(video_path, clips: list, photos: list, out: Path, width: int, height: int, fps: float,
                  min_motion: float) -> dict:
    """Write the clips [(ClipWindow, FaceTrack)] and photos [Photo] of one video into out/{clips,masks,refs}.

    Returns {clip id: None (written or already there) or "motion" (a still picture, not written)}."""
    todo = [(c, t) for c, t in clips if not ((out / "clips" / f"{c.id}.mp4").is_file()
                                            and (out / "masks" / f"{c.id}.mp4").is_file())]
    todo_photos = [p for p in photos if not (out / "refs" / f"{p.name}.png").is_file()]
    result = {c.id: None for c, _ in clips}
    if not todo and not todo_photos:
        return result
    need = {i for c, _ in todo for i in c.indices} | {p.frame for p in todo_photos}
    _, _, frames_iter = iter_video(video_path)
    got = {}
    last = max(need)
    for i, frame in enumerate(frames_iter):
        if i in need:
            got[i] = frame
        if i >= last:
            break
    missing = need - set(got)
    if missing:
        raise ValueError(f"{video_path}: frames {min(missing)}..{max(missing)} could not be decoded")
    for p in todo_photos:
        with atomic_target(out / "refs" / f"{p.name}.png", overwrite=True, suffix=".png") as tmp:
            Image.fromarray(photo_crop(got[p.frame], p.box)).save(tmp)
    for c, track in todo:
        H, W = got[c.indices[0]].shape[:2]
        pos = np.asarray(c.indices) - int(track.frames[0])
        b = track.boxes[pos]
        region = crop_region(W, H, width / height, float((b[:, 0] + b[:, 2]).mean() / 2),
                             float((b[:, 1] + b[:, 3]).mean() / 2))
        frames = np.stack([crop_resize(got[i], region, width, height) for i in c.indices])
        if frame_motion(frames) < min_motion:
            result[c.id] = "motion"
            continue
        masks = np.stack([face_mask(box, region, width, height) for box in b])
        write_video(out / "masks" / f"{c.id}.mp4", np.repeat(masks[..., None], 3, -1), fps=fps, overwrite=True)
        write_video(out / "clips" / f"{c.id}.mp4", frames, fps=fps, overwrite=True)
    return result
