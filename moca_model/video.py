"""Video files: write frames to an mp4 (H.264 through PyAV) atomically, read frames back."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .atomic import atomic_target


def to_uint8(frames) -> np.ndarray:
    """[T, H, W, 3] float 0..1 (tensor or array) or uint8 -> uint8 array with even H and W (H.264 needs them)."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().float().numpy() if frames.is_floating_point() else frames.cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"write_video: frames must be [T, H, W, 3], got {list(frames.shape)}")
    if frames.dtype != np.uint8:
        frames = (np.clip(frames, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    H, W = frames.shape[1:3]
    return np.ascontiguousarray(frames[:, : H - H % 2, : W - W % 2])


def write_video(path, frames, fps: float = 16.0, overwrite: bool = False, crf: int = 18) -> Path:
    """Encode frames to an H.264 mp4 at `path` (temp file + rename; refuses to overwrite unless asked)."""
    import av

    frames = to_uint8(frames)
    with atomic_target(path, overwrite, suffix=".mp4") as tmp:
        with av.open(tmp, "w", format="mp4") as container:
            stream = container.add_stream("h264", rate=int(round(fps)))
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf)}
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
    return Path(path)


def read_video(path, max_frames: int | None = None) -> tuple[np.ndarray, float]:
    """Decode a video file -> (frames [T, H, W, 3] uint8, fps). Raises ValueError naming the file if unreadable."""
    import av
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 16)
            frames = []
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24"))
                if max_frames and len(frames) >= max_frames:
                    break
    except Exception as e:
        raise ValueError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from e
    if not frames:
        raise ValueError(f"{path}: the video has no frames")
    return np.stack(frames), fps


def iter_video(path):
    """Decode a video file frame by frame -> (fps, frame count or 0 when the container does not say,
    iterator of [H, W, 3] uint8). For long videos that must not sit in memory at once."""
    import av
    try:
        container = av.open(str(path))
        stream = container.streams.video[0]
    except Exception as e:
        raise ValueError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from e
    fps = float(stream.average_rate or stream.guessed_rate or 16)

    def frames():
        with container:
            try:
                for frame in container.decode(stream):
                    yield frame.to_ndarray(format="rgb24")
            except av.error.FFmpegError as e:
                raise ValueError(f"{path}: cannot decode video ({type(e).__name__}: {e})") from e

    return fps, int(stream.frames or 0), frames()
