"""Awkward inputs a public image endpoint meets, made from a real photo, and what each must get.

Each case maps to None (it must be scored) or to a phrase its error message must contain.
"""

from __future__ import annotations

import functools
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

PHOTO = Path(__file__).parent / "data" / "sheep.jpg"


@functools.cache
def photo() -> Image.Image:
    return Image.open(PHOTO).convert("RGB")


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


@functools.cache
def decompression_bomb(side: int = 40000) -> bytes:
    """A complete, valid greyscale PNG of side x side black pixels: ~1.5 MB that decodes to 1.6 GB."""
    compressor = zlib.compressobj(9)
    rows = (b"\x00" * (side + 1)) * 1000  # filter byte + one byte per pixel, 1000 rows at a time
    body = b"".join(compressor.compress(rows) for _ in range(side // 1000)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def png_with_alpha() -> bytes:
    rgba = photo().convert("RGBA")
    alpha = np.tile(np.linspace(0, 255, rgba.width, dtype=np.uint8), (rgba.height, 1))
    rgba.putalpha(Image.fromarray(alpha))
    return encode(rgba, "PNG")


def png_16bit() -> bytes:
    grey16 = (np.asarray(photo().convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    return encode(Image.fromarray(grey16), "PNG")


def animated_gif() -> bytes:
    frames = [photo().convert("P"), photo().rotate(180).convert("P"), photo().convert("L").convert("P")]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def exif_rotated_png() -> tuple[bytes, bytes]:
    """(upright PNG, the same picture stored rotated with an EXIF orientation tag that undoes it)."""
    upright = photo()
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display": the stored pixels are the upright ones turned 90 CCW
    stored = upright.transpose(Image.Transpose.ROTATE_90)
    return encode(upright, "PNG"), encode(stored, "PNG", exif=exif.tobytes())


# name -> (bytes factory, None to be scored | phrase the error must contain)
CASES = {
    "zero_bytes": (lambda: b"", "empty input"),
    "text_file": (lambda: b"name,score\nsheep,0.5\n" * 20, "not a recognised image"),
    "truncated_jpeg": (lambda: PHOTO.read_bytes()[: PHOTO.stat().st_size // 2], "truncated"),
    "png_1x1": (lambda: encode(Image.new("RGB", (1, 1), (200, 30, 30)), "PNG"), "at least 32 pixels"),
    "decompression_bomb_40000x40000": (decompression_bomb, "decompression bomb"),
    "png_with_alpha": (png_with_alpha, None),
    "png_16bit_grey": (png_16bit, None),
    "cmyk_jpeg": (lambda: encode(photo().convert("CMYK"), "JPEG", quality=95), None),
    "greyscale_jpeg": (lambda: encode(photo().convert("L"), "JPEG", quality=95), None),
    "palette_gif": (lambda: encode(photo().convert("P"), "GIF"), None),
    "animated_gif": (animated_gif, None),
    "webp": (lambda: encode(photo(), "WEBP", quality=90), None),
    "bmp": (lambda: encode(photo(), "BMP"), None),
    "tiff": (lambda: encode(photo(), "TIFF"), None),
    "strip_20000x16": (lambda: encode(Image.new("RGB", (20000, 16), (90, 120, 60)), "PNG"), "at least 32 pixels"),
    "small_40x40_padded": (lambda: encode(photo().crop((0, 0, 40, 40)), "PNG"), None),
}
