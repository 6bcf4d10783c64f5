"""What each upload format costs to decode, in-process: the accepted ones and JPEG 2000, which is refused.

    .venv/bin/python -m loadtest.formats_bench [--repeats 5]

The test photo tests/data/sheep.jpg at 512x384 and at 4000x3000 (a phone photo's size: upscaled with
a little noise, so that the codecs have texture to keep), encoded with each format's Pillow / pillow-heif
encoder at quality 90 (PNG lossless, HEIF in 512-px tiles, JPEG 2000 at a 16:1 rate). Prints the file size and the median time
of `iqa.preprocess.decode` (the server's decode: open, guards, orientation, RGB) over --repeats calls;
JPEG 2000 through Pillow's own decoder (OpenJPEG), since the service refuses it. One process, the
machine's cores as the decoders use them (libheif uses up to 4 threads, the others one).
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import time

import numpy as np
from PIL import Image

from iqa.preprocess import decode
from iqa.serving.launcher import REPO

PHOTO = REPO / "tests" / "data" / "sheep.jpg"
# HEIF in 512-pixel tiles, as iPhones write it (libheif decodes the tiles in parallel).
ENCODINGS = (("JPEG", {"quality": 90}), ("PNG", {}), ("WEBP", {"quality": 90}),
             ("HEIF", {"quality": 90, "tile_size": 512}), ("AVIF", {"quality": 90}),
             ("JPEG2000", {"quality_mode": "rates", "quality_layers": [16]}))


def pictures() -> dict[str, Image.Image]:
    photo = Image.open(PHOTO).convert("RGB")
    large = np.asarray(photo.resize((4000, 3000), Image.BICUBIC), dtype=np.int16)
    large = large + np.random.default_rng(0).integers(-4, 5, large.shape)
    return {"512x384": photo.resize((512, 384), Image.LANCZOS),
            "4000x3000": Image.fromarray(np.clip(large, 0, 255).astype(np.uint8))}


def decode_ms(data: bytes, fmt: str, repeats: int) -> float:
    def once() -> None:
        if fmt == "JPEG2000":
            Image.open(io.BytesIO(data)).load()
        else:
            decode(data)

    once()  # warm-up
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        once()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="decodes timed per format and size (default: 5)")
    args = parser.parse_args(argv)
    print(f"machine: {platform.node()} {platform.machine()}, photo {PHOTO.relative_to(REPO)}")
    print(f"{'size':>9} {'format':>9} {'kB':>7} {'decode ms':>10} {'x JPEG':>7}")
    for size, picture in pictures().items():
        jpeg_ms = None
        for fmt, params in ENCODINGS:
            buffer = io.BytesIO()
            picture.save(buffer, format=fmt, **params)
            ms = decode_ms(buffer.getvalue(), fmt, args.repeats)
            jpeg_ms = jpeg_ms or ms
            print(f"{size:>9} {fmt:>9} {len(buffer.getvalue()) / 1e3:>7.0f} {ms:>10.1f} {ms / jpeg_ms:>7.1f}",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
