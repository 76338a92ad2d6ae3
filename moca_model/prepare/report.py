"""The contact sheet of `prepare`: sampled (reference photos | clip frames with the face mask outlined) rows."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..atomic import atomic_target
from ..video import read_video

CELL = 128


def _fit(im: np.ndarray, cell: int = CELL) -> Image.Image:
    pic = Image.fromarray(im)
    pic.thumbnail((cell, cell), Image.LANCZOS)
    canvas = Image.new("RGB", (cell, cell), (255, 255, 255))
    canvas.paste(pic, ((cell - pic.width) // 2, (cell - pic.height) // 2))
    return canvas


def outline(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """frame [H, W, 3] uint8 with the border of mask [H, W] (> 127 = face) drawn in yellow."""
    m = mask > 127
    edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
    out = frame.copy()
    out[edge] = (255, 255, 0)
    return out


def contact_sheet(out: Path, entries: list, path: Path, rows: int = 12, frames: int = 3, refs: int = 2) -> int:
    """Draw up to ``rows`` manifest entries (spread over the list) into ``path`` (PNG); returns the rows drawn."""
    if not entries:
        return 0
    picks = np.linspace(0, len(entries) - 1, min(rows, len(entries))).round().astype(int)
    cols = refs + frames
    sheet = Image.new("RGB", (cols * (CELL + 2) + 2, len(picks) * (CELL + 2) + 2), (255, 255, 255))
    d = ImageDraw.Draw(sheet)
    for r, k in enumerate(picks):
        e = entries[int(k)]
        cells = [_fit(np.asarray(Image.open(out / p).convert("RGB"))) for p in e["reference"][:refs]]
        cells += [Image.new("RGB", (CELL, CELL), (230, 230, 230))] * (refs - len(cells))
        vid, _ = read_video(out / e["video"])
        mask, _ = read_video(out / e["face_mask"])
        for t in np.linspace(0, len(vid) - 1, frames).round().astype(int):
            cells.append(_fit(outline(vid[t], mask[t].mean(-1))))
        for c, cell in enumerate(cells):
            sheet.paste(cell, (2 + c * (CELL + 2), 2 + r * (CELL + 2)))
        d.text((4 + refs * (CELL + 2), 4 + r * (CELL + 2)), e["id"][-24:], fill=(255, 255, 255))
    with atomic_target(path, overwrite=True, suffix=".png") as tmp:
        sheet.save(tmp)
    return len(picks)
