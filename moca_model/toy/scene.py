"""Named backgrounds and lightings: what a small classifier must tell apart (and a caption names).

Backgrounds are drawn once per (name, size, seed) and cached; a lighting is a per-channel gain and offset
with a soft left-right ramp, applied to the whole finished image.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
from PIL import Image, ImageDraw

from .people import rng_for

BG_STREAM = 0xB6
BACKGROUNDS = ("white_wall", "teal_wall", "stripes", "checker", "dots", "sky_grass", "room", "night_sky", "beach")
LIGHTINGS = ("daylight", "warm_evening", "dim", "cool_blue")


@lru_cache(maxsize=32)
def background_image(name: str, px: int, seed: int) -> Image.Image:
    """Background `name` as a px x px RGB image (details - phases, stars, clouds - from `seed`)."""
    r = rng_for(BG_STREAM, seed, BACKGROUNDS.index(name))
    a = np.zeros((px, px, 3), np.float32)
    yy = np.linspace(0, 1, px, dtype=np.float32)[:, None, None]
    xx = np.linspace(0, 1, px, dtype=np.float32)[None, :, None]

    def grad(top, bottom, y0=0.0, y1=1.0):
        t = np.clip((yy - y0) / max(1e-6, y1 - y0), 0, 1)
        return np.asarray(top, np.float32) * (1 - t) + np.asarray(bottom, np.float32) * t

    if name == "white_wall":
        a[:] = grad((238, 234, 226), (222, 218, 208))
    elif name == "teal_wall":
        a[:] = grad((56, 150, 150), (40, 120, 124))
    elif name == "stripes":
        per = px / r.uniform(6, 8)
        on = ((xx[..., 0] * px + r.uniform(0, per)) % per) < per / 2
        a[:] = np.where(on[..., None], np.float32([205, 60, 64]), np.float32([244, 228, 204]))
    elif name == "checker":
        per = px / r.uniform(5, 6.5)
        o = r.uniform(0, per, 2)
        on = (((xx[..., 0] * px + o[0]) // per + (yy[..., 0] * px + o[1]) // per) % 2) == 0
        a[:] = np.where(on[..., None], np.float32([50, 70, 150]), np.float32([226, 228, 238]))
    elif name == "sky_grass":
        hz = r.uniform(0.6, 0.7)
        a[:] = np.where(yy < hz, grad((110, 170, 240), (200, 226, 250), 0, hz), grad((96, 176, 64), (60, 130, 40), hz, 1))
    elif name == "room":
        hz = r.uniform(0.68, 0.76)
        wall = grad((214, 190, 150), (196, 170, 130), 0, hz)
        floor = grad((150, 96, 52), (120, 74, 38), hz, 1)
        planks = (xx * 9) % 1 < 0.04
        a[:] = np.where(yy < hz, wall, np.where(planks, floor * 0.75, floor))
    elif name == "night_sky":
        a[:] = grad((10, 14, 40), (34, 44, 96))
    elif name == "beach":
        h1, h2 = r.uniform(0.36, 0.42), r.uniform(0.5, 0.56)
        a[:] = np.where(yy < h1, grad((120, 190, 245), (190, 225, 250), 0, h1),
                        np.where(yy < h2, np.float32([30, 110, 180]), grad((236, 214, 160), (214, 186, 128), h2, 1)))
    elif name == "dots":
        a[:] = np.float32([250, 214, 96])
    img = Image.fromarray(a.astype(np.uint8))
    d = ImageDraw.Draw(img)
    if name == "dots":
        per = px / r.uniform(5.5, 7)
        rad = per * 0.2
        o = r.uniform(0, per, 2)
        for j in range(-1, int(px / per) + 2):
            for i in range(-1, int(px / per) + 2):
                x, y = i * per + o[0] + (per / 2 if j % 2 else 0), j * per + o[1]
                d.ellipse([x - rad, y - rad, x + rad, y + rad], fill=(226, 96, 40))
    elif name == "night_sky":
        for x, y, s in zip(r.uniform(0, px, 45), r.uniform(0, px * 0.8, 45), r.uniform(0.004, 0.01, 45)):
            d.ellipse([x - s * px, y - s * px, x + s * px, y + s * px], fill=(255, 250, 210))
        mx, my, mr = r.uniform(0.1, 0.9) * px, r.uniform(0.08, 0.2) * px, 0.07 * px
        d.ellipse([mx - mr, my - mr, mx + mr, my + mr], fill=(250, 240, 190))
    elif name == "sky_grass":
        for _ in range(3):
            cx, cy, w = r.uniform(0, px), r.uniform(0.05, 0.3) * px, r.uniform(0.08, 0.14) * px
            for dx in (-0.6, 0.0, 0.6):
                d.ellipse([cx + dx * w - w * 0.6, cy - w * 0.4, cx + dx * w + w * 0.6, cy + w * 0.4], fill=(250, 250, 252))
    elif name == "room":
        fx, fy, fw = r.uniform(0.05, 0.75) * px, r.uniform(0.08, 0.2) * px, r.uniform(0.16, 0.22) * px
        d.rectangle([fx, fy, fx + fw, fy + fw * 0.75], fill=(120, 170, 210), outline=(110, 70, 40), width=max(2, px // 60))
    elif name == "beach":
        sx, sr = r.uniform(0.1, 0.9) * px, 0.06 * px
        d.ellipse([sx - sr, 0.1 * px - sr, sx + sr, 0.1 * px + sr], fill=(255, 236, 120))
    return img


LIGHT = {  # per-channel gain, offset, side ramp (gain at image left -> right)
    "daylight": ((1.04, 1.04, 1.04), (6, 6, 6), (1.0, 1.0)),
    "warm_evening": ((1.06, 0.9, 0.7), (16, 6, 0), (0.84, 1.1)),
    "dim": ((0.56, 0.56, 0.6), (2, 2, 8), (1.0, 1.0)),
    "cool_blue": ((0.8, 0.92, 1.1), (0, 4, 18), (1.08, 0.86)),
}


@lru_cache(maxsize=16)
def _light_map(name: str, size: int):
    gain, off, (l, r) = LIGHT[name]
    ramp = np.linspace(l, r, size, dtype=np.float32)[None, :, None]
    return (np.asarray(gain, np.float32) * ramp), np.asarray(off, np.float32)


def apply_lighting(img: np.ndarray, name: str) -> np.ndarray:
    """[H, W, 3] uint8 -> the same scene under lighting `name` (a colour/brightness transform + side ramp)."""
    mul, off = _light_map(name, img.shape[1])
    return np.clip(img.astype(np.float32) * mul + off, 0, 255).astype(np.uint8)
