"""The toy world: determinism, seed ranges, captions, exact annotations, references, actions, two people."""
from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

from moca_model.toy import world as W
from moca_model.toy.render import apply_lighting


def _clip_seed(person: int, action: str) -> int:
    """The first clip seed whose action is `action` (clip_spec is cheap: no pixels)."""
    return next(c for c in range(500) if W.clip_spec(person, c).action == action)


def _lum(rgb):
    return np.asarray(rgb, np.float32) @ np.float32([0.299, 0.587, 0.114])


def test_deterministic_bytes():
    a, b = W.make_clip(3, 7), W.make_clip(3, 7)
    assert a.frames.dtype == np.uint8 and a.frames.shape == (W.NUM_FRAMES, W.FRAME_SIZE, W.FRAME_SIZE, 3)
    assert a.frames.tobytes() == b.frames.tobytes() and a.caption == b.caption
    assert all(np.array_equal(x[0].mask, y[0].mask) and np.array_equal(x[0].kps, y[0].kps)
               for x, y in zip(a.faces, b.faces))
    r1, r2 = W.make_reference(3, 7), W.make_reference(3, 7)
    assert r1.image.shape == (W.REF_SIZE, W.REF_SIZE, 3) and r1.image.tobytes() == r2.image.tobytes()
    assert W.Person.from_seed(11) == W.Person.from_seed(11) != W.Person.from_seed(12)
    assert W.make_clip(3, 8).frames.tobytes() != a.frames.tobytes()


def test_seed_ranges_and_distinct_people():
    assert not set(W.TRAIN_IDS) & set(W.HELDOUT_IDS)
    assert len(W.TRAIN_IDS) == 2000 and len(W.HELDOUT_IDS) == 200
    keys = set()
    seeds = [*W.TRAIN_IDS, *W.HELDOUT_IDS]
    for s in seeds:
        p = W.Person.from_seed(s)
        keys.add((p.skin_name, p.hair_name, p.hair_style, p.eye_colour_name, p.glasses, p.beard, p.nose_shape, p.jaw))
    assert len(keys) > 0.97 * len(seeds)      # a glance tells almost every pair apart


def test_captions_vocab_and_no_identity():
    assert list(W.CAPTION_VOCAB) == sorted(set(W.CAPTION_VOCAB))
    assert not set(W.CAPTION_VOCAB) & W.IDENTITY_WORDS
    seen = set()
    for s in range(60):
        for c in range(5):
            spec = W.clip_spec(s, c)
            words = W.caption_tokens(spec.caption)
            assert set(words) <= set(W.CAPTION_VOCAB), spec.caption
            assert W.LIGHTING_PHRASES[spec.lighting] in spec.caption
            assert W.BACKGROUND_PHRASES[spec.background] in spec.caption
            seen.add(spec.action)
    assert seen == set(W.ACTIONS)
    two = W.make_two_person_clip((1, 2), 0, num_frames=2)
    assert set(W.caption_tokens(two.caption)) <= set(W.CAPTION_VOCAB) and "two" in two.caption


@pytest.mark.parametrize("size", [W.FRAME_SIZE, W.REF_SIZE])
def test_keypoints_land_on_features(size):
    bg = "white_wall"
    for s in range(12):
        p = W.Person.from_seed(s)
        pose = W.Pose(yaw=0.05 * (s % 3 - 1), roll=0.04 * (s % 2), scale=0.6)
        r = W.render([(p, pose)], bg, "daylight", size)
        img, f = r.image.astype(np.float32), r.faces[0]
        lit = {k: apply_lighting(np.uint8([[c]]), "daylight")[0, 0].astype(np.float32)
               for k, c in {"pupil": (14, 12, 16), "iris": p.eye_colour, "skin": p.skin, "white": (250, 250, 248),
                            "lips": p.lips}.items()}
        for k in f.kps[:2]:                                     # eye centres: pupil or iris
            x, y = np.round(k).astype(int)
            d = {n: np.abs(img[y, x] - c).sum() for n, c in lit.items() if n != "lips"}
            assert min(d, key=d.get) in ("pupil", "iris"), (s, size, d)
        for k, side in zip(f.kps[3:], (-1, 1)):                 # mouth corners: mouth at the point, skin beyond
            x, y = np.round(k).astype(int)
            win = img[y - 1:y + 2, x - 1:x + 2].reshape(-1, 3)
            assert np.abs(win - lit["skin"]).sum(1).max() > 80, (s, size)
            if p.beard == "none" and not p.freckles:
                out = np.round(k + (side * (2 + size / 128), 0)).astype(int)
                assert np.abs(img[out[1], out[0]] - lit["skin"]).sum() < 45, (s, size)
        x, y = np.round(f.kps[2]).astype(int)                   # nose tip: shaded darker than the skin
        assert _lum(img[y - 2:y + 3, x - 2:x + 3].reshape(-1, 3)).min() < _lum(lit["skin"]) - 12, (s, size)
        # box: frontal face in ArcFace proportions, inside the head mask's bounding box
        x1, y1, x2, y2 = f.box
        ey, my = (f.kps[:2, 1].mean() - y1) / (y2 - y1), (f.kps[3:, 1].mean() - y1) / (y2 - y1)
        assert 0.3 < ey < 0.48 and 0.68 < my < 0.85, (ey, my)
        ys, xs = np.nonzero(f.mask)
        assert xs.min() <= x1 + 2 and xs.max() >= x2 - 2 and ys.min() <= y1 + 2 and ys.max() >= y2 - 2
        assert f.mask[int(y1 + y2) // 2, int(x1 + x2) // 2]
        assert 0.5 * size < (x2 - x1) < 0.7 * size


def test_reference_differs_from_clip():
    for s in range(6):
        clip, ref = W.make_clip(s, s + 3), W.make_reference(s, s + 3)
        spec = W.clip_spec(s, s + 3)
        assert (spec.background, spec.lighting) == (clip.background, clip.lighting)
        assert ref.image.shape == (W.REF_SIZE, W.REF_SIZE, 3)
        w = ref.faces[0].box[2] - ref.faces[0].box[0]
        assert 100 <= w <= 170
        small = np.asarray(Image.fromarray(ref.image).resize((W.FRAME_SIZE,) * 2))  # never a clip frame
        assert np.abs(small.astype(int)[None] - clip.frames.astype(int)).mean((1, 2, 3)).min() > 8
        assert ref.faces[0].kps.shape == (5, 2)
    # the reference's scene is another than the clip's: a classifier that copies it is detectably wrong
    import moca_model.toy.clips as C
    for s in range(40):
        spec = W.clip_spec(s, 1)
        ref_bg, ref_light = _ref_scene(C, s, 1)
        assert ref_bg != spec.background and ref_light != spec.lighting


def _ref_scene(C, person, ref):
    """Replay make_reference's scene choice (same stream, same order)."""
    spec = C.clip_spec(person, ref)
    rng = C.rng_for(C.REF_STREAM, person, ref)
    bgs = [b for b in C.BACKGROUNDS if b != spec.background]
    lights = [x for x in C.LIGHTINGS if x != spec.lighting]
    return bgs[int(rng.integers(len(bgs)))], lights[int(rng.integers(len(lights)))]


def _rel_nose(face):
    x1, y1, x2, y2 = face.box
    return (face.kps[2] - ((x1 + x2) / 2, (y1 + y2) / 2)) / (x2 - x1)


def test_actions_move():
    p = 5
    for action, sign in (("turn_left", -1), ("turn_right", 1)):
        c = W.make_clip(p, _clip_seed(p, action))
        dx = _rel_nose(c.faces[-1][0])[0] - _rel_nose(c.faces[0][0])[0]
        assert sign * dx > 0.12, (action, dx)
    c = W.make_clip(p, _clip_seed(p, "nod"))
    ys = [_rel_nose(f[0])[1] for f in c.faces]
    assert max(ys) - min(ys) > 0.08
    c = W.make_clip(p, _clip_seed(p, "blink"))
    t = int(np.argmin([q[0].eyes_open for q in c.poses]))
    (ex, ey), r = c.faces[0][0].kps[0].astype(int), 3
    assert np.abs(c.frames[t, ey - r:ey + r + 1, ex - r:ex + r + 1].astype(int)
                  - c.frames[0, ey - r:ey + r + 1, ex - r:ex + r + 1]).mean() > 20
    for action in ("smile", "open_mouth"):
        c = W.make_clip(p, _clip_seed(p, action))
        k = c.faces[0][0].kps
        x0, x1 = int(k[3, 0]), int(k[4, 0]) + 1
        y0 = int(k[3:, 1].min()) - 4
        y1 = int(k[3:, 1].max()) + 10
        assert np.abs(c.frames[-1, y0:y1, x0:x1].astype(int) - c.frames[0, y0:y1, x0:x1]).mean() > 10, action
    for action, grow in (("zoom_in", True), ("zoom_out", False)):
        c = W.make_clip(p, _clip_seed(p, action))
        w0, w1 = (c.faces[i][0].box[2] - c.faces[i][0].box[0] for i in (0, -1))
        assert (w1 / w0 > 1.25) if grow else (w0 / w1 > 1.25), (action, w0, w1)
    for s in range(4):
        c = W.make_clip(s, _clip_seed(s, "move_across"))
        dx = c.faces[-1][0].box[0] - c.faces[0][0].box[0]
        assert (dx > 30) if c.direction == "left_to_right" else (dx < -30)
        assert ("from left to right" in c.caption) == (c.direction == "left_to_right")


def test_clip_face_sizes_and_masks():
    for s in range(8):
        c = W.make_clip(s, 2)
        assert len(c.faces) == W.NUM_FRAMES and len(c.poses) == W.NUM_FRAMES
        for f in c.faces:
            x1, y1, x2, y2 = f[0].box
            assert 50 <= x2 - x1 <= 90
            assert f[0].mask.shape == (W.FRAME_SIZE, W.FRAME_SIZE) and f[0].mask.dtype == bool
            assert f[0].kps.dtype == np.float32 and f[0].box.dtype == np.float32


def test_two_person_clip():
    c = W.make_two_person_clip((4, 9), 1)
    assert c.frames.shape == (W.NUM_FRAMES, W.FRAME_SIZE, W.FRAME_SIZE, 3) and c.person_seeds == [4, 9]
    assert c.action in W.TWO_PERSON_ACTIONS
    for f in c.faces:
        a, b = f
        assert a.mask.sum() > 300 and b.mask.sum() > 300 and not (a.mask & b.mask).any()
        assert a.box[2] < b.box[0] + 4 and a.kps[2, 0] < b.kps[2, 0]


def test_speed_and_sheet(capsys):
    W.make_clip(0, 0)
    t = time.process_time()                 # CPU time: the machine is shared
    for s in range(3):
        W.make_clip(s, 100)
    dt = (time.process_time() - t) / 3
    with capsys.disabled():
        print(f"\n[toy world] one {W.NUM_FRAMES}-frame {W.FRAME_SIZE}px clip: {dt * 1000:.0f} ms CPU")
    assert dt < 0.5
    sheet = W.contact_sheet([np.zeros((8, 8, 3), np.uint8)] * 5, 2, cell=16)
    assert sheet.shape == (3 * 18 + 2, 2 * 18 + 2, 3)


def test_pupil_centroid_is_the_eye_keypoint():
    """Sub-pixel check of the drawing <-> annotation convention (PIXEL_CENTER) under yaw, pitch and roll."""
    for s in range(6):
        p = W.Person.from_seed(s)
        r = W.render([(p, W.Pose(yaw=0.3, pitch=-0.1, roll=0.2, scale=0.6))], "white_wall", "daylight", 256)
        lum = _lum(r.image.astype(np.float32))
        rp = 0.39 * min(p.eye_size, p.eye_size * p.eye_aspect) * 0.6 * 256 / 2     # pupil radius, px
        yy, xx = np.mgrid[:256, :256] + W.PIXEL_CENTER
        for k in r.faces[0].kps[:2]:
            near = (xx - k[0]) ** 2 + (yy - k[1]) ** 2 < (1.6 * rp) ** 2
            dark = near & ((lum < 45) | (lum > 235))            # the pupil and its highlight
            assert dark.sum() >= 4
            c = np.array([xx[dark].mean(), yy[dark].mean()])
            assert np.abs(c - k).max() < 0.6, (s, c, k)


def test_scenes_and_lightings_are_distinct():
    assert W.render([], "beach", "dim", 64).faces == []
    means = {}
    for bg in W.BACKGROUNDS:
        for li in W.LIGHTINGS:
            im = W.render([], bg, li, 64, seed=1).image.astype(np.float32)
            means[bg, li] = np.concatenate([im.mean((0, 1)), im.std((0, 1))])
    keys = list(means)
    d = np.array([[np.abs(means[a] - means[b]).sum() for b in keys] for a in keys])
    assert (d + np.eye(len(keys)) * 1e3).min() > 5          # every (background, lighting) pair looks different
