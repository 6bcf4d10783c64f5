"""Whatever the caller holds -> the encoded bytes that travel to the server.

Files and bytes travel as they are: the server must see the very compression it scores, and it
reads every accepted format itself (contract.ACCEPTED_FORMATS: HEIC and AVIF included).
Pixels (numpy arrays, PIL images, video frames) travel as PNG, which is lossless: the client
never adds compression artefacts of its own to what it measures.
"""

from __future__ import annotations

import base64
import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any, Union

import numpy as np

ImageLike = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, Any]  # Any: PIL.Image.Image


def to_bytes(image: ImageLike) -> bytes:
    """Encoded image bytes for one input: a path, bytes, a PIL image or an HxWx3 uint8 RGB array."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if isinstance(image, (str, os.PathLike)):
        try:
            return Path(image).read_bytes()
        except OSError:
            hint = _text_encoding_hint(image) if isinstance(image, str) else None
            if hint:
                raise ValueError(hint) from None
            raise
    if isinstance(image, np.ndarray):
        return png_from_array(image)
    if hasattr(image, "mode") and hasattr(image, "save"):  # PIL.Image.Image, without importing Pillow
        return png_from_pil(image)
    raise TypeError(f"cannot score a {type(image).__name__}: pass a path, bytes, a PIL image or an HxWx3 uint8 array")


# How the accepted formats start (contract.ACCEPTED_FORMATS); HEIF and AVIF files open with an ISO
# base-media 'ftyp' box, its name at bytes 4-7.
_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"RIFF", b"BM", b"II*\x00", b"MM\x00*")


def _text_encoding_hint(text: str) -> str | None:
    """Why a string that names no file may be the picture itself, written as text (a data: URL, base64)."""
    stripped = text.strip()
    if stripped[:5].lower() == "data:":
        return ("a data: URL is the picture written as text, not a path: pass the bytes it encodes, "
                "base64.b64decode(url.split(',', 1)[1])")
    try:
        head = base64.b64decode("".join(stripped.split())[:32], validate=True)
    except ValueError:  # binascii.Error included
        return None
    if head.startswith(_SIGNATURES) or head[4:8] == b"ftyp":
        return "this is base64 text of an image, not a path: pass the bytes it encodes, base64.b64decode(text)"
    return None


def describe(image: ImageLike) -> str:
    """A short name for an input, for error messages."""
    if isinstance(image, (str, os.PathLike)):
        name = str(image)  # a picture passed as text (a data: URL) would fill the message
        return name if len(name) <= 200 else f"{name[:60]}... ({len(name)} characters)"
    if isinstance(image, np.ndarray):
        return f"array {'x'.join(map(str, image.shape))} {image.dtype}"
    if isinstance(image, (bytes, bytearray, memoryview)):
        return f"{len(image)} bytes"
    return type(image).__name__


def png_from_array(pixels: np.ndarray, level: int = 1) -> bytes:
    """RGB uint8 [H, W, 3] (or grey [H, W]) -> PNG bytes, with zlib alone (no Pillow needed).

    Level 1 compresses less than Pillow's default but several times faster; PNG is lossless
    at every level, so only the size on the wire changes.
    """
    if pixels.dtype != np.uint8:
        raise ValueError(f"pixels must be uint8, got {pixels.dtype}")
    if pixels.ndim == 2:
        colour_type, channels = 0, 1
    elif pixels.ndim == 3 and pixels.shape[2] == 3:
        colour_type, channels = 2, 3
    else:
        raise ValueError(f"pixels must be HxWx3 RGB or HxW grey, got shape {pixels.shape}")
    height, width = pixels.shape[:2]
    if height == 0 or width == 0:
        raise ValueError(f"empty image: {width}x{height}")
    rows = np.ascontiguousarray(pixels).reshape(height, width * channels)
    raw = np.concatenate([np.zeros((height, 1), np.uint8), rows], axis=1)  # filter type 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw.tobytes(), level))
            + _chunk(b"IEND", b""))


# Modes a PNG holds as they are. The server maps them to RGB as it does any file (alpha over white,
# palette, grey, 16-bit), so a PIL image scores like the file it was opened from.
_PNG_MODES = {"1", "L", "LA", "P", "RGB", "RGBA", "I;16"}
_ORIENTATION = 0x0112  # EXIF tag


def png_from_pil(image) -> bytes:
    """A PIL image (e.g. opened from a HEIC with pillow-heif) -> PNG bytes, losslessly.

    Keeps its mode where PNG can (transparency included), else RGB or RGBA, and its EXIF orientation,
    which the server applies. Needs Pillow, which the caller has: it holds a PIL image.
    """
    from PIL import Image

    orientation = image.getexif().get(_ORIENTATION, 1)
    if image.mode not in _PNG_MODES:
        transparent = "A" in image.getbands() or "transparency" in image.info
        image = image.convert("RGBA" if transparent else "RGB")
    params = {}
    if orientation != 1:
        exif = Image.Exif()
        exif[_ORIENTATION] = orientation
        params["exif"] = exif.tobytes()
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1, **params)
    return buffer.getvalue()


def _chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
