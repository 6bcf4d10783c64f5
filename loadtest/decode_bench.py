"""One-core preprocessing time per JPEG, whole-picture decode against decoding only the sampled regions.

    python -m loadtest.decode_bench [--repeats 15] [--sizes 512x384 1920x1080 4000x3000 8000x6000]

The pictures are made here: a photo of tests/data scaled to each size with a little grain (so the
files weigh what camera JPEGs of that size weigh, ~0.1 bytes a pixel at quality 90), baseline 4:2:0,
plus a progressive copy of each. The process is pinned to one core (and torch to one thread).
Rows, per picture:
  before   sample_patches(decode(data)): Pillow decodes the whole picture (the route until issue 13)
  after    preprocess(data): iqa.jpeg_regions decodes the bands around the patches
  and, for reference, whole-picture decodes alone: Pillow, torchvision's libjpeg-turbo, nvImageCodec.
Each repeat times every row once, in turn, so that load from other processes hits all rows alike;
the table shows medians and before/after.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import statistics
import time

import numpy as np
from PIL import Image

from iqa import jpeg_regions
from iqa.preprocess import decode, patch_origins, preprocess, sample_patches
from iqa.serving.launcher import REPO

PHOTO = REPO / "tests" / "data" / "sheep.jpg"
SIZES = ("512x384", "1920x1080", "4000x3000", "8000x6000")


def camera_like_jpeg(width: int, height: int, progressive: bool = False, quality: int = 90,
                     photo=PHOTO, seed: int = 0) -> bytes:
    """A photo scaled to width x height with sensor-like grain, encoded as JPEG (4:2:0)."""
    rgb = np.asarray(Image.open(photo).convert("RGB").resize((width, height), Image.Resampling.BICUBIC), np.int16)
    grain = np.random.default_rng(seed).normal(0, 3, rgb.shape).astype(np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(rgb + grain, 0, 255).astype(np.uint8)).save(
        buffer, "JPEG", quality=quality, progressive=progressive)
    return buffer.getvalue()


def reference_decoders(data: bytes) -> dict:
    """Whole-picture decoders, timed for reference: what a full decode costs with each library."""
    import torch
    import torchvision.io

    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    rows = {"Pillow decode only": lambda: np.asarray(Image.open(io.BytesIO(data)).convert("RGB")),
            "torchvision.io.decode_jpeg (libjpeg-turbo), whole": lambda: torchvision.io.decode_jpeg(encoded)}
    if jpeg_regions.available():
        from nvidia import nvimgcodec

        decoder, params = jpeg_regions._decoder()
        stream = nvimgcodec.CodeStream(data)
        rows["nvImageCodec CPU (libjpeg-turbo), whole"] = lambda: np.asarray(decoder.decode(stream, params=params))
    return rows


def measure(data: bytes, repeats: int, references: bool) -> dict[str, float]:
    rows = {"before: sample_patches(decode())": lambda: sample_patches(decode(data)),
            "after: preprocess()": lambda: preprocess(data)}
    if references:
        rows.update(reference_decoders(data))
    times: dict[str, list[float]] = {label: [] for label in rows}
    for fn in rows.values():
        fn()  # warm-up
    for _ in range(repeats):
        for label, fn in rows.items():
            start = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - start)
    return {label: statistics.median(samples) * 1000 for label, samples in times.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), help="WIDTHxHEIGHT")
    parser.add_argument("--no-references", action="store_true", help="skip the whole-picture decoder rows")
    args = parser.parse_args(argv)

    core = min(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {core})
    import torch

    torch.set_num_threads(1)
    print(f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, pinned to core {core}; "
          f"region decode: {'nvImageCodec CPU backend' if jpeg_regions.available() else 'UNAVAILABLE'}; "
          f"medians of {args.repeats}")
    print(f"\n{'picture':<28} {'KiB':>6}  {'route':<52} {'ms':>8} {'before/this':>11}")
    for size in args.sizes:
        width, height = (int(v) for v in size.split("x"))
        for progressive in (False, True):
            data = camera_like_jpeg(width, height, progressive)
            cropped = jpeg_regions.sample_patches(data, patch_origins)
            same = cropped is not None and np.array_equal(cropped, sample_patches(decode(data)))
            result = measure(data, args.repeats, references=not args.no_references)
            before = result["before: sample_patches(decode())"]
            name = f"{size} {'progressive' if progressive else 'baseline'}"
            note = "regions, identical patches" if same else "full decode (not cropped)"
            for i, (label, ms) in enumerate(result.items()):
                first = f"{name:<28} {len(data) // 1024:>6}" if i == 0 else " " * 35
                print(f"{first}  {label:<52} {ms:>8.1f} {before / ms:>10.2f}x" + (f"  {note}" if i == 1 else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
