"""Toy-world evaluation: the shipped classifiers on fixed held-out clips, and the metric functions
(likeness summary, drift, no-face frames, motion, copy-paste, bootstrap CI) on constructed cases.

The metrics run on real toy renders with a tiny insightface-contract pack (``moca_model.face.tiny_models``)
whose detector reports the rendered face's box and landmarks, and a separate tiny recogniser as the
"evaluation" one - the same calls the benchmark makes with the toy face pack and ``rec_eval.onnx``.
Nothing here trains.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import face_models
from moca_model.toy import classifiers as C
from moca_model.toy import metrics as M
from moca_model.toy import world

POSE = world.Pose(yaw=0.05, pitch=0.0, roll=0.0, cx=0.5, cy=0.5, scale=0.55, smile=0.1)
PERSON_A, PERSON_B = 100_003, 100_017          # held-out identities


def _frame(seed, pose=POSE, background="white_wall", lighting="daylight"):
    return world.render([(world.Person.from_seed(seed), pose)], background, lighting, world.FRAME_SIZE, seed=1)


@pytest.fixture(scope="module")
def packs(tmp_path_factory):
    """(pack analyzer, evaluation analyzer): a tiny detector that sees the face of ``_frame`` at 128 px;
    the evaluation analyzer embeds with another tiny recogniser (seed 7)."""
    from moca_model.face import FaceAnalyzer
    from moca_model.face.tiny_models import build_recognizer
    ann = _frame(PERSON_A).faces[0]
    face = face_models.TinyFace(tuple(map(float, ann.box)), tuple(tuple(map(float, k)) for k in ann.kps))
    root = tmp_path_factory.mktemp("toyeval")
    face_models.make_tiny_pack(root, faces=(face,), image_size=(world.FRAME_SIZE, world.FRAME_SIZE))
    rec = root / "rec_eval.onnx"
    rec.write_bytes(build_recognizer(seed=7).SerializeToString())
    base = FaceAnalyzer.load(root, backend="onnxruntime", provider="cpu")
    return base, M.with_recogniser(base, rec), root


# ---------------------------------------------------------------------------------------------- classifiers
def _shipped():
    if not C.DEFAULT_PATH.is_file():
        pytest.skip(f"{C.DEFAULT_PATH} is absent: train it with `python -m moca_model.toy.classifiers train`")
    return C.load_classifiers()


def test_shipped_classifiers_file():
    clf = _shipped()
    assert C.DEFAULT_PATH.stat().st_size < 2_000_000
    assert clf.labels == {h: tuple(v) for h, v in C.labels().items()}
    acc = clf.meta["heldout"]["accuracy"]
    assert clf.meta["heldout"]["clips"] >= 300
    for kind in ("clean", "blur", "lowres"):
        assert acc[kind]["background"] >= 0.97 and acc[kind]["lighting"] >= 0.97, (kind, acc[kind])
        assert acc[kind]["action"] >= 0.93, (kind, acc[kind])


HELDOUT_CASES = None


def _cases(n_per_action=1):
    """The first held-out clips (HELDOUT_IDS, clip seed 20_000 + k) of each action: fixed, never trained on."""
    global HELDOUT_CASES
    if HELDOUT_CASES is None:
        found = {}
        for k, pid in enumerate(world.HELDOUT_IDS):
            spec = world.clip_spec(pid, 20_000 + k)
            found.setdefault(spec.action, (pid, 20_000 + k))
            if len(found) == len(world.ACTIONS):
                break
        HELDOUT_CASES = [found[a] for a in world.ACTIONS]
    return HELDOUT_CASES


def test_shipped_classifiers_on_heldout_clips():
    clf = _shipped()
    clips = [world.make_clip(p, c) for p, c in _cases()]
    got = clf.classify(np.stack([c.frames for c in clips]))
    assert len(got) == len(clips)
    right = {h: sum(g[h][0] == getattr(c, h) for g, c in zip(got, clips)) for h in C.HEADS}
    assert right == {h: len(clips) for h in C.HEADS}, [(c.action, g["action"][0]) for g, c in zip(got, clips)]
    # blurred as a small VAE would (PIL Gaussian radius 1.5 px): at most one action wrong, scenes all right
    from PIL import Image, ImageFilter
    blurred = [np.stack([np.asarray(Image.fromarray(f).filter(ImageFilter.GaussianBlur(1.5))) for f in c.frames])
               for c in clips]
    got = clf.classify(blurred)
    right = {h: sum(g[h][0] == getattr(c, h) for g, c in zip(got, clips)) for h in C.HEADS}
    assert right["background"] == right["lighting"] == len(clips) and right["action"] >= len(clips) - 1, right
    # one clip as a ComfyUI IMAGE tensor gives the same answer as uint8 numpy
    one = C.classify(torch.from_numpy(clips[0].frames).float() / 255.0)
    assert one["action"][0] == got[0]["action"][0]
    assert abs(sum(one["lighting"][1].values()) - 1) < 1e-5


# ---------------------------------------------------------------------------------------------- likeness
def test_likeness_stats_count_no_face_as_zero():
    s = M.likeness_stats([0.8, None, 0.6, None])
    assert s.per_frame == [0.8, 0.0, 0.6, 0.0] and s.n_no_face == 2 and s.no_face_frames == [1, 3]
    assert s.mean == pytest.approx(0.35) and s.worst == 0.0
    assert s.stability == pytest.approx(np.std([0.8, 0, 0.6, 0]))
    assert M.drift([1, 1, 1, 1, 0, 0, 0, 0]) == pytest.approx(1.0)
    assert M.drift([0.5] * 17) == 0.0 and M.drift([0.3]) == 0.0


def test_identical_frames_have_no_drift_and_no_motion(packs):
    _, ev, _ = packs
    f = _frame(PERSON_A)
    frames = np.stack([f.image] * 8)
    lik = M.likeness(ev, frames, f.image)
    assert lik.mean == pytest.approx(1.0, abs=1e-4) and lik.drift == pytest.approx(0.0, abs=1e-6)
    assert lik.stability == pytest.approx(0.0, abs=1e-5) and lik.n_no_face == 0
    dets = M.detect_frames(ev, frames)
    mot = M.motion(frames, dets)
    assert mot["frame_diff"] == 0.0 and mot["kps_travel"] == 0.0 and mot["frozen"]
    # the same with a ComfyUI IMAGE tensor
    assert M.motion(torch.from_numpy(frames).float() / 255.0)["frame_diff"] == 0.0


def test_second_half_another_person_drifts(packs):
    _, ev, _ = packs
    a, b = _frame(PERSON_A).image, _frame(PERSON_B).image
    frames = np.stack([a] * 8 + [b] * 9)
    lik = M.likeness(ev, frames, a)
    assert lik.per_frame[0] == pytest.approx(1.0, abs=1e-4)
    assert lik.per_frame[-1] < 0.9                      # another person scores lower ("shuffled identity")
    assert lik.drift > 0.1 and lik.p10 < lik.mean
    assert M.motion(frames)["frame_diff"] > 0 and not M.motion(frames)["frozen"]


def test_frames_without_a_face_count_as_zero(packs):
    _, ev, _ = packs
    a = _frame(PERSON_A).image
    frames = np.stack([a, a, np.zeros_like(a), a])
    lik = M.likeness(ev, frames, a)
    assert lik.n_no_face == 1 and lik.no_face_frames == [2] and lik.per_frame[2] == 0.0
    assert lik.mean == pytest.approx(0.75, abs=1e-4) and lik.worst == 0.0


def test_evaluation_recogniser_is_not_the_packs(packs):
    base, ev, root = packs
    a, b = _frame(PERSON_A).image, _frame(PERSON_B).image
    eb, ee = M.reference_embedding(base, b), M.reference_embedding(ev, b)
    assert "evaluation recogniser rec_eval.onnx" in ev.report and ev.pack.recognizer.name == "rec_eval.onnx"
    assert ev.backend.det is base.backend.det           # same detector session
    loaded = M.eval_analyzer(root, "antelopev2", root / "rec_eval.onnx")   # the one-call form
    assert torch.allclose(M.reference_embedding(loaded, b), ee, atol=1e-5)
    # different networks: the cross-person cosines differ
    sb = float(M.reference_embedding(base, a) @ eb)
    se = float(M.reference_embedding(ev, a) @ ee)
    assert abs(sb - se) > 1e-3


# ---------------------------------------------------------------------------------------------- copy-paste
def test_pixel_and_pose_copy(packs):
    _, ev, _ = packs
    ref = _frame(PERSON_A).image
    other = _frame(PERSON_A, background="stripes", lighting="warm_evening").image   # same person, other photo
    copied = np.stack([ref] * 5)
    c = M.pixel_copy(ev, copied, ref, other_reference=other)
    assert c["ssim_max"] == pytest.approx(1.0, abs=1e-4) and c["l1sim_max"] == pytest.approx(1.0, abs=1e-4)
    assert c["margin_ssim"] > 0.1 and c["margin_l1"] > 0.1          # beyond identity: this photo, not the person
    relit = M.pixel_copy(ev, np.stack([_frame(PERSON_A, lighting="dim").image] * 5), ref)
    assert relit["ssim_max"] < 0.9 and relit["l1sim_max"] < 0.9
    someone = M.pixel_copy(ev, np.stack([_frame(PERSON_B).image] * 5), ref)
    assert someone["ssim_max"] < 0.8
    dets = M.detect_frames(ev, copied)
    p = M.pose_copy(dets, world.render([(world.Person.from_seed(PERSON_A), POSE)], "white_wall", "daylight").faces[0].kps)
    assert p["pose_sim"] == pytest.approx(1.0, abs=1e-3) and p["dyaw"] == pytest.approx(0.0, abs=0.1)
    turned = world.render([(world.Person.from_seed(PERSON_A), world.Pose(yaw=0.5, smile=0.9))], "white_wall",
                          "daylight").faces[0].kps
    assert M.pose_copy(dets, turned)["pose_sim"] < 0.5
    # against a baseline: a held-out clip that follows its prompt vs the same clip replaced by the reference pose
    clip, ref_r = world.make_clip(PERSON_A, 3), world.make_reference(PERSON_A, 3)
    follow = [f[0].kps for f in clip.faces]
    honest = M.pose_copy(follow, ref_r.faces[0].kps, baseline_kps=follow)
    pasted = M.pose_copy([ref_r.faces[0].kps] * len(follow), ref_r.faces[0].kps, baseline_kps=follow)
    assert honest["excess"] == pytest.approx(0.0) and pasted["pose_sim"] == pytest.approx(1.0)
    assert pasted["excess"] == pytest.approx(1.0 - honest["baseline_pose_sim"]) and pasted["excess"] > 0


def test_toy_copy_paste_scene():
    probs = {"background": ("beach", {"beach": 0.9, "room": 0.1}), "lighting": ("dim", {"dim": 0.7, "daylight": 0.3})}
    r = M.toy_copy_paste(probs, {"background": "beach", "lighting": "daylight"}, {"background": "room", "lighting": "dim"})
    assert r["background_copied"] is True and r["background_follows"] is False and r["background_ref_prob"] == 0.9
    assert r["lighting_copied"] is False and r["lighting_follows"] is True
    same = M.toy_copy_paste(probs, {"background": "beach"}, {"background": "beach"})
    assert same["background_copied"] is None


def test_clip_metrics_bundle(packs):
    _, ev, _ = packs
    a = _frame(PERSON_A).image
    out = M.clip_metrics(ev, np.stack([a] * 4), a)
    assert out["likeness"]["mean"] == pytest.approx(1.0, abs=1e-4) and out["motion"]["frozen"]
    assert out["pixel_copy"]["ssim_max"] == pytest.approx(1.0, abs=1e-4) and out["pose_copy"]["pose_sim"] > 0.99
    json.dumps(out)


# ---------------------------------------------------------------------------------------------- bootstrap
def test_bootstrap_ci():
    rng = np.random.default_rng(3)
    small, big = rng.normal(0.5, 0.2, 20), rng.normal(0.5, 0.2, 2000)
    m, lo, hi = M.bootstrap_ci(small)
    assert lo <= m <= hi and m == pytest.approx(small.mean())
    m2, lo2, hi2 = M.bootstrap_ci(big)
    assert lo2 <= m2 <= hi2 and (hi2 - lo2) < (hi - lo) / 3
    assert M.bootstrap_ci(small) == (m, lo, hi)                       # fixed seed
    assert M.bootstrap_ci([0.3]) == (0.3, 0.3, 0.3)
    assert all(np.isnan(M.bootstrap_ci([])))
    assert M.bootstrap_ci([1.0, None, float("nan"), 3.0])[0] == 2.0


def test_pipeline_load_with_another_adapter_does_not_need_the_shipped_one(tmp_path):
    """`toy eval --adapter FILE` evaluates a candidate: only FILE must exist, not the shipped adapter."""
    from moca_model.toy.pipeline import FILES, ToyPipeline, missing_files
    assert not any(m.startswith("adapter:") for m in missing_files(skip=["adapter"]))
    absent = tmp_path / "candidate.safetensors"
    with pytest.raises(FileNotFoundError) as e:
        ToyPipeline.load(adapter=absent)
    assert str(absent) in str(e.value) and str(FILES["adapter"]) not in str(e.value)
    assert "given toy adapter" in str(e.value) and "make toy" not in str(e.value)
    # an existing candidate file gets past the shipped-files check: it fails on its content
    bogus = tmp_path / "bogus.safetensors"
    bogus.write_bytes(b"not a safetensors file")
    with pytest.raises(Exception) as e:
        ToyPipeline.load(adapter=bogus)
    assert "models are missing" not in str(e.value), e.value
