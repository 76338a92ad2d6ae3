"""5-point alignment: the solver, the kornia warp, and landmarks landing on the ArcFace template."""
import numpy as np
import pytest
import torch

import face_models
from moca_model.face import align as A

TEMPLATE = A.ARCFACE_TEMPLATE.numpy()
KPS = np.array(face_models.ASTRONAUT_FACE.kps)


def skimage_similarity(src, dst) -> np.ndarray:
    """[2, 3] from scikit-image's SimilarityTransform (what insightface's estimate_norm uses)."""
    from skimage.transform import SimilarityTransform

    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        return SimilarityTransform.from_estimate(src, dst).params[:2]
    t = SimilarityTransform()
    t.estimate(src, dst)
    return t.params[:2]


def test_template_matches_insightface_scaling():
    assert torch.allclose(A.template(112), A.ARCFACE_TEMPLATE)
    assert torch.allclose(A.template(224), A.ARCFACE_TEMPLATE * 2)  # insightface estimate_norm(224)
    loc = A.local_template(256)
    eye = (loc[1, 0] - loc[0, 0]).item()
    assert abs(eye - 35.237 * 256 / (112 * A.LOCAL_MARGIN)) < 1e-3


def test_solver_matches_skimage_umeyama():
    rng = np.random.default_rng(0)
    src = np.concatenate([KPS[None], KPS[None] * 1.7 + rng.normal(0, 3, (4, 5, 2))])  # [5, 5, 2]
    m = A.estimate_similarity(torch.from_numpy(src), A.ARCFACE_TEMPLATE).numpy()
    for i in range(len(src)):
        np.testing.assert_allclose(m[i], skimage_similarity(src[i], TEMPLATE), atol=1e-9)


def test_solver_is_batched_and_device_agnostic():
    src = torch.from_numpy(np.stack([KPS, KPS + 10])).float()
    m = A.estimate_similarity(src, A.ARCFACE_TEMPLATE)
    assert m.shape == (2, 2, 3) and m.dtype == torch.float32
    m1 = A.estimate_similarity(src[1], A.ARCFACE_TEMPLATE)
    assert torch.allclose(m[1], m1[0])
    assert A.estimate_similarity(src.double(), A.ARCFACE_TEMPLATE.float()).dtype == torch.float64


def test_exact_similarity_landmarks_land_on_template():
    """Landmarks that are a similarity image of the template land within 1 px of it after the warp."""
    pts = face_models.similar_points(TEMPLATE, 2.3, 17.0, 180.0, 40.0)
    img = torch.from_numpy(face_models.marker_image(pts, (512, 512)))
    crops, m, kps_crop = A.align_faces(img, torch.from_numpy(pts)[None], 112)
    np.testing.assert_allclose(kps_crop[0].numpy(), TEMPLATE, atol=1e-3)
    found = face_models.blob_centroids(crops[0].numpy(), TEMPLATE, radius=4)
    assert np.abs(found - TEMPLATE).max() < 1.0, found - TEMPLATE


def test_astronaut_landmarks_land_where_the_fit_puts_them(astronaut):
    """Hand-measured astronaut landmarks: the warped pixels sit within 1 px of the least-squares
    positions, and those positions differ from the template only by what no similarity can remove."""
    img = torch.from_numpy(face_models.marker_image(KPS, (512, 512)))
    crops, m, kps_crop = A.align_faces(img, torch.from_numpy(KPS)[None], 112)
    found = face_models.blob_centroids(crops[0].numpy(), kps_crop[0].numpy(), radius=4)
    assert np.abs(found - kps_crop[0].numpy()).max() < 1.0
    p = skimage_similarity(KPS, TEMPLATE)
    residual = KPS @ p[:, :2].T + p[:, 2] - TEMPLATE  # the astronaut's own proportions vs the average face
    assert 1.5 < np.linalg.norm(residual, axis=1).max() < 6  # (2.1 to 5.5 px: her smile, her long face)
    np.testing.assert_allclose(kps_crop[0].numpy() - TEMPLATE, residual, atol=1e-3)
    # the alignment itself is right: eyes level, eye midpoint and scale as in the template
    k = kps_crop[0].numpy()
    assert abs(k[0, 1] - k[1, 1]) < 1.0
    eye_ratio = np.linalg.norm(k[1] - k[0]) / np.linalg.norm(TEMPLATE[1] - TEMPLATE[0])
    assert 0.9 < eye_ratio < 1.1


def test_kornia_warp_matches_opencv(astronaut):
    import cv2

    ref = cv2.warpAffine(astronaut, skimage_similarity(KPS, TEMPLATE), (112, 112), borderValue=0.0)
    ref = ref.astype(np.float32) / 255
    crops, _, _ = A.align_faces(torch.from_numpy(astronaut).float() / 255, torch.from_numpy(KPS)[None], 112)
    assert np.abs(crops[0].numpy() - ref).max() <= 1.0 / 255 + 1e-6  # OpenCV rounds to uint8


def test_uint8_and_float_images_align_the_same(astronaut):
    k = torch.from_numpy(KPS)[None]
    a, _, _ = A.align_faces(torch.from_numpy(astronaut), k, 256, A.LOCAL_MARGIN, A.LOCAL_CENTER)
    b, _, _ = A.align_faces(torch.from_numpy(astronaut).float() / 255, k, 256, A.LOCAL_MARGIN, A.LOCAL_CENTER)
    assert a.dtype == torch.float32 and torch.allclose(a, b, atol=1e-6)


def test_large_face_is_prefiltered_without_shifting_it(astronaut):
    """A 6x larger copy of the photo gives the same aligned crop (antialiased path, region read only)."""
    from PIL import Image

    big = np.array(Image.fromarray(astronaut).resize((3072, 3072), Image.BILINEAR))
    big_t = torch.from_numpy(big).float() / 255
    kps_big = (KPS + 0.5) * 6 - 0.5
    small, _, _ = A.align_faces(torch.from_numpy(astronaut).float() / 255, torch.from_numpy(KPS)[None], 112)
    crop, m, _ = A.align_faces(big_t, torch.from_numpy(kps_big)[None], 112)
    assert float(A.similarity_scale(m)[0]) < A.DOWNSCALE_ANTIALIAS_BELOW
    assert (crop - small).abs().mean() < 0.02
    pts = face_models.similar_points(TEMPLATE, 9.0, -8.0, 1200.0, 900.0)  # markers survive the prefilter
    marker = torch.from_numpy(face_models.marker_image(pts, (2600, 2200), sigma=9.0))
    crop, _, _ = A.align_faces(marker, torch.from_numpy(pts)[None], 112)
    found = face_models.blob_centroids(crop[0].numpy(), TEMPLATE, radius=4)
    assert np.abs(found - TEMPLATE).max() < 1.0


def test_face_at_image_border_pads_with_black(astronaut):
    kps = KPS - np.array([190.0, 0.0])  # left eye near x=14: the crop reaches outside the photo
    crops, _, _ = A.align_faces(torch.from_numpy(astronaut).float() / 255, torch.from_numpy(kps)[None], 256,
                                A.LOCAL_MARGIN, A.LOCAL_CENTER)
    assert crops.shape == (1, 256, 256, 3) and float(crops[0, :, :10].max()) == 0.0


def test_crop_entirely_outside_is_black():
    img = torch.rand(64, 64, 3)
    kps = torch.from_numpy(face_models.similar_points(TEMPLATE, 0.2, 0, 5000, 5000))[None]
    crops, _, _ = A.align_faces(img, kps, 112)
    assert float(crops.abs().max()) == 0.0


def test_align_batch_equals_per_face(astronaut):
    frames = torch.from_numpy(np.stack([astronaut, astronaut[:, ::-1]])).float() / 255
    kps = np.stack([KPS, np.array([[511 - x, y] for x, y in KPS])[[1, 0, 2, 4, 3]]])
    batch, m = A.align_batch(frames, torch.from_numpy(kps), 112)
    for i in range(2):
        single, _, _ = A.align_faces(frames[i], torch.from_numpy(kps[i])[None], 112)
        assert torch.allclose(batch[i], single[0], atol=1e-5)


@pytest.mark.parametrize("size", [112, 224])
def test_crop_sizes(astronaut, size):
    crops, _, k = A.align_faces(torch.from_numpy(astronaut).float() / 255, torch.from_numpy(KPS)[None], size)
    assert crops.shape == (1, size, size, 3)
    assert np.abs(k[0].numpy() - A.template(size).numpy()).max() < 6 * size / 112
