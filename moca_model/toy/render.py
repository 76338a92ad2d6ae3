"""Draw cartoon people on named backgrounds under named lightings, with exact face annotations.

Geometry (head units, y down): the head outline is an ellipse of half-width 1 and half-height ``h`` centred
at the origin (superellipse / tapered jaw below). Face features are curves on the front of an ellipsoid
(depth 1); yaw and pitch rotate them in 3-D and project orthographically, so they shift with sin(yaw) and
foreshorten; the outline, the hair shell and the body stay 2-D. Roll then rotates everything about the
face-box centre. Everything is drawn at ``SS``x and LANCZOS-downsampled; keypoints are the projections of
the very points the features are drawn around (OpenCV convention: pixel i's centre is at coordinate i).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from math import cos, sin

import numpy as np
from PIL import Image, ImageDraw

from .people import Person, Pose, rng_for
from .scene import BACKGROUNDS, LIGHTINGS, apply_lighting, background_image

SS = 2                    # supersampling factor
PIXEL_CENTER = 0.0        # coordinate of pixel (0, 0)'s centre (OpenCV convention)
BOX_TOP = -0.72           # face-box top (hairline / forehead) in units of h
RENDER_STREAM = 0x4E

SHIRTS = ((200, 60, 60), (60, 90, 190), (70, 150, 80), (230, 180, 50), (120, 70, 160), (60, 60, 70),
          (235, 235, 235), (230, 120, 40))
DARK = (30, 22, 24)


@dataclass
class FaceAnnotation:
    box: np.ndarray   # [4] float32 x1, y1, x2, y2 pixels (hairline/forehead to chin, cheek to cheek)
    kps: np.ndarray   # [5, 2] float32: image-left eye, image-right eye, nose tip, left / right mouth corner
    mask: np.ndarray  # [H, W] bool: the head (face + hair + ears)


@dataclass
class Render:
    image: np.ndarray                                   # [H, W, 3] uint8
    faces: list = field(default_factory=list)           # [FaceAnnotation] in the order given


def _shade(c, f):
    return tuple(int(min(255, max(0, v * f))) for v in c)


def _mix(a, b, t):
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))


def _ring(n=24):
    t = np.linspace(0, 2 * np.pi, n, endpoint=False)
    return np.cos(t), np.sin(t)


# ---------------------------------------------------------------------------------------------- geometry
class Geo:
    """Head-unit -> pixel transform of one person in one frame."""

    def __init__(self, person: Person, pose: Pose, size: int):
        self.p, self.pose, self.size = person, pose, size
        self.h = h = person.head_ratio
        self.top = BOX_TOP * h                      # face-box top (local y)
        self.yc = (self.top + h) / 2                # face-box centre (local y)
        self.u = pose.scale * size / 2              # pixels per head unit
        self.c = np.array([pose.cx * size, pose.cy * size]) - 0.5 + PIXEL_CENTER
        cr, sr = cos(pose.roll), sin(pose.roll)
        self.rot = np.array([[cr, -sr], [sr, cr]])
        self.cyw, self.syw, self.cp, self.sp = cos(pose.yaw), sin(pose.yaw), cos(pose.pitch), sin(pose.pitch)
        self.c_body = self.c.copy()
        self.c = self.c + self.u * self.rot @ (0.0, 0.2 * self.sp)   # a nod also dips the whole head
        H = h - self.top                            # feature heights from the face-box fractions
        self.eye_y = self.top + person.eye_y * H
        self.nose_y = self.top + person.nose_y * H
        self.mouth_y = self.top + person.mouth_y * H
        self._jaw = None

    def px(self, xy, roll=True) -> np.ndarray:
        """Local 2-D points [N, 2] (already projected) -> pixels [N, 2]."""
        q = np.asarray(xy, np.float64).reshape(-1, 2) - (0.0, self.yc)
        if not roll:                                # the body: no roll, no nod
            return self.c_body + self.u * q
        return self.c + self.u * (q @ self.rot.T)

    def depth(self, x, y):
        return np.sqrt(np.clip(1 - x * x - (y / self.h) ** 2, 0, 1))

    def proj(self, x, y, dz=0.0):
        """Surface points (x, y arrays) lifted to depth + dz, rotated by yaw/pitch -> (pixels [N, 2], depth [N])."""
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.shape != y.shape:
            x, y = np.broadcast_arrays(x, y)
        z = self.depth(x, y) + dz
        x1 = x * self.cyw + z * self.syw
        z1 = -x * self.syw + z * self.cyw
        y2 = y * self.cp + z1 * self.sp
        z2 = -y * self.sp + z1 * self.cp
        return self.px(np.stack([x1.ravel(), y2.ravel()], -1)), z2.ravel()

    def p3(self, x, y, dz=0.0):
        return self.proj(x, y, dz)[0]

    def half_width(self, y):
        """Outline half-width at local y (upper ellipse; for the jaw see `outline`)."""
        return float(np.sqrt(max(0.0, 1 - (y / self.h) ** 2)))

    def outline(self, n=64, grow=0.0):
        """Head outline [n, 2] in local units, clockwise from the right cheek."""
        h, jaw = self.h, self.p.jaw
        t = np.linspace(0, 2 * np.pi, n, endpoint=False)
        c, s = np.cos(t), np.sin(t)
        x, y = c.copy(), h * s
        low = s > 0
        n_e, taper = {"round": (2.0, 0.0), "square": (3.4, 0.06), "pointed": (2.0, 0.42), "oval": (2.0, 0.18)}[jaw]
        ac, as_ = np.abs(c[low]), s[low]
        x[low] = np.sign(c[low]) * ac ** (2 / n_e) * (1 - taper * as_ ** 1.5)
        y[low] = h * as_ ** (2 / n_e)
        return np.stack([x * (1 + grow), y * (1 + grow / h)], -1)

    def box(self) -> np.ndarray:
        o = self.outline(96)
        o = o[o[:, 1] >= self.top]
        w = self.half_width(self.top)
        pts = self.px(np.concatenate([o, [[-w, self.top], [w, self.top]]]))
        return np.array([*pts.min(0), *pts.max(0)], np.float32)


# ---------------------------------------------------------------------------------------------- canvas
class Canvas:
    """An RGB image and a label layer (0 = not a head, i + 1 = person i's head), both at SS x size."""

    def __init__(self, bg: Image.Image, size: int):
        self.size = size
        self.img = bg.copy()
        self.d = ImageDraw.Draw(self.img)
        self.lab = Image.new("L", self.img.size, 0)
        self.ld = ImageDraw.Draw(self.lab)
        self.off = (SS - 1) / 2 - SS * PIXEL_CENTER

    def _xy(self, pts):
        return (np.asarray(pts, np.float64).reshape(-1, 2) * SS + self.off).ravel().tolist()

    def poly(self, pts, fill, label=None, outline=None, width=0.0):
        xy = self._xy(pts)
        if outline is None:
            self.d.polygon(xy, fill=fill)
        else:
            self.d.polygon(xy, fill=fill, outline=outline, width=max(1, round(width * SS)))
        if label is not None:
            self.ld.polygon(xy, fill=label)

    def line(self, pts, fill, width, label=None):
        xy = self._xy(pts)
        w = max(1, round(width * SS))
        self.d.line(xy, fill=fill, width=w, joint="curve")
        if label is not None:
            self.ld.line(xy, fill=label, width=w)

    def dot(self, c, r, fill):
        c = np.asarray(c, np.float64) * SS + self.off
        r = max(r * SS, 0.6)
        self.d.ellipse([c[0] - r, c[1] - r, c[0] + r, c[1] + r], fill=fill)

    def ellipse(self, c, rx, ry, fill, label=None, outline=None, width=0.0, n=28):
        cx, sx = _ring(n)
        self.poly(np.asarray(c) + np.stack([rx * cx, ry * sx], -1), fill, label, outline, width)


# ---------------------------------------------------------------------------------------------- person
HAIR = {  # volume, sides reach (local y / h), hairline height above the box top (/ h), hairline exponent
    "short": dict(v=0.10, side=-0.05, hl=0.05, k=3.0),
    "side_part": dict(v=0.13, side=0.0, hl=0.02, k=2.5),
    "spiky": dict(v=0.08, side=-0.10, hl=0.04, k=3.0),
    "bun": dict(v=0.05, side=-0.05, hl=0.08, k=2.2),
    "long": dict(v=0.12, side=0.36, hl=0.06, k=2.0),
    "bob": dict(v=0.14, side=0.30, hl=-0.10, k=8.0),
    "afro": dict(v=0.22, side=0.05, hl=0.04, k=2.5),
}


def _hair_cap(g: Geo, cv: Canvas, col, label, style: str):
    s = HAIR[style]
    h, v = g.h, s["v"]
    side = s["side"] * h
    ta = -np.arcsin(np.clip(side / (h + v), -1, 1))
    t = np.linspace(ta, np.pi - ta, 40)
    r = 1.0 + (0.05 * np.sin(16 * t) if style == "afro" else 0.0)
    arc = np.stack([(1 + v) * r * np.cos(t), -(h + v) * r * np.sin(t)], -1)
    xt = 0.97 * g.half_width(min(side, 0.0)) if side <= 0 else 0.99 * _jaw_half_width(g, side)
    hl_y = g.top - s["hl"] * h
    x = np.linspace(-xt, xt, 49)
    y = hl_y + (side - hl_y) * np.abs(x / xt) ** s["k"]
    if style == "side_part":   # a fringe sweeping down towards one brow
        ps = g.p.part_side
        y = y + 0.20 * h * np.clip((ps * x + 0.35) / 1.2, 0, 1) * (1 - np.abs(x / xt) ** 4)
    if style in ("short", "spiky", "side_part", "bob", "afro"):   # a jagged fringe
        n = {"bob": 9, "afro": 8}.get(style, 6)
        y = y + (0.045 if style != "bob" else 0.03) * h * (1 - np.abs(np.sin(np.pi * n * (x / xt + 1) / 2))) \
            * (1 - np.abs(x / xt) ** 6)
    dark, lw = _shade(col, 0.7), max(0.5, 0.022 * g.u)
    cv.poly(np.concatenate([g.px(arc), g.p3(x, y)]), col, label, outline=dark, width=lw)   # over the top, then the hairline
    if style == "spiky":
        for tc in np.linspace(0.35, np.pi - 0.35, 7):
            a, b = tc - 0.16, tc + 0.16
            base = [((1 + v) * cos(q), -(h + v) * sin(q)) for q in (a, b)]
            tip = ((1.36 + v) * cos(tc), -(h + v + 0.36) * sin(tc))
            cv.poly(g.px([base[0], tip, base[1]]), col, label)
    if style != "afro":        # strands from the crown to the hairline
        xc = -0.38 * g.p.part_side if style == "side_part" else 0.0
        for f in (-0.62, -0.3, 0.3, 0.62):
            xe = f * xt
            ye = float(np.interp(xe, x, y)) - 0.06 * h
            q = np.linspace(0, 1, 6)
            cv.line(g.p3(xc + (xe - xc) * q ** 0.7, -0.97 * h + (ye + 0.97 * h) * q, 0.01), dark, lw)
    tt = np.linspace(0.58 * np.pi, 0.78 * np.pi, 8)   # a sheen on the upper left
    cv.line(g.px(np.stack([0.8 * (1 + v) * np.cos(tt), -0.86 * (h + v) * np.sin(tt)], -1)),
            _mix(col, (255, 255, 255), 0.35), max(0.6, 0.045 * g.u))
    if style == "side_part":   # parting line over the top
        xp = -0.38 * g.p.part_side
        yy = np.linspace(-0.96 * h, hl_y + 0.1 * h, 8)
        cv.line(g.p3(np.full_like(yy, xp), yy, 0.02), _shade(col, 0.6), max(0.5, 0.03 * g.u))


def _jaw_half_width(g: Geo, y):
    if g._jaw is None:
        o = g.outline(96)
        o = o[(o[:, 0] > 0) & (o[:, 1] > 0)]
        g._jaw = o[np.argsort(o[:, 1])]
    o = g._jaw
    return float(np.interp(y, o[:, 1], o[:, 0])) if len(o) else 1.0


def _back_hair(g: Geo, cv: Canvas, col, label, style: str):
    h = g.h
    if style in ("long", "bob"):
        bottom, w = (h + 0.75, 1.22) if style == "long" else (0.85 * h, 1.2)
        t = np.linspace(0, np.pi, 24)
        top = np.stack([1.12 * np.cos(t), -(h + 0.14) * np.sin(t)], -1)
        sides = [(-w + 0.04, 0.5 * h), (-w, bottom), (-0.6, bottom + 0.08), (0.6, bottom + 0.08), (w, bottom),
                 (w - 0.04, 0.5 * h)]
        cv.poly(g.px(np.concatenate([top, sides])), col, label, outline=_shade(col, 0.7), width=0.02 * g.u)
    elif style == "afro":
        t = np.linspace(0, 2 * np.pi, 60, endpoint=False)
        r = 1 + 0.05 * np.sin(13 * t)
        pts = np.stack([1.42 * r * np.cos(t), -0.3 * h + (h + 0.1) * r * np.sin(t)], -1)
        cv.poly(g.px(pts), col, label, outline=_shade(col, 0.7), width=0.02 * g.u)
    elif style == "bun":
        cv.ellipse(g.px([(0, -h - 0.22)])[0], 0.34 * g.u, 0.3 * g.u, col, label, outline=_shade(col, 0.7),
                   width=0.02 * g.u)


def _body(g: Geo, cv: Canvas, skin, shirt):
    h = g.h
    neck = [(-0.36, 0.55 * h), (0.36, 0.55 * h), (0.38, h + 0.6), (-0.38, h + 0.6)]
    cv.poly(g.px(neck, roll=False), _shade(skin, 0.82), 0)
    sh = [(-0.42, h + 0.45), (-1.35, h + 0.68), (-1.85, h + 1.15), (-2.05, h + 3.5), (2.05, h + 3.5),
          (1.85, h + 1.15), (1.35, h + 0.68), (0.42, h + 0.45), (0, h + 0.8)]
    cv.poly(g.px(sh, roll=False), shirt, 0, outline=_shade(shirt, 0.6), width=0.03 * g.u)


def _ears(g: Geo, cv: Canvas, skin, label, front: bool):
    p = g.p
    y = g.eye_y + 0.45 * (g.nose_y - g.eye_y)
    for s in (-1, 1):
        c, z = g.proj(s * 0.999, y, -0.1)
        if (z[0] > 0.12) != front:
            continue
        c = c[0]
        cv.ellipse(c, 0.16 * g.u, 0.27 * g.u, skin, label, outline=_shade(skin, 0.7), width=0.02 * g.u)
        cv.ellipse(c, 0.07 * g.u, 0.15 * g.u, _shade(skin, 0.8))
        if p.earrings:
            cv.dot(c + (0, 0.3 * g.u), 0.06 * g.u, p.earrings)


def _eyes(g: Geo, cv: Canvas) -> list:
    p, pose = g.p, g.pose
    cs, sn = _ring(24)
    rx, ry = p.eye_size, p.eye_size * p.eye_aspect
    op = float(np.clip(pose.eyes_open, 0, 1))
    ri = 0.78 * min(rx, ry)
    centres = []
    for s in (-1, 1):
        ex, ey = s * p.eye_spacing, g.eye_y
        centres.append(g.p3(ex, ey, 0.02)[0])
        lw = max(0.5, 0.032 * g.u)
        if op < 0.15:      # closed: a lash arc
            t = np.linspace(0, np.pi, 10)
            cv.line(g.p3(ex + rx * np.cos(t), ey + 0.25 * ry * np.sin(t), 0.02), DARK, lw)
            continue
        cv.poly(g.p3(ex + rx * cs, ey + ry * op * sn, 0.02), (250, 250, 248))
        iry = min(ri, 0.95 * ry * op)
        cv.poly(g.p3(ex + ri * cs, ey + iry * sn, 0.02), p.eye_colour)
        cv.poly(g.p3(ex + 0.5 * ri * cs, ey + min(0.5 * ri, iry) * sn, 0.02), (14, 12, 16))
        cv.dot(g.p3(ex + 0.35 * ri, ey - 0.35 * min(ri, iry), 0.02)[0], 0.16 * ri * g.u, (255, 255, 255))
        t = np.linspace(np.pi, 2 * np.pi, 12)
        cv.line(g.p3(ex + rx * np.cos(t), ey + ry * op * np.sin(t), 0.02), DARK, lw)
    return centres


def _brows(g: Geo, cv: Canvas):
    p = g.p
    rx, ry = p.eye_size, p.eye_size * p.eye_aspect
    y0 = g.eye_y - ry - 0.1 - 0.04 * (1 - g.pose.eyes_open)
    for s in (-1, 1):
        x = s * (p.eye_spacing + np.array([-0.9 * rx, 0.1 * rx, 1.15 * rx]))
        y = y0 + np.array([-p.brow_angle, -0.05, p.brow_angle * 0.6])
        cv.line(g.p3(x, y, 0.03), p.brow_colour, p.brow_thickness * g.u)


def _nose(g: Geo, cv: Canvas):
    p = g.p
    ns, ny = p.nose_size, g.nose_y
    dz = 0.14 + 0.06 * ns
    tip = g.p3(0.0, ny, dz)[0]
    col, dark = _shade(p.skin, 0.82), _shade(p.skin, 0.58)
    lw = max(0.5, 0.03 * g.u)
    if p.nose_shape == "button":
        cv.ellipse(tip, 0.075 * ns * g.u, 0.065 * ns * g.u, col, outline=dark, width=0.02 * g.u)
    elif p.nose_shape == "wide":
        cv.ellipse(tip, 0.14 * ns * g.u, 0.06 * ns * g.u, col, outline=dark, width=0.02 * g.u)
        for s in (-1, 1):
            cv.dot(tip + (s * 0.07 * ns * g.u, 0.015 * g.u), 0.025 * ns * g.u, dark)
    elif p.nose_shape == "triangle":
        pts = g.p3(np.array([0.0, -0.1 * ns, 0.0, 0.1 * ns]), ny + np.array([-0.3 * ns, 0.03, 0.0, 0.03]),
                   np.array([0.06, 0.04, dz, 0.04]))
        cv.poly(pts, col, outline=dark, width=0.02 * g.u)
    else:  # long: a bridge line hooking at the tip
        top = g.p3(0.02, ny - 0.34 * ns, 0.08)[0]
        side = g.p3(-0.08 * ns * g.p.part_side, ny + 0.045, 0.05)[0]
        cv.line(np.stack([top, tip, side]), dark, lw)
    return tip


def _mouth(g: Geo, cv: Canvas) -> np.ndarray:
    p, pose = g.p, g.pose
    sm, op = float(np.clip(pose.smile, 0, 1)), float(np.clip(pose.mouth_open, 0, 1))
    my = g.mouth_y
    mw = min(p.mouth_width, 0.7 * _jaw_half_width(g, my)) * (1 + 0.15 * sm - 0.18 * op)
    yc = my - 0.13 * sm                                   # corners rise with the smile
    gap = max(op, 0.5 * sm - 0.15)                        # open mouth, or a toothy grin
    t = np.linspace(-1, 1, 15)
    x = mw * t

    def curve(mid):
        return yc + (mid - yc) * (1 - t * t)

    upper = curve(my - 0.05 + 0.03 * sm)
    lower = curve(my + 0.065 + 0.08 * sm + 0.30 * gap)
    dz = 0.03
    line = _mix(p.lips, (8, 4, 6), 0.85)
    cv.poly(np.concatenate([g.p3(x, upper, dz), g.p3(x, lower, dz)[::-1]]), p.lips,
            outline=_mix(p.lips, DARK, 0.45), width=0.018 * g.u)
    if gap > 0.05:
        xi = 0.88 * x[1:-1]
        iu = curve(my - 0.01 + 0.04 * sm)[1:-1]
        il = curve(my + 0.015 + 0.07 * sm + 0.26 * gap)[1:-1]
        cv.poly(np.concatenate([g.p3(xi, iu, dz), g.p3(xi, il, dz)[::-1]]), (80, 14, 24))
        teeth = iu + (il - iu) * (0.35 + 0.3 * sm * (1 - op))
        cv.poly(np.concatenate([g.p3(xi, iu, dz), g.p3(xi, teeth, dz)[::-1]]), (245, 245, 240))
    else:
        cv.line(g.p3(x, curve(my + 0.005 + 0.06 * sm), dz), line, max(0.6, 0.026 * g.u))
    corners = g.p3(np.array([-mw, mw]), np.array([yc, yc]), dz)
    for c in corners:                                     # dimples mark the corners
        cv.dot(c, max(0.6, 0.028 * g.u), line)
    return corners


def _beard(g: Geo, cv: Canvas, label):
    p = g.p
    if p.beard == "none":
        return
    col = p.hair if p.beard != "stubble" else _mix(p.skin, p.hair, 0.35)
    if p.hair_name in ("blue", "pink", "green") and p.beard != "stubble":
        col = _mix(p.hair, DARK, 0.45)
    my, mw = g.mouth_y, p.mouth_width
    if p.beard in ("full", "stubble"):
        yb = g.nose_y - 0.05
        o = g.outline(96, grow=0.05 if p.beard == "full" else 0.0)
        low = o[o[:, 1] > yb]
        low = low[np.argsort(np.arctan2(low[:, 1], low[:, 0]))]          # right cheek -> chin -> left cheek
        x = np.linspace(-0.97, 0.97, 21)
        y = yb + (my - 0.12 - yb) * (1 - np.abs(x) ** 2)
        cv.poly(np.concatenate([g.px(low), g.p3(x, y)]), col, label)
    elif p.beard == "goatee":      # a chin tuft tapering to a point
        yb = g.h * 0.98
        x = np.array([-0.18, 0.18, 0.12, 0.0, -0.12])
        y = np.array([my + 0.09, my + 0.09, my + 0.6 * (yb - my), yb + 0.06, my + 0.6 * (yb - my)])
        cv.poly(np.concatenate([g.p3(x[:3], y[:3]), g.px([(0.0, yb + 0.06)]), g.p3(x[4:], y[4:])]), col)
    if p.beard in ("full", "goatee", "moustache"):
        x = np.linspace(-1, 1, 13) * mw * 1.15
        top = my - 0.14 + 0.05 * (x / (mw * 1.15)) ** 2
        bot = my - 0.03 + 0.07 * (x / (mw * 1.15)) ** 4
        cv.poly(np.concatenate([g.p3(x, top, 0.03), g.p3(x, bot, 0.03)[::-1]]), col)


def _glasses(g: Geo, cv: Canvas):
    p = g.p
    if p.glasses == "none":
        return
    r = p.eye_size * 1.55
    lw = max(0.6, 0.035 * g.u)
    inner = []
    for s in (-1, 1):
        ex = s * p.eye_spacing
        if p.glasses == "round":
            cs, sn = _ring(28)
            x, y = ex + r * cs, g.eye_y + 0.9 * r * sn
        else:
            x = ex + r * np.array([-1, 1, 1, -1, -1.0]) * 1.05
            y = g.eye_y + r * np.array([-0.75, -0.75, 0.75, 0.75, -0.75])
        pts = g.p3(x, y, 0.1)
        cv.line(np.concatenate([pts, pts[:1]]), p.glasses_colour, lw)
        inner.append(g.p3(ex - s * r, g.eye_y - 0.2 * r, 0.1)[0])
        arm = g.proj(np.array([s * (p.eye_spacing + r), s * 0.985]), np.array([g.eye_y - 0.2 * r] * 2),
                        np.array([0.1, 0.0]))[0]
        cv.line(arm, p.glasses_colour, lw)
    cv.line(np.stack(inner), p.glasses_colour, lw)


def _decor(g: Geo, cv: Canvas):
    p = g.p
    cy = g.nose_y - 0.02
    if p.blush:
        for s in (-1, 1):
            c = g.p3(s * 0.58, cy + 0.08, 0.0)[0]
            cv.ellipse(c, 0.15 * g.u * g.cyw ** 2, 0.08 * g.u, _mix(p.skin, (240, 90, 110), 0.35))
    for s in (-1, 1):
        for dx, dy in p.freckles:
            x = s * (0.5 + dx)
            c = g.p3(x, cy + dy, 0.0)[0]
            cv.dot(c, 0.024 * g.u, _shade(p.skin, 0.66))
    if p.hair_style == "bald":   # a shine on the scalp
        cv.ellipse(g.p3(-0.3, -0.72 * g.h, 0.0)[0], 0.2 * g.u, 0.1 * g.u, _mix(p.skin, (255, 255, 255), 0.35))


def draw_person(cv: Canvas, person: Person, pose: Pose, label: int, shirt) -> tuple:
    """Draw one person; return (box [4], kps [5, 2]) in pixels."""
    g = Geo(person, pose, cv.size)
    p, skin, hc = person, person.skin, person.hair
    style = p.hair_style
    _back_hair(g, cv, hc, label, style)
    _body(g, cv, skin, shirt)
    if style not in ("long", "bob"):
        _ears(g, cv, skin, label, front=False)
    cv.poly(g.px(g.outline(72)), skin, label, outline=_shade(skin, 0.62), width=0.03 * g.u)
    if style not in ("long", "bob"):
        _ears(g, cv, skin, label, front=True)
    if style == "bald":
        for s in (-1, 1):
            tuft = [(s * 0.9, -0.42 * g.h), (s * 1.08, -0.36 * g.h), (s * 1.09, 0.02), (s * 0.94, 0.08 * g.h)]
            cv.poly(g.px(tuft), hc, label)
    _decor(g, cv)
    _beard(g, cv, label)
    eyes = _eyes(g, cv)
    _brows(g, cv)
    nose = _nose(g, cv)
    mouth = _mouth(g, cv)
    if style == "mohawk":
        y = np.linspace(g.top - 0.04 * g.h, -0.97 * g.h, 8)
        strip = np.concatenate([g.p3(np.full(8, -0.17), y), g.p3(np.full(8, 0.17), y)[::-1]])
        cv.poly(strip, hc, label)
        top = g.p3(0.0, -0.97 * g.h)[0]
        sx = (top[0] - g.px([(0, -0.97 * g.h)])[0][0]) / g.u   # follow the strip's sideways shift
        for k, tc in enumerate(np.linspace(-0.6, 0.6, 5)):
            b = np.array([[sx + tc * 0.3 - 0.14, -0.9 * g.h], [sx + tc * 0.3 + 0.14, -0.9 * g.h],
                          [sx + tc * 0.55, -g.h - 0.42 + 0.12 * abs(tc)]])
            cv.poly(g.px(b), hc, label)
    elif style in HAIR:
        _hair_cap(g, cv, hc, label, style)
    _glasses(g, cv)
    kps = np.stack([*sorted(eyes, key=lambda q: q[0]), nose, *sorted(mouth, key=lambda q: q[0])])
    return g.box(), kps.astype(np.float32)


def render(people, background: str, lighting: str, size: int = 128, seed: int = 0, shirts=None) -> Render:
    """Draw [(Person, Pose), ...] (later ones in front) on `background` under `lighting`.

    `seed` fixes the background's details and (unless `shirts` gives RGB colours) the shirt colours."""
    if background not in BACKGROUNDS:
        raise ValueError(f"unknown background {background!r}; one of {BACKGROUNDS}")
    if lighting not in LIGHTINGS:
        raise ValueError(f"unknown lighting {lighting!r}; one of {LIGHTINGS}")
    if shirts is None:
        r = rng_for(RENDER_STREAM, seed)
        shirts = [SHIRTS[int(i)] for i in r.integers(len(SHIRTS), size=len(people))]
    cv = Canvas(background_image(background, size * SS, seed), size)
    boxes = [draw_person(cv, person, pose, i + 1, shirt) for i, ((person, pose), shirt) in enumerate(zip(people, shirts))]
    image = np.asarray(cv.img.resize((size, size), Image.LANCZOS))
    image = apply_lighting(image, lighting)
    lab = np.asarray(cv.lab)
    faces = []
    for i, (box, kps) in enumerate(boxes):
        m = (lab == i + 1).view(np.uint8)
        votes = sum(m[a::SS, b::SS] for a in range(SS) for b in range(SS))    # [size, size] sub-pixel votes
        mask = votes * 2 > SS * SS
        faces.append(FaceAnnotation(box=box, kps=kps, mask=mask))
    return Render(image=image, faces=faces)
