"""Likeness of video frames to an identity: per-frame cosine, statistics, frames without a face."""
import numpy as np
import pytest
import torch

import face_models
from moca_model.face import FaceAnalyzer, FaceOptionError, likeness_scores


@pytest.fixture(scope="module")
def frames(astronaut):
    """IMAGE [6, 512, 512, 3]: the face, brighter, noisier, black (no face), a cat, the face again."""
    from PIL import Image
    from skimage import data

    rng = np.random.default_rng(1)
    noisy = np.clip(astronaut.astype(int) + rng.integers(-40, 40, astronaut.shape), 0, 255)
    cat = np.asarray(Image.fromarray(data.chelsea()).resize((512, 512)))
    stack = [astronaut, np.clip(astronaut.astype(int) + 20, 0, 255), noisy, np.zeros_like(astronaut), cat, astronaut]
    return torch.from_numpy(np.stack(stack).astype(np.float32) / 255.0)


def test_scores_and_statistics(tiny_analyzer, astronaut, frames):
    ident = tiny_analyzer.encode(astronaut)
    r = likeness_scores(tiny_analyzer, frames, ident)
    s = r.scores
    assert s[3] is None and r.n_no_face == 1 and r.no_face_frames == [3] and r.n_frames == 6
    assert abs(s[0] - 1) < 1e-5 and abs(s[5] - 1) < 1e-5
    assert s[1] > 0.95 and s[2] > 0.9 and s[4] < 0.5
    vals = np.array([v for v in s if v is not None])
    assert abs(r.mean - vals.mean()) < 1e-9 and r.min == vals.min()
    assert abs(r.p10 - np.percentile(vals, 10)) < 1e-9
    assert r["mean"] == r.mean and r.as_dict()["scores"] == s
    t = r.scores_tensor()
    assert torch.isnan(t[3]) and not torch.isnan(t[:3]).any()
    summary = r.summary()
    assert "over 5/6 frames" in summary and "no face in 1 frame(s): 3" in summary
    assert r.boxes[3] is None and r.boxes[0] == pytest.approx(list(face_models.ASTRONAUT_FACE.box), abs=1e-3)


def test_no_face_frames_are_not_zero(tiny_analyzer, astronaut):
    ident = tiny_analyzer.encode(astronaut)
    black = torch.zeros(3, 64, 64, 3)
    r = likeness_scores(tiny_analyzer, black, ident)
    assert r.scores == [None, None, None] and r.mean is None and r.min is None and r.p10 is None
    assert r.summary() == "likeness: no face found in any of the 3 frames"


def test_best_face_in_a_group_frame(tmp_path, astronaut):
    from PIL import Image
    from skimage import data

    cat = np.asarray(Image.fromarray(data.chelsea()).resize((512, 512)))
    img, faces = face_models.canvas_with_faces((768, 512), ((20, 200, 0.6), (230, 60, 1.3)), src=cat)
    img2, _ = face_models.canvas_with_faces((768, 512), ((20, 200, 0.6),))  # the real astronaut, small, left
    img[:, :300] = img2[:, :300]
    face_models.make_tiny_pack(tmp_path, faces=faces, image_size=(768, 512))
    an = FaceAnalyzer.load(tmp_path, backend="onnxruntime")
    ident = an.encode(img, select="left_to_right", index=0)
    largest = likeness_scores(an, img[None], ident)  # scores the large cat-face on the right
    best = likeness_scores(an, img[None], ident, select="best")
    assert abs(best.scores[0] - 1) < 1e-5 and largest.scores[0] < 0.6


def test_bad_select(tiny_analyzer, astronaut):
    ident = tiny_analyzer.encode(astronaut)
    with pytest.raises(FaceOptionError, match="largest, best"):
        likeness_scores(tiny_analyzer, astronaut, ident, select="index")


def test_works_with_a_loaded_identity(tiny_analyzer, astronaut, tmp_path):
    from moca_model.face import FaceIdentity

    p = tiny_analyzer.encode(astronaut).save(tmp_path / "id.safetensors")
    r = likeness_scores(tiny_analyzer, torch.from_numpy(astronaut)[None].float() / 255, FaceIdentity.load(p))
    assert abs(r.scores[0] - 1) < 1e-5


def test_likeness_takes_a_moca_identity_or_an_embedding(tiny_analyzer, astronaut):
    from moca_model import MoCAIdentity
    face = tiny_analyzer.encode(astronaut)
    frames = torch.from_numpy(astronaut)[None].float() / 255
    ident = MoCAIdentity(face.embeddings, None)                # what the nodes carry (MOCA_ID)
    a = likeness_scores(tiny_analyzer, frames, face).scores
    assert likeness_scores(tiny_analyzer, frames, ident).scores == pytest.approx(a, abs=1e-5)
    assert likeness_scores(tiny_analyzer, frames, face.embedding).scores == pytest.approx(a, abs=1e-5)
