"""Whatever the caller holds -> the encoded bytes that travel to the server.

Files, bytes and downloads travel as they are: the server must see the very compression it scores, and
it reads every accepted format itself (contract.ACCEPTED_FORMATS: HEIC and AVIF included).
Pixels (numpy arrays, PIL images, video frames) travel as PNG, which is lossless: the client
never adds compression artefacts of its own to what it measures.
"""

from __future__ import annotations

import base64
import errno
import importlib.metadata
import io
import os
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Union

import numpy as np

from iqa_client.contract import MAX_IMAGE_BYTES
from iqa_client.errors import BadImageError

# Any: PIL.Image.Image; str: a path or an http(s) URL; BinaryIO: an open binary file (sys.stdin.buffer)
ImageLike = Union[str, os.PathLike, bytes, bytearray, memoryview, np.ndarray, BinaryIO, Any]

URL_SCHEMES = ("http://", "https://")
# A redirect chain longer than this is a loop or a trap, not an image host (browsers stop near 20;
# image CDNs use one or two).
MAX_REDIRECTS = 5
DEFAULT_FETCH_TIMEOUT_S = 30.0


def client_version() -> str:
    """The installed iqa-client's version ("unknown" when run from a checkout without installing it)."""
    try:
        return importlib.metadata.version("iqa-client")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def is_url(image: object) -> bool:
    return isinstance(image, str) and image[:8].lower().startswith(URL_SCHEMES)


def to_bytes(image: ImageLike, *, timeout: float = DEFAULT_FETCH_TIMEOUT_S) -> bytes:
    """Encoded image bytes for one input: a path, an http(s) URL, bytes, an open binary file, a PIL image
    or an HxWx3 uint8 RGB array.

    A URL is downloaded within `timeout` seconds (fetch()). Raises BadImageError when the input cannot be
    read (a missing file, a folder, a URL that fails or exceeds MAX_IMAGE_BYTES), ValueError for an array
    that is not an image, TypeError for an object of another kind.
    """
    if isinstance(image, (bytes, bytearray, memoryview)):
        return bytes(image)
    if is_url(image):
        return fetch(image, timeout=timeout)
    if isinstance(image, (str, os.PathLike)):
        return _read_file(image)
    if isinstance(image, np.ndarray):
        return png_from_array(image)
    if hasattr(image, "mode") and hasattr(image, "save"):  # PIL.Image.Image, without importing Pillow
        return png_from_pil(image)
    if hasattr(image, "read"):
        return _read_stream(image)
    raise TypeError(f"cannot score a {type(image).__name__}: pass a path, an http(s) URL, bytes, an open binary "
                    "file, a PIL image or an HxWx3 uint8 array")


def _read_file(path: str | os.PathLike) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        # A string that names no file may be the picture itself written as text (a data: URL, base64).
        hint = _text_encoding_hint(path) if isinstance(path, str) else None
        raise BadImageError(hint or "no such file", source=describe(path)) from None
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG and isinstance(path, str) and (hint := _text_encoding_hint(path)):
            raise BadImageError(hint, source=describe(path)) from None
        if isinstance(err, IsADirectoryError):
            raise BadImageError("a folder, not an image file", source=os.fspath(path)) from None
        raise BadImageError(f"cannot read it: {err.strerror or err}", source=describe(path)) from None


def _read_stream(stream: BinaryIO) -> bytes:
    # One byte past the limit is enough to know the server would refuse it; a pipe may never end.
    data = stream.read(MAX_IMAGE_BYTES + 1)
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError(f"{describe(stream)} is open in text mode: open it in binary mode ('rb', sys.stdin.buffer)")
    if len(data) > MAX_IMAGE_BYTES:
        raise BadImageError(f"more than the server's limit of {MAX_IMAGE_BYTES} bytes", source=describe(stream))
    return bytes(data)


_session = None
_session_lock = threading.Lock()


def _http():
    """One httpx.Client for every download (thread-safe; keeps connections to an image host open)."""
    global _session
    with _session_lock:
        if _session is None:
            import httpx  # a core dependency, imported only by the callers that download

            _session = httpx.Client(follow_redirects=True, max_redirects=MAX_REDIRECTS,
                                    headers={"User-Agent": f"iqa-client/{client_version()} httpx/{httpx.__version__}"})
        return _session


def fetch(url: str, *, timeout: float = DEFAULT_FETCH_TIMEOUT_S, max_bytes: int = MAX_IMAGE_BYTES) -> bytes:
    """Download an image over http(s) with httpx: at most MAX_REDIRECTS redirects, `timeout` seconds in all,
    at most `max_bytes` (the server's encoded-size limit, checked on Content-Length and while reading).

    Raises BadImageError naming what went wrong (HTTP status, timeout, size, redirects, connection).
    """
    import httpx

    deadline = time.monotonic() + timeout
    try:
        with _http().stream("GET", url, timeout=timeout) as response:
            if response.status_code >= 400:
                raise BadImageError(f"cannot download it: HTTP {response.status_code} {response.reason_phrase}",
                                    source=url)
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > max_bytes:
                raise BadImageError(f"cannot download it: {declared} bytes, more than the server's limit of "
                                    f"{max_bytes} bytes", source=url)
            chunks, size = [], 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise BadImageError(f"cannot download it: more than the server's limit of {max_bytes} bytes",
                                        source=url)
                if time.monotonic() > deadline:  # a server that drips bytes never trips a read timeout
                    raise httpx.ReadTimeout("download too slow")
                chunks.append(chunk)
    except httpx.TooManyRedirects:
        raise BadImageError(f"cannot download it: more than {MAX_REDIRECTS} redirects", source=url) from None
    except httpx.TimeoutException:
        raise BadImageError(f"cannot download it: not done within {timeout:g} s", source=url) from None
    except (httpx.HTTPError, httpx.InvalidURL) as err:
        raise BadImageError(f"cannot download it: {err or type(err).__name__}", source=url) from None
    return b"".join(chunks)


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
    if hasattr(image, "read"):  # a binary file object: its file name, "-" for standard input (as `iqa` writes it)
        name = getattr(image, "name", None)
        if name in ("<stdin>", 0):
            return "-"
        return os.fsdecode(name) if isinstance(name, (str, bytes, os.PathLike)) else "a stream"
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
