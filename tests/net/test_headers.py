"""net.headers: pixel counts read from every allowed format's header at fixed offsets, and the JPEG data walk on
honest files, a lying one, and malformed bytes."""

from __future__ import annotations

import io
import struct
import zlib

from PIL import Image

from net.headers import header_pixels, jpeg_data_check


def encode(img: Image.Image, fmt: str, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def png_header(width: int, height: int) -> bytes:
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))


def test_header_pixels_reads_every_format() -> None:
    for fmt, mode, kw in [("PNG", "RGB", {}), ("GIF", "P", {}), ("BMP", "RGB", {}), ("BMP", "1", {}),
                          ("WEBP", "RGB", {}), ("WEBP", "RGB", {"lossless": True}), ("WEBP", "RGBA", {}),
                          ("JPEG", "RGB", {}), ("JPEG", "L", {"progressive": True})]:  # fmt: skip
        assert header_pixels(encode(Image.new(mode, (123, 45)), fmt, **kw)) == 123 * 45, (fmt, mode, kw)
    assert header_pixels(png_header(6324, 6324)) == 6324 * 6324
    for junk in (b"", b"\x89PNG", b"\xff\xd8\xff", b"hello world" * 5):
        assert header_pixels(junk) is None


def test_jpeg_data_check_counts_blocks_and_data():
    """4:2:0 colour: the smallest component (chroma) of a 64x48 image has 4 x 3 blocks."""
    data = encode(Image.new("RGB", (64, 48), (1, 2, 3)), "JPEG")
    width, height, blocks, arithmetic, entropy = jpeg_data_check(data)
    assert (width, height, blocks, arithmetic) == (64, 48, 12, False) and entropy > 0
    lie = bytearray(data)
    struct.pack_into(">HH", lie, lie.find(b"\xff\xc0") + 5, 6000, 6000)
    assert jpeg_data_check(bytes(lie))[:3] == (6000, 6000, 375 * 375)
    assert jpeg_data_check(b"\xff\xd8junk") is None and jpeg_data_check(b"\xff\xd8") is None
