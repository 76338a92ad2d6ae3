"""Several people in one video: which face is whose, and the swap / blend scores on constructed cases."""
import math

import numpy as np
import pytest
import torch

from moca_model.face.multi_likeness import assign_faces, multi_scores, summary

LEFT, RIGHT = [10, 20, 40, 60], [80, 20, 110, 60]          # face boxes in a 128 x 128 frame


def test_faces_follow_masks_or_left_to_right_order():
    assert assign_faces([RIGHT, LEFT], [None, None], (128, 128)) == [1, 0]          # left to right
    right_half = np.zeros((16, 16)); right_half[:, 8:] = 1                          # a mask at another size
    assert assign_faces([LEFT, RIGHT], [right_half, None], (128, 128)) == [1, 0]   # mask first, then the rest
    assert assign_faces([LEFT], [right_half, None], (128, 128)) == [None, 0]
    assert assign_faces([], [None, None], (128, 128)) == [None, None]
    # fewer faces than people: a face goes to the person of the strip it lies in (left-to-right order gave a
    # lone right-hand face to the left-hand person, a swap that never happened)
    assert assign_faces([RIGHT], [None, None], (128, 128)) == [None, 0]
    assert assign_faces([LEFT], [None, None], (128, 128)) == [0, None]
    big_left = [0, 10, 60, 70]
    assert assign_faces([LEFT, big_left], [None, None, None], (128, 128)) == [1, None, None]   # largest face wins


def sims_for(own, other, frames=10, P=2):
    s = torch.full((frames, P, P), float(other))
    s[:, range(P), range(P)] = own
    return s


def test_a_faithful_video_scores_no_swap_and_no_blend():
    r = multi_scores(sims_for(0.8, 0.1))
    assert r["own"] == pytest.approx([0.8, 0.8]) and r["cross"] == pytest.approx([0.1, 0.1])
    assert r["swap_rate"] == 0 and r["blend_rate"] == 0 and r["missing"] == 0 and r["faces"] == 20


def test_a_swapped_video_scores_a_high_swap_rate():
    r = multi_scores(sims_for(0.1, 0.8))                                            # each face is the other one
    assert r["swap_rate"] == 1 and r["blend_rate"] == 0
    half = sims_for(0.8, 0.1)
    half[5:] = sims_for(0.1, 0.8, frames=5)
    assert multi_scores(half)["swap_rate"] == pytest.approx(0.5)


def test_a_blended_face_scores_a_high_blend_rate():
    r = multi_scores(sims_for(0.6, 0.55), threshold=0.4)                           # both references high at once
    assert r["blend_rate"] == 1 and r["swap_rate"] == 0
    assert multi_scores(sims_for(0.6, 0.55), threshold=0.58)["blend_rate"] == 0


def test_missing_faces_are_left_out():
    s = sims_for(0.8, 0.1)
    s[:, 1] = math.nan                                                              # person 2 never found
    r = multi_scores(s)
    assert r["own"][0] == pytest.approx(0.8) and r["own"][1] is None and r["missing"] == 0.5 and r["faces"] == 10
    assert "person 2: own n/a" in summary(r)
    assert multi_scores(torch.full((3, 2, 2), math.nan))["swap_rate"] is None


def test_two_person_toy_clip_with_the_toy_face_pack():
    """Real frames: the shipped toy face pack finds both people; with the references in the clip's order nothing
    is swapped, with them exchanged every face counts as swapped (masks bind the faces, not the order)."""
    from pathlib import Path

    from moca_model.face import FaceAnalyzer
    from moca_model.face.multi_likeness import face_similarities
    from moca_model.toy import world
    root = Path(__file__).resolve().parents[1] / "toy_models" / "insightface"
    if not (root / "models" / "toyface" / "rec_toy.onnx").is_file():
        pytest.skip("the toy face pack is absent (python -m moca_model.toy build --stages face)")
    an = FaceAnalyzer.load(str(root), pack="toyface", provider="cpu")
    seeds = (100003, 100007)
    clip = world.make_two_person_clip(seeds, 0)
    ids = [an.encode(torch.from_numpy(world.make_reference(p, 0).image).float()[None] / 255) for p in seeds]
    frames = torch.from_numpy(clip.frames[::4]).float() / 255                 # 5 of the 17 frames
    masks = [torch.from_numpy(np.stack([f[k].mask for f in clip.faces[::4]])).float() for k in (0, 1)]
    r = multi_scores(face_similarities(an, frames, ids, masks=masks))
    assert r["faces"] == 10 and r["swap_rate"] == 0 and min(r["own"]) > 0.5 and max(r["cross"]) < 0.4
    swapped = multi_scores(face_similarities(an, frames, ids[::-1], masks=masks))
    assert swapped["swap_rate"] == 1
    auto = multi_scores(face_similarities(an, frames, ids[::-1]))            # no masks: left to right = clip order
    assert auto["swap_rate"] == 1
