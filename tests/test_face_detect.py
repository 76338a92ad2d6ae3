"""SCRFD decoding through the real loading path, detector-size fallback, threshold and face choice."""
import numpy as np
import pytest

import face_models
from face_models import ASTRONAUT_FACE
from moca_model.face import FaceAnalyzer, FaceNotFoundError, FaceOptionError, FacePackError
from moca_model.face import detector as D


def load(tmp_path, **kw):
    face_models.make_tiny_pack(tmp_path, **kw)
    return FaceAnalyzer.load(tmp_path, backend="onnxruntime")


def as_decoded(face, image_size, det_size):
    """Where insightface's decoding puts ``face``: it divides both axes by the height's resize factor
    although the width was rounded separately (a <0.2% quirk that the onnxruntime path keeps)."""
    w, h = image_size
    if h / w > 1.0:
        new_h = det_size
        new_w = int(new_h / (h / w))
    else:
        new_w = det_size
        new_h = int(new_w * (h / w))
    fx = (new_w / w) / (new_h / h)
    b = face.box
    return face_models.TinyFace((b[0] * fx, b[1], b[2] * fx, b[3]), tuple((x * fx, y) for x, y in face.kps), face.score)


def assert_face(det, face, tol=2e-3, image_size=None):
    if image_size is not None:
        face = as_decoded(face, image_size, det.det_size)
    np.testing.assert_allclose(det.box, face.box, atol=tol)
    np.testing.assert_allclose(det.kps, np.array(face.kps), atol=tol)
    assert abs(det.score - face.score) < 1e-6


def test_astronaut_decodes_to_hand_measured_face(tiny_analyzer, astronaut):
    faces = tiny_analyzer.detect(astronaut)
    assert len(faces) == 1 and faces[0].det_size == 640
    assert_face(faces[0], ASTRONAUT_FACE)


@pytest.mark.parametrize("det_size", [640, 480, 320])
def test_decoding_is_exact_at_every_detector_size(tiny_analyzer, astronaut, det_size):
    faces = tiny_analyzer.detect(astronaut, det_size=det_size, fallback=False)
    assert_face(faces[0], ASTRONAUT_FACE)


@pytest.mark.parametrize("size", [(768, 512), (512, 800)])
def test_letterboxed_canvas_with_three_faces(tmp_path, size):
    img, faces = face_models.canvas_with_faces(size, ((20, 40, 0.6), (200, 100, 1.2), (330, 420, 0.9)))
    an = load(tmp_path, faces=faces, image_size=size)
    found = an.detect(img)
    assert len(found) == 3
    for f in faces:  # each configured face comes back exactly (the detector output order is by score)
        best = min(found, key=lambda d: np.abs(d.box - np.array(f.box)).max())
        assert_face(best, f, image_size=size)
        assert np.abs(best.box - np.array(f.box)).max() < 1.0


def test_batched_output_layout(tmp_path, astronaut):
    an = load(tmp_path, batched=True)
    assert len(an.backend.det.session.get_outputs()[0].shape) == 3
    assert_face(an.detect(astronaut)[0], ASTRONAUT_FACE)


def test_detector_size_falls_back_for_a_face_that_fills_the_photo(tmp_path):
    img, faces = face_models.canvas_with_faces((512, 512), ((-5, -40, 3.0),))
    face = face_models.map_face(faces[0], 1, 0, 0, max_det_px=200)  # SCRFD-like: too big at 640 and 480
    an = load(tmp_path, faces=[face], image_size=(512, 512))
    found = an.detect(img)
    assert len(found) == 1 and found[0].det_size == 320
    assert_face(found[0], face)
    assert an.detect(img, fallback=False) == []
    ident = an.encode(img)
    assert ident.quality[0].det_size == 320


def test_fallback_sizes():
    assert D.fallback_sizes(640) == [640, 480, 320, 160]
    assert D.fallback_sizes(320) == [320, 224, 160, 128]
    assert D.fallback_sizes(128) == [128]


def test_score_threshold(tmp_path, astronaut):
    face = face_models.map_face(ASTRONAUT_FACE, 1, 0, 0, score=0.45)
    an = load(tmp_path, faces=[face])
    assert an.detect(astronaut) == []
    assert len(an.detect(astronaut, det_thresh=0.4)) == 1
    an2 = FaceAnalyzer.load(tmp_path, backend="onnxruntime", det_thresh=0.4)
    assert len(an2.detect(astronaut)) == 1


def test_black_image_has_no_face(tiny_analyzer):
    assert tiny_analyzer.detect(np.zeros((300, 200, 3), np.uint8)) == []


def test_nms_merges_overlaps_keeps_separate_faces():
    dets = np.array([[0, 0, 100, 100, 0.9], [5, 5, 105, 105, 0.8], [200, 0, 300, 100, 0.7],
                     [60, 0, 160, 100, 0.85]], np.float32)
    assert D.nms(dets) == [0, 3, 2]


def test_decode_rejects_outputs_of_the_wrong_size():
    outs = [np.zeros((10, 1))] * 3 + [np.zeros((10, 4))] * 3 + [np.zeros((10, 10))] * 3
    with pytest.raises(FacePackError, match="not an SCRFD detector"):
        D.decode(outs, 640, 640, 0.5, 9)


# ---------------------------------------------------------------- which face
PLACES = ((20, 200, 0.6), (230, 60, 1.3), (560, 240, 0.9))  # small left, large middle, medium right


@pytest.fixture(scope="module")
def group(tmp_path_factory):
    img, faces = face_models.canvas_with_faces((768, 512), PLACES)
    scored = [face_models.map_face(f, 1, 0, 0, score=s) for f, s in zip(faces, (0.95, 0.7, 0.8))]
    root = tmp_path_factory.mktemp("group")
    face_models.make_tiny_pack(root, faces=scored, image_size=(768, 512))
    return FaceAnalyzer.load(root, backend="onnxruntime"), img, scored


@pytest.mark.parametrize("select,index,expected", [
    ("largest", 0, 1), ("largest", 1, 2), ("largest", 2, 0),
    ("left_to_right", 0, 0), ("left_to_right", 1, 1), ("left_to_right", 2, 2),
    ("index", 0, 0), ("index", 1, 2), ("index", 2, 1),  # detector order: most confident first
])
def test_face_choice(group, select, index, expected):
    an, img, faces = group
    ident = an.encode(img, select=select, index=index)
    want = as_decoded(faces[expected], (768, 512), 640)
    np.testing.assert_allclose(ident.quality[0].box, want.box, atol=0.01)


def test_index_beyond_faces_names_image_and_count(group):
    an, img, _ = group
    with pytest.raises(FaceNotFoundError) as e:
        an.encode([img, img], select="left_to_right", index=3)
    msg = str(e.value)
    assert "Image 0" in msg and "3 face(s)" in msg and "index 3" in msg and "from the left" in msg
    with pytest.raises(FaceNotFoundError, match=r"all skipped: 0 \(3 face\(s\), index 3\), 1 \(3 face"):
        an.encode([img, img], select="left_to_right", index=3, on_no_face="skip")
    ident = an.encode([img, np.zeros_like(img)], select="left_to_right", index=2, on_no_face="skip")
    assert ident.skipped == [1] and ident.metadata["skip_reasons"] == {"1": "no face"}


@pytest.mark.parametrize("kw,needle", [
    ({"select": "biggest"}, "select='biggest'"),
    ({"on_no_face": "ignore"}, "on_no_face='ignore'"),
    ({"fusion": "max"}, "fusion='max'"),
    ({"index": -1}, "index=-1"),
    ({"crop_size": 32}, "crop_size=32"),
    ({"det_size": 100}, "multiple of 32"),
    ({"det_thresh": 0}, "between 0 and 1"),
])
def test_bad_options(tiny_analyzer, astronaut, kw, needle):
    with pytest.raises(FaceOptionError, match=needle):
        tiny_analyzer.encode(astronaut, **kw)


@pytest.mark.parametrize("kw,needle", [({"det_size": 100}, "multiple of 32"), ({"det_thresh": 1.5}, "between 0 and 1"),
                                       ({"backend": "mxnet"}, "Unknown face backend")])
def test_bad_load_options(tiny_root, kw, needle):
    with pytest.raises(FaceOptionError, match=needle):
        FaceAnalyzer.load(tiny_root, **kw)
