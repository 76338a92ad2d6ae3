"""Video files: write frames to .mp4 (H.264 via PyAV) atomically, read frames back."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch


def _to_uint8(frames) -> np.ndarray:
    """[T, H, W, 3] float 0..1 or uint8 (tensor or array) -> uint8 array with even H and W."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu()
        frames = frames.numpy() if frames.dtype == torch.uint8 else frames.float().clamp(0, 1).mul(255).round().byte().numpy()
    frames = np.asarray(frames)
    if frames.dtype != np.uint8:
        frames = (np.clip(frames.astype(np.float32), 0, 1) * 255).round().astype(np.uint8)
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"write_video: frames must be [T, H, W, 3], got {list(frames.shape)}")
    H, W = frames.shape[1] - frames.shape[1] % 2, frames.shape[2] - frames.shape[2] % 2   # yuv420p needs even sizes
    return np.ascontiguousarray(frames[:, :H, :W])


def write_video(path, frames, fps: float = 16, crf: int = 18) -> Path:
    """Write frames [T, H, W, 3] (float 0..1 or uint8) as an H.264 mp4, via a temp file + os.replace."""
    import av
    path = Path(path)
    data = _to_uint8(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix or ".mp4", dir=path.parent)
    os.close(fd)
    try:
        with av.open(tmp, mode="w") as container:
            stream = container.add_stream("libx264", rate=int(round(fps)))
            stream.width, stream.height = data.shape[2], data.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": str(crf)}
            for frame in data:
                container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
            container.mux(stream.encode(None))
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


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
