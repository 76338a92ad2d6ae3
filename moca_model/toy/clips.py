"""Clips (one action per clip), their captions, and reference photos of the same people.

Streams: a clip's action/scene/poses come from rng(CLIP_STREAM, person, clip), a reference's from
rng(REF_STREAM, person, ref), a two-person clip's from rng(TWO_STREAM, a, b, clip): same seeds -> same bytes.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np

from .people import Person, Pose, rng_for
from .render import BACKGROUNDS, LIGHTINGS, SHIRTS, Render, render

FRAME_SIZE = 128
REF_SIZE = 256
NUM_FRAMES = 17
CLIP_STREAM, REF_STREAM, TWO_STREAM = 0xC1, 0x2EF, 0x22

ACTIONS = ("turn_left", "turn_right", "nod", "smile", "open_mouth", "blink", "move_across", "zoom_in", "zoom_out")
TWO_PERSON_ACTIONS = ("turn_left", "turn_right", "nod", "smile", "open_mouth", "blink")

# ---------------------------------------------------------------------------------------------- captions
SUBJECTS = ("a person", "someone", "a cartoon person")
ACTION_PHRASES = {
    "turn_left": ("turns their head to the left", "looks to the left", "turns to the left"),
    "turn_right": ("turns their head to the right", "looks to the right", "turns to the right"),
    "nod": ("nods", "nods their head", "nods up and down"),
    "smile": ("smiles", "starts to smile", "breaks into a smile"),
    "open_mouth": ("opens their mouth", "opens their mouth wide", "opens their mouth in surprise"),
    "blink": ("blinks", "blinks slowly", "closes and opens their eyelids"),
    "move_across": ("moves across the frame", "slides across the picture", "moves sideways across the frame"),
    "zoom_in": ("comes closer to the camera", "moves toward the camera", "leans in toward the camera"),
    "zoom_out": ("moves away from the camera", "backs away from the camera", "leans back from the camera"),
}
PLURAL_PHRASES = {
    "turn_left": ("turn their heads to the left", "look to the left"),
    "turn_right": ("turn their heads to the right", "look to the right"),
    "nod": ("nod", "nod their heads"),
    "smile": ("smile", "start to smile"),
    "open_mouth": ("open their mouths", "open their mouths wide"),
    "blink": ("blink", "blink slowly"),
}
DIRECTIONS = {"left_to_right": "from left to right", "right_to_left": "from right to left"}
BACKGROUND_PHRASES = {
    "white_wall": "a plain white wall", "teal_wall": "a plain teal wall", "stripes": "a striped wall",
    "checker": "a checkered wall", "dots": "a polka dot wall", "sky_grass": "a grassy field under a blue sky",
    "room": "a room with a wooden floor", "night_sky": "a starry night sky", "beach": "a sandy beach by the sea",
}
LIGHTING_PHRASES = {"daylight": "bright daylight", "warm_evening": "warm evening light", "dim": "dim light",
                    "cool_blue": "cool blue light"}
SCENE_TEMPLATES = ("in front of {}", "against {}", "with {} behind them")
LIGHT_TEMPLATES = ("in {}", "under {}", "lit by {}")
TEMPLATES = ("{subj} {act} {scene}, {light}", "{light}, {subj} {act} {scene}", "{subj} {act}, {light}, {scene}")
_WORD = re.compile(r"[a-z]+")


def caption_tokens(text: str) -> list[str]:
    """Lower-cased words of a caption (punctuation dropped)."""
    return _WORD.findall(text.lower())


def caption_for(action: str, background: str, lighting: str, rng: np.random.Generator, direction: str = "",
                people: int = 1) -> str:
    """A plain-words caption: action (+ direction for move_across), scene and lighting - never identity."""
    def pick(xs):
        return xs[int(rng.integers(len(xs)))]

    subj = pick(SUBJECTS) if people == 1 else pick(("two people", "two cartoon people"))
    act = pick(ACTION_PHRASES[action] if people == 1 else PLURAL_PHRASES[action])
    if direction:
        act = f"{act} {DIRECTIONS[direction]}"
    scene = pick(SCENE_TEMPLATES).format(BACKGROUND_PHRASES[background])
    light = pick(LIGHT_TEMPLATES).format(LIGHTING_PHRASES[lighting])
    return pick(TEMPLATES).format(subj=subj, act=act, scene=scene, light=light)


def _vocab():
    parts = [*SUBJECTS, "two people", "two cartoon people", *[p for v in ACTION_PHRASES.values() for p in v],
             *[p for v in PLURAL_PHRASES.values() for p in v], *DIRECTIONS.values(), *BACKGROUND_PHRASES.values(),
             *LIGHTING_PHRASES.values(), *SCENE_TEMPLATES, *LIGHT_TEMPLATES]
    return tuple(sorted({w for p in parts for w in caption_tokens(p)}))


CAPTION_VOCAB = _vocab()


# ---------------------------------------------------------------------------------------------- clips
@dataclass
class Clip:
    frames: np.ndarray                    # [T, H, W, 3] uint8
    caption: str
    action: str
    background: str
    lighting: str
    person_seeds: list
    faces: list                           # [T][person] FaceAnnotation
    poses: list = field(default_factory=list)     # [T][person] Pose
    direction: str = ""                   # move_across: "left_to_right" / "right_to_left"


@dataclass
class ClipSpec:
    """Everything about a clip but its pixels (cheap: used by make_reference to avoid the clip's scene)."""
    action: str
    background: str
    lighting: str
    caption: str
    direction: str
    poses: list                           # [T] Pose
    shirt: int                            # index into SHIRTS
    seed: int                             # render seed (background details)


def _ease(t):
    t = np.clip(t, 0, 1)
    return t * t * (3 - 2 * t)


def action_track(action: str, rng: np.random.Generator, num_frames: int, base: Pose) -> tuple[list, str]:
    """Per-frame poses [T] of `action` starting from `base`, with random amplitude/timing; and a direction."""
    T = num_frames
    t = np.linspace(0, 1, T)
    t0, t1 = rng.uniform(0.0, 0.2), rng.uniform(0.75, 1.0)
    p = _ease((t - t0) / (t1 - t0))
    v = {k: np.full(T, getattr(base, k), np.float64) for k in Pose.__dataclass_fields__}
    direction = ""
    if action in ("turn_left", "turn_right"):
        s = -1 if action == "turn_left" else 1
        v["yaw"] = s * (rng.uniform(-0.12, 0.05) + rng.uniform(0.55, 0.72) * p)
    elif action == "nod":
        cyc = rng.choice([1.0, 1.5, 2.0])
        v["pitch"] = base.pitch + rng.uniform(0.22, 0.32) * np.sin(2 * np.pi * cyc * np.clip((t - t0) / (t1 - t0), 0, 1))
    elif action == "smile":
        v["smile"] = rng.uniform(0.0, 0.1) + (rng.uniform(0.85, 1.0) - 0.05) * p
    elif action == "open_mouth":
        v["smile"] = np.minimum(v["smile"], 0.15)
        v["mouth_open"] = rng.uniform(0.75, 1.0) * p
    elif action == "blink":
        k = np.arange(T)
        n = 1 if rng.random() < 0.65 else 2
        centres = [int(rng.integers(3, T - 3))] if n == 1 else [int(rng.integers(2, T // 2 - 2)), int(rng.integers(T // 2 + 2, T - 2))]
        shut = np.zeros(T)
        for c in centres:
            shut = np.maximum(shut, np.clip(1 - np.abs(k - c) / 2.0, 0, 1))
        v["eyes_open"] = 1 - shut
    elif action == "move_across":
        s = 1 if rng.random() < 0.5 else -1
        direction = "left_to_right" if s > 0 else "right_to_left"
        v["scale"] = np.full(T, rng.uniform(0.43, 0.49))
        a, b = rng.uniform(0.29, 0.33), rng.uniform(0.67, 0.71)
        v["cx"] = a + (b - a) * p if s > 0 else b - (b - a) * p
    elif action in ("zoom_in", "zoom_out"):
        lo, hi = rng.uniform(0.43, 0.47), rng.uniform(0.62, 0.66)
        v["scale"] = lo + (hi - lo) * p if action == "zoom_in" else hi - (hi - lo) * p
        v["cy"] = base.cy + 0.04 * (v["scale"] - 0.55)
    else:
        raise ValueError(f"unknown action {action!r}")
    wob = rng.normal(0, 0.004, (T, 2)).cumsum(0)          # a little hand-held drift
    v["cx"] = v["cx"] + wob[:, 0]
    v["cy"] = v["cy"] + wob[:, 1]
    return [Pose(**{k: float(v[k][i]) for k in v}) for i in range(T)], direction


def _base_pose(rng: np.random.Generator) -> Pose:
    return Pose(yaw=rng.uniform(-0.1, 0.1), pitch=rng.uniform(-0.08, 0.08), roll=rng.uniform(-0.08, 0.08),
                cx=0.5 + rng.uniform(-0.03, 0.03), cy=0.5 + rng.uniform(-0.02, 0.03), scale=rng.uniform(0.47, 0.6),
                smile=rng.uniform(0, 0.25), mouth_open=0.0, eyes_open=1.0)


def clip_spec(person_seed: int, clip_seed: int, num_frames: int = NUM_FRAMES) -> ClipSpec:
    rng = rng_for(CLIP_STREAM, person_seed, clip_seed)
    action = ACTIONS[int(rng.integers(len(ACTIONS)))]
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    lighting = LIGHTINGS[int(rng.integers(len(LIGHTINGS)))]
    shirt = int(rng.integers(len(SHIRTS)))
    seed = int(rng.integers(2 ** 31))
    poses, direction = action_track(action, rng, num_frames, _base_pose(rng))
    caption = caption_for(action, background, lighting, rng, direction)
    return ClipSpec(action, background, lighting, caption, direction, poses, shirt, seed)


def make_clip(person_seed: int, clip_seed: int, size: int = FRAME_SIZE, num_frames: int = NUM_FRAMES) -> Clip:
    """One person doing one action: frames [T, size, size, 3], caption, per-frame annotations."""
    spec = clip_spec(person_seed, clip_seed, num_frames)
    person = Person.from_seed(person_seed)
    frames, faces = [], []
    for pose in spec.poses:
        r = render([(person, pose)], spec.background, spec.lighting, size, spec.seed, shirts=[SHIRTS[spec.shirt]])
        frames.append(r.image)
        faces.append(r.faces)
    return Clip(np.stack(frames), spec.caption, spec.action, spec.background, spec.lighting, [int(person_seed)],
                faces, [[p] for p in spec.poses], spec.direction)


def _reference_draws(person_seed: int, ref_seed: int):
    """(background, lighting, shirt index, rng) of ``make_reference(person_seed, ref_seed)``; the rng continues
    with the pose draws."""
    spec = clip_spec(person_seed, ref_seed)
    rng = rng_for(REF_STREAM, person_seed, ref_seed)
    bgs = [b for b in BACKGROUNDS if b != spec.background]
    lights = [x for x in LIGHTINGS if x != spec.lighting]
    shirts = [i for i in range(len(SHIRTS)) if i != spec.shirt]
    background = bgs[int(rng.integers(len(bgs)))]
    lighting = lights[int(rng.integers(len(lights)))]
    shirt = shirts[int(rng.integers(len(shirts)))]
    return background, lighting, shirt, rng


def reference_scene(person_seed: int, ref_seed: int) -> dict:
    """{"background", "lighting"} of ``make_reference(person_seed, ref_seed)`` without rendering it (what a
    video that copies the reference's scene would show: the benchmark's copy-paste measure)."""
    background, lighting, _, _ = _reference_draws(person_seed, ref_seed)
    return {"background": background, "lighting": lighting}


def make_reference(person_seed: int, ref_seed: int, size: int = REF_SIZE) -> Render:
    """A photo of the same person: near-frontal pose, another expression, background, lighting and shirt
    than ``make_clip(person_seed, ref_seed)`` (never one of its frames)."""
    background, lighting, shirt, rng = _reference_draws(person_seed, ref_seed)
    pose = Pose(yaw=float(np.clip(rng.normal(0, 0.16), -0.4, 0.4)), pitch=rng.uniform(-0.1, 0.1),
                roll=rng.uniform(-0.1, 0.1), cx=0.5 + rng.uniform(-0.03, 0.03), cy=0.5 + rng.uniform(-0.02, 0.03),
                scale=rng.uniform(0.42, 0.62), smile=rng.uniform(0, 0.7),
                mouth_open=rng.uniform(0, 0.35) if rng.random() < 0.2 else 0.0, eyes_open=1.0)
    return render([(Person.from_seed(person_seed), pose)], background, lighting, size,
                  int(rng.integers(2 ** 31)), shirts=[SHIRTS[shirt]])


def make_two_person_clip(person_seeds: tuple, clip_seed: int, size: int = FRAME_SIZE,
                         num_frames: int = NUM_FRAMES) -> Clip:
    """Two smaller people side by side doing the same action (each with its own annotations and mask)."""
    a, b = (int(s) for s in person_seeds)
    rng = rng_for(TWO_STREAM, a, b, clip_seed)
    action = TWO_PERSON_ACTIONS[int(rng.integers(len(TWO_PERSON_ACTIONS)))]
    background = BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))]
    lighting = LIGHTINGS[int(rng.integers(len(LIGHTINGS)))]
    shirts = [SHIRTS[int(i)] for i in rng.choice(len(SHIRTS), 2, replace=False)]
    seed = int(rng.integers(2 ** 31))
    tracks = []
    for cx in (0.26, 0.74):
        base = replace(_base_pose(rng), cx=cx + rng.uniform(-0.01, 0.01), cy=0.55, scale=rng.uniform(0.32, 0.36))
        tracks.append(action_track(action, rng, num_frames, base)[0])
    caption = caption_for(action, background, lighting, rng, people=2)
    people = [Person.from_seed(a), Person.from_seed(b)]
    frames, faces = [], []
    for pa, pb in zip(*tracks):
        r = render([(people[0], pa), (people[1], pb)], background, lighting, size, seed, shirts=shirts)
        frames.append(r.image)
        faces.append(r.faces)
    return Clip(np.stack(frames), caption, action, background, lighting, [a, b], faces,
                [list(x) for x in zip(*tracks)])
