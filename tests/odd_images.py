"""Awkward inputs a public image endpoint meets, made from a real photo, and what each must get.

Each case maps to None (it must be scored) or to a phrase its error message must contain.
"""

from __future__ import annotations

import base64
import functools
import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

import iqa.preprocess  # noqa: F401  (registers pillow-heif's plugin, which encode(..., "HEIF") needs)

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


def heif_10bit(twelve: bool = False) -> bytes:
    """The photo as a 10-bit (or 12-bit) HEIC, as phones write HDR pictures: pillow-heif keeps 16-bit
    input at 10 bits unless told 12."""
    import pillow_heif

    wide = np.asarray(photo(), dtype=np.uint16) * 257
    heif = pillow_heif.from_bytes(mode="RGB;16", size=photo().size, data=wide.tobytes())
    buffer = io.BytesIO()
    heif.save(buffer, quality=90, save_to_12bit=twelve)
    return buffer.getvalue()


def avif_10bit() -> bytes:
    """The photo as a 10-bit AVIF (AV1 yuv420p10 by SVT-AV1 through PyAV: Pillow writes 8 bits only)."""
    import av

    even = np.asarray(photo())[: photo().height // 2 * 2, : photo().width // 2 * 2]
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="avif") as container:
        stream = container.add_stream("libsvtav1", rate=1)
        stream.width, stream.height, stream.pix_fmt = even.shape[1], even.shape[0], "yuv420p10le"
        for packet in stream.encode(av.VideoFrame.from_ndarray(even, format="rgb24")):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buffer.getvalue()


def heif_collection() -> tuple[bytes, Image.Image]:
    """(a HEIC holding two pictures whose primary one is the second, that primary picture)."""
    other = photo().rotate(180).resize((400, 240))
    return encode(other, "HEIF", quality=90, save_all=True, append_images=[photo()], primary_index=1), photo()


def declaring_size(data: bytes, width: int, height: int) -> bytes:
    """The same HEIF / AVIF file with its image's declared size (the `ispe` property) changed."""
    at = data.index(b"ispe")
    return data[: at + 8] + struct.pack(">II", width, height) + data[at + 16 :]


def even_photo() -> Image.Image:
    """The photo cropped to even sides: an odd side makes the encoder add a crop box whose size wins."""
    return photo().crop((0, 0, photo().width // 2 * 2, photo().height // 2 * 2))


def jpeg_xl_like() -> bytes:
    """The first bytes a JPEG XL file starts with (ISO/IEC 18181-2 container signature, then its ftyp box):
    no library at hand writes JPEG XL, and the service recognises it by this signature alone."""
    return b"\x00\x00\x00\x0cJXL \r\n\x87\n" + b"\x00\x00\x00\x14ftypjxl \x00\x00\x00\x00jxl " + bytes(200)


def float_grey(scale: float = 1.0, at_0_0: float | None = None) -> np.ndarray:
    """The photo in grey as float32 light levels, 0.0 black to `scale` white; one pixel set to `at_0_0`."""
    grey = np.asarray(photo().convert("L"), dtype=np.float32) / 255 * scale
    if at_0_0 is not None:
        grey[0, 0] = at_0_0
    return grey


def float_tiff(values: np.ndarray) -> bytes:
    """A 32-bit float grey TIFF (IEEE floating-point samples: Pillow mode "F"), as scientific and HDR tools write."""
    return encode(Image.fromarray(values.astype(np.float32), "F"), "TIFF")


def apng(default_image: bool) -> tuple[bytes, Image.Image]:
    """(an animated PNG of three frames, the first frame an APNG-aware viewer shows). With default_image, the
    file's default image (the photo) is not part of the animation, which starts with the photo turned."""
    turned = photo().rotate(180)
    data = encode(photo(), "PNG", save_all=True, append_images=[turned, photo().convert("L").convert("RGB")],
                  default_image=default_image, duration=100, loop=0)
    return data, turned if default_image else photo()


def jpeg_without_end_marker(progressive: bool = False, cut: int = 2) -> bytes:
    """The photo as a JPEG whose last `cut` bytes are missing: 2 is its end-of-image marker (EOI) alone."""
    return encode(photo(), "JPEG", quality=90, progressive=progressive)[:-cut]


def as_text(data: bytes, data_url: bool = False) -> bytes:
    """Image bytes written as base64 text, or as a data: URL, as JSON APIs and browsers hand them over."""
    text = base64.b64encode(data)
    return b"data:image/png;base64," + text if data_url else text


# name -> (bytes factory, None to be scored | phrase the error must contain)
_CASES = {
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
    # the formats phones and browsers send, with the same guards as the others
    "heic": (lambda: encode(photo(), "HEIF", quality=90), None),
    "avif": (lambda: encode(photo(), "AVIF", quality=90), None),
    "heic_10bit": (heif_10bit, None),
    "heic_12bit": (lambda: heif_10bit(twelve=True), None),
    "avif_10bit": (avif_10bit, None),
    "heic_with_alpha": (lambda: encode(Image.open(io.BytesIO(png_with_alpha())), "HEIF", quality=90), None),
    "avif_with_alpha": (lambda: encode(Image.open(io.BytesIO(png_with_alpha())), "AVIF", quality=90), None),
    "heic_collection": (lambda: heif_collection()[0], None),
    "heic_truncated": (lambda: encode(photo(), "HEIF", quality=90)[:3000], "truncated"),
    "avif_truncated": (lambda: encode(photo(), "AVIF", quality=90)[:3000], "truncated"),
    "heic_1x1": (lambda: encode(Image.new("RGB", (1, 1), (200, 30, 30)), "HEIF"), "at least 32 pixels"),
    "avif_20x400": (lambda: encode(photo().crop((0, 0, 20, 400)), "AVIF"), "at least 32 pixels"),
    "heic_declaring_10000x10000": (lambda: declaring_size(encode(even_photo(), "HEIF"), 10000, 10000),
                                   "decompression bomb guard"),
    "avif_declaring_10000x10000": (lambda: declaring_size(encode(even_photo(), "AVIF"), 10000, 10000),
                                   "decompression bomb guard"),
    # 32-bit float grey TIFF: 0.0 black, 1.0 white, clipped outside; NaN and infinities refused
    "float_tiff_0_to_1": (lambda: float_tiff(float_grey()), None),
    "float_tiff_one_pixel_at_1_02": (lambda: float_tiff(float_grey(at_0_0=1.02)), None),
    "float_tiff_0_to_4": (lambda: float_tiff(float_grey(scale=4.0)), None),
    "float_tiff_nan": (lambda: float_tiff(float_grey(at_0_0=float("nan"))), "NaN or infinite values in 1 pixel:"),
    "float_tiff_infinity": (lambda: float_tiff(float_grey(at_0_0=float("inf"))), "NaN or infinite"),
    # APNG: the first frame an APNG-aware viewer shows
    "apng_default_image_outside_the_animation": (lambda: apng(default_image=True)[0], None),
    "apng_default_image_in_the_animation": (lambda: apng(default_image=False)[0], None),
    # a JPEG missing only its end marker is whole; one cut inside its picture data is not
    "jpeg_without_end_marker": (jpeg_without_end_marker, None),
    "progressive_jpeg_without_end_marker": (lambda: jpeg_without_end_marker(progressive=True), None),
    "jpeg_cut_inside_its_last_scan": (lambda: jpeg_without_end_marker(cut=6), "truncated"),
    "progressive_jpeg_cut_inside_its_last_scan": (lambda: jpeg_without_end_marker(progressive=True, cut=6),
                                                  "truncated"),
    # an image sent as text gets told so
    "base64_text_of_a_png": (lambda: as_text(encode(photo(), "PNG")), "these bytes are base64 text of a PNG image"),
    "data_url_of_a_png": (lambda: as_text(encode(photo(), "PNG"), data_url=True), "these bytes are a data: URL"),
    # refused, and named
    "jpeg2000": (lambda: encode(photo(), "JPEG2000"), "JPEG 2000 is not accepted"),
    "jpeg2000_codestream": (lambda: encode(photo(), "JPEG2000", no_jp2=True), "JPEG 2000 is not accepted"),
    "jpeg_xl": (jpeg_xl_like, "JPEG XL is not accepted"),
}

# Each factory makes its bytes once per test session: the HEIF / AVIF encodes take ~4 s a pass on the
# 2-vCPU VM, and test_preprocess, test_map and test_batch_decode (twice) walk the whole matrix.
CASES = {name: (functools.cache(make), error) for name, (make, error) in _CASES.items()}
