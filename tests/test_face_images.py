"""Input normalisation: IMAGE tensors, numpy, PIL, paths with EXIF, RGBA, gray, 16-bit, huge; bad inputs."""
import numpy as np
import pytest
import torch
from PIL import Image

from moca_model.face import FaceImageNotFoundError, FaceInputError, load_images


def test_comfy_image_batch(astronaut):
    x = torch.from_numpy(astronaut).float()[None].repeat(3, 1, 1, 1) / 255.0  # [3, 512, 512, 3]
    out = load_images(x)
    assert [o.index for o in out] == [0, 1, 2] and out[2].source == "IMAGE[2]"
    assert out[0].pixels.shape == (512, 512, 3) and out[0].pixels.dtype == torch.float32
    assert torch.equal(out[1].pixels, x[1])
    assert out[1].data.data_ptr() == x[1].data_ptr()  # a view of the batch, no copy
    np.testing.assert_array_equal(out[0].uint8(), astronaut)


def test_8bit_sources_stay_8bit(astronaut, tmp_path):
    """4x less memory per reference; alignment converts only the face region to float."""
    p = tmp_path / "a.png"
    Image.fromarray(astronaut).save(p)
    for src in (astronaut, Image.fromarray(astronaut), p, np.dstack([astronaut, np.full((512, 512), 255, np.uint8)])):
        o = load_images(src)[0]
        assert o.data.dtype == torch.uint8 and o.data.shape == (512, 512, 3)
        np.testing.assert_array_equal(o.uint8(), astronaut)


def test_mixed_list_flattens_in_order(astronaut, tmp_path):
    p = tmp_path / "a.png"
    Image.fromarray(astronaut).save(p)
    x = torch.from_numpy(astronaut)[None].float().repeat(2, 1, 1, 1) / 255
    out = load_images([str(p), x, Image.fromarray(astronaut), astronaut])
    assert [o.index for o in out] == [0, 1, 2, 3, 4]
    assert [o.source for o in out][:3] == [str(p), "IMAGE[0]", "IMAGE[1]"]
    for o in out:
        np.testing.assert_array_equal(o.uint8(), astronaut)


def test_uint16_and_float255_and_bool():
    a16 = (np.arange(64 * 64 * 3, dtype=np.uint32).reshape(64, 64, 3) * 7 % 65536).astype(np.uint16)
    o = load_images(a16)[0]
    assert torch.allclose(o.pixels, torch.from_numpy(a16.astype(np.float32) / 65535.0))
    assert "16-bit" in o.notes
    f255 = np.full((8, 8, 3), 200.0, np.float32)
    o = load_images(f255)[0]
    assert torch.allclose(o.pixels, torch.full((8, 8, 3), 200 / 255.0)) and o.notes
    o = load_images(np.ones((8, 8), bool))[0]
    assert torch.all(o.pixels == 1.0)


def test_grayscale_and_rgba_and_gray_alpha():
    gray = np.full((10, 12), 51, np.uint8)
    o = load_images(gray)[0]
    assert o.pixels.shape == (10, 12, 3) and torch.allclose(o.pixels, torch.full((10, 12, 3), 0.2))
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:2, :, 3] = 255  # top half opaque red, bottom transparent -> white
    o = load_images(rgba)[0]
    assert torch.allclose(o.pixels[0, 0], torch.tensor([1.0, 0.0, 0.0]))
    assert torch.allclose(o.pixels[3, 0], torch.tensor([1.0, 1.0, 1.0]))
    assert "alpha composited over white" in o.notes
    la = np.stack([np.zeros((4, 4)), np.full((4, 4), 127)], -1).astype(np.uint8)  # half-transparent black
    o = load_images(la)[0]
    assert torch.allclose(o.pixels, torch.full((4, 4, 3), 1 - 127 / 255), atol=1e-6)
    comfy_rgba = torch.zeros(1, 4, 4, 4)
    comfy_rgba[..., 3] = 1.0
    assert torch.all(load_images(comfy_rgba)[0].pixels == 0)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "I", "F", "1", "LA", "YCbCr"])
def test_pil_modes(astronaut, mode):
    img = Image.fromarray(astronaut)
    if mode == "I;16":
        g = (np.asarray(img.convert("L")).astype(np.uint16) * 257)
        img = Image.fromarray(g)  # uint16 -> mode I;16
    elif mode == "F":
        img = Image.fromarray(np.asarray(img.convert("L")).astype(np.float32) / 255.0)  # mode F
    else:
        img = img.convert(mode)
    o = load_images(img)[0]
    assert o.pixels.shape == (512, 512, 3) and 0 <= float(o.pixels.min()) and float(o.pixels.max()) <= 1
    if mode in ("L", "I;16", "F"):
        ref = np.asarray(Image.fromarray(astronaut).convert("L")).astype(np.float32) / 255
        assert np.abs(o.pixels[..., 0].numpy() - ref).max() < 1e-3


def test_16bit_png_file(tmp_path, astronaut):
    g = np.asarray(Image.fromarray(astronaut).convert("L")).astype(np.uint16) * 257
    p = tmp_path / "g16.png"
    Image.fromarray(g).save(p)
    assert Image.open(p).mode == "I;16"
    o = load_images(p)[0]
    assert np.abs(o.pixels[..., 1].numpy() - g / 65535.0).max() < 1e-6


def test_exif_orientation_is_honoured(tmp_path, astronaut):
    # store the photo rotated on disk with an EXIF tag that says "rotate back when showing"
    stored = np.rot90(astronaut[:, :400], k=1).copy()  # [400, 512, 3], displayed upright after transpose
    exif = Image.Exif()
    exif[0x0112] = 6  # the camera was turned: rotate 90 degrees clockwise to view
    p = tmp_path / "phone.jpg"
    Image.fromarray(stored).save(p, exif=exif, quality=95)
    o = load_images(p)[0]
    assert o.pixels.shape == (512, 400, 3)
    assert np.abs(o.uint8().astype(int) - astronaut[:, :400]).mean() < 4
    assert any("EXIF orientation 6" in n for n in o.notes)


def test_huge_image_is_downscaled_on_load(tmp_path, astronaut):
    # the same code paths as a 50-megapixel photo against the default MAX_SIDE of 4096, at a test-friendly scale
    big = np.asarray(Image.fromarray(astronaut).resize((1536, 1536), Image.NEAREST))
    o = load_images(big, max_side=1024)[0]
    assert o.pixels.shape == (1024, 1024, 3) and o.original_size == (1536, 1536)
    assert abs(o.scale - 1024 / 1536) < 1e-9 and any("downscaled" in n for n in o.notes)
    p = tmp_path / "big.jpg"
    Image.fromarray(big[:, :1300]).save(p, quality=80)
    o = load_images(p, max_side=1024)[0]
    assert max(o.size) <= 1024 and o.original_size == (1300, 1536)
    huge = np.zeros((2400, 160, 3), np.uint8)  # > 2x max_side: decoded at reduced scale (JPEG draft)
    huge[::7] = 200
    Image.fromarray(huge).save(p, quality=70)
    o = load_images(p, max_side=1024)[0]
    assert o.size == (68, 1024) and o.original_size == (160, 2400) and abs(o.scale - 68 / 160) < 1e-9
    assert any("downscaled from 160x2400" in n for n in o.notes)


def test_default_max_side_is_4096():
    from moca_model.face import images

    assert images.MAX_SIDE == 4096
    o = load_images(np.zeros((10, 4100, 3), np.uint8))[0]
    assert o.size == (4096, 10)


def test_missing_file_names_index_and_path(tmp_path, astronaut):
    with pytest.raises(FaceImageNotFoundError) as e:
        load_images([astronaut, tmp_path / "nope.png"])
    assert "Image 1" in str(e.value) and "nope.png" in str(e.value)
    assert isinstance(e.value, FileNotFoundError)


def test_folder_instead_of_file(tmp_path):
    with pytest.raises(FaceImageNotFoundError, match="it is a folder"):
        load_images(str(tmp_path))


def test_not_an_image_file(tmp_path):
    p = tmp_path / "notes.txt"
    p.write_text("hello")
    with pytest.raises(FaceInputError, match="not an image file"):
        load_images(p)


def test_truncated_image_file(tmp_path, astronaut):
    p = tmp_path / "cut.png"
    Image.fromarray(astronaut).save(p)
    p.write_bytes(p.read_bytes()[:3000])
    with pytest.raises(FaceInputError, match="cannot be decoded"):
        load_images(p)


@pytest.mark.parametrize("bad,needle", [
    ({"image": 1}, "unsupported input type dict"),
    (torch.zeros(3, 64, 64), "is not an image"),
    (torch.zeros(1, 64, 64, 5), "is not an image"),
    (np.zeros((2, 2, 2, 2, 3)), "is not an image"),
    (np.zeros((1, 1, 3)), "too small"),
    (np.array([["a"]], dtype=object), "unsupported numpy dtype"),
    ([], "No images were given"),
    (torch.zeros(0, 64, 64, 3), "No images were given"),
])
def test_bad_inputs_have_clear_messages(bad, needle):
    with pytest.raises(FaceInputError, match=needle):
        load_images(bad)
