"""net.preprocess: decoding (modes, EXIF, GIF frames, errors, reduced decoding of large images, JPEGs whose header lies)
and the Caffe pipeline checked pixel for pixel against plain NumPy (crop offsets, BGR order, mean at pre-crop
coordinates, scales, PIL's bilinear filter)."""

from __future__ import annotations

import dataclasses
import io
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from net.headers import jpeg_data_check
from net.preprocess import PRESETS, REDUCE_GAP, ImageError, Preprocess, decode_side, load_image, preset

CAFFENET_MEAN = np.array([104.00699, 116.66877, 122.67891], dtype=np.float32)  # BGR


def encode(img: Image.Image, fmt: str = "PNG", **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def rand_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height RGB (no pixel data): enough for the size check."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


# -- reference: Pillow's antialiased bilinear resize in plain NumPy --------------------------------
def _pil_bilinear_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of Pillow's BILINEAR (triangle filter, support widened by the scale when shrinking)."""
    scale = n_in / n_out
    fscale = max(scale, 1.0)
    support = 1.0 * fscale
    w = np.zeros((n_out, n_in))
    for i in range(n_out):
        center = (i + 0.5) * scale
        lo, hi = max(int(center - support + 0.5), 0), min(int(center + support + 0.5), n_in)
        x = (np.arange(lo, hi) - center + 0.5) / fscale
        k = np.clip(1.0 - np.abs(x), 0.0, None)
        w[i, lo:hi] = k / k.sum()
    return w


def resize_ref(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """(H0, W0) float -> (h, w), separable: rows then columns."""
    return _pil_bilinear_weights(a.shape[0], h) @ a @ _pil_bilinear_weights(a.shape[1], w).T


# -- the Caffe pipeline, exact ----------------------------------------------------------------------
def test_caffenet_exact_pixel_math_and_crop_offset_14() -> None:
    rgb = rand_rgb(256, 256)
    pre = preset("caffenet")
    assert pre.crop_offset == (14, 14) and pre.output_shape == (3, 227, 227)
    x = pre(Image.fromarray(rgb))
    expected = (
        rgb[14 : 14 + 227, 14 : 14 + 227, ::-1].transpose(2, 0, 1).astype(np.float32) - CAFFENET_MEAN[:, None, None]
    )
    assert x.dtype == np.float32 and x.shape == (3, 227, 227)
    np.testing.assert_array_equal(x, expected)


def test_pure_red_is_channel_2_in_bgr() -> None:
    x = preset("caffenet")(Image.new("RGB", (256, 256), (255, 0, 0)))
    np.testing.assert_array_equal(x[2], np.float32(255) - CAFFENET_MEAN[2])
    np.testing.assert_array_equal(x[0], -CAFFENET_MEAN[0])
    np.testing.assert_array_equal(x[1], -CAFFENET_MEAN[1])
    rgb = preset("caffenet").replace(channel_swap=False, mean=None)(Image.new("RGB", (256, 256), (255, 0, 0)))
    assert rgb[0].min() == 255 and rgb[2].max() == 0


def test_non_square_crop_offsets() -> None:
    rgb = rand_rgb(260, 300, seed=1)
    pre = Preprocess(size=(227, 227), resize=(260, 300), mean=None)
    assert pre.crop_offset == (16, 36)
    x = pre(rgb)
    np.testing.assert_array_equal(x, rgb[16:243, 36:263, ::-1].transpose(2, 0, 1).astype(np.float32))


def test_resize_matches_numpy_bilinear_reference() -> None:
    yy, xx = np.mgrid[0:90, 0:120]
    rgb = np.stack([yy * 2, xx * 2, (yy * xx) % 256], axis=2).astype(np.uint8)
    pre = Preprocess(size=(20, 30), resize=(24, 40), mean=None, channel_swap=False)
    x = pre(Image.fromarray(rgb))
    for c in range(3):
        ref = resize_ref(rgb[:, :, c].astype(np.float64), 24, 40)[2:22, 5:35]
        np.testing.assert_allclose(x[c], ref, atol=2e-3)
    # upscaling too (plain bilinear, no widening)
    x_up = Preprocess(size=(50, 70), mean=None, channel_swap=False)(Image.fromarray(rgb[:20, :30]))
    np.testing.assert_allclose(x_up[1], resize_ref(rgb[:20, :30, 1].astype(np.float64), 50, 70), atol=2e-3)


def test_lenet_shape_and_scale() -> None:
    g = np.random.default_rng(2).integers(0, 256, size=(28, 28), dtype=np.uint8)
    x = preset("lenet")(Image.fromarray(g))
    assert x.shape == (1, 28, 28) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], g.astype(np.float32) / 256)  # 0.00390625 = 2**-8: exact
    assert preset("lenet")(Image.new("RGB", (100, 80), "white")).shape == (1, 28, 28)


def test_grayscale_uses_pil_luma_and_color_replicates_gray() -> None:
    rgb = rand_rgb(28, 28, seed=3)
    x = Preprocess(size=(28, 28), color=False, mean=None)(Image.fromarray(rgb))
    np.testing.assert_array_equal(x[0], np.asarray(Image.fromarray(rgb).convert("L"), dtype=np.float32))
    g = Image.new("L", (256, 256), 77)
    np.testing.assert_array_equal(
        preset("caffenet")(g), np.broadcast_to(np.float32(77) - CAFFENET_MEAN[:, None, None], (3, 227, 227))
    )


def test_scales_and_mean_order() -> None:
    rgb = rand_rgb(16, 16, seed=4)
    pre = Preprocess(size=(16, 16), raw_scale=1.0, mean=(0.1, 0.2, 0.3), input_scale=2.0)
    x = pre(rgb)
    ref = (rgb[:, :, ::-1].transpose(2, 0, 1) / 255.0 - np.array([0.1, 0.2, 0.3])[:, None, None]) * 2.0
    np.testing.assert_allclose(x, ref, atol=1e-6)


def test_array_inputs_uint8_and_float01_agree() -> None:
    rgb = rand_rgb(256, 256, seed=5)
    pre = preset("caffenet")
    np.testing.assert_allclose(pre(rgb.astype(np.float32) / 255), pre(rgb), atol=1e-4)
    with pytest.raises(ValueError, match="shape"):
        pre(np.zeros((4, 4, 2)))


def test_batch_shape() -> None:
    imgs = [Image.new("RGB", (300, 200), c) for c in ("red", "green", "blue")]
    xb = preset("caffenet").batch(imgs + [encode(imgs[0])])
    assert xb.shape == (4, 3, 227, 227) and xb.dtype == np.float32
    np.testing.assert_array_equal(xb[0], xb[3])
    assert preset("lenet").batch([]).shape == (0, 1, 28, 28)


# -- mean images ------------------------------------------------------------------------------------
def test_mean_image_of_pre_crop_size_is_cropped_with_the_image() -> None:
    rng = np.random.default_rng(6)
    rgb, mean = rand_rgb(256, 256, seed=7), rng.uniform(90, 130, size=(3, 256, 256)).astype(np.float32)
    x = preset("caffenet").replace(mean=mean)(rgb)
    expected = rgb[:, :, ::-1].transpose(2, 0, 1).astype(np.float32) - mean
    np.testing.assert_array_equal(x, expected[:, 14:241, 14:241])
    # (1, C, H, W) as in a binaryproto, and a mean already of the net input size
    np.testing.assert_array_equal(preset("caffenet").replace(mean=mean[None])(rgb), x)
    np.testing.assert_array_equal(preset("caffenet").replace(mean=mean[:, 14:241, 14:241].copy())(rgb), x)


def test_mean_image_of_other_size_is_resized() -> None:
    mean = np.ones((3, 100, 100), dtype=np.float32) * CAFFENET_MEAN[:, None, None]
    x = preset("caffenet").replace(mean=mean)(Image.new("RGB", (256, 256), (255, 0, 0)))
    np.testing.assert_allclose(x, preset("caffenet")(Image.new("RGB", (256, 256), (255, 0, 0))), atol=1e-4)


def test_mean_from_npy_and_binaryproto(tmp_path) -> None:
    rng = np.random.default_rng(8)
    mean = rng.uniform(90, 130, size=(3, 256, 256)).astype(np.float32)
    rgb = rand_rgb(256, 256, seed=9)
    want = preset("caffenet").replace(mean=mean)(rgb)
    np.save(tmp_path / "mean.npy", mean)
    np.testing.assert_array_equal(preset("caffenet").replace(mean=str(tmp_path / "mean.npy"))(rgb), want)
    from net import caffemodel

    caffemodel.save_binaryproto(tmp_path / "mean.binaryproto", mean[None])
    pre = preset("caffenet").replace(mean=tmp_path / "mean.binaryproto")
    np.testing.assert_array_equal(pre(rgb), want)
    np.testing.assert_array_equal(pre(rgb), want)  # cached second time


def test_mean_validation() -> None:
    with pytest.raises(ValueError, match="expected 3"):
        Preprocess(size=(8, 8), mean=(1.0, 2.0))
    with pytest.raises(ValueError, match=r"expected \(1, H, W\)"):
        Preprocess(size=(8, 8), color=False, mean=np.zeros((3, 8, 8)))
    assert Preprocess(size=(8, 8), mean=5).mean == (5.0, 5.0, 5.0)


# -- inversion for LeNet ----------------------------------------------------------------------------
def _ink_on_paper(ink: int, paper: int) -> Image.Image:
    img = Image.new("L", (28, 28), paper)
    img.paste(ink, (12, 4, 16, 24))
    return img


def test_invert_and_auto_invert() -> None:
    dark_on_white, white_on_black = _ink_on_paper(0, 255), _ink_on_paper(255, 0)
    mnist_like = preset("lenet")(white_on_black)
    np.testing.assert_array_equal(preset("lenet-invert")(dark_on_white), mnist_like)
    np.testing.assert_array_equal(preset("lenet-auto")(dark_on_white), mnist_like)
    np.testing.assert_array_equal(preset("lenet-auto")(white_on_black), mnist_like)
    with pytest.raises(ValueError, match="not both"):
        preset("lenet").replace(invert=True, auto_invert=True)


# -- presets and the dataclass --------------------------------------------------------------------------
def test_presets_replace_and_errors() -> None:
    assert set(PRESETS) >= {"caffenet", "lenet"}
    assert preset("CaffeNet") is PRESETS["caffenet"]
    with pytest.raises(ValueError, match="known presets: caffenet, lenet"):
        preset("vgg16")
    p = preset("caffenet").replace(size=(200, 200))
    assert p.size == (200, 200) and p.resize == (256, 256) and preset("caffenet").size == (227, 227)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.size = (1, 1)  # type: ignore[misc]
    with pytest.raises(ValueError, match="smaller than the crop"):
        Preprocess(size=(227, 227), resize=(200, 256))
    a, b = preset("caffenet").replace(mean=np.ones((3, 4, 4))), preset("caffenet").replace(mean=np.ones((3, 4, 4)))
    assert a == b and hash(a) == hash(b) and a != preset("caffenet")


# -- decoding -------------------------------------------------------------------------------------------
def test_rgba_palette_and_la_composite_on_white() -> None:
    rgba = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    rgba.putpixel((0, 0), (255, 0, 0, 255))
    out = np.asarray(load_image(encode(rgba)))
    assert out[0, 0].tolist() == [255, 0, 0] and out[1, 1].tolist() == [255, 255, 255]
    half = np.asarray(load_image(encode(Image.new("RGBA", (2, 2), (0, 0, 0, 128)))))
    assert abs(int(half[0, 0, 0]) - 127) <= 1

    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 0, 0, 255] + [0] * 762)
    pal.info["transparency"] = 0
    pal.putpixel((0, 0), 0)
    got = load_image(encode(pal))
    assert got.mode == "RGB" and np.asarray(got)[0, 0].tolist() == [255, 255, 255]
    assert np.asarray(got)[2, 2].tolist() == [0, 0, 255]

    la = load_image(encode(Image.new("LA", (3, 3), (0, 0))))
    assert la.mode == "L" and np.asarray(la).min() == 255


def test_modes_cmyk_16bit_gray_1bit() -> None:
    cmyk = load_image(encode(Image.new("CMYK", (8, 8), (0, 255, 255, 0)), "JPEG", quality=95))
    r, g, b = np.asarray(cmyk)[4, 4].tolist()
    assert cmyk.mode == "RGB" and r > 200 and g < 60 and b < 60
    v16 = np.array([[0, 257 * 10, 65535, 1000]], dtype=np.uint16)
    g16 = load_image(encode(Image.fromarray(v16)))
    assert g16.mode == "L" and np.asarray(g16).tolist() == [[0, 10, 255, 4]]
    assert load_image(encode(Image.new("1", (5, 5), 1), "BMP")).mode == "L"


def test_exif_orientation_is_applied() -> None:
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 20))  # left red, right blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    got = load_image(encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    a = np.asarray(got).astype(int)
    assert got.size == (20, 40)
    assert a[5, 10, 0] > 200 and a[5, 10, 2] < 60  # top: red (was left)
    assert a[35, 10, 2] > 200 and a[35, 10, 0] < 60  # bottom: blue


def test_animated_gif_first_frame() -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 0, 255))]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    assert Image.open(io.BytesIO(data)).n_frames == 2
    got = load_image(data)
    assert got.mode == "RGB" and np.asarray(got)[4, 4].tolist() == [255, 0, 0]


def test_path_and_file_object_sources(tmp_path) -> None:
    path = tmp_path / "x.png"
    path.write_bytes(encode(Image.new("RGB", (5, 7), "green")))
    assert load_image(path).size == (5, 7) and load_image(str(path)).size == (5, 7)
    with open(path, "rb") as f:
        assert load_image(f).size == (5, 7)
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ImageError, match=r"empty\.jpg: empty file"):
        load_image(tmp_path / "empty.jpg")


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "<upload>: empty file (0 bytes)"),
        (b"GIF89 is not what this is, just some text", "<upload>: not an image (could not identify format)"),
        (b"hello world" * 10, "<upload>: not an image (could not identify format)"),
    ],
)
def test_errors_plain_messages(data: bytes, message: str) -> None:
    with pytest.raises(ImageError) as ei:
        load_image(data)
    assert str(ei.value) == message and isinstance(ei.value, ValueError)


def test_truncated_png() -> None:
    data = encode(Image.fromarray(rand_rgb(64, 64)))
    with pytest.raises(ImageError, match="<upload>: truncated image"):
        load_image(data[: len(data) // 2])
    for cut in (10, 20, 30):
        with pytest.raises(ImageError, match="<upload>: truncated or corrupt PNG file"):
            load_image(data[:cut])


def test_too_large() -> None:
    with pytest.raises(ImageError) as ei:
        load_image(png_header(10000, 5000))
    assert str(ei.value) == "<upload>: image too large: 10000x5000 = 50 Mpx exceeds the 40 Mpx limit"
    before = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning may escape
        with pytest.raises(ImageError, match="image too large: 900 Mpx exceeds the 40 Mpx limit"):
            load_image(png_header(30000, 30000))  # Pillow's own limit (2 x 89.5 Mpx) fires first
        with pytest.raises(ImageError, match="image too large: 100 Mpx exceeds"):
            load_image(png_header(10000, 10000))  # Pillow warns (> 89.5 Mpx); "error" filter turns it into a raise
    assert Image.MAX_IMAGE_PIXELS == before
    with pytest.raises(ImageError, match=r"100x100 = 0\.01 Mpx exceeds the 0\.005 Mpx limit"):
        load_image(encode(Image.new("RGB", (100, 100))), max_pixels=5000)


def test_disallowed_formats() -> None:
    ico = encode(Image.new("RGB", (16, 16), "red"), "ICO")
    with pytest.raises(ImageError) as ei:
        load_image(ico)
    assert str(ei.value).startswith("<upload>: format 'ICO' is not allowed (allowed: JPEG, PNG, GIF")
    with pytest.raises(ImageError, match="format 'BMP' is not allowed"):
        load_image(encode(Image.new("RGB", (4, 4)), "BMP"), allowed_formats=("PNG",))
    assert load_image(ico, allowed_formats=("ICO",)).mode == "RGB"
    assert load_image(encode(Image.new("L", (4, 4)), "PPM"), allowed_formats=("PGM",)).mode == "L"


# -- reduced decoding (load_image(shrink_to=...)) and the JPEG data check ------------------------------------------
@pytest.fixture
def reduce_above_10k(monkeypatch):
    """Reduced decoding for images above 10,000 pixels, so small test images take the large-image path."""
    import net.preprocess

    monkeypatch.setattr(net.preprocess, "REDUCE_ABOVE", 10_000)


def smooth_rgb(h: int, w: int) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([128 + 90 * np.sin(x / 37 + c) * np.cos(y / 23 - c) for c in range(3)], axis=2).astype(np.uint8)


def test_decode_side_of_presets() -> None:
    assert [decode_side(preset(n)) for n in ("lenet", "caffenet", "efficientnet")] == [28, 256, 256]
    assert decode_side(Preprocess(size=(10, 20), resize=(30, 40))) == 40


def test_normal_images_decode_exactly_as_before() -> None:
    """At or below REDUCE_ABOVE pixels, shrink_to changes nothing: the same pixels, the same Preprocess output."""
    for data in (encode(Image.fromarray(smooth_rgb(300, 400)), "JPEG"), encode(Image.fromarray(rand_rgb(200, 100)))):
        a, b = load_image(data), load_image(data, shrink_to=28)
        assert a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))
        for name in ("lenet-auto", "caffenet", "efficientnet"):
            pre = preset(name)
            assert np.array_equal(pre(a), pre(b))


def test_single_colour_bomb_png_is_reduced_on_decode() -> None:
    """A 25 Mpx single-colour PNG (~80 KB, above REDUCE_ABOVE): box-reduced right after decoding to >= 3 x 28 px,
    before any mode conversion or float copy; the values are exact."""
    data = encode(Image.new("RGB", (5000, 5000), (200, 30, 90)))
    assert len(data) < 200_000
    img = load_image(data, shrink_to=28)
    assert img.mode == "RGB" and REDUCE_GAP * 28 <= min(img.size) < 2 * REDUCE_GAP * 28
    assert np.array_equal(np.unique(np.asarray(img).reshape(-1, 3), axis=0), [[200, 30, 90]])
    np.testing.assert_array_equal(preset("lenet")(img), preset("lenet")(Image.new("RGB", (28, 28), (200, 30, 90))))


def test_reduced_decode_close_to_full_decode(reduce_above_10k) -> None:
    """Above REDUCE_ABOVE the numbers change a little (box reduce + resize instead of one resize); on a smooth
    1200x900 image, within a pixel level on average for every preset."""
    data = encode(Image.fromarray(smooth_rgb(900, 1200)))
    for name in ("lenet", "caffenet", "efficientnet"):
        pre = preset(name)
        full, red = pre(load_image(data)), pre(load_image(data, shrink_to=decode_side(pre)))
        levels = np.abs(full - red) / pre.input_scale * (255.0 / pre.raw_scale)
        assert levels.mean() < 1.0 and levels.max() < 8.0, (name, levels.mean(), levels.max())


def test_jpeg_draft_scales_the_decode(reduce_above_10k) -> None:
    """JPEG: libjpeg's DCT scaling (1/8 here), then an integer reduce, keeping >= REDUCE_GAP x shrink_to; EXIF
    orientation still applied after."""
    src = Image.fromarray(smooth_rgb(1200, 1600))
    img = load_image(encode(src, "JPEG"), shrink_to=20)
    assert img.size == (100, 75)  # 1600x1200 / 8 = 200x150, then reduce by 2 keeps the short side >= 60
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    rotated = load_image(encode(src, "JPEG", exif=exif), shrink_to=20)
    assert rotated.size == (75, 100)
    ref = np.asarray(load_image(encode(src, "JPEG", exif=exif)).resize((75, 100), Image.Resampling.BOX), np.float32)
    assert np.abs(np.asarray(rotated, np.float32) - ref).mean() < 2.0


@pytest.mark.parametrize("mode", ["P", "PA", "1", "I;16", "LA", "RGBA", "CMYK", "L"])
def test_reduced_decode_of_every_mode(reduce_above_10k, mode: str) -> None:
    """Palette, bilevel, 16-bit and transparent images are converted before they are averaged: a single-colour
    image reduces to exactly the colour its full decode gives."""
    colours = {"P": 5, "PA": (5, 128), "1": 1, "I;16": 40000, "LA": (60, 128), "RGBA": (10, 200, 30, 128),
               "CMYK": (10, 20, 30, 40), "L": 77}  # fmt: skip
    if mode in ("P", "PA"):
        img = Image.new(mode, (400, 300), colours[mode])
        img.putpalette([(i * 7) % 256 for i in range(768)])
    else:
        img = Image.new(mode, (400, 300), colours[mode])
    data = encode(img, "TIFF" if mode in ("CMYK", "PA") else "PNG")
    full, red = load_image(data), load_image(data, shrink_to=10)
    assert full.mode == red.mode and red.size[1] < 300
    np.testing.assert_allclose(np.asarray(red, np.float32), np.asarray(full, np.float32)[: red.size[1], : red.size[0]],
                               atol=1)  # fmt: skip


def test_png_with_colour_key_transparency_is_reduced_onto_white(reduce_above_10k) -> None:
    img = Image.new("RGB", (300, 300), (0, 0, 0))
    img.paste((10, 20, 30), (0, 0, 150, 300))
    data = encode(img, transparency=(0, 0, 0))
    red = np.asarray(load_image(data, shrink_to=10))
    assert tuple(red[0, 0]) == (10, 20, 30) and tuple(red[0, -1]) == (255, 255, 255)


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_jpeg_whose_header_lies_about_its_size_is_refused(mode: str) -> None:
    """A 16x16 JPEG patched to claim 6000x6000 (~300-600 bytes): libjpeg would paint the missing data grey and answer
    a 36 Mpx image; the check refuses it before any decoding."""
    data = bytearray(encode(Image.new(mode, (16, 16), 128), "JPEG"))
    struct.pack_into(">HH", data, data.find(b"\xff\xc0") + 5, 6000, 6000)
    with pytest.raises(ImageError, match=r"<upload>: truncated image: the JPEG header claims 6000x6000 pixels"):
        load_image(bytes(data))
    with pytest.raises(ImageError, match="fewer than one bit per block"):
        load_image(bytes(data), shrink_to=28)


@pytest.mark.parametrize(
    "img, kw",
    [
        (Image.new("L", (2000, 2000), 77), {"optimize": True, "progressive": True}),  # ~1 bit per block: the bound
        (Image.new("RGB", (1000, 700), (1, 200, 3)), {"subsampling": 0, "optimize": True}),
        (Image.new("L", (1, 1), 3), {}),
        (Image.fromarray(rand_rgb(300, 400)), {"restart_marker_blocks": 1}),
        (Image.new("CMYK", (50, 30), (1, 2, 3, 4)), {}),
    ],
)
def test_honest_jpegs_pass_the_data_check(img: Image.Image, kw: dict) -> None:
    data = encode(img, "JPEG", **kw)
    width, height, blocks, arithmetic, entropy = jpeg_data_check(data)
    assert (width, height) == img.size and not arithmetic and 8 * entropy >= blocks
    assert load_image(data).size == img.size


def test_bomb_png_decode_memory(tmp_path) -> None:
    """The issue's bomb, 6324x6324 single-colour (40 Mpx, ~130 KB), through LeNet's preprocessing in a fresh process:
    the reduced decode peaks at about the PNG's decoded buffer (4 bytes per pixel, 160 MB), the full decode adds a
    grayscale copy and a float copy on top (~380 MB)."""
    import subprocess
    import sys

    if not Path("/proc/self/status").is_file():
        pytest.skip("needs Linux's /proc/self/status (VmHWM)")
    path = tmp_path / "bomb.png"
    Image.new("RGB", (6324, 6324), (200, 30, 90)).save(path, "PNG")
    assert path.stat().st_size < 200_000
    code = """
import sys
from net.preprocess import load_image, preset
def hwm():  # this process's peak RSS in kB (ru_maxrss would start at pytest's own size: it survives fork + exec)
    return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1])
data = open(sys.argv[1], "rb").read()
base = hwm()
x = preset("lenet-auto")(load_image(data, shrink_to=None if sys.argv[2] == "full" else 28))
print((hwm() - base) / 1024)
"""
    peak = {}
    for how in ("reduced", "full"):
        run = subprocess.run([sys.executable, "-c", code, str(path), how], capture_output=True, text=True, check=True)
        peak[how] = float(run.stdout)
    assert peak["reduced"] < 200 < peak["full"], f"peak MB above the baseline: {peak}"
