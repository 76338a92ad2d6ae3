"""The shipped toy face pack (toy_models/insightface/models/toyface) and judge (toy_models/eval/rec_eval.onnx)
run through the project's real face pipeline on held-out toy people; the training functions run."""
import math

import numpy as np
import pytest
import torch

from moca_model.toy import world
from moca_model.toy.face_train import EVAL_REC, PACK, PACK_DIR, TOY_MODELS, box_iou

HELD = list(world.HELDOUT_IDS)
shipped = pytest.mark.skipif(not (PACK_DIR / "det_toy.onnx").is_file() or not (PACK_DIR / "rec_toy.onnx").is_file()
                             or not EVAL_REC.is_file(), reason="toy face models not built yet")


@pytest.fixture(scope="module")
def analyzer():
    from moca_model.face import FaceAnalyzer

    return FaceAnalyzer.load(TOY_MODELS / "insightface", pack=PACK, backend="onnxruntime", provider="cpu")


@pytest.fixture(scope="module")
def judge():
    from moca_model.toy.face_train import judge_analyzer

    return judge_analyzer()


@shipped
def test_pack_is_found_by_name_and_small():
    from moca_model.face import find_pack

    pack = find_pack(TOY_MODELS / "insightface", PACK)
    assert pack.detector.name == "det_toy.onnx" and pack.recognizer.name == "rec_toy.onnx"
    sizes = [pack.detector.stat().st_size, pack.recognizer.stat().st_size, EVAL_REC.stat().st_size]
    assert sizes[0] <= 1.1e6 and sizes[1] <= 3.1e6 and sizes[2] <= 3.1e6, sizes


@shipped
def test_encodes_heldout_reference(analyzer):
    ref = world.make_reference(HELD[0], 901)
    ident = analyzer.encode(ref.image)
    assert ident.embedding.shape == (512,)
    assert abs(float(ident.embedding.norm()) - 1) < 1e-4
    q = ident.quality[0]
    assert box_iou(q.box, ref.faces[0].box) > 0.8
    err = np.linalg.norm(np.array(q.kps) - ref.faces[0].kps, axis=1).mean()
    assert err < 3.0, err


@shipped
def test_same_person_beats_other_person_under_both_recognisers(analyzer, judge):
    a1, a2 = world.make_reference(HELD[1], 902), world.make_clip(HELD[1], 902).frames[8]
    b = world.make_reference(HELD[2], 902)
    crops = []
    for img in (a1.image, a2, b.image):
        face = analyzer.detect(img)[0]
        crops.append(analyzer.align(torch.from_numpy(img), torch.from_numpy(face.kps)[None])[0])
    crops = torch.cat(crops)
    for emb in (analyzer.embed(crops), judge.embed(crops)):
        same, diff = float(emb[0] @ emb[1]), float(emb[0] @ emb[2])
        assert same > diff + 0.2, (same, diff)


@shipped
def test_judge_scores_likeness_through_the_pipeline(judge):
    from moca_model.face import likeness_scores

    assert judge.pack.recognizer == EVAL_REC
    ident = judge.encode(world.make_reference(HELD[4], 904).image)
    same = likeness_scores(judge, world.make_clip(HELD[4], 904).frames[::8], ident)
    other = likeness_scores(judge, world.make_clip(HELD[5], 904).frames[::8], ident)
    assert same.n_no_face == 0 and other.n_no_face == 0
    assert same.mean > other.mean + 0.2, (same.mean, other.mean)


@shipped
def test_detects_face_on_128px_clip_frame_without_fallback(analyzer):
    clip = world.make_clip(HELD[3], 903)
    for t in (0, 16):
        faces = analyzer.detect(clip.frames[t], fallback=False)  # likeness scoring's setting, det size 640
        assert len(faces) == 1
        # shipped detector over 150 held-out frames: IoU 0.86 mean, 0.67 worst; keypoint error 2.5 px mean,
        # 6.5 px p95. This clip turns the head (frame 16 is near the worst case: 6.1 px, IoU 0.67).
        assert box_iou(faces[0].box, clip.faces[t][0].box) > 0.6
        assert np.linalg.norm(faces[0].kps - clip.faces[t][0].kps, axis=1).mean() < 8.0


@shipped
def test_no_face_on_background(analyzer):
    from moca_model.face import FaceNotFoundError

    for size, bg in ((256, "room"), (128, "checker")):
        img = world.render([], bg, "daylight", size=size, seed=3).image
        assert analyzer.detect(img) == []  # every fallback size tried
    with pytest.raises(FaceNotFoundError):
        analyzer.encode(img)


def test_detector_trains(tmp_path):
    from moca_model.toy.face_data import small_detection_pool
    from moca_model.toy.face_detector import ToyDetector, detector_loss, sample_batch, train_toy_detector

    pool = small_detection_pool(2)
    out = train_toy_detector(tmp_path, steps=2, pool=pool, pixels=160 * 160 * 2, log=lambda s: None)
    assert len(out["history"]) == 2 and all(math.isfinite(h["loss"]) for h in out["history"])
    assert out["onnx"]["ort_max_abs_diff"] < 1e-4
    again = train_toy_detector(tmp_path, steps=3, pool=pool, pixels=160 * 160 * 2, log=lambda s: None, export=False)
    assert [h["step"] for h in again["history"]] == [1, 2, 3]  # resumed from the checkpoint

    torch.manual_seed(0)
    net = ToyDetector().train()
    x, targets, _ = sample_batch(pool, np.random.default_rng(0), size=160, batch=4)
    opt = torch.optim.Adam(net.parameters(), 2e-3)
    losses = []
    for _ in range(6):
        loss, _ = detector_loss(net(x), targets)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses


@pytest.mark.parametrize("arch", ["res", "wide"])
def test_recogniser_trains(tmp_path, arch):
    from moca_model.toy.face_data import small_crop_pool
    from moca_model.toy.face_recognizer import LOSS_OF_ARCH, MarginHead, build_recogniser, to_input, train_toy_recogniser

    pool = small_crop_pool(range(4), 2)
    out = train_toy_recogniser(tmp_path / "r.onnx", arch, 0, 2, pool=pool, batch=8, log=lambda s: None)
    assert len(out["history"]) == 2 and all(math.isfinite(h["loss"]) for h in out["history"])
    assert out["onnx"]["ort_max_abs_diff"] < 1e-3

    torch.manual_seed(0)
    net, head = build_recogniser(arch).train(), MarginHead(4, *LOSS_OF_ARCH[arch])
    x = to_input(torch.from_numpy(pool[0]))
    y = torch.from_numpy(np.unique(pool[1], return_inverse=True)[1]).long()
    opt = torch.optim.Adam(list(net.parameters()) + list(head.parameters()), 1e-3)
    losses = []
    for _ in range(5):
        loss = torch.nn.functional.cross_entropy(head(net(x), y), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
