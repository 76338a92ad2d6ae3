"""Captions for clips: from a sidecar file next to each video, or from a captioning command the user plugs in.
None are invented: a clip without a caption is dropped (counted as ``no_caption``).

Sidecars (first found wins), for ``videos/talk.mp4``:
- ``videos/talk.captions.json``: ``{"segments": [{"start": 0.0, "end": 4.5, "caption": "..."}, ...]}`` (seconds);
  a clip gets the segment that overlaps it most;
- ``videos/talk.txt``: one caption for every clip of the video.

Command (``--caption-command``): run once per written clip, its standard output (stripped) is the caption;
placeholders ``{clip}`` (the clip's mp4), ``{video}`` (the source video), ``{start}`` / ``{end}`` (seconds in
the source). Example: ``--caption-command "python my_captioner.py {clip}"``. A failing command (non-zero exit,
empty output, timeout) drops that clip with the command's error in the report.
"""
from __future__ import annotations

import json
import shlex
import subprocess
from pathlib import Path


class CaptionError(ValueError):
    """A caption source exists but cannot be used (bad sidecar, failing command)."""


def load_sidecar(video_path) -> list | None:
    """Segments [(start_s, end_s, caption)] from the video's sidecar, a whole-video [(0, inf, caption)], or None."""
    p = Path(video_path)
    js = p.with_name(p.stem + ".captions.json")
    if js.is_file():
        try:
            segs = json.loads(js.read_text(encoding="utf-8"))["segments"]
            return [(float(s["start"]), float(s["end"]), str(s["caption"]).strip()) for s in segs]
        except (ValueError, KeyError, TypeError) as e:
            raise CaptionError(f"{js}: expected {{\"segments\": [{{\"start\", \"end\", \"caption\"}}]}} ({e})") from e
    txt = p.with_suffix(".txt")
    if txt.is_file():
        return [(0.0, float("inf"), txt.read_text(encoding="utf-8").strip())]
    return None


def caption_from_segments(segments: list, start: float, end: float) -> str | None:
    """The caption of the segment overlapping [start, end] the most (None when none overlaps or it is empty)."""
    best, best_overlap = None, 0.0
    for a, b, text in segments:
        overlap = min(b, end) - max(a, start)
        if overlap > best_overlap and text:
            best, best_overlap = text, overlap
    return best


def caption_from_command(command: str, clip, video, start: float, end: float, timeout: float = 600) -> str:
    """Run the user's captioning command for one clip; its stdout is the caption."""
    args = [a.format(clip=str(clip), video=str(video), start=f"{start:.3f}", end=f"{end:.3f}")
            for a in shlex.split(command)]
    try:
        r = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise CaptionError(f"caption command {args[0]!r} failed: {e}") from e
    if r.returncode != 0:
        raise CaptionError(f"caption command exited {r.returncode}: {r.stderr.strip()[-300:]}")
    text = r.stdout.strip()
    if not text:
        raise CaptionError("caption command printed nothing")
    return text
