"""The toy world's API (notes/TOY_PLAN.md): people, poses, rendering, clips, captions, references.

Pure numpy + PIL, deterministic from the seeds. Split by concept: ``people`` (identities, poses),
``render`` (drawing, backgrounds, lighting, annotations), ``clips`` (actions, captions, clips, references);
this module re-exports them and adds a contact sheet and a CLI:

    python -m moca_model.toy.world --sheet out.png [--people 8] [--first 0] [--annotate]

Speed (CPU time, one core): a 17-frame 128x128 clip renders in ~55 ms, a 256x256 reference in ~11 ms.
"""
from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageDraw

from .clips import (ACTION_PHRASES, ACTIONS, BACKGROUND_PHRASES, CAPTION_VOCAB, FRAME_SIZE, LIGHTING_PHRASES,
                    NUM_FRAMES, REF_SIZE, TWO_PERSON_ACTIONS, Clip, ClipSpec, action_track, caption_for,
                    caption_tokens, clip_spec, make_clip, make_reference, make_two_person_clip, reference_scene)
from .people import (EYE_COLOURS, HAIR_COLOURS, HAIR_STYLES, IDENTITY_WORDS, SKIN_TONES, Person, Pose, rng_for)
from .render import (BACKGROUNDS, LIGHTINGS, PIXEL_CENTER, FaceAnnotation, Render, apply_lighting,
                     background_image, render)

TRAIN_IDS = range(0, 2000)              # identity seeds used for training
HELDOUT_IDS = range(100_000, 100_200)   # held-out identity seeds: never trained on by any model

__all__ = [
    "FRAME_SIZE", "REF_SIZE", "NUM_FRAMES", "TRAIN_IDS", "HELDOUT_IDS", "ACTIONS", "TWO_PERSON_ACTIONS",
    "BACKGROUNDS", "LIGHTINGS", "CAPTION_VOCAB", "IDENTITY_WORDS", "PIXEL_CENTER", "Person", "Pose",
    "FaceAnnotation", "Render", "Clip", "ClipSpec", "render", "make_clip", "make_reference",
    "make_two_person_clip", "reference_scene", "clip_spec", "caption_for", "caption_tokens", "action_track", "apply_lighting",
    "background_image", "contact_sheet", "draw_annotations", "sample_sheet", "rng_for", "HAIR_STYLES",
    "HAIR_COLOURS", "SKIN_TONES", "EYE_COLOURS", "ACTION_PHRASES", "BACKGROUND_PHRASES", "LIGHTING_PHRASES",
]


def contact_sheet(images, cols: int, cell: int | None = None, gap: int = 2) -> np.ndarray:
    """Grid of [H, W, 3] uint8 images (resized to `cell` px squares, default the largest) -> [H', W', 3] uint8."""
    images = list(images)
    cell = cell or max(max(im.shape[:2]) for im in images)
    rows = (len(images) + cols - 1) // cols
    out = np.full((rows * (cell + gap) + gap, cols * (cell + gap) + gap, 3), 255, np.uint8)
    for i, im in enumerate(images):
        if im.shape[:2] != (cell, cell):
            im = np.asarray(Image.fromarray(im).resize((cell, cell), Image.LANCZOS))
        r, c = divmod(i, cols)
        y, x = gap + r * (cell + gap), gap + c * (cell + gap)
        out[y:y + cell, x:x + cell] = im
    return out


def draw_annotations(image: np.ndarray, faces, scale: int = 1) -> np.ndarray:
    """The image (upscaled `scale`x, nearest) with each face's box, 5 keypoints and mask outline drawn on."""
    im = Image.fromarray(image).resize((image.shape[1] * scale, image.shape[0] * scale), Image.NEAREST)
    a = np.asarray(im).copy()
    for f in faces:
        m = np.kron(f.mask, np.ones((scale, scale), bool))
        edge = m & ~(np.roll(m, 1, 0) & np.roll(m, -1, 0) & np.roll(m, 1, 1) & np.roll(m, -1, 1))
        a[edge] = (255, 255, 0)
    im = Image.fromarray(a)
    d = ImageDraw.Draw(im)
    cols = ((0, 255, 0), (255, 0, 0), (255, 255, 255), (0, 200, 255), (255, 0, 255))
    for f in faces:
        b = (f.box - PIXEL_CENTER + 0.5) * scale - 0.5
        d.rectangle(b.tolist(), outline=(0, 255, 0))
        for k, c in zip(f.kps, cols):
            x, y = (k - PIXEL_CENTER + 0.5) * scale - 0.5
            d.ellipse([x - 1.5, y - 1.5, x + 1.5, y + 1.5], fill=c)
    return np.asarray(im)


def sample_sheet(person_seeds, clip_seed: int = 0, frames=(0, 5, 11, 16), annotate: bool = False) -> np.ndarray:
    """One row per person: the reference (REF_SIZE), then `frames` of make_clip(seed, clip_seed) upscaled 2x."""
    cells = []
    for s in person_seeds:
        ref = make_reference(s, clip_seed)
        clip = make_clip(s, clip_seed)
        cells.append(draw_annotations(ref.image, ref.faces) if annotate else ref.image)
        for t in frames:
            im = clip.frames[t]
            cells.append(draw_annotations(im, clip.faces[t], 2) if annotate else im)
    return contact_sheet(cells, 1 + len(frames), cell=REF_SIZE)


def main(argv=None):
    ap = argparse.ArgumentParser(description="Toy world: write a contact sheet of people x (reference + frames).")
    ap.add_argument("--sheet", required=True, help="output PNG")
    ap.add_argument("--people", type=int, default=8)
    ap.add_argument("--first", type=int, default=0, help="first person seed")
    ap.add_argument("--clip", type=int, default=0, help="clip seed")
    ap.add_argument("--annotate", action="store_true", help="draw boxes, keypoints and mask outlines")
    a = ap.parse_args(argv)
    sheet = sample_sheet(range(a.first, a.first + a.people), a.clip, annotate=a.annotate)
    Image.fromarray(sheet).save(a.sheet)
    for s in range(a.first, a.first + a.people):
        print(s, make_clip(s, a.clip).caption)


if __name__ == "__main__":
    main()
