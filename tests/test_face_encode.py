"""References -> FaceIdentity: embeddings, fusion, outliers, quality, no-face policy, both backends."""
import logging
import sys

import numpy as np
import pytest
import torch

import face_models
from moca_model.face import FaceAnalyzer, FaceBackendError, FaceNotFoundError
from moca_model.face import align as A
from moca_model.face import backends
from moca_model.face.quality import pose_from_landmarks


def cos(a, b):
    return float((a * b).sum() / (a.norm() * b.norm()))


def test_single_reference(tiny_analyzer, astronaut):
    ident = tiny_analyzer.encode(astronaut)
    assert ident.embeddings.shape == (1, 512) and ident.embedding.shape == (512,)
    assert ident.crops112.shape == (1, 112, 112, 3) and ident.crops.shape == (1, 256, 256, 3)
    assert ident.embeddings.dtype == torch.float32 and 0 <= float(ident.crops.min()) <= float(ident.crops.max()) <= 1
    assert abs(float(ident.embeddings.norm(dim=1)[0]) - 1) < 1e-5
    assert torch.allclose(ident.embedding, ident.embeddings[0], atol=1e-6)
    crop, _, _ = A.align_faces(torch.from_numpy(astronaut).float() / 255,
                               torch.tensor(face_models.ASTRONAUT_FACE.kps)[None], 112)
    assert torch.allclose(ident.crops112, crop, atol=1e-6)
    q = ident.quality[0]
    assert q.image_index == 0 and abs(q.det_score - 0.92) < 1e-4 and q.det_size == 640
    assert abs(q.face_px - 42.57) < 0.1 and abs(q.yaw) < 5 and abs(q.roll - 3.2) < 0.5 and q.sharpness > 100
    assert ident.skipped == [] and ident.metadata["pack"] == "antelopev2"
    assert ident.metadata["arcface_input"] == {"mean": 127.5, "std": 127.5, "order": "RGB"}
    info = ident.info()
    assert "1 reference(s)" in info and "image 0: score 0.92" in info


def test_embedding_is_the_recogniser_on_arcface_normalised_rgb(tiny_analyzer, astronaut):
    ident = tiny_analyzer.encode(astronaut)
    x = ident.crops112.permute(0, 3, 1, 2).numpy() * 255.0  # RGB, NCHW
    ref = face_models.reference_embedding((x - 127.5) / 127.5)
    ref = ref / np.linalg.norm(ref, axis=1, keepdims=True)
    np.testing.assert_allclose(ident.embeddings.numpy(), ref, atol=1e-5)


def test_mxnet_style_recogniser_gets_raw_pixels(tmp_path, astronaut, tiny_analyzer):
    face_models.make_tiny_pack(tmp_path, mxnet_style=True)
    an = FaceAnalyzer.load(tmp_path, backend="onnxruntime")
    assert (an.backend.input_mean, an.backend.input_std) == (0.0, 1.0)
    a, b = an.encode(astronaut), tiny_analyzer.encode(astronaut)
    assert torch.allclose(a.embeddings, b.embeddings, atol=1e-5)  # same network after normalisation


def test_fixed_batch_recogniser(tmp_path, astronaut):
    face_models.make_tiny_pack(tmp_path, fixed_batch=True)
    an = FaceAnalyzer.load(tmp_path, backend="onnxruntime")
    ident = an.encode([astronaut, astronaut, astronaut])
    assert ident.embeddings.shape == (3, 512)


def test_same_face_same_embedding_different_face_different(tiny_analyzer, astronaut):
    from skimage import data

    bright = np.clip(astronaut.astype(int) + 25, 0, 255).astype(np.uint8)
    cat = np.asarray(__import__("PIL.Image", fromlist=["Image"]).fromarray(data.chelsea()).resize((512, 512)))
    ident = tiny_analyzer.encode([astronaut, astronaut, bright, cat], fusion="separate")
    e = ident.embeddings
    assert torch.equal(e[0], e[1])
    assert cos(e[0], e[2]) > 0.9
    assert cos(e[0], e[3]) < 0.5
    assert ident.arcface().shape == (4, 512)


def test_mean_fusion_is_renormalised_mean(tiny_analyzer, astronaut):
    bright = np.clip(astronaut.astype(int) + 40, 0, 255).astype(np.uint8)
    ident = tiny_analyzer.encode([astronaut, bright])
    m = ident.embeddings.mean(0)
    assert torch.allclose(ident.embedding, m / m.norm(), atol=1e-6)
    assert ident.arcface().shape == (1, 512) and ident.fusion == "mean"
    sims = [q.similarity_to_others for q in ident.quality]
    assert all(s is not None and s > 0.9 for s in sims)


def test_outlier_reference_is_dropped(tiny_analyzer, astronaut):
    from skimage import data

    rng = np.random.default_rng(0)
    refs = [np.clip(astronaut.astype(int) + rng.integers(-12, 12, astronaut.shape), 0, 255).astype(np.uint8)
            for _ in range(3)]
    cat = np.asarray(__import__("PIL.Image", fromlist=["Image"]).fromarray(data.chelsea()).resize((512, 512)))
    refs.insert(2, cat)
    kept = tiny_analyzer.encode(refs)
    assert len(kept) == 4 and kept.dropped == []
    ident = tiny_analyzer.encode(refs, drop_outliers=True)
    assert [d["image_index"] for d in ident.dropped] == [2] and len(ident) == 3
    assert [q.image_index for q in ident.quality] == [0, 1, 3]
    assert "dropped as outliers: image 2" in ident.info()
    two = tiny_analyzer.encode(refs[1:3], drop_outliers=True)  # two references: nobody to outvote
    assert len(two) == 2 and two.dropped == []


def test_no_face_error_names_image_and_fix(tiny_analyzer, astronaut):
    black = np.zeros((256, 200, 3), np.uint8)
    with pytest.raises(FaceNotFoundError) as e:
        tiny_analyzer.encode([astronaut, black])
    msg = str(e.value)
    assert "No face found in image 1" in msg and "200x256" in msg and "640, 480, 320, 160" in msg
    assert "larger, frontal, well-lit" in msg and "on_no_face='skip'" in msg
    assert isinstance(e.value, ValueError)


def test_skip_lists_skipped_images(tiny_analyzer, astronaut):
    black = np.zeros((64, 64, 3), np.uint8)
    ident = tiny_analyzer.encode([black, astronaut, black], on_no_face="skip")
    assert ident.skipped == [0, 2] and len(ident) == 1 and ident.quality[0].image_index == 1
    assert "skipped images (no usable face): 0 (no face), 2 (no face)" in ident.info()


def test_all_skipped_is_an_error(tiny_analyzer):
    black = np.zeros((64, 64, 3), np.uint8)
    with pytest.raises(FaceNotFoundError, match=r"No usable face in any of the 2 image\(s\)"):
        tiny_analyzer.encode([black, black], on_no_face="skip")


def test_tiny_and_blurry_faces_are_flagged(tmp_path, astronaut):
    from PIL import Image, ImageFilter

    img, faces = face_models.canvas_with_faces((512, 512), ((200, 200, 0.35),))
    face_models.make_tiny_pack(tmp_path, faces=faces, image_size=(512, 512))
    an = FaceAnalyzer.load(tmp_path, backend="onnxruntime")
    q = an.encode(img).quality[0]
    assert q.face_px < 24 and any("small face" in w for w in q.warnings)
    blurred = np.asarray(Image.fromarray(img).filter(ImageFilter.GaussianBlur(2)))
    q2 = an.encode(blurred).quality[0]
    assert q2.sharpness < q.sharpness / 2


def test_face_px_is_in_original_pixels_for_huge_photos(tmp_path, astronaut, monkeypatch):
    from PIL import Image

    from moca_model.face import images

    monkeypatch.setattr(images, "MAX_SIDE", 1024)  # as a 4608 px photo against the default 4096
    big = np.asarray(Image.fromarray(astronaut).resize((1536, 1536), Image.BILINEAR))
    face = face_models.map_face(face_models.ASTRONAUT_FACE, 3, 1, 1)  # (p + .5) * 3 - .5
    face_models.make_tiny_pack(tmp_path, faces=[face], image_size=(1536, 1536))
    an = FaceAnalyzer.load(tmp_path, backend="onnxruntime")
    ident = an.encode(big)
    q = ident.quality[0]
    assert abs(q.face_px - 42.57 * 3) < 1
    assert ident.metadata["image_notes"]["0"] == ["downscaled from 1536x1536 to 1024x1024"]


def test_pose_from_landmarks():
    t = A.ARCFACE_TEMPLATE.float()
    yaw, pitch, roll = pose_from_landmarks(t[None])[0].tolist()
    assert abs(yaw) < 1 and abs(pitch) < 1 and abs(roll) < 1
    rot = torch.from_numpy(face_models.similar_points(t.numpy(), 1.5, 20, 10, 10)).float()
    assert abs(pose_from_landmarks(rot[None])[0, 2].item() - (20 + roll)) < 0.01  # template roll: -0.32
    turned = t.clone()
    turned[2, 0] += 12  # nose towards the image's right
    assert pose_from_landmarks(turned[None])[0, 0].item() > 20
    down = t.clone()
    down[2, 1] += 8  # nose lower between eyes and mouth: looking down
    assert pose_from_landmarks(down[None])[0, 1].item() < -10


# ---------------------------------------------------------------- backends
def insightface_or_skip():
    mod, reason = backends.import_insightface()
    if mod is None:
        pytest.skip(f"insightface path not testable here: {reason}")
    return mod


def test_insightface_backend_matches_onnxruntime(tmp_path, astronaut):
    mod = insightface_or_skip()
    img, faces = face_models.canvas_with_faces((768, 512), ((20, 200, 0.6), (230, 60, 1.3), (560, 240, 0.9)))
    face_models.make_tiny_pack(tmp_path, faces=faces, image_size=(768, 512))
    a = FaceAnalyzer.load(tmp_path, backend="insightface")
    b = FaceAnalyzer.load(tmp_path, backend="onnxruntime")
    assert f"insightface {mod.__version__}" in a.report and "via onnxruntime" in b.report
    for image in (img, astronaut):
        da, db = a.detect(image), b.detect(image)
        assert len(da) == len(db) == 3
        for x, y in zip(da, db):
            np.testing.assert_allclose(x.box, y.box, atol=1e-3)
            np.testing.assert_allclose(x.kps, y.kps, atol=1e-3)
    ia = a.encode([img, astronaut], fusion="separate", select="left_to_right", index=1)
    ib = b.encode([img, astronaut], fusion="separate", select="left_to_right", index=1)
    assert torch.allclose(ia.embeddings, ib.embeddings, atol=1e-5)
    assert (a.backend.input_mean, a.backend.input_std) == (b.backend.input_mean, b.backend.input_std)


def test_insightface_backend_mxnet_normalisation_agrees(tmp_path, astronaut):
    insightface_or_skip()
    face_models.make_tiny_pack(tmp_path, mxnet_style=True)
    a = FaceAnalyzer.load(tmp_path, backend="insightface")
    b = FaceAnalyzer.load(tmp_path, backend="onnxruntime")
    assert (a.backend.input_mean, a.backend.input_std) == (b.backend.input_mean, b.backend.input_std) == (0.0, 1.0)
    assert torch.allclose(a.encode(astronaut).embedding, b.encode(astronaut).embedding, atol=1e-5)


@pytest.fixture
def broken_insightface(tmp_path, monkeypatch):
    """An insightface whose import fails the way 0.7.3 wheels do under NumPy 2."""
    pkg = tmp_path / "site" / "insightface"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(
        "raise ValueError('numpy.dtype size changed, may indicate binary incompatibility. "
        "Expected 96 from C header, got 88 from PyObject')\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    for name in [m for m in sys.modules if m == "insightface" or m.startswith("insightface.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(backends, "_notice_logged", set())


def test_broken_insightface_falls_back_with_one_line_notice(tiny_root, astronaut, broken_insightface, caplog):
    with caplog.at_level(logging.INFO, logger="moca.face"):
        an = FaceAnalyzer.load(tiny_root)
        FaceAnalyzer.load(tiny_root)
    notes = [r.getMessage() for r in caplog.records if "insightface" in r.getMessage()]
    assert len(notes) == 1 and "\n" not in notes[0]
    assert "failed to import" in notes[0] and "NumPy 1 under NumPy 2" in notes[0] and "onnxruntime directly" in notes[0]
    assert "via onnxruntime" in an.report and "insightface failed to import" in an.report
    assert len(an.encode(astronaut)) == 1


def test_explicit_insightface_backend_that_fails_says_why(tiny_root, broken_insightface):
    with pytest.raises(FaceBackendError) as e:
        FaceAnalyzer.load(tiny_root, backend="insightface")
    msg = str(e.value)
    assert "numpy.dtype size changed" in msg and "backend 'auto' or 'onnxruntime'" in msg
    assert isinstance(e.value, ImportError)


def test_missing_insightface_is_reported(tiny_root, monkeypatch):
    monkeypatch.setitem(sys.modules, "insightface", None)  # import raises ModuleNotFoundError
    monkeypatch.setattr(backends, "_notice_logged", set())
    an = FaceAnalyzer.load(tiny_root)
    assert "insightface is not installed" in an.report and an.notice.startswith("insightface is not installed")


def test_insightface_that_cannot_load_the_pack_falls_back(tiny_root, astronaut, monkeypatch):
    mod = insightface_or_skip()

    def broken(*a, **k):
        raise AttributeError("module 'insightface.model_zoo' has no attribute 'get_model'")

    monkeypatch.setattr(backends, "InsightFaceBackend", broken)
    monkeypatch.setattr(backends, "_notice_logged", set())
    an = FaceAnalyzer.load(tiny_root)
    assert "via onnxruntime" in an.report and f"insightface {mod.__version__} could not load the pack" in an.report
    with pytest.raises(FaceBackendError, match="could not load the antelopev2 pack"):
        FaceAnalyzer.load(tiny_root, backend="insightface")
