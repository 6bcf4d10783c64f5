"""The degradation map: where in the picture the noise, blur and compression are.

`iqa_degradation_map` cuts the whole picture into cells of the network's 128-pixel patch at
native resolution and scores every cell as the 4-patch score scores each of its patches; a
cell's score means what an image's score means, for that 128 x 128 region. The whole-image
(pooled) scores are the sigmoid of the mean cell logit, as `iqa_degradation` pools its four.
Pictures with more than MAX_CELLS cells' worth of pixels get a coarser grid of evenly spread
cells, with gaps between them (iqa_client.contract).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass, field

import numpy as np

from iqa_client.contract import CELL_BOXES, CELL_SCORES, GRID, IMAGE_SIZE, SCORE_NAMES
from iqa_client.extras import require
from iqa_client.result import Scores

_FIELDS = ("noise", "blur", "compression")


@dataclass(frozen=True)
class MapCell:
    """One region of the picture and its scores.

    row, column: its place in the grid (0-based, row-major). box: (left, top, right, bottom) in
    pixels of the upright picture, right and bottom exclusive; 128 x 128 except on pictures
    smaller than that. scores: each in [0, 1], as for a whole image.
    """

    row: int
    column: int
    box: tuple[int, int, int, int]
    scores: Scores


@dataclass(frozen=True)
class DegradationMap:
    """Per-cell and pooled scores of one image (what `score_map` returns).

    width, height: the upright picture in pixels. rows, columns: the grid (rows * columns cells,
    at most MAX_CELLS). cells: row-major. pooled: whole-image scores over all cells. image: the
    encoded bytes that were scored, kept for `plot` (not part of `to_json`).
    """

    source: str
    width: int
    height: int
    rows: int
    columns: int
    cells: tuple[MapCell, ...]
    pooled: Scores
    image: bytes = field(default=b"", repr=False, compare=False)

    @property
    def grid(self) -> tuple[int, int]:
        return self.rows, self.columns

    def array(self, score: str) -> np.ndarray:
        """One score over the grid: float32 [rows, columns], e.g. `array("blur")`."""
        if score not in _FIELDS:
            raise ValueError(f"score must be one of {_FIELDS}, not {score!r}")
        return np.array([getattr(c.scores, score) for c in self.cells], dtype=np.float32).reshape(self.grid)

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "width": self.width,
            "height": self.height,
            "grid": [self.rows, self.columns],
            "pooled": self.pooled.to_dict(),
            "cells": [{"row": c.row, "column": c.column, "box": list(c.box), **c.scores.to_dict()} for c in self.cells],
        }

    def to_json(self, **kwargs) -> str:
        return json.dumps(self.to_dict(), ensure_ascii=False, **kwargs)

    def plot(self, output: str | os.PathLike, *, title: str | None = None, alpha: float = 0.6,
             max_side: int = 1200) -> None:
        """Write a figure of the picture under a translucent heat map per score (noise, blur, compression).

        Each cell is drawn as a tile over the part of the picture nearest to it, coloured 0 (clean, nearly
        see-through) to 1 (strong, up to `alpha` opaque), with its score written in it when the grid is small
        enough to read, and the 128-pixel box it measured outlined: on a large picture, whose cells are spread
        with gaps between them, the tiles still cover it, so a 4000 x 3000 photo's 7 x 9 cells are as easy to
        see as a small picture's (the boxes alone would be specks). The picture is shown at most `max_side` pixels
        wide or high, as the server decoded it (EXIF orientation, transparency over white; HEIC through pillow-heif).
        Needs matplotlib and Pillow (`pip install 'iqa-client[map]'`, else MissingExtraError); the format follows
        `output`'s suffix. `title` defaults to the source's file name and the grid.
        """
        matplotlib = require("matplotlib", "DegradationMap.plot", extra="map")
        require("PIL", "DegradationMap.plot", extra="map")
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.cm import ScalarMappable
        from matplotlib.collections import PatchCollection
        from matplotlib.colors import Normalize
        from matplotlib.patches import Rectangle

        picture = self._picture(max_side)
        regions = _drawn_regions(self)
        gaps = any(r[0] < b[0] or r[1] < b[1] or r[2] > b[2] or r[3] > b[3]  # cells spread with gaps between them
                   for b, r in zip((c.box for c in self.cells), regions))
        figure, axes = plt.subplots(1, 3, squeeze=False, figsize=(15, 4.2 * self.height / self.width + 1.2))
        colours = plt.get_cmap("YlOrRd")
        scale = ScalarMappable(Normalize(0, 1), colours)
        for axis, name in zip(axes.flat, _FIELDS):
            axis.imshow(picture, extent=(0, self.width, self.height, 0), interpolation="lanczos")
            values = np.array([getattr(c.scores, name) for c in self.cells])
            # Clean cells stay see-through, degraded ones cover the picture: the eye goes to the problem.
            faces = colours(values)
            faces[:, 3] = alpha * (0.15 + 0.85 * values)
            axis.add_collection(PatchCollection(
                [Rectangle((x0, y0), x1 - x0, y1 - y0) for x0, y0, x1, y1 in regions],
                facecolors=faces, edgecolors=(1, 1, 1, 0.5), linewidths=0.4))
            if gaps:
                axis.add_collection(PatchCollection(  # where each tile's score was measured
                    [Rectangle((x0, y0), x1 - x0, y1 - y0) for x0, y0, x1, y1 in (c.box for c in self.cells)],
                    facecolors="none", edgecolors=(1, 1, 1, 0.8), linewidths=0.6, linestyles=(0, (2, 2))))
            if self.columns <= 12 and self.rows <= 12:
                for (x0, y0, x1, y1), value in zip(regions, values):
                    axis.text((x0 + x1) / 2, (y0 + y1) / 2, f"{value:.2f}", ha="center", va="center", fontsize=7,
                              color="white", bbox={"boxstyle": "round,pad=0.15", "fc": (0, 0, 0, 0.35), "lw": 0})
            axis.set(xlim=(0, self.width), ylim=(self.height, 0), xticks=[], yticks=[],
                     title=f"{name}: {getattr(self.pooled, name):.2f} pooled")
            figure.colorbar(scale, ax=axis, fraction=0.046, pad=0.02)
        figure.suptitle(title or f"{os.path.basename(self.source)}: {self.rows} x {self.columns} cells"
                        + (", each drawn over the area nearest to it (dashed: the 128-px box it measured)"
                           if gaps else ""), fontsize=10)
        figure.tight_layout()
        figure.savefig(output, dpi=100)
        plt.close(figure)

    def _picture(self, max_side: int):
        """The upright picture as the server saw it (EXIF orientation applied), at most max_side pixels."""
        from PIL import Image, ImageOps

        if not self.image:
            raise ValueError("this map holds no image bytes to draw under it")
        if self.image[4:8] == b"ftyp" and self.image[8:12] not in (b"avif", b"avis"):
            # HEIC/HEIF (ISO BMFF but not AVIF): Pillow reads them only through pillow-heif.
            require("pillow_heif", "DegradationMap.plot of a HEIC/HEIF picture").register_heif_opener()
        with Image.open(io.BytesIO(self.image)) as opened:
            opened.seek(0)
            picture = ImageOps.exif_transpose(opened)
            if picture.mode.startswith("I;16") or picture.mode in ("I", "F"):  # 16-bit / float grey: as the server
                grey = np.asarray(picture, dtype=np.float64)
                scale = 1 / 257 if picture.mode != "F" else 255.0 if grey.size and np.nanmax(grey) <= 1.0 else 1.0
                picture = Image.fromarray(np.clip(np.nan_to_num(np.rint(grey * scale)), 0, 255).astype(np.uint8))
            if picture.mode in ("P", "PA", "LA", "La", "RGBa", "RGBA"):  # as the server shows it: alpha over white
                picture = picture.convert("RGBA")
                picture = Image.alpha_composite(Image.new("RGBA", picture.size, (255, 255, 255, 255)), picture)
            picture = picture.convert("RGB")
        if picture.size != (self.width, self.height):
            raise ValueError(f"the image decodes to {picture.size[0]}x{picture.size[1]} here but the server "
                             f"scored {self.width}x{self.height}")
        picture.thumbnail((max_side, max_side))
        return picture


def _drawn_regions(scored: DegradationMap) -> list[tuple[float, float, float, float]]:
    """Each cell's tile: the picture split between neighbouring cells at the middle of their overlap or of
    the gap between them, the outer tiles reaching the picture's edges. Tiles cover the picture exactly."""
    lefts, rights = _split(scored.width, [scored.cells[c].box[0] for c in range(scored.columns)],
                           [scored.cells[c].box[2] for c in range(scored.columns)])
    tops, bottoms = _split(scored.height, [scored.cells[r * scored.columns].box[1] for r in range(scored.rows)],
                           [scored.cells[r * scored.columns].box[3] for r in range(scored.rows)])
    return [(lefts[c.column], tops[c.row], rights[c.column], bottoms[c.row]) for c in scored.cells]


def _split(size: int, starts: list[int], ends: list[int]) -> tuple[list[float], list[float]]:
    starts, ends = [float(s) for s in starts], [float(e) for e in ends]
    for i in range(len(starts) - 1):
        starts[i + 1] = ends[i] = (starts[i + 1] + ends[i]) / 2
    if starts:
        starts[0], ends[-1] = 0.0, float(size)
    return starts, ends


def from_outputs(outputs: dict[str, np.ndarray], source: str, image: bytes = b"") -> DegradationMap:
    """A DegradationMap from one row of `iqa_degradation_map`'s outputs (arrays without the batch axis).

    Raises ValueError when the outputs contradict each other (a grid larger than the tensors, NaN
    scores inside the grid): a server that breaks the contract must not pass for a clean picture.
    """
    rows, columns = (int(v) for v in outputs[GRID].reshape(2))
    height, width = (int(v) for v in outputs[IMAGE_SIZE].reshape(2))
    scores, boxes = outputs[CELL_SCORES], outputs[CELL_BOXES]
    count = rows * columns
    if not (rows >= 1 and columns >= 1 and count <= len(scores) and count <= len(boxes)):
        raise ValueError(f"a {rows} x {columns} grid does not fit the {len(scores)} cells the server sent")
    if np.isnan(scores[:count]).any():
        raise ValueError("the server sent NaN scores inside the grid")
    cells = tuple(
        MapCell(index // columns, index % columns, tuple(int(v) for v in boxes[index]),
             Scores(*(float(v) for v in scores[index])))
        for index in range(count))
    pooled = Scores(*(float(outputs[name].reshape(-1)[0]) for name in SCORE_NAMES))
    return DegradationMap(source, width, height, rows, columns, cells, pooled, image)
