"""Image preprocessing as Caffe's classifiers do it: decode, resize, centre crop, BGR, mean, scale.

    pre = preset("caffenet")                       # resize 256x256 -> centre crop 227x227, BGR, minus mean
    x = pre(load_image("cat.jpg"))                 # (3, 227, 227) float32
    xb = pre.batch(["a.jpg", b"...png bytes..."])  # (2, 3, 227, 227) float32
    lenet = preset("lenet").replace(invert=True)   # dark ink on white paper -> MNIST's white on black

Pipeline of `Preprocess.__call__` (pycaffe `caffe.io.Transformer.preprocess` + `caffe.Classifier` with
`center_only`, caffe_facts §8.4):

    decode (load_image) -> RGB or L -> float32 -> resize to `resize` (or `size`) -> centre crop to `size`
    -> [invert] -> * raw_scale -> channel swap RGB->BGR -> - mean -> * input_scale      => (C, H, W)

Numerics. pycaffe works on float32 values v/255 in 0..1 and multiplies by `raw_scale`; we keep the pixel
values v in 0..255 and multiply by `raw_scale / 255`. The two are equal in exact arithmetic (resizing is
linear) and ours is bit-exact for the common raw_scale = 255 (factor 1.0): a pixel of value 200 gives
exactly 200.0 - mean. The mean is subtracted in float32.

Resizing (`resample`, PIL bilinear by default) runs per channel on float32 ("F") images, so nothing is
rounded to uint8 after decoding. Pillow's bilinear filter widens its support when it shrinks an image
(antialiasing, like a box-ish average), unlike OpenCV's INTER_LINEAR (used to build Caffe's LMDBs) or
skimage order 1 (pycaffe); the results are close but not bit-equal to Caffe's reference outputs. Pass
`resample=Image.Resampling.NEAREST`/`BICUBIC`/... to change it. Images already at the target size are
not resampled at all.

Centre crop: offset ((Hr - H) // 2, (Wr - W) // 2) as Caffe's data layer in TEST phase; 256 -> 227 gives 14.

Mean (in the order of the *output* channels: BGR when channel_swap, as Caffe's mean files are):
    * None                      nothing subtracted
    * a number or (C,) values   per channel, e.g. (104.00699, 116.66877, 122.67891) for CaffeNet
    * (C, h, w) / (1, C, h, w)  a mean image (array, `.npy` path or `.binaryproto` path). Of the pre-crop
      size (e.g. 3x256x256 with resize 256x256): cropped with the image's crop offsets, i.e. subtracted at
      the pre-crop coordinates exactly as Caffe's data layer does. Of the net input size: used as is. Of any
      other size: resized (same `resample`) to the pre-crop size, then cropped. (pycaffe's Transformer would
      instead squash a 256x256 mean straight to 227x227; we keep the mean aligned with the image.)
Mean files are read lazily on first use and cached per Preprocess object.

Inversion (LeNet): MNIST digits are white ink on black (0 = background). Photos and scans of dark ink on
light paper must be inverted first: `invert=True` (preset "lenet-invert") always computes 255 - v;
`auto_invert=True` (preset "lenet-auto") inverts only when the mean of the border ring (width
max(1, min(H, W) // 10) of the cropped image, all channels) is brighter than 127.5. Inversion is applied
to the 0..255 values after cropping, before raw_scale.

Reduced decoding (`load_image(..., shrink_to=N)`, used by the web app): the caller says it will shrink the image
to about N x N pixels (`decode_side(pre)`). An image of more than REDUCE_ABOVE pixels is then decoded at a lower
scale where the format allows it (JPEG: libjpeg's DCT scaling by 1/2, 1/4 or 1/8, `Image.draft`) and box-averaged
by an integer factor right after decoding (`Image.reduce`), keeping its shorter side at least REDUCE_GAP * N, before
any mode conversion or float copy. Images of REDUCE_ABOVE pixels or fewer decode exactly as without `shrink_to`.
Memory of one reduced decode: the format's full decoded buffer where it cannot decode at a lower scale (PNG, GIF,
BMP, WEBP: up to 4 bytes per pixel, 160 MB at 40 Mpx) plus one full-size converted copy for palette, 16-bit and
transparent images; JPEG allocates 1/64 of its pixels at scale 1/8.

JPEG data check (`net.headers.jpeg_data_check`): a JPEG whose header claims more blocks than its entropy-coded data
could hold (a Huffman code is at least one bit per 8x8 block) is refused as truncated before decoding; libjpeg would
otherwise paint the missing data grey and answer a full-size image (a 462-byte file claiming 6000x6000).
Arithmetic-coded JPEGs (rare; no lower bound on their size) are not checked.

Exceptions:
    ImageError(ValueError)   load_image: undecodable, empty, truncated, too large or disallowed image;
                             the message names the file (or "<upload>") and the problem.
    ValueError               bad Preprocess parameters, unknown preset, mean of the wrong channel count.
    OSError                  a path that cannot be opened (missing file, permissions) passes through.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import re
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import BinaryIO, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .headers import jpeg_data_check

__all__ = [
    "DEFAULT_ALLOWED_FORMATS",
    "PRESETS",
    "REDUCE_ABOVE",
    "REDUCE_GAP",
    "ImageError",
    "Preprocess",
    "decode_side",
    "load_image",
    "normalize_mode",
    "preset",
    "to_array",
]

DEFAULT_ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF", "PPM", "PGM")
# Names users write -> Pillow's format ids. Pillow reads PGM/PBM with its "PPM" plugin and opens camera
# JPEGs that carry extra pictures as "MPO" (through the JPEG plugin).
_FORMAT_ALIASES = {"PGM": "PPM", "PBM": "PPM", "JPG": "JPEG", "TIF": "TIFF"}
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError, struct.error, zlib.error)
# Reduced decoding (module docstring). REDUCE_ABOVE: 16 Mpx, a 4608x3456 phone photo, decodes exactly; only larger
# images are reduced. REDUCE_GAP: Pillow's own `reducing_gap` advice, "3.0 gives a result indistinguishable from
# fair resampling in most cases": the reduced image keeps >= 3 source pixels per output pixel for the final resize.
REDUCE_ABOVE = 16_000_000
REDUCE_GAP = 3
# Modes that Image.reduce averages in a way that commutes with normalize_mode (linear per pixel; LA/RGBA are reduced
# premultiplied, so compositing onto white afterwards is the same); CMYK -> RGB is a product, nearly linear.
_REDUCIBLE = frozenset({"L", "LA", "RGB", "RGBA", "I", "F", "CMYK", "YCbCr"})

ImageSource = Union[str, bytes, bytearray, "os.PathLike[str]", BinaryIO, Image.Image, np.ndarray]


class ImageError(ValueError):
    """An image that cannot be used: `source` is the file name or "<upload>", `problem` the plain reason."""

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(f"{source}: {problem}")
        self.source = source
        self.problem = problem


# -- decoding ----------------------------------------------------------------------------------------
def _mpx(pixels: float) -> str:
    return f"{pixels / 1e6:.4g}"


def _pillow_ids(allowed: Iterable[str]) -> list[str]:
    Image.init()
    ids: list[str] = []
    for name in allowed:
        fmt = _FORMAT_ALIASES.get(name.upper(), name.upper())
        if fmt in Image.OPEN and fmt not in ids:
            ids.append(fmt)
    return ids


def _sniff_format(prefix: bytes) -> str | None:
    """The Pillow format whose magic bytes match `prefix` (header check only; no plugin parses the file)."""
    Image.init()
    for fmt, (_factory, accept) in Image.OPEN.items():
        if accept is None:
            continue
        try:
            if accept(prefix) is True:
                return fmt
        except Exception:  # noqa: BLE001, S112 - a plugin's accept() choking on odd bytes; we only want a name
            continue
    return None


def _as_stream(source: str | bytes | bytearray | os.PathLike | BinaryIO) -> tuple[BinaryIO, str, bool]:
    """(binary stream, display name, whether we own it)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return io.BytesIO(bytes(source)), "<upload>", True
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        return open(path, "rb"), str(path), True  # OSError (missing file, ...) passes through
    name = getattr(source, "name", None)
    name = name if isinstance(name, str) and name else "<upload>"
    try:
        source.seek(0, io.SEEK_CUR)
        return source, name, False
    except (AttributeError, OSError, io.UnsupportedOperation):
        return io.BytesIO(source.read()), name, True  # unseekable upload stream


def normalize_mode(img: Image.Image) -> Image.Image:
    """`img` as mode "RGB" or "L": alpha / palette transparency composited onto white, palette, CMYK,
    YCbCr, 1-bit -> RGB or L; 16-bit ("I;16*", "I") grayscale scaled to 8 bits (v / 257, rounded);
    float ("F") grayscale clipped to 0..255."""
    mode = img.mode
    if mode in ("RGB", "L") and "transparency" not in img.info:
        return img
    if mode.startswith("I") or mode == "F":
        a = np.asarray(img, dtype=np.float64)
        a = a / 257.0 if mode.startswith("I") else a
        return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8))
    if mode == "1":
        return img.convert("L")
    if mode in _ALPHA_MODES or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        out = Image.alpha_composite(white, rgba).convert("RGB")
        return out.convert("L") if mode in ("L", "LA", "La") else out
    return img.convert("RGB")  # P, CMYK, YCbCr, HSV, ...


def load_image(
    source: str | bytes | os.PathLike | BinaryIO,
    *,
    max_pixels: int = 40_000_000,
    allowed_formats: Iterable[str] = DEFAULT_ALLOWED_FORMATS,
    shrink_to: int | None = None,
) -> Image.Image:
    """Decode an image file (path, bytes or binary file object) safely into a PIL image of mode "RGB" or "L".

    Checks, in order: empty input; format among `allowed_formats` (only those plugins may parse the file);
    width * height <= `max_pixels` before any pixel data is decoded; for JPEG, enough entropy-coded data for the
    size its header claims (module docstring); full decode (truncation / corruption).
    Then: first frame of animated GIF/WebP/TIFF, EXIF orientation applied (`ImageOps.exif_transpose`),
    mode normalised by `normalize_mode` (alpha onto white, CMYK/palette -> RGB, 16-bit -> 8-bit).

    shrink_to: the side in pixels the caller resizes the image down to (`decode_side(pre)`); an image above
    REDUCE_ABOVE pixels is then decoded reduced, its shorter side kept >= REDUCE_GAP * shrink_to (module
    docstring). None: always the full size.

    Decompression bombs: our own `max_pixels` check runs right after the header is read. Pillow's global
    `Image.MAX_IMAGE_PIXELS` check also runs inside `Image.open`; we neither change that global nor wrap the
    call in `warnings.catch_warnings()` (which swaps process-wide state and is not thread-safe, and the server
    decodes in a thread pool). Pillow's DecompressionBombError (> 2x its limit) becomes an ImageError; its
    DecompressionBombWarning can only fire for images above ~89 Mpx, which the default 40 Mpx limit refuses.
    Raises ImageError (a ValueError) naming the file or "<upload>"; OSError for a path that cannot be opened.
    """
    if shrink_to is not None and shrink_to < 1:
        raise ValueError(f"load_image: shrink_to must be >= 1 pixel, got {shrink_to}")
    fp, name, owned = _as_stream(source)
    allowed = tuple(str(f).upper() for f in allowed_formats)
    try:
        fp.seek(0)  # Image.open reads from the start of the stream as well
        prefix = fp.read(16)
        fp.seek(0)
        if not prefix:
            raise ImageError(name, "empty file (0 bytes)")
        img = _open_checked(fp, name, prefix, allowed, max_pixels)
        if img.format in ("JPEG", "MPO"):
            _check_jpeg_data(fp, name)
        factor = _reduce_factor(img.size, shrink_to)
        if factor > 1 and img.format in ("JPEG", "MPO"):
            side = REDUCE_GAP * shrink_to  # type: ignore[operator]
            img.draft(None, (side, side))  # DCT scaling by 1/8, 1/4 or 1/2: the largest that keeps >= side
        try:
            img.seek(0)
            img.load()
        except Image.DecompressionBombError as e:
            raise ImageError(name, f"image too large ({e})") from e
        except _DECODE_ERRORS as e:
            msg = str(e)
            if "truncated" in msg or isinstance(e, EOFError):
                detail = msg.replace("image file is truncated", "").strip(" ()")
                raise ImageError(name, f"truncated image ({detail})" if detail else "truncated image") from e
            raise ImageError(name, f"corrupt {img.format} image data ({msg or type(e).__name__})") from e
        if factor > 1:
            img = _reduced(img, _reduce_factor(img.size, shrink_to))  # the full-size buffer is dropped here
        try:
            img = ImageOps.exif_transpose(img) or img
        except _DECODE_ERRORS:
            pass  # malformed EXIF: keep the pixels as stored rather than refuse the image
        return normalize_mode(img)
    finally:
        if owned:
            fp.close()


def _reduce_factor(size: tuple[int, int], shrink_to: int | None) -> int:
    """The integer factor an image of `size` (w, h) may be reduced by for a caller shrinking it to shrink_to
    pixels: 1 at or below REDUCE_ABOVE pixels, else the largest keeping min(w, h) >= REDUCE_GAP * shrink_to."""
    w, h = size
    if shrink_to is None or w * h <= REDUCE_ABOVE:
        return 1
    return max(1, min(w, h) // (REDUCE_GAP * shrink_to))


def _reduced(img: Image.Image, factor: int) -> Image.Image:
    """`img` box-reduced by `factor` (Image.reduce), first converted where averaging its values would be wrong:
    palette and bilevel images (indices), 16-bit ("I;16*", unsupported by reduce) and colour-keyed transparency."""
    if factor <= 1:
        return img
    mode = img.mode
    if "transparency" in img.info or mode in ("P", "PA"):
        img = img.convert("LA" if mode in ("L", "1") else "RGBA")
    elif mode == "1":
        img = img.convert("L")
    elif mode.startswith("I;16"):
        img = img.convert("I")
    elif mode not in _REDUCIBLE:
        img = img.convert("RGB")
    return img.reduce(factor)


def decode_side(pre: Preprocess) -> int:
    """The side in pixels that `pre` shrinks a decoded image to, for `load_image(shrink_to=...)`: the larger side of
    its resize (or input) size, or for a TF-style crop the shorter image side whose crop gives the input size
    (EfficientNet: 224 / (224 / 256) = 256)."""
    side = max(pre.pre_crop_size)
    if pre.crop_fraction is not None:
        side = math.ceil(max(pre.size) / pre.crop_fraction)
    return side


def _check_jpeg_data(fp: BinaryIO, name: str) -> None:
    """Refuse (ImageError, "truncated") a Huffman-coded JPEG with fewer entropy-coded bits than it has 8x8 blocks in
    its smallest component: every block codes at least its DC difference, one bit or more."""
    fp.seek(0)
    data = fp.getbuffer() if isinstance(fp, io.BytesIO) else fp.read()
    try:
        info = jpeg_data_check(data)
    finally:
        del data  # a BytesIO buffer view must go before the stream is read again or closed
        fp.seek(0)
    if info is None:
        return
    width, height, blocks, arithmetic, entropy = info
    if not arithmetic and 8 * entropy < blocks:
        raise ImageError(
            name,
            f"truncated image: the JPEG header claims {width}x{height} pixels ({blocks:,} 8x8 blocks) but the file "
            f"holds {entropy:,} bytes of image data, fewer than one bit per block",
        )


def _open_checked(fp: BinaryIO, name: str, prefix: bytes, allowed: tuple[str, ...], max_pixels: int) -> Image.Image:
    try:
        img = Image.open(fp, formats=_pillow_ids(allowed))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # the warning: under "error" filters
        m = re.search(r"\((\d+) pixels\)", str(e))
        factor = 2 if isinstance(e, Image.DecompressionBombError) else 1
        pillow_limit = factor * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else max_pixels
        limit = min(max_pixels, pillow_limit)
        got = f"{_mpx(int(m.group(1)))} Mpx" if m else "the image"
        raise ImageError(name, f"image too large: {got} exceeds the {_mpx(limit)} Mpx limit") from e
    except UnidentifiedImageError as e:
        fmt = _sniff_format(prefix)
        if fmt is not None and fmt not in _pillow_ids(allowed) and not (fmt == "MPO" and "JPEG" in allowed):
            raise ImageError(name, f"format {fmt!r} is not allowed (allowed: {', '.join(allowed)})") from e
        if fmt is not None:
            raise ImageError(name, f"truncated or corrupt {fmt} file (could not read its header)") from e
        raise ImageError(name, "not an image (could not identify format)") from e
    except _DECODE_ERRORS as e:
        what = f"{_sniff_format(prefix) or 'image'} file"
        raise ImageError(name, f"truncated or corrupt {what} (could not read its header: {e})") from e
    w, h = img.size
    if w <= 0 or h <= 0:
        raise ImageError(name, f"image has no pixels ({w}x{h})")
    if w * h > max_pixels:
        raise ImageError(name, f"image too large: {w}x{h} = {_mpx(w * h)} Mpx exceeds the {_mpx(max_pixels)} Mpx limit")
    return img


# -- arrays ------------------------------------------------------------------------------------------
def to_array(image: ImageSource, *, color: bool, **load_kw: object) -> np.ndarray:
    """Any accepted image input as float32 (H, W, C) pixel values in 0..255, C = 3 (RGB) or 1.

    `image`: a path / bytes / file (decoded with `load_image(**load_kw)`), a PIL image (any mode), or an
    array (H, W), (H, W, 1) or (H, W, 3) in RGB order: uint8 arrays are 0..255, float arrays are 0..1 as
    `caffe.io.load_image` returns them (multiplied by 255 here). Grayscale uses PIL's "L" conversion
    (ITU-R 601-2 luma, L = (299 R + 587 G + 114 B) / 1000, rounded); gray inputs are replicated for color.
    """
    if isinstance(image, np.ndarray):
        a = image
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[:, :, 0]
        if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)):
            raise ValueError(f"expected an image array (H, W), (H, W, 1) or (H, W, 3), got shape {image.shape}")
        a = a.astype(np.float32) * (255.0 if np.issubdtype(a.dtype, np.floating) else 1.0)
        if color and a.ndim == 2:
            return np.repeat(a[:, :, None], 3, axis=2)
        if not color and a.ndim == 3:
            u8 = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "RGB").convert("L")
            return np.asarray(u8, dtype=np.float32)[:, :, None]
        return a if a.ndim == 3 else a[:, :, None]
    a = np.asarray(_to_pil(image, color, **load_kw), dtype=np.float32)
    return a if a.ndim == 3 else a[:, :, None]


def _to_pil(image: ImageSource, color: bool, **load_kw: object) -> Image.Image:
    img = image if isinstance(image, Image.Image) else load_image(image, **load_kw)  # type: ignore[arg-type]
    return normalize_mode(img).convert("RGB" if color else "L")


def _resize_hwc(a: np.ndarray, hw: tuple[int, int], resample: int) -> np.ndarray:
    """float32 (H, W, C) -> (h, w, C), each channel resized as a PIL "F" image (no rounding)."""
    if a.shape[:2] == tuple(hw):
        return a
    h, w = hw
    chans = [
        np.asarray(Image.fromarray(np.ascontiguousarray(a[:, :, c])).resize((w, h), resample))
        for c in range(a.shape[2])
    ]
    return np.stack(chans, axis=2).astype(np.float32, copy=False)


def _resized_array(image: ImageSource, color: bool, hw: tuple[int, int], resample: int) -> np.ndarray:
    """`to_array` then `_resize_hwc`, without a full-size float copy for PIL/file inputs: each 8-bit band is
    converted to "F" and resized on its own (same numbers: 8-bit -> float is exact)."""
    if isinstance(image, np.ndarray):
        return _resize_hwc(to_array(image, color=color), hw, resample)
    img = _to_pil(image, color)
    if img.size == (hw[1], hw[0]):
        a = np.asarray(img, dtype=np.float32)
        return a if a.ndim == 3 else a[:, :, None]
    bands = [np.asarray(band.convert("F").resize((hw[1], hw[0]), resample)) for band in img.split()]
    return np.stack(bands, axis=2)


def _center_square(height: int, width: int, fraction: float) -> tuple[int, int, int]:
    """(y0, x0, side) of the TF evaluation crop: a centred square of int(fraction * min(H, W)) pixels."""
    side = max(1, int(fraction * min(height, width)))
    return (height - side + 1) // 2, (width - side + 1) // 2, side


def _fraction_crop_array(image: ImageSource, color: bool, hw: tuple[int, int], fraction: float, resample: int):
    """The centred square crop (`_center_square`) resized to hw: (h, w, C) float32 0..255. The crop is taken on the
    decoded 8-bit image (Pillow's resize `box`), each band resized as "F" (no rounding after decoding)."""
    if isinstance(image, np.ndarray):
        a = to_array(image, color=color)
        y0, x0, side = _center_square(a.shape[0], a.shape[1], fraction)
        return _resize_hwc(np.ascontiguousarray(a[y0 : y0 + side, x0 : x0 + side]), hw, resample)
    img = _to_pil(image, color)
    y0, x0, side = _center_square(img.height, img.width, fraction)
    box = (x0, y0, x0 + side, y0 + side)
    bands = [np.asarray(band.convert("F").resize((hw[1], hw[0]), resample, box=box)) for band in img.split()]
    return np.stack(bands, axis=2)


def _load_mean_file(path: str) -> np.ndarray:
    if path.lower().endswith(".npy"):
        return np.load(path, allow_pickle=False)
    from net.caffemodel import load_binaryproto  # lazy: only mean files need the protobuf reader

    return load_binaryproto(path)


# -- Preprocess --------------------------------------------------------------------------------------
MeanSpec = Union[float, tuple[float, ...], str, "os.PathLike[str]", np.ndarray, None]


@dataclass(frozen=True, eq=False)
class Preprocess:
    """Caffe-style preprocessing for one net input; `pre(image)` -> float32 (C, H, W).

    size          net input (H, W), e.g. (227, 227)
    resize        (Hr, Wr) to resize to before the centre crop, e.g. (256, 256); None -> straight to `size`
    color         True -> 3 channels (BGR when channel_swap); False -> 1 channel grayscale
    raw_scale     pixel range: 255.0 -> values 0..255 (Caffe), 1.0 -> 0..1
    mean          None, per-channel values, a (C, h, w) mean image, or a .binaryproto / .npy path (module doc)
    input_scale   multiplied after mean subtraction (LeNet: 1/256 = 0.00390625)
    channel_swap  RGB -> BGR for color input (ignored for 1 channel)
    resample      PIL filter for resizing, bilinear by default (antialiased when shrinking; module doc)
    invert        v -> 255 - v before scaling (dark-on-light photos for MNIST-trained LeNet)
    auto_invert   invert only when the border ring is bright (mean > 127.5); exclusive with `invert`
    crop_fraction TF-style evaluation crop instead of resize + crop: a centred square of
                  int(crop_fraction * min(H, W)) pixels of the decoded image (offset ((H - c + 1) // 2, ...)),
                  resized straight to `size` (EfficientNet: 224 / (224 + 32)); `resize` must then be None
    """

    size: tuple[int, int]
    resize: tuple[int, int] | None = None
    color: bool = True
    raw_scale: float = 255.0
    mean: MeanSpec = None
    input_scale: float = 1.0
    channel_swap: bool = True
    resample: int = Image.Resampling.BILINEAR
    invert: bool = False
    auto_invert: bool = False
    crop_fraction: float | None = None
    _cache: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        def hw(v: object, what: str) -> tuple[int, int]:
            t = tuple(int(x) for x in v)  # type: ignore[union-attr]
            if len(t) != 2 or min(t) < 1:
                raise ValueError(f"Preprocess: {what} must be (H, W) with H, W >= 1, got {v!r}")
            return t  # type: ignore[return-value]

        set_ = object.__setattr__
        set_(self, "size", hw(self.size, "size"))
        if self.resize is not None:
            set_(self, "resize", hw(self.resize, "resize"))
            if self.resize[0] < self.size[0] or self.resize[1] < self.size[1]:
                raise ValueError(f"Preprocess: resize {self.resize} is smaller than the crop size {self.size}")
        set_(self, "raw_scale", float(self.raw_scale))
        set_(self, "input_scale", float(self.input_scale))
        if self.crop_fraction is not None:
            set_(self, "crop_fraction", float(self.crop_fraction))
            if not 0.0 < self.crop_fraction <= 1.0:
                raise ValueError(f"Preprocess: crop_fraction must be in (0, 1], got {self.crop_fraction}")
            if self.resize is not None:
                raise ValueError("Preprocess: give either crop_fraction or resize, not both")
        if self.invert and self.auto_invert:
            raise ValueError("Preprocess: set either invert=True or auto_invert=True, not both")
        m = self.mean
        if isinstance(m, (int, float, np.floating, np.integer)) and not isinstance(m, bool):
            m = (float(m),) * self.channels
        elif isinstance(m, (list, tuple)) or (isinstance(m, np.ndarray) and m.ndim <= 1):
            m = tuple(float(x) for x in np.asarray(m, dtype=np.float64).ravel())
        elif isinstance(m, os.PathLike):
            m = os.fspath(m)
        elif isinstance(m, np.ndarray):
            m = np.array(m, dtype=np.float32)
            m.setflags(write=False)
        if isinstance(m, tuple) and len(m) != self.channels:
            raise ValueError(f"Preprocess: mean has {len(m)} values, expected {self.channels} (one per channel)")
        if isinstance(m, np.ndarray):
            self._check_mean_image(m, "mean")
        set_(self, "mean", m)

    # value semantics despite a possible ndarray mean
    def _key(self) -> tuple:
        m = self.mean
        mk = (m.shape, m.tobytes()) if isinstance(m, np.ndarray) else m
        return tuple(getattr(self, f.name) for f in dataclasses.fields(self) if f.compare and f.name != "mean") + (mk,)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Preprocess) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def replace(self, **kw: object) -> Preprocess:
        """A copy with some fields changed (dataclasses.replace; validated again)."""
        return dataclasses.replace(self, **kw)  # type: ignore[arg-type]

    @property
    def channels(self) -> int:
        return 3 if self.color else 1

    @property
    def pre_crop_size(self) -> tuple[int, int]:
        """(Hr, Wr): the size the image is resized to before the centre crop."""
        return self.resize if self.resize is not None else self.size

    @property
    def crop_offset(self) -> tuple[int, int]:
        """(y0, x0) of the centre crop, as Caffe's TEST-phase data layer: ((Hr - H) // 2, (Wr - W) // 2)."""
        (hr, wr), (h, w) = self.pre_crop_size, self.size
        return (hr - h) // 2, (wr - w) // 2

    @property
    def output_shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.size)

    def _check_mean_image(self, m: np.ndarray, src: str) -> np.ndarray:
        if m.ndim == 4 and m.shape[0] == 1:
            m = m[0]
        if m.ndim != 3 or m.shape[0] != self.channels:
            raise ValueError(
                f"Preprocess: mean image from {src} has shape {m.shape}, expected "
                f"({self.channels}, H, W) or (1, {self.channels}, H, W)"
            )
        return m

    def mean_array(self) -> np.ndarray | None:
        """The mean as it is subtracted: float32 (C, 1, 1) per-channel or (C, H, W) image; None for no mean.
        Mean files are read on first use and cached."""
        m = self.mean
        if m is None:
            return None
        if isinstance(m, tuple):
            return np.asarray(m, dtype=np.float32).reshape(-1, 1, 1)
        if "mean" not in self._cache:
            src = m if isinstance(m, str) else "array"
            arr = self._check_mean_image(np.asarray(_load_mean_file(m) if isinstance(m, str) else m), src)
            arr = arr.astype(np.float32)
            (hr, wr), (h, w) = self.pre_crop_size, self.size
            if arr.shape[1:] != (h, w):
                if arr.shape[1:] != (hr, wr):
                    arr = _resize_hwc(arr.transpose(1, 2, 0), (hr, wr), self.resample).transpose(2, 0, 1)
                y0, x0 = self.crop_offset
                arr = arr[:, y0 : y0 + h, x0 : x0 + w]
            self._cache["mean"] = np.ascontiguousarray(arr)
        return self._cache["mean"]

    def __call__(self, image: ImageSource) -> np.ndarray:
        """Preprocess one image (path, bytes, file, PIL image or (H, W[, C]) RGB array) -> float32 (C, H, W)."""
        if self.crop_fraction is not None:
            a = _fraction_crop_array(image, self.color, self.size, self.crop_fraction, self.resample)
        else:
            a = _resized_array(image, self.color, self.pre_crop_size, self.resample)  # (Hr, Wr, C) 0..255, RGB or L
            (h, w), (y0, x0) = self.size, self.crop_offset
            a = a[y0 : y0 + h, x0 : x0 + w]  # (H, W, C)
        if self.invert or (self.auto_invert and _border_mean(a) > 127.5):
            a = 255.0 - a
        x = np.ascontiguousarray(a.transpose(2, 0, 1), dtype=np.float32)  # (C, H, W)
        if self.raw_scale != 255.0:
            x *= np.float32(self.raw_scale / 255.0)
        if self.color and self.channel_swap:
            x = x[::-1].copy()  # RGB -> BGR
        mean = self.mean_array()
        if mean is not None:
            x -= mean
        if self.input_scale != 1.0:
            x *= np.float32(self.input_scale)
        return x

    def batch(self, images: Iterable[ImageSource]) -> np.ndarray:
        """Preprocess several images -> float32 (N, C, H, W); N = 0 gives shape (0, C, H, W)."""
        xs = [self(im) for im in images]
        return np.stack(xs) if xs else np.zeros((0, *self.output_shape), dtype=np.float32)


def _border_mean(a: np.ndarray) -> float:
    """Mean of the border ring (width max(1, min(H, W) // 10)) of an (H, W, C) array."""
    h, w = a.shape[:2]
    b = max(1, min(h, w) // 10)
    mask = np.ones((h, w), dtype=bool)
    mask[b : h - b, b : w - b] = False
    return float(a[mask].mean())


# -- presets -----------------------------------------------------------------------------------------
_LENET = Preprocess(
    size=(28, 28), resize=None, color=False, raw_scale=255, mean=None, input_scale=0.00390625, channel_swap=False
)
PRESETS: dict[str, Preprocess] = {
    # bvlc_reference_caffenet, centre-crop evaluation (caffe_facts §8.3/8.4): squash to 256x256, crop 227
    "caffenet": Preprocess(
        size=(227, 227),
        resize=(256, 256),
        color=True,
        raw_scale=255,
        mean=(104.00699, 116.66877, 122.67891),
        input_scale=1,
        channel_swap=True,
    ),
    # LeNet on MNIST: white digit on black, 28x28, scale 1/256 as lenet_train_test.prototxt
    "lenet": _LENET,
    "lenet-invert": _LENET.replace(invert=True),  # dark ink on light paper
    "lenet-auto": _LENET.replace(auto_invert=True),  # invert when the border is bright
    # EfficientNet-Lite (TF reference eval): RGB, centred square crop of 224/256 of the shorter side, bicubic to
    # 224x224, (v - 127) / 128
    "efficientnet": Preprocess(
        size=(224, 224),
        color=True,
        raw_scale=255,
        mean=(127.0, 127.0, 127.0),
        input_scale=1.0 / 128.0,
        channel_swap=False,
        resample=Image.Resampling.BICUBIC,
        crop_fraction=224.0 / 256.0,
    ),
    # The 224x224 Caffe zoo classifiers (bvlc_googlenet, VGG-16, ResNet-50): BGR 0..255 minus the BVLC mean pixel,
    # squash to 256x256, centre crop 224 (VGG's readme subtracts 103.939/116.779/123.68 and ResNet-50 a mean image,
    # ResNet_mean.binaryproto: both approximated by this one mean pixel)
    "caffe-224": Preprocess(
        size=(224, 224),
        resize=(256, 256),
        color=True,
        raw_scale=255,
        mean=(104.0, 117.0, 123.0),
        input_scale=1,
        channel_swap=True,
    ),
    # shicai's MobileNet v1/v2 Caffe ports (their deploy files' transform_param): BGR minus 103.94/116.78/123.68,
    # times 0.017, centre crop 224 of 256
    "mobilenet-caffe": Preprocess(
        size=(224, 224),
        resize=(256, 256),
        color=True,
        raw_scale=255,
        mean=(103.94, 116.78, 123.68),
        input_scale=0.017,
        channel_swap=True,
    ),
}


def preset(name: str) -> Preprocess:
    """The named preset (see PRESETS); `.replace(...)` it to adjust."""
    try:
        return PRESETS[name.lower()]
    except KeyError:
        raise ValueError(f"unknown preprocessing preset {name!r}; known presets: {', '.join(PRESETS)}") from None
