"""training/scales.py: the scale table's pictures are what it says they are."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from training import scales

DATA = Path(__file__).parent / "data"


def test_each_scale_row_scores_its_own_size_and_the_largest_photos_at_their_own_size():
    photo = Image.open(DATA / "rocks.jpg").convert("RGB")
    sources = {"big": photo.resize((2100, 1600)), "huge": photo.resize((4000, 3000)), "small": photo.resize((1200, 900))}
    seen = []

    def sizes(pictures):  # a scorer that records the sizes it was given and scores by width
        seen.append([p.shape[:2] for p in pictures])
        return np.array([[p.shape[1] / 4000, 0.0, 0.0] for p in pictures])

    rows = scales.scale_rows(sizes, sources, largest=2)
    assert [r["scale"] for r in rows] == list(scales.SCALES) + ["largest photos, own size", "same photos at 1x (512x384)"]
    # Only sources at least twice the 2x size take part in the scaled rows: "small" (1200x900) does not.
    assert seen[:3] == [[(192, 256)] * 2, [(384, 512)] * 2, [(768, 1024)] * 2]
    assert seen[3] == [(3000, 4000), (1600, 2100)] and seen[4] == [(384, 512)] * 2
    assert rows[3]["noise mean"] == (4000 + 2100) / 2 / 4000
    assert "| 2x (1024x768) | 2 | 1024x768 |" in scales.markdown(rows)


def test_cover_crop_keeps_the_centre_at_the_asked_size():
    image = Image.fromarray(np.arange(300 * 400 * 3, dtype=np.uint32).reshape(300, 400, 3).astype(np.uint8))
    assert scales.cover_crop(image, (512, 384)).size == (512, 384)
    assert scales.cover_crop(image.resize((1000, 300)), (400, 300)).size == (400, 300)
