"""Stage 1 and 2 of the data path: encoded bytes -> RGB pixels -> fixed-shape patches.

Used by the `iqa_preprocess` Triton model, by the in-process reference scorer
the tests compare the server with, and by training/evaluation, so that all of
them see exactly the same pixels.
"""

from __future__ import annotations

import io
import warnings
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from iqa.contract import (
    CELLS_SHAPE,
    MAX_CELLS,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    MIN_IMAGE_SIDE,
    PATCH_GRID,
    PATCH_SHAPE,
    PATCH_SIZE,
)

# Formats the service promises (DESIGN.md). Restricting Pillow's format probing
# keeps rarely used, less hardened decoders away from network input. "JPEG" also
# opens the multi-picture (MPO) JPEGs many cameras write.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF")

# Pillow's own bomb guard, aligned with ours; we check the header size first
# anyway so that the message names our limit.
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS
Image.init()  # register every plugin now: open(formats=...) only finds loaded ones


class ImageError(ValueError):
    """The bytes are not an image this service can score; the message says why."""


def decode(data: bytes) -> np.ndarray:
    """Encoded image bytes -> upright RGB pixels, uint8 [H, W, 3].

    Applies EXIF orientation, takes the first frame of animations, composites
    transparency over white and maps palette, grey, 16-bit and CMYK images to
    8-bit RGB. Raises ImageError with a message naming the problem.
    """
    if len(data) == 0:
        raise ImageError("empty input: zero bytes")
    if len(data) > MAX_IMAGE_BYTES:
        raise ImageError(f"image is {len(data)} bytes, more than the limit of {MAX_IMAGE_BYTES} bytes")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=ACCEPTED_FORMATS)
            width, height = image.size
            if width * height > MAX_IMAGE_PIXELS:
                raise ImageError(
                    f"image is {width}x{height} = {width * height} pixels, more than the limit "
                    f"of {MAX_IMAGE_PIXELS} (decompression bomb guard)"
                )
            image.seek(0)  # first frame of GIF / WebP / TIFF animations and page sets
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except ImageError:
        raise
    except UnidentifiedImageError:
        raise ImageError(
            f"not a recognised image: accepted formats are {', '.join(ACCEPTED_FORMATS)}"
        ) from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise ImageError(f"decompression bomb guard: {err}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        # Pillow reports truncated and corrupt streams as OSError / SyntaxError.
        raise ImageError(f"corrupt or truncated image data: {err}") from None


def _to_rgb(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode.startswith("I;16") or mode == "I":
        # 16-bit (or 32-bit integer) grey: keep the top 8 bits of a 16-bit range.
        grey = np.asarray(image, dtype=np.float64) / 257.0
        grey = np.clip(np.rint(grey), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "F":
        grey = np.asarray(image, dtype=np.float64)
        if grey.size and np.nanmax(grey) <= 1.0:
            grey = grey * 255.0
        grey = np.clip(np.nan_to_num(np.rint(grey)), 0, 255).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode == "P" or mode == "PA":
        image = image.convert("RGBA")
    elif mode in ("LA", "La", "RGBa"):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        # What a viewer shows: the picture over a white page.
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


def sample_patches(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 [H, W, 3] -> patches uint8 [K, 3, P, P] at native resolution.

    One patch centred in each cell of a PATCH_GRID over the picture, so the
    patches spread over the frame without sitting in its corners. Pictures
    smaller than a patch are mirrored out to the patch size.
    """
    rgb, _ = _pad_to_patch(rgb)
    height, width = rgb.shape[:2]
    rows, cols = PATCH_GRID
    patches = np.empty(PATCH_SHAPE, dtype=np.uint8)
    for index in range(rows * cols):
        row, col = divmod(index, cols)
        top = _cell_origin(row, rows, height)
        left = _cell_origin(col, cols, width)
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


def _cell_origin(cell: int, cells: int, extent: int) -> int:
    centre = (cell + 0.5) * extent / cells
    return int(min(max(round(centre - PATCH_SIZE / 2), 0), extent - PATCH_SIZE))


def preprocess(data: bytes) -> np.ndarray:
    """Encoded image bytes -> the network's input for one image, uint8 [K, 3, P, P]."""
    return sample_patches(decode(data))


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
    their cells' boxes are clipped to the picture. Raises ImageError below MIN_IMAGE_SIDE.
    """
    height, width = rgb.shape[:2]
    padded, (pad_top, pad_left) = _pad_to_patch(rgb)
    rows, cols = cell_grid(*padded.shape[:2])
    tops, lefts = _cell_origins(rows, padded.shape[0]), _cell_origins(cols, padded.shape[1])
    cells = np.zeros(CELLS_SHAPE, dtype=np.uint8)
    boxes = np.full((MAX_CELLS, 4), -1, dtype=np.int32)
    for index, (top, left) in enumerate((t, l) for t in tops for l in lefts):
        cells[index] = padded[top : top + PATCH_SIZE, left : left + PATCH_SIZE].transpose(2, 0, 1)
        boxes[index] = (max(left - pad_left, 0), max(top - pad_top, 0),
                        min(left - pad_left + PATCH_SIZE, width), min(top - pad_top + PATCH_SIZE, height))
    return Tiles(cells, np.array([rows, cols], dtype=np.int32), boxes, np.array([height, width], dtype=np.int32))


def preprocess_map(data: bytes) -> Tiles:
    """Encoded image bytes -> the `iqa_degradation_map` network's input for one image, with its geometry."""
    return tile(decode(data))
