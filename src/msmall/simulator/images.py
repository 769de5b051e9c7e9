"""Image inputs: decode a base64 data URL, check it is a real image, see its size and colour.

No Pillow: the signatures and headers of PNG, JPEG, GIF and WebP are enough to tell a real image
from garbage, and a small PNG decoder lets the simulator "see" the colour of a test image, so a
vision smoke test can ask "what colour is this square?" and get a checkable answer.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
import zlib
from dataclasses import dataclass

from msmall.models import MISTRAL_SMALL_3_1 as m

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# Named colours the simulator can "recognise"; the nearest one wins.
_COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 30),
    "blue": (30, 60, 220),
    "yellow": (235, 220, 40),
    "orange": (245, 140, 20),
    "purple": (130, 40, 160),
    "cyan": (30, 210, 220),
    "magenta": (220, 40, 200),
    "white": (250, 250, 250),
    "black": (5, 5, 5),
    "gray": (128, 128, 128),
}


class ImageError(ValueError):
    """The bytes are not an image the engine would accept."""


@dataclass(frozen=True)
class ImageInfo:
    format: str  # "png", "jpeg", "gif", "webp"
    width: int
    height: int
    colour: str | None = None  # the dominant named colour, when it could be decoded

    @property
    def tokens(self) -> int:
        return image_tokens(self.width, self.height)


def image_tokens(width: int, height: int) -> int:
    """Tokens Pixtral spends on one image: 28-px cells after fitting 1540 px, plus row breaks."""
    if width <= 0 or height <= 0:
        return 1
    scale = min(1.0, 1540 / max(width, height))
    cols = math.ceil(width * scale / 28)
    rows = math.ceil(height * scale / 28)
    return min(rows * cols + rows, m.max_tokens_per_image)


def decode_data_url(url: str) -> bytes:
    """The bytes of ``data:image/...;base64,...``; ImageError for anything else."""
    if not url.startswith("data:"):
        raise ImageError("only base64 data URLs are supported")
    header, sep, payload = url.partition(",")
    if not sep or ";base64" not in header:
        raise ImageError("the data URL is not base64-encoded")
    try:
        return base64.b64decode(payload.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"invalid base64 image data: {exc}") from exc


def inspect_image(data: bytes) -> ImageInfo:
    if data.startswith(PNG_SIGNATURE):
        return _inspect_png(data)
    if data.startswith(b"\xff\xd8\xff"):
        return _inspect_jpeg(data)
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        width, height = struct.unpack("<HH", data[6:10])
        return ImageInfo("gif", width, height)
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ImageInfo("webp", *_webp_size(data))
    raise ImageError("not a PNG, JPEG, GIF or WebP image")


def solid_png(width: int, height: int, rgb: tuple[int, int, int]) -> bytes:
    """A valid PNG filled with one colour: a test image anyone can check the answer for."""
    row = b"\x00" + bytes(rgb) * width
    raw = row * height

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def png_data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


# PNG -----------------------------------------------------------------------------------------


def _png_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    chunks = []
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        body = data[pos + 8 : pos + 8 + length]
        if len(body) != length:
            raise ImageError("truncated PNG chunk")
        chunks.append((kind, body))
        pos += 12 + length
        if kind == b"IEND":
            break
    return chunks


def _inspect_png(data: bytes) -> ImageInfo:
    chunks = _png_chunks(data)
    if not chunks or chunks[0][0] != b"IHDR" or len(chunks[0][1]) != 13:
        raise ImageError("PNG without a valid IHDR chunk")
    width, height, depth, colour_type, _, _, interlace = struct.unpack(">IIBBBBB", chunks[0][1])
    if width == 0 or height == 0:
        raise ImageError("PNG with zero size")
    colour = None
    try:
        colour = _png_colour(chunks, width, height, depth, colour_type, interlace)
    except (zlib.error, IndexError, ValueError):
        # Real engines decode more PNG variants than this; an unknown colour is not an error.
        colour = None
    return ImageInfo("png", width, height, colour)


_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}


def _png_colour(
    chunks: list[tuple[bytes, bytes]],
    width: int,
    height: int,
    depth: int,
    colour_type: int,
    interlace: int,
) -> str | None:
    # Pure Python: beyond a megapixel the colour is not worth the CPU of a request.
    if depth != 8 or interlace != 0 or colour_type not in _CHANNELS or width * height > 1_000_000:
        return None
    channels = _CHANNELS[colour_type]
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    stride = width * channels
    palette = next((body for kind, body in chunks if kind == b"PLTE"), b"")
    previous = bytearray(stride)
    totals = [0, 0, 0]
    count = 0
    step = max(1, height // 64)  # a sample of rows is enough for a dominant colour
    pos = 0
    for y in range(height):
        kind = raw[pos]
        line = bytearray(raw[pos + 1 : pos + 1 + stride])
        pos += 1 + stride
        _unfilter(kind, line, previous, channels)
        previous = line
        if y % step:
            continue
        for x in range(0, stride, channels * max(1, width // 64)):
            pixel = line[x : x + channels]
            if colour_type == 3:
                r, g, b = palette[pixel[0] * 3 : pixel[0] * 3 + 3]
            elif channels <= 2:
                r = g = b = pixel[0]
            else:
                r, g, b = pixel[0], pixel[1], pixel[2]
            totals[0] += r
            totals[1] += g
            totals[2] += b
            count += 1
    if not count:
        return None
    mean = tuple(t / count for t in totals)
    return min(
        _COLOURS,
        key=lambda name: sum((a - b) ** 2 for a, b in zip(mean, _COLOURS[name], strict=True)),
    )


def _unfilter(kind: int, line: bytearray, previous: bytearray, bpp: int) -> None:
    if kind == 0:
        return
    for i in range(len(line)):
        left = line[i - bpp] if i >= bpp else 0
        up = previous[i]
        upper_left = previous[i - bpp] if i >= bpp else 0
        if kind == 1:
            line[i] = (line[i] + left) & 0xFF
        elif kind == 2:
            line[i] = (line[i] + up) & 0xFF
        elif kind == 3:
            line[i] = (line[i] + (left + up) // 2) & 0xFF
        elif kind == 4:
            p = left + up - upper_left
            pa, pb, pc = abs(p - left), abs(p - up), abs(p - upper_left)
            pred = left if pa <= pb and pa <= pc else up if pb <= pc else upper_left
            line[i] = (line[i] + pred) & 0xFF
        elif kind != 0:
            raise ValueError(f"bad PNG filter {kind}")


# JPEG / WebP ---------------------------------------------------------------------------------

_SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _inspect_jpeg(data: bytes) -> ImageInfo:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise ImageError("corrupt JPEG marker stream")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if marker in _SOF_MARKERS and pos + 9 <= len(data):
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            if width and height:
                return ImageInfo("jpeg", width, height)
            raise ImageError("JPEG with zero size")
        if marker == 0xD9:
            break
        pos += 2 + length
    raise ImageError("JPEG without a frame header")


def _webp_size(data: bytes) -> tuple[int, int]:
    kind = data[12:16]
    if kind == b"VP8X" and len(data) >= 30:
        width = 1 + int.from_bytes(data[24:27], "little")
        height = 1 + int.from_bytes(data[27:30], "little")
        return width, height
    if kind == b"VP8 " and len(data) >= 30:
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if kind == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    raise ImageError("WebP without a known image chunk")
