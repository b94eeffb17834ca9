"""Image file headers read without Pillow, in plain Python over the bytes.

    header_pixels(data)        width * height as the header claims it, in constant time (PNG, GIF, BMP, WEBP at fixed
                               offsets; JPEG from at most 64 marker segments): the web app's priority for decodes
    jpeg_data_check(data)      (width, height, 8x8 blocks, arithmetic coding, entropy-coded bytes) of a JPEG: how
                               `net.preprocess.load_image` refuses a JPEG whose header claims more pixels than its data
                               could hold (a Huffman code is at least one bit per block)

Neither is a validity check of its own: they read what a header claims, and anything they do not recognise gives None
(left to the decoder). Both are O(1) or O(markers) Python plus one C-speed regex scan per JPEG scan.
"""

from __future__ import annotations

import re
import struct

__all__ = ["header_pixels", "jpeg_data_check"]

# JPEG markers (ITU T.81 table B.1): start-of-frame codes, those of them coded arithmetically, restart markers.
_SOF = frozenset({0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_SOF_ARITHMETIC = frozenset({0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_SCAN_END = re.compile(rb"\xff[^\x00\xd0-\xd7]")  # in entropy-coded data: FF 00 is a stuffed byte, FF D0-D7 a restart


def jpeg_data_check(data: bytes | memoryview) -> tuple[int, int, int, bool, int] | None:
    """Walk a JPEG's marker segments: (width, height, 8x8 blocks of its smallest component, arithmetic coding, bytes
    of entropy-coded data seen). The walk stops at EOI, or as soon as the scans hold one bit per block (all a
    Huffman-coded image needs; most files pass within their first scan). None when there is no frame header or the
    markers are malformed (left to the decoder to report)."""
    n, pos = len(data), 2  # after SOI
    frame: tuple[int, int, int, bool] | None = None
    entropy = 0
    while pos + 1 < n:
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # EOI
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # no length
            pos += 2
            continue
        if pos + 4 > n:
            break
        length = (data[pos + 2] << 8) | data[pos + 3]
        if marker in _SOF and frame is None and length >= 8 and pos + 2 + length <= n:
            frame = _jpeg_frame(bytes(data[pos + 4 : pos + 2 + length]), marker)
        pos += 2 + length
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the next marker
            m = _SCAN_END.search(data, pos)
            end = m.start() if m else n
            entropy += max(0, end - pos)
            pos = end
            if frame is not None and 8 * entropy >= frame[2]:
                break
    return None if frame is None else (*frame, entropy)


def _jpeg_frame(seg: bytes, marker: int) -> tuple[int, int, int, bool]:
    """A start-of-frame segment (after its length) -> (width, height, blocks of the smallest component, arithmetic)."""
    height, width, count = (seg[1] << 8) | seg[2], (seg[3] << 8) | seg[4], seg[5]
    sampling = [(seg[7 + 3 * i] >> 4, seg[7 + 3 * i] & 15) for i in range(count) if 8 + 3 * i <= len(seg)]
    hmax, vmax = max((h for h, _ in sampling), default=1) or 1, max((v for _, v in sampling), default=1) or 1
    blocks = min(
        (_ceil_div(_ceil_div(width * h, hmax), 8) * _ceil_div(_ceil_div(height * v, vmax), 8) for h, v in sampling),
        default=0,
    )
    return width, height, blocks, marker in _SOF_ARITHMETIC


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def header_pixels(data: bytes) -> int | None:
    """width * height as an encoded image's header claims it, read at fixed offsets (PNG, GIF, BMP, WEBP) or from at
    most 64 JPEG marker segments, in constant time and without Pillow: a cost estimate for scheduling decodes, not a
    check (load_image checks). None when the format or its header is not recognised."""
    size = None
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR" and len(data) >= 24:
        size = struct.unpack(">II", data[16:24])
    elif data[:4] in (b"GIF8",) and len(data) >= 10:
        size = struct.unpack("<HH", data[6:10])
    elif data[:2] == b"BM" and len(data) >= 26:
        if struct.unpack("<I", data[14:18])[0] == 12:
            size = struct.unpack("<HH", data[18:22])
        else:
            w, h = struct.unpack("<ii", data[18:26])
            size = (abs(w), abs(h))
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP" and len(data) >= 30:
        chunk = data[12:16]
        if chunk == b"VP8X":
            size = (1 + int.from_bytes(data[24:27], "little"), 1 + int.from_bytes(data[27:30], "little"))
        elif chunk == b"VP8 ":
            w, h = struct.unpack("<HH", data[26:30])
            size = (w & 0x3FFF, h & 0x3FFF)
        elif chunk == b"VP8L":
            bits = int.from_bytes(data[21:25], "little")
            size = (1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF))
    elif data[:2] == b"\xff\xd8":
        pos = 2
        for _ in range(64):
            if pos + 9 > len(data) or data[pos] != 0xFF:
                break
            marker = data[pos + 1]
            if marker in _SOF:
                h, w = struct.unpack(">HH", data[pos + 5 : pos + 9])
                size = (w, h)
                break
            pos += 1 if marker == 0xFF else 2 + struct.unpack(">H", data[pos + 2 : pos + 4])[0]
    return size[0] * size[1] if size else None
