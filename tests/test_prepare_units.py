"""`train_moca.py prepare`, piece by piece: cuts, tracking, clustering, windows, filters, references,
captions, crops and masks - on tiny synthetic inputs with known answers."""
import json
import sys

import numpy as np
import pytest

from moca_model.prepare import captions as C
from moca_model.prepare.extract import crop_region, face_mask, frame_motion, photo_crop
from moca_model.prepare.identities import cluster_tracks, thresholds_for
from moca_model.prepare.pipeline import cannot_link
from moca_model.prepare.references import Photo, choose_references
from moca_model.prepare.selection import ClipWindow, QualityFilters, failed_filters, window_indices
from moca_model.prepare.shots import boundary_f1, detect_cuts, shots_from_cuts
from moca_model.prepare.tracking import ShotTracker, drop_overlapping
from moca_model.video import write_video


def _unit(v):
    v = np.asarray(v, np.float32)
    return v / np.linalg.norm(v)


# ---------------------------------------------------------------------------------------------- shots
def test_shots_from_cuts_and_boundary_f1():
    assert shots_from_cuts([10, 25, 0, 40, 25], 30) == [(0, 10), (10, 25), (25, 30)]
    f = boundary_f1([10, 26, 50], [10, 25, 70], tolerance=1)
    assert f["true_positives"] == 2 and f["precision"] == pytest.approx(2 / 3) and f["recall"] == pytest.approx(2 / 3)
    assert boundary_f1([10, 11], [10])["true_positives"] == 1        # one truth cut matches once


def test_detect_cuts_finds_hard_cuts(tmp_path):
    rng = np.random.default_rng(0)
    shots = []
    for colour in ((200, 40, 40), (30, 160, 60), (40, 60, 200)):
        base = np.zeros((12, 64, 64, 3), np.float32) + colour
        shots.append(np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8))
    write_video(tmp_path / "v.mp4", np.concatenate(shots), fps=16)
    assert detect_cuts(tmp_path / "v.mp4", min_shot_frames=4) == [12, 24]


# ---------------------------------------------------------------------------------------------- tracking
def _face(x, emb, score=0.9):
    box = np.array([x, 10, x + 20, 34], np.float32)
    kps = np.array([[x + 6, 18], [x + 14, 18], [x + 10, 23], [x + 7, 28], [x + 13, 28]], np.float32)
    return dict(box=box, kps=kps, score=score, emb=_unit(emb), pose=np.zeros(3), eye_px=8.0, sharpness=50.0)


def test_tracker_links_boxes_interpolates_gaps_and_splits_on_identity_change():
    a, b, c = np.eye(8)[0], np.eye(8)[1], np.eye(8)[2]
    tr = ShotTracker(shot=3, split_sim=0.5, max_gap=2)
    for t in range(12):
        faces = [_face(60 + t, c)]                                    # a second person, moving right
        if t != 4:                                                    # one missed detection
            faces.append(_face(5 + t, a if t < 8 else b))             # another face takes the place at t = 8
        tr.step(t, faces)
    tracks = tr.finish()
    assert tr.splits == 1
    spans = sorted((int(k.frames[0]), int(k.frames[-1]), float(k.boxes[0, 0])) for k in tracks)
    assert spans == [(0, 7, 5.0), (0, 11, 60.0), (8, 11, 13.0)]
    first = next(k for k in tracks if k.frames[0] == 0 and k.boxes[0, 0] == 5.0)
    assert not first.detected[4] and first.detected.sum() == 7
    assert first.boxes[4, 0] == pytest.approx(9.0)                   # interpolated between x = 8 and x = 10
    assert np.allclose(first.mean_embedding(), _unit(a))
    assert all(k.shot == 3 for k in tracks)


def test_tracker_ends_tracks_after_a_long_gap():
    tr = ShotTracker(shot=0, split_sim=0.5, max_gap=2, min_detections=2)
    e = np.eye(8)[0]
    for t in (0, 1, 2, 6, 7, 8):                                     # 3 missing frames > max_gap
        tr.step(t, [_face(10, e)])
    assert [(int(k.frames[0]), int(k.frames[-1])) for k in tr.finish()] == [(0, 2), (6, 8)]


class _Det:
    def __init__(self, box, score):
        self.box, self.score = np.asarray(box, np.float32), score


def test_drop_overlapping_removes_a_second_box_on_one_face():
    face, chin, other = _Det([10, 10, 50, 60], 0.99), _Det([12, 30, 60, 90], 0.7), _Det([80, 10, 120, 60], 0.8)
    kept = drop_overlapping([chin, other, face])
    assert kept == [face, other]


# ---------------------------------------------------------------------------------------------- identities
def test_cluster_tracks_groups_by_identity_and_honours_cannot_link():
    rng = np.random.default_rng(0)
    centres = [_unit(rng.normal(size=64)) for _ in range(3)]
    truth = [0, 0, 1, 2, 1, 0, 2, 0]
    emb = np.stack([_unit(centres[t] + 0.25 * rng.normal(size=64) / 8) for t in truth])
    labels = cluster_tracks(emb, cluster_sim=0.5)
    assert len(set(labels)) == 3
    assert all((labels[i] == labels[j]) == (truth[i] == truth[j]) for i in range(8) for j in range(8))
    assert labels[0] == 0                                            # the largest identity (4 tracks) first
    split = cluster_tracks(emb, cluster_sim=0.5, cannot_link=[(0, 1)])
    assert split[0] != split[1] and len(set(split)) == 4
    assert cluster_tracks(emb[:1], 0.5).tolist() == [0] and cluster_tracks(np.zeros((0, 64)), 0.5).size == 0


def test_thresholds_are_per_recogniser():
    assert thresholds_for("toyface")["cluster"] != thresholds_for("antelopev2")["cluster"]
    assert thresholds_for("somepack") == thresholds_for("antelopev2")


# ---------------------------------------------------------------------------------------------- windows, filters
def test_window_indices_are_4k_plus_1_resampled_and_spread():
    w = window_indices(100, 199, src_fps=32, fps=16, frames=17, max_windows=2)   # span 33 source frames
    assert [len(x) for x in w] == [17, 17] and w[0][:3] == [100, 102, 104] and w[0][-1] == 132
    assert w[1][0] == 100 + 2 * 33                                   # 3 windows fit; first and last kept
    assert window_indices(0, 15, 16, 16, 17, 3) == []                # too short
    with pytest.raises(ValueError, match="4k \\+ 1"):
        window_indices(0, 99, 16, 16, 16, 1)


def test_quality_filters_name_what_fails():
    q = dict(coverage=1.0, det_score=0.9, eye_px=30, yaw=10, pitch=5, sharpness=80, face_speed=0.1)
    f = QualityFilters()
    assert failed_filters(q, f) == []
    bad = dict(q, coverage=0.5, det_score=0.5, eye_px=5, yaw=70, sharpness=1, face_speed=2.0)
    assert failed_filters(bad, f) == ["coverage", "det_score", "face_size", "pose", "blur", "motion"]
    w = ClipWindow("x", "v", 0, 0, [0], np.zeros(4), failed=["blur", "pose"])
    assert w.dropped == "pose"                                       # counted under the first filter in order


# ---------------------------------------------------------------------------------------------- references
def test_references_come_from_other_shots_inside_the_window():
    e = _unit([1, 0, 0, 0])
    clip = ClipWindow("c", "v1", shot=0, track=0, indices=list(range(10, 27)), embedding=e, identity=7)

    def photo(video, shot, track, frame, sim, identity=7):
        return Photo(video, shot, track, frame, _unit([sim, np.sqrt(1 - sim ** 2), 0, 0]), np.zeros(4), identity)

    photos = [photo("v1", 0, 0, 40, 0.9),                            # same shot: not by default
              photo("v1", 2, 3, 90, 0.8), photo("v1", 2, 3, 95, 0.75),  # another shot, one track
              photo("v2", 1, 1, 5, 0.85),                            # another video
              photo("v2", 4, 2, 9, 0.99),                            # near-duplicate
              photo("v3", 0, 0, 1, 0.2),                             # too far
              photo("v3", 1, 5, 1, 0.8, identity=8)]                 # another identity
    chosen, why = choose_references(clip, photos, n_refs=2, ref_min=0.5, ref_max=0.95)
    assert why is None
    assert [(p.video, p.frame) for p, _ in chosen] == [("v2", 5), ("v1", 95)]   # other video first, one per track
    assert [round(s, 3) for _, s in chosen] == [0.85, 0.75]
    none, why = choose_references(clip, [photos[0]], 2, 0.5, 0.95)
    assert none == [] and why == "single_shot_identity"
    same, _ = choose_references(clip, [photos[0]], 2, 0.5, 0.95, same_shot=True)
    assert [p.frame for p, _ in same] == [40]
    inside_clip = photo("v1", 0, 0, 20, 0.9)
    assert choose_references(clip, [inside_clip], 2, 0.5, 0.95, same_shot=True) == ([], "single_shot_identity")
    assert choose_references(clip, [photos[5]], 2, 0.5, 0.95) == ([], "outside_window")


# ---------------------------------------------------------------------------------------------- captions
def test_captions_from_sidecars(tmp_path):
    (tmp_path / "a.captions.json").write_text(json.dumps({"segments": [
        {"start": 0, "end": 2.0, "caption": "first"}, {"start": 2.0, "end": 6.0, "caption": "second"}]}))
    segs = C.load_sidecar(tmp_path / "a.mp4")
    assert C.caption_from_segments(segs, 1.5, 3.0) == "second"       # overlaps "second" more
    assert C.caption_from_segments(segs, 0.0, 1.0) == "first"
    assert C.caption_from_segments(segs, 7.0, 8.0) is None           # nothing invented
    (tmp_path / "b.txt").write_text("  a person smiles \n")
    assert C.caption_from_segments(C.load_sidecar(tmp_path / "b.mp4"), 50, 52) == "a person smiles"
    assert C.load_sidecar(tmp_path / "c.mp4") is None
    (tmp_path / "d.captions.json").write_text("[1, 2]")
    with pytest.raises(C.CaptionError, match="segments"):
        C.load_sidecar(tmp_path / "d.mp4")


def test_caption_command(tmp_path):
    cmd = f'"{sys.executable}" -c "import sys; print(\'clip \' + sys.argv[1].split(\'/\')[-1] + \' \' + sys.argv[2])" {{clip}} {{start}}'
    assert C.caption_from_command(cmd, tmp_path / "x.mp4", "v.mp4", 1.5, 2.5) == "clip x.mp4 1.500"
    with pytest.raises(C.CaptionError, match="exited 3"):
        C.caption_from_command(f'"{sys.executable}" -c "import sys; sys.exit(3)"', "x", "v", 0, 1)
    with pytest.raises(C.CaptionError, match="printed nothing"):
        C.caption_from_command(f'"{sys.executable}" -c "pass"', "x", "v", 0, 1)


# ---------------------------------------------------------------------------------------------- crops, masks
def test_crop_region_mask_and_photo():
    assert crop_region(832, 480, 832 / 480, 400, 240) == (0.0, 0.0, 832.0, 480.0)
    x0, y0, w, h = crop_region(1920, 1080, 1.0, 1800, 500)           # square crop pushed against the right edge
    assert (w, h, y0) == (1080.0, 1080.0, 0.0) and x0 == 1920 - 1080
    m = face_mask(np.array([40, 20, 60, 60]), (0, 0, 128, 128), 64, 64)   # output at half size
    ys, xs = np.nonzero(m)
    assert m.max() == 255 and abs(xs.mean() - 25) < 1 and abs(ys.mean() - 20) < 1
    assert xs.max() - xs.min() == pytest.approx(10 * 1.15, abs=1.5)
    frame = np.arange(100 * 100 * 3, dtype=np.uint32).reshape(100, 100, 3).astype(np.uint8)
    p = photo_crop(frame, np.array([40, 40, 60, 60]))
    assert p.shape == (44, 44, 3) and (p == frame[28:72, 28:72]).all()
    assert photo_crop(frame, np.array([0, 0, 20, 20])).shape == (32, 32, 3)   # clipped at the border
    still = np.zeros((5, 8, 8, 3), np.uint8)
    assert frame_motion(still) == 0.0 and frame_motion(np.concatenate([still, still + 255])) == pytest.approx(255 / 255 / 9)


def test_tracker_rejoins_a_split_that_was_a_passing_dip():
    a, dip, b = np.eye(8)[0], np.eye(8)[1], np.eye(8)[2]
    seq = [a] * 6 + [dip] + [a] * 5 + [b] * 6                         # a one-frame dip, then a real change at 12
    tr = ShotTracker(shot=0, split_sim=0.5, join_sim=0.5)
    for t, e in enumerate(seq):
        tr.step(t, [_face(10, e)])
    tracks = tr.finish()
    assert [(int(k.frames[0]), int(k.frames[-1])) for k in tracks] == [(0, 11), (12, 17)]
    assert not tracks[0].detected[6] and tracks[0].detected.sum() == 11   # the dip frame is left out
    assert tr.splits == 2                                            # the dip's own end, and the change at 12
    plain = ShotTracker(shot=0, split_sim=0.5)                         # without join_sim: a is cut in two
    for t, e in enumerate(seq):
        plain.step(t, [_face(10, e)])
    assert plain.splits == 3 and len(plain.finish()) == 3              # the 1-frame dip track is too short to keep


def test_cannot_link_pairs_tracks_sharing_frames_of_one_shot():
    def track(shot, a, b):
        t = ShotTracker(shot=shot, split_sim=0.5)
        for f in range(a, b + 1):
            t.step(f, [_face(10, np.eye(8)[0])])
        return t.finish()[0]
    tracks = [("v1", 0, track(0, 0, 9)), ("v1", 1, track(0, 5, 12)), ("v1", 2, track(0, 10, 14)),
              ("v1", 3, track(1, 0, 9)), ("v2", 0, track(0, 0, 9))]
    assert cannot_link(tracks) == [(0, 1), (1, 2)]
