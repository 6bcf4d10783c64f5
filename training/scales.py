"""What a score means at each picture size: clean validation photos scored at 0.5x, 1x and 2x KADID's size,
and the largest real photos of the pool at their own (camera) size.

    python -m training.scales                      # the committed weights, in-process (make scales)
    python -m training.scales --largest 8 --json scales.json

The server cuts its four 128-px patches at native resolution (iqa.preprocess), so a picture's size
decides how much of the scene a patch sees: the same scene at twice the pixels shows each edge half
as sharp per pixel. All three scaled versions of a photo come from the same source picture (the
package's own file, not the 768-px pool copy), resized with Lanczos to cover 1024x768 and centre-
cropped, then halved to 512x384 (1x, KADID's size) and again to 256x192 (0.5x). Only sources at least
twice the 2x size (2048x1536) take part, so every version is downscaled at least 2x and keeps none
of the source's own compression. The largest photos are scored as a user would send them: the
package's file at its full size (these are lossy files, mostly JPEG at high quality), and the same
picture at 1x for comparison.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from training import photos as photo_pool
from training.degradations import FAMILIES
from training.evaluate import KADID_SIZE, model_scorer, score_set

SCALES = {"0.5x (256x192)": 0.25, "1x (512x384, KADID)": 0.5, "2x (1024x768)": 1.0}  # of the 1024x768 crop
COVER = (2 * KADID_SIZE[0], 2 * KADID_SIZE[1])


def cover_crop(image: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Scaled (Lanczos) to cover `size`, then centre-cropped to it."""
    scale = max(size[0] / image.width, size[1] / image.height)
    resized = image.resize((max(size[0], round(image.width * scale)), max(size[1], round(image.height * scale))),
                           Image.Resampling.LANCZOS)
    left, top = (resized.width - size[0]) // 2, (resized.height - size[1]) // 2
    return resized.crop((left, top, left + size[0], top + size[1]))


def scale_rows(score_fn, sources: dict[str, Image.Image], largest: int) -> list[dict]:
    rows = []
    big_enough = {n: im for n, im in sources.items() if im.width >= 2 * COVER[0] and im.height >= 2 * COVER[1]}
    crops = {n: cover_crop(im, COVER) for n, im in big_enough.items()}
    for label, factor in SCALES.items():
        size = (round(COVER[0] * factor), round(COVER[1] * factor))
        pictures = [np.asarray(c.resize(size, Image.Resampling.LANCZOS) if factor != 1.0 else c) for c in crops.values()]
        rows.append(_row(label, score_fn, pictures))
    biggest = sorted(sources, key=lambda n: sources[n].width * sources[n].height, reverse=True)[:largest]
    native = [np.asarray(sources[n]) for n in biggest]
    rows.append(_row("largest photos, own size", score_fn, native))
    rows.append(_row("same photos at 1x (512x384)", score_fn, [np.asarray(cover_crop(sources[n], KADID_SIZE)) for n in biggest]))
    return rows


def _row(label: str, score_fn, pictures: list[np.ndarray]) -> dict:
    scores = score_set(score_fn, pictures)
    sizes = sorted({f"{p.shape[1]}x{p.shape[0]}" for p in pictures}, key=lambda s: -int(s.split("x")[0]))
    return {"scale": label, "photos": len(pictures), "sizes": sizes,
            **{f"{family} mean": float(scores[:, i].mean()) for i, family in enumerate(FAMILIES)},
            **{f"{family} max": float(scores[:, i].max()) for i, family in enumerate(FAMILIES)}}


def markdown(rows: list[dict]) -> str:
    lines = ["| scale | photos | sizes | noise mean / max | blur mean / max | compression mean / max |",
             "|---|---:|---|---:|---:|---:|"]
    for r in rows:
        sizes = ", ".join(r["sizes"][:3]) + (" ..." if len(r["sizes"]) > 3 else "")
        cells = " | ".join(f"{r[f'{f} mean']:.3f} / {r[f'{f} max']:.3f}" for f in FAMILIES)
        lines.append(f"| {r['scale']} | {r['photos']} | {sizes} | {cells} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=Path, default=photo_pool.CACHE / "pool")
    parser.add_argument("--split", choices=("validation", "train"), default="validation")
    parser.add_argument("--weights", default="training/weights/iqa_resnet50.fp16.pt")
    parser.add_argument("--largest", type=int, default=8, help="how many of the largest photos to score at their own size")
    parser.add_argument("--json", type=Path, help="write the rows as JSON here")
    args = parser.parse_args(argv)

    from iqa.network import build_model

    names = {p.name for p in photo_pool.photos(args.pool, args.split)}
    sources = photo_pool.originals(names)
    if not sources:
        raise SystemExit(f"no source pictures of {args.split} photos in {photo_pool.CACHE / 'extract'}: run make photos")
    rows = scale_rows(model_scorer(build_model(args.weights)), sources, args.largest)
    print(f"{len(sources)} {args.split} photos with their source pictures; weights {args.weights}\n")
    print(markdown(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
