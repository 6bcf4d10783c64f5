"""Where a picture's content lies: uniform borders on opposite sides are not content.

A vertical phone video shown on a landscape screen (pillarbox), a film's letterbox, a product
photographed for a shop and centred on a white canvas, a scan on its mat: the degradation is in
the content, and the borders around it hold no evidence of noise, blur or compression. Patches
cut from such borders are flat (iqa.network's no-evidence rule), so with the four patches at
fixed places a letterboxed picture used to score exactly 0/0/0 however degraded (issue 25).

The rule, on the upright RGB picture (uint8 [H, W, 3]):
- a line (a row or a column) is *uniform* when, in each channel, its values lie within
  BORDER_RANGE levels of each other: a plain fill, or one with the ripple of a lossy codec;
- the top and bottom rows are trimmed together, and only when *both* outermost rows are
  uniform (a letterbox, a canvas); likewise the left and right columns (a pillarbox, a canvas).
  One uniform edge alone (an overexposed sky, a caption strip) stays content, as before;
- from each such edge, lines are trimmed inwards while every pixel of the line lies within
  BORDER_RANGE levels of that edge's colour (the outermost line's per-channel median), so a bar
  of any colour, JPEG-compressed black included, is trimmed up to where the content begins;
- a picture that is uniform throughout keeps its whole frame: it truly holds no evidence.
The patches (iqa.preprocess.patch_origins) are then spread over the content box exactly as
they were spread over the whole frame, and the map's pooled score leaves out the cells that lie
wholly in the borders. A picture without such borders (almost every photo) keeps its patches
exactly where they were.

The opposite-sides rule is also what lets iqa.jpeg_regions keep decoding only the patches' bands
of a large JPEG: the outermost row and a sample of the outermost columns, which it decodes for
almost nothing, prove that no pair of edges can be trimmed (jpeg_regions.frame_is_content).
"""

from __future__ import annotations

import numpy as np

# Levels (0-255) within which a border line's values lie: a flat fill decodes within a level or two of
# itself through JPEG, WebP or H.264; a photo's edge row almost always spreads wider (sensor noise,
# texture). Wide enough for codec ripple, narrow enough that a dark or hazy but textured edge is content.
BORDER_RANGE = 8

# Lines compared with the border colour at a time while walking inwards: a border costs in proportion to
# its own size, not the picture's.
_CHUNK = 32


def is_uniform(line) -> bool:
    """Whether a line of pixels [N, C] (a numpy array, or CuPy's on a GPU; any integer dtype) spreads at most
    BORDER_RANGE levels in every channel. A line that is not uniform has no uniform superset: a sample of a
    line that spreads more than BORDER_RANGE proves the whole line is content."""
    return int((line.max(0) - line.min(0)).max()) <= BORDER_RANGE


def content_box(rgb: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the content of RGB uint8 [H, W, 3]: the whole frame minus uniform
    borders on opposite sides (the module's rule). bottom/right are exclusive; never empty."""
    top, bottom = _trim_pair(rgb)
    left, right = _trim_pair(rgb.transpose(1, 0, 2))
    return top, left, bottom, right


def _trim_pair(lines: np.ndarray) -> tuple[int, int]:
    """Start and end (exclusive) of the content along the first axis of `lines` [N, M, C]."""
    count = lines.shape[0]
    if not (is_uniform(lines[0]) and is_uniform(lines[-1])):
        return 0, count
    start, end = _border_depth(lines), count - _border_depth(lines[::-1])
    return (start, end) if start < end else (0, count)  # uniform throughout: no content to find


def _border_depth(lines: np.ndarray) -> int:
    """How many lines from the start of `lines` lie within BORDER_RANGE of the first line's colour."""
    colour = np.median(lines[0], axis=0).astype(np.int16)  # [C]
    depth = 0
    while depth < lines.shape[0]:
        block = lines[depth : depth + _CHUNK].astype(np.int16)  # [n, M, C]
        border = (np.abs(block - colour) <= BORDER_RANGE).all(axis=(1, 2))
        if not border.all():
            return depth + int(np.argmin(border))
        depth += block.shape[0]
    return depth
