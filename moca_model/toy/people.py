"""Toy identities: ``Person`` (identity parameters drawn from a seed) and ``Pose`` (the per-frame state).

Every attribute is discrete or widely spread so two people differ at a glance: head shape (height ratio,
jaw), skin tone, hair colour and style, eye colour/spacing/size/shape, brows, nose, mouth, lips, glasses,
beard, earrings, freckles, blush. Lengths are in head units: the face is 2 units wide (cheek to cheek).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

RGB = tuple  # (r, g, b) ints

SKIN_TONES = {
    "porcelain": (255, 226, 204), "pink": (250, 200, 190), "light": (238, 192, 150), "tan": (216, 160, 112),
    "olive": (190, 150, 95), "brown": (158, 102, 62), "dark": (116, 72, 44), "deep": (82, 52, 34),
}
HAIR_COLOURS = {
    "black": (28, 24, 26), "dark_brown": (78, 46, 26), "brown": (140, 88, 44), "blonde": (232, 196, 100),
    "ginger": (208, 92, 32), "grey": (150, 150, 156), "white": (240, 238, 230), "blue": (52, 92, 210),
    "pink": (236, 108, 170), "green": (60, 160, 84),
}
EYE_COLOURS = {
    "brown": (110, 62, 28), "blue": (40, 120, 230), "green": (40, 150, 70), "grey": (120, 130, 140),
    "amber": (210, 140, 20), "violet": (140, 60, 200),
}
LIP_COLOURS = {"red": (200, 40, 50), "rose": (220, 110, 120), "plum": (130, 40, 70), "brown": (150, 85, 70)}
ACCENT_COLOURS = {"black": (20, 20, 24), "red": (210, 30, 40), "blue": (30, 70, 200), "gold": (225, 175, 30),
                  "silver": (200, 205, 215)}
HAIR_STYLES = ("bald", "short", "side_part", "spiky", "mohawk", "bun", "long", "bob", "afro")
JAWS = ("round", "square", "pointed", "oval")
NOSE_SHAPES = ("button", "triangle", "long", "wide")
GLASSES = ("none", "round", "square")
BEARDS = ("none", "stubble", "full", "goatee", "moustache")

# Words that describe a person: captions never contain any of them (tests check it).
IDENTITY_WORDS = frozenset(
    "hair hairs haired skin skinned eye eyes eyed glasses spectacles beard bearded moustache mustache goatee "
    "stubble freckles freckled earring earrings bald blonde blond ginger brunette redhead bun mohawk afro bob "
    "ponytail spiky curly fringe bangs lips lipstick nose jaw chin brows eyebrows man woman boy girl male "
    "female he she his her him hers old young".split())


def rng_for(*key: int) -> np.random.Generator:
    """A PCG64 generator seeded from a tuple of non-negative ints (stream id first)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(k) for k in key])))


PERSON_STREAM = 0x7E0


@dataclass(frozen=True)
class Person:
    """Identity parameters (head units; colours are RGB tuples; ``*_name`` fields keep the palette name)."""
    seed: int
    head_ratio: float        # head half-height / half-width (1.1 .. 1.4)
    jaw: str                 # JAWS
    skin: RGB
    skin_name: str
    hair: RGB
    hair_name: str
    hair_style: str          # HAIR_STYLES
    part_side: int           # -1 / +1: side of the parting (side_part) or sweep
    eye_colour: RGB
    eye_colour_name: str
    eye_spacing: float       # |X| of the eye centres (0.30 .. 0.46)
    eye_size: float          # eye half-width (0.12 .. 0.19)
    eye_aspect: float        # eye half-height / half-width (0.6 .. 1.0)
    brow_thickness: float    # 0.04 .. 0.10
    brow_angle: float        # >0: inner ends raised (worried), <0: lowered (stern)
    brow_colour: RGB
    nose_shape: str          # NOSE_SHAPES
    nose_size: float         # 0.8 .. 1.4
    mouth_width: float       # half-width of the mouth (0.24 .. 0.44)
    lips: RGB
    lips_name: str
    eye_y: float             # feature heights as fractions of the face box (top = hairline, bottom = chin)
    nose_y: float
    mouth_y: float
    glasses: str             # GLASSES
    glasses_colour: RGB
    beard: str               # BEARDS
    earrings: tuple          # () or an RGB
    freckles: tuple          # ((dx, dy), ...) offsets from the cheek centre, () when none
    blush: bool

    @classmethod
    def from_seed(cls, seed: int) -> "Person":
        r = rng_for(PERSON_STREAM, seed)

        def pick(options):
            return options[int(r.integers(len(options)))]

        def jit(v, s):
            return float(v + r.uniform(-s, s))

        skin_name = pick(list(SKIN_TONES))
        hair_name = pick(list(HAIR_COLOURS))
        eye_name = pick(list(EYE_COLOURS))
        lips_name = pick(list(LIP_COLOURS))
        hair = HAIR_COLOURS[hair_name]
        brow = tuple(int(c * 0.55) for c in hair) if r.random() < 0.8 else ACCENT_COLOURS["black"]
        glasses = GLASSES[0] if r.random() < 0.65 else pick(GLASSES[1:])
        beard = BEARDS[0] if r.random() < 0.65 else pick(BEARDS[1:])
        freckles = ()
        if r.random() < 0.22:
            freckles = tuple((float(x), float(y)) for x, y in r.normal(0, [0.11, 0.06], size=(7, 2)))
        return cls(
            seed=int(seed),
            head_ratio=jit(pick((1.12, 1.26, 1.40)), 0.03), jaw=pick(JAWS),
            skin=SKIN_TONES[skin_name], skin_name=skin_name, hair=hair, hair_name=hair_name,
            hair_style=pick(HAIR_STYLES), part_side=pick((-1, 1)),
            eye_colour=EYE_COLOURS[eye_name], eye_colour_name=eye_name,
            eye_spacing=jit(pick((0.31, 0.38, 0.45)), 0.012), eye_size=jit(pick((0.125, 0.155, 0.185)), 0.006),
            eye_aspect=jit(pick((0.62, 0.8, 0.98)), 0.03),
            brow_thickness=jit(pick((0.045, 0.07, 0.10)), 0.005), brow_angle=jit(pick((-0.06, 0.02, 0.1)), 0.01),
            brow_colour=brow,
            nose_shape=pick(NOSE_SHAPES), nose_size=jit(pick((0.8, 1.08, 1.36)), 0.04),
            mouth_width=jit(pick((0.25, 0.34, 0.43)), 0.01), lips=LIP_COLOURS[lips_name], lips_name=lips_name,
            eye_y=jit(0.40, 0.02), nose_y=jit(0.61, 0.015), mouth_y=jit(0.78, 0.012),
            glasses=glasses, glasses_colour=ACCENT_COLOURS[pick(("black", "red", "blue", "gold"))],
            beard=beard,
            earrings=ACCENT_COLOURS[pick(("gold", "silver", "red", "blue"))] if r.random() < 0.25 else (),
            freckles=freckles, blush=bool(r.random() < 0.25),
        )

    def describe(self) -> dict:
        """Readable attribute summary (palette names instead of RGB), for sheets and debugging."""
        d = asdict(self)
        for k in ("skin", "hair", "eye_colour", "lips"):
            d.pop(k)
        d["freckles"] = bool(self.freckles)
        d["earrings"] = bool(self.earrings)
        return d


@dataclass(frozen=True)
class Pose:
    """Non-identity state of a person in one frame."""
    yaw: float = 0.0          # radians; > 0 turns the face towards image right
    pitch: float = 0.0        # radians; > 0 looks down
    roll: float = 0.0         # radians; in-plane rotation about the face-box centre
    cx: float = 0.5           # face-box centre at pitch 0, fraction of the frame width / height
    cy: float = 0.5
    scale: float = 0.55       # face-box width (cheek to cheek) as a fraction of the frame width
    smile: float = 0.0        # expression in [0, 1]
    mouth_open: float = 0.0
    eyes_open: float = 1.0
