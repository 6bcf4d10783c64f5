"""Stage 1 and 2 of the data path: encoded bytes -> RGB pixels -> fixed-shape patches.

Used by the `iqa_preprocess` Triton model, by the in-process reference scorer
the tests compare the server with, and by training/evaluation, so that all of
them see exactly the same pixels.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import logging
import re
import warnings
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

try:
    import pillow_heif
except ImportError:
    pillow_heif = None

from iqa import jpeg_regions
from iqa.borders import content_box
from iqa.contract import (
    ACCEPTED_FORMATS,
    CELLS_SHAPE,
    MAX_CELLS,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    MIN_IMAGE_SIDE,
    PATCH_GRID,
    PATCH_SHAPE,
    PATCH_SIZE,
)
from iqa.decode_budget import DECODE_BUDGET

# Pillow probes only the formats the service promises (ACCEPTED_FORMATS, DESIGN.md): rarely used,
# less hardened decoders stay away from network input. "JPEG" also opens the multi-picture (MPO)
# JPEGs many cameras write.
_ACCEPTED_NAMES = ", ".join("HEIF (HEIC)" if name == "HEIF" else name for name in ACCEPTED_FORMATS)

# Uploads the service refuses although people send them, known by their signature so that the refusal
# names them. Converting either to PNG keeps every artefact the scores measure. JPEG 2000: Pillow could
# decode it (OpenJPEG) at about the cost of the accepted formats (python -m loadtest.formats_bench),
# but no phone or browser sends it and OpenJPEG has the longest record of memory-safety flaws of the
# decoders Pillow bundles. JPEG XL: the pinned Pillow has no decoder, and no phone or browser default
# produces it.
REFUSED_SIGNATURES = (
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000"),  # a bare codestream (.j2k, .j2c)
    (b"\x00\x00\x00\x0cJXL \r\n\x87\n", "JPEG XL"),
    (b"\xff\x0a", "JPEG XL"),  # a bare codestream
)

# Pillow's own bomb guard, aligned with ours; we check the header size first
# anyway so that the message names our limit.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
Image.init()  # register every plugin now: open(formats=...) only finds loaded ones
# HEIC/HEIF from pillow-heif (Pillow decodes AVIF itself). It always converts 10/12-bit pictures to
# 8 bits and applies the container's rotation and mirroring (resetting the EXIF orientation, so it is
# not applied twice). Only the primary image is decoded: thumbnails, depth maps and auxiliary images
# are not even listed. The server's environments pin it (pyproject.toml, docker/Dockerfile); training
# imports this module for sample_patches alone, also on the GPU machine, which does without it.
if pillow_heif is None:
    logging.getLogger(__name__).warning("pillow-heif is not installed: HEIC/HEIF images are refused here")
else:
    pillow_heif.register_heif_opener(thumbnails=False, depth_images=False, aux_images=False)
# What Image.open may try: the accepted formats this environment can decode.
_DECODERS = tuple(name for name in ACCEPTED_FORMATS if name in Image.OPEN)


class ImageError(ValueError):
    """The bytes are not an image this service can score; the message says why."""


def decode(data: bytes) -> np.ndarray:
    """Encoded image bytes -> upright RGB pixels, uint8 [H, W, 3].

    Accepts ACCEPTED_FORMATS. Applies EXIF orientation (HEIF: the container's
    rotation and mirroring), takes the first displayed frame of animations (an APNG's
    first animation frame where its default image is not part of the animation) and the
    primary image of a HEIF collection, composites transparency over white and maps
    palette, grey, 16-bit, 10/12-bit (HEIF, AVIF), 32-bit float (0.0 black, 1.0 white,
    clipped) and CMYK images to 8-bit RGB. A JPEG missing only its end-of-image marker
    decodes as the complete file would (see _jpeg_without_end_marker).
    Raises ImageError with a message naming the problem.
    """
    if len(data) == 0:
        raise ImageError("empty input: zero bytes")
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(f"image is {len(data)} bytes, more than the limit of {MAX_IMAGE_BYTES} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=_DECODERS)
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageError(
                    f"image is {width}x{height} = {width * height} pixels, more than the limit "
                    f"of {MAX_IMAGE_PIXELS} (decompression bomb guard)"
                )
            # Opening stands on the picture a viewer shows: the first frame of animations and page
            # sets, the primary image of a HEIF collection (not always its first, so no seek(0)).
            # An APNG may say that its default image is not part of the animation (no fcTL chunk before
            # its IDAT): APNG-aware viewers never show it and start at the first animation frame
            # (Pillow's frame 1, composed on the canvas), which costs the default image's pixels too.
            skip_default = image.format == "PNG" and bool(image.info.get("default_image")) and image.n_frames > 1
            with DECODE_BUDGET.hold(width * height * (2 if skip_default else 1)):  # waits while others hold many
                if skip_default:
                    image.seek(1)
                image.load()
                ImageOps.exif_transpose(image, in_place=True)  # not a copy of the whole picture
                rgb = _to_rgb(image)
                image.close()  # Pillow's pixels go before the budget is released; the array stays
            return rgb
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(_unidentified(data)) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        # Pillow's own guard fired before ours could read the size (it refuses more than twice its
        # limit at open): name our limit, not Pillow's.
        pixels = re.search(r"\((\d+) pixels\)", str(err))
        size = f"image is {pixels[1]} pixels, " if pixels else ""
        raise ImageError(f"{size}more than the limit of {MAX_IMAGE_PIXELS} (decompression bomb guard)") from None
    except (OSError, SyntaxError, ValueError, EOFError, RuntimeError) as err:
        # Pillow reports truncated and corrupt streams as OSError / SyntaxError; pillow-heif reports
        # libheif's refusals (security limits, allocation) as RuntimeError.
        if data[:2] == _SOI and not data.endswith(_EOI):
            return _jpeg_without_end_marker(data, err)
        raise ImageError(f"corrupt or truncated image data: {err}") from None


_SOI, _EOI = b"\xff\xd8", b"\xff\xd9"
# Two runs of bytes whose bits differ everywhere (01010101, 10101010), neither holding 0xFF (a marker's
# first byte): entropy-coded data to a decoder still reading a scan, skipped as junk by one that is not.
_SCAN_FILLERS = (b"\x55" * 64, b"\xaa" * 64)


def _jpeg_without_end_marker(data: bytes, err: Exception) -> np.ndarray:
    """A JPEG that ends without its end-of-image marker (EOI): its pixels if only that marker is missing,
    else ImageError (truncated).

    The marker carries no picture data, and browsers and libjpeg-based tools show such files. But the same
    symptom has a file cut inside its picture data, which libjpeg completes with grey rows or coarser
    detail (Pillow's LOAD_TRUNCATED_IMAGES does the same): a score of those pixels would be a wrong one.
    So the file is scored only where it holds every scan its frame needs (jpeg_regions.scans_complete)
    and its last scan is whole. The last test is the decoder's own: decoded with EOI appended, and again
    with filler bytes before the EOI, a whole scan gives the same pixels (the decoder has finished and
    skips the filler as junk), a cut one does not (the filler becomes picture data). The pixels are then
    those of the complete file: three decodes, each under the decode budget, only for such files.
    """
    cut = "corrupt or truncated image data: the JPEG is truncated inside its picture data"
    body = data[:-1] if data.endswith(b"\xff") else data  # the first byte of a cut-off EOI
    if not jpeg_regions.scans_complete(body):
        raise ImageError(f"corrupt or truncated image data: {err}")
    try:
        digests = {hashlib.blake2b(decode(body + filler + _EOI).tobytes()).digest() for filler in _SCAN_FILLERS}
        rgb = decode(body + _EOI)
    except ImageError as other:
        raise ImageError(f"{cut} ({other})") from None
    if digests != {hashlib.blake2b(rgb.tobytes()).digest()}:
        raise ImageError(f"{cut} (its last scan is cut short; {err})")
    return rgb


def _unidentified(data: bytes) -> str:
    """Why no accepted format opened these bytes: a refused format, a damaged accepted one, or neither."""
    for signature, name in REFUSED_SIGNATURES:
        if data.startswith(signature):
            return (f"{name} is not accepted: accepted formats are {_ACCEPTED_NAMES}; convert it to PNG, "
                    "which keeps every artefact the scores measure")
    name = _format_by_signature(data[:16])
    if name is not None:
        return f"corrupt or truncated image data: it starts as {name} but its decoder cannot read it"
    return f"not a recognised image: {_text_encoding_hint(data) or ''}accepted formats are {_ACCEPTED_NAMES}"


def _format_by_signature(prefix: bytes) -> str | None:
    """The accepted format whose signature `prefix` starts with (each plugin's own check, as Image.open makes it)."""
    for name in _DECODERS:
        accept = Image.OPEN[name][1]
        if accept is not None and accept(prefix) is True:
            return name
    return None


_BASE64_TEXT = re.compile(rb"[A-Za-z0-9+/_-]{24,}={0,2}")


def _text_encoding_hint(data: bytes) -> str | None:
    """What to do when the bytes are an image written as text (a data: URL, base64): JSON APIs and
    browsers hand pictures over that way, and sending the text instead of the bytes is a common slip."""
    head = data[:256].lstrip()
    if head[:5].lower() == b"data:":
        return ("these bytes are a data: URL (text), not the image: send the bytes it encodes "
                "(base64-decode what follows 'base64,'); ")
    text = b"".join(head.split())[:64]
    if not _BASE64_TEXT.fullmatch(text):
        return None
    try:
        decoded = base64.b64decode(text[: len(text) // 4 * 4].replace(b"-", b"+").replace(b"_", b"/"), validate=True)
    except (binascii.Error, ValueError):
        return None
    name = _format_by_signature(decoded[:16]) or next(
        (refused for signature, refused in REFUSED_SIGNATURES if decoded.startswith(signature)), None)
    if name is None:
        return None
    return f"these bytes are base64 text of a {name} image, not the image: send the decoded bytes; "


def _to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        # 16-bit (or 32-bit integer) grey: keep the top 8 bits of a 16-bit range.
        grey = np.asarray(image, dtype=np.float64) / 257.0
        grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        return np.repeat(_float_to_8_bits(np.array(image, dtype=np.float32))[:, :, None], 3, axis=2)
    if mode == "P" or mode == "PA":
        image = image.convert("RGBA")
    elif mode in ("LA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        # What a viewer shows: the picture over a white page.
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def _float_to_8_bits(grey: np.ndarray) -> np.ndarray:
    """32-bit float grey (TIFF's IEEE floating-point samples, Pillow mode "F") -> uint8, on a fixed scale.

    0.0 is black and 1.0 white, the convention of float pictures (Photoshop's and GIMP's 32-bit modes,
    ImageMagick's floating-point TIFF, OpenEXR); values outside it are clipped, as an image viewer shows
    them (a highlight above 1.0 is white). The scale is fixed: no value rescales the others, so one pixel
    at 1.02 changes that pixel alone. NaN and infinities are not light levels and are refused by name.
    """
    finite = np.isfinite(grey)
    if not finite.all():
        count = grey.size - int(np.count_nonzero(finite))
        raise ImageError(f"float picture holds NaN or infinite values in {count} pixel{'s' if count > 1 else ''}: "
                         "they are no light levels; replace them (0.0 black to 1.0 white) to score it")
    np.clip(grey, 0.0, 1.0, out=grey)
    grey *= 255.0
    return np.rint(grey, out=grey).astype(np.uint8)


def sample_patches(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> patches uint8 [K, 3, P, P] at native resolution.

    One patch centred in each cell of a PATCH_GRID over the picture's content (iqa.borders:
    the frame minus uniform borders on opposite sides, e.g. a letterbox or a white canvas), so
    the patches spread over the content without sitting in its corners. Pictures smaller than
    a patch are mirrored out to the patch size first.
    """
    rgb, _ = _pad_to_patch(rgb)
    patches = np.empty(PATCH_SHAPE, dtype=np.uint8)
    for index, (top, left) in enumerate(patch_origins(*rgb.shape[:2], content_box(rgb))):
        patches[index] = rgb[top : top + PATCH_SIZE, left : left + PATCH_SIZE].transpose(2, 0, 1)
    return patches


def _pad_to_patch(rgb: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """Refuse pictures too small to judge; mirror smaller ones out to the patch size.

    Returns the pixels and the (top, left) offset of the original picture inside them.
    """
    height, width = rgb.shape[:2]
    if min(height, width) < MIN_IMAGE_SIDE:
        raise ImageError(
            f"image is {width}x{height}: both sides must be at least {MIN_IMAGE_SIDE} pixels to score"
        )
    pad_y, pad_x = max(0, PATCH_SIZE - height), max(0, PATCH_SIZE - width)
    if pad_y or pad_x:
        rgb = np.pad(
            rgb,
            ((pad_y // 2, pad_y - pad_y // 2), (pad_x // 2, pad_x - pad_x // 2), (0, 0)),
            mode="symmetric",
        )
    return rgb, (pad_y // 2, pad_x // 2)


def patch_origins(height: int, width: int, box: tuple[int, int, int, int] | None = None) -> list[tuple[int, int]]:
    """(top, left) of each patch in a picture of at least PATCH_SIZE on both sides, row by row.

    Each patch is centred in a cell of a PATCH_GRID laid over `box` (top, left, bottom, right; the
    content box, iqa.borders.content_box; None: the whole frame) and kept inside the picture, so a
    content box smaller than a patch still gets whole patches around it.
    """
    top, left, bottom, right = box if box is not None else (0, 0, height, width)
    rows, cols = PATCH_GRID
    return [(_cell_origin(row, rows, top, bottom, height), _cell_origin(col, cols, left, right, width))
            for row in range(rows) for col in range(cols)]


def _cell_origin(cell: int, cells: int, start: int, end: int, extent: int) -> int:
    centre = start + (cell + 0.5) * (end - start) / cells
    return int(min(max(round(centre - PATCH_SIZE / 2), 0), extent - PATCH_SIZE))


def preprocess(data: bytes) -> np.ndarray:
    """Encoded image bytes -> the network's input for one image, uint8 [K, 3, P, P].

    Large JPEGs decode only the bands around their patches (iqa.jpeg_regions; identical patches);
    everything else, and every error, goes through decode() and sample_patches().
    """
    patches = jpeg_regions.sample_patches(data, patch_origins)
    return patches if patches is not None else sample_patches(decode(data))


# --- the degradation map: the whole picture in cells -------------------------------------------


class Tiles(NamedTuple):
    """One picture cut into a grid of patch-size cells (the `iqa_map_preprocess` outputs, in order)."""

    cells: np.ndarray  # uint8 [MAX_CELLS, 3, P, P]: row-major over the grid, zeros past rows * columns
    grid: np.ndarray  # int32 [2]: rows, columns
    boxes: np.ndarray  # int32 [MAX_CELLS, 4]: left, top, right, bottom in image pixels; -1 past the grid
    image_size: np.ndarray  # int32 [2]: height, width


def cell_grid(height: int, width: int) -> tuple[int, int]:
    """Rows and columns of map cells for a picture of height x width pixels (each side >= PATCH_SIZE).

    As many patch-size cells as it takes to cover the picture (ceil(side / P) per side, neighbours
    overlapping by the remainder), unless that is more than MAX_CELLS: then the grid that keeps
    the picture's proportions with at most MAX_CELLS cells, spread evenly with gaps between them.
    Cells stay at native resolution either way: a downscaled picture would shift every score.
    """
    rows, cols = -(-height // PATCH_SIZE), -(-width // PATCH_SIZE)
    if rows * cols <= MAX_CELLS:
        return rows, cols
    fewer_rows = min(rows, max(1, round((MAX_CELLS * rows / cols) ** 0.5)))
    fewer_cols = min(cols, MAX_CELLS // fewer_rows)
    return min(rows, MAX_CELLS // fewer_cols), fewer_cols


def _cell_origins(cells: int, extent: int) -> np.ndarray:
    # First cell at the start, last at the end, evenly between: with ceil(extent / P) cells the
    # steps are at most P, so the cells cover every pixel; a single cell sits in the middle.
    if cells == 1:
        return np.array([(extent - PATCH_SIZE) // 2])
    return np.rint(np.linspace(0, extent - PATCH_SIZE, cells)).astype(np.int64)


def tile(rgb: np.ndarray) -> Tiles:
    """RGB uint8 [H, W, 3] -> the map's cells at native resolution, their grid and boxes.

    Pictures smaller than a patch are mirrored out to the patch size, as for sample_patches, and
    their cells' boxes are clipped to the picture. A cell that lies wholly in a uniform border
    (iqa.borders) is sent as zeros: flat, so it scores 0.0 (no evidence) and stays out of the pooled
    score, as the 4-patch score leaves borders out. Raises ImageError below MIN_IMAGE_SIDE.
    """
    height, width = rgb.shape[:2]
    padded, (pad_top, pad_left) = _pad_to_patch(rgb)
    content_top, content_left, content_bottom, content_right = content_box(padded)
    rows, cols = cell_grid(*padded.shape[:2])
    tops, lefts = _cell_origins(rows, padded.shape[0]), _cell_origins(cols, padded.shape[1])
    cells = np.zeros(CELLS_SHAPE, dtype=np.uint8)
    boxes = np.full((MAX_CELLS, 4), -1, dtype=np.int32)
    for index, (top, left) in enumerate((t, l) for t in tops for l in lefts):
        in_content = (top < content_bottom and top + PATCH_SIZE > content_top
                      and left < content_right and left + PATCH_SIZE > content_left)
        if in_content:
            cells[index] = padded[top : top + PATCH_SIZE, left : left + PATCH_SIZE].transpose(2, 0, 1)
        boxes[index] = (max(left - pad_left, 0), max(top - pad_top, 0),
                        min(left - pad_left + PATCH_SIZE, width), min(top - pad_top + PATCH_SIZE, height))
    return Tiles(cells, np.array([rows, cols], dtype=np.int32), boxes, np.array([height, width], dtype=np.int32))


def preprocess_map(data: bytes) -> Tiles:
    """Encoded image bytes -> the `iqa_degradation_map` network's input for one image, with its geometry."""
    return tile(decode(data))
