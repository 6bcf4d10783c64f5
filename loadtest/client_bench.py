"""Client benchmark: score_many at several concurrencies against a sequential loop, and a one-minute video.

    python -m loadtest.client_bench [--images 48] [--url host:port]

Starts a local server on free ports unless --url is given. Same photos (tests/data, cycled),
same server, one run; ratios are against the sequential `for image in images: client.score(image)`.
"""

from __future__ import annotations

import argparse
import contextlib
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from iqa.serving.launcher import REPO, Ports, TritonServer, free_ports
from iqa_client import IQAClient, Scores

PHOTOS = REPO / "tests" / "data"


def one_minute_video(path: Path, seconds: int = 60, rate: int = 25, size=(640, 360)) -> None:
    """A slow pan across a photo, MPEG-4 Part 2 encoded (a lossy codec, as real videos are)."""
    import av

    photo = Image.open(PHOTOS / "rocks.jpg").convert("RGB").resize((size[0] + 200, size[1] + 24))
    pixels = np.asarray(photo)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=rate)
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        stream.bit_rate = 2_000_000
        total = seconds * rate
        for i in range(total):
            left = int(200 * i / total)
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels[12 : 12 + size[1], left : left + size[0]]),
                                               format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=24, help="images per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--url")
    args = parser.parse_args(argv)

    photos = sorted(PHOTOS.glob("*.jpg"))
    images = [photos[i % len(photos)] for i in range(args.images)]
    run_dir = REPO / ".run" / "client-bench"
    run_dir.mkdir(parents=True, exist_ok=True)
    server = contextlib.nullcontext() if args.url else TritonServer(
        ports=Ports(*free_ports(3)), run_dir=run_dir, log_file=run_dir / "tritonserver.log")
    print(f"machine: {platform.node()} {platform.machine()}; {args.images} images from {PHOTOS.relative_to(REPO)}/")
    with server, IQAClient(args.url or server.grpc_url, timeout=600) as client:
        client.score_many(photos)  # warm-up

        # Round-robin rounds, medians: the machine is shared, so no mode gets a quiet minute to itself.
        modes = {"sequential score() loop": lambda: [client.score(image) for image in images]}
        for concurrency in args.concurrency:
            modes[f"score_many concurrency {concurrency}"] = (
                lambda c=concurrency: client.score_many(images, concurrency=c))
        rates: dict[str, list[float]] = {label: [] for label in modes}
        for _ in range(args.rounds):
            for label, run in modes.items():
                start = time.perf_counter()
                outcomes = run()
                rates[label].append(args.images / (time.perf_counter() - start))
                assert all(isinstance(o, Scores) for o in outcomes)
        sequential = statistics.median(rates["sequential score() loop"])
        print(f"\n{'how (median of ' + str(args.rounds) + ' rounds)':<32} {'img/s':>7} {'x loop':>7}  rounds")
        for label, values in rates.items():
            rate = statistics.median(values)
            print(f"{label:<32} {rate:>7.2f} {rate / sequential:>7.2f}  " + " ".join(f"{v:.1f}" for v in values))

        with tempfile.TemporaryDirectory() as tmp:
            video = Path(tmp) / "one_minute.mp4"
            start = time.perf_counter()
            one_minute_video(video)
            print(f"\none-minute video (640x360, 25 fps, MPEG-4, 1500 frames) written in "
                  f"{time.perf_counter() - start:.1f} s")
            for label, kwargs in (("frames=32", {"frames": 32}), ("fps=1", {"fps": 1.0}), ("fps=5", {"fps": 5.0})):
                start = time.perf_counter()
                report = client.score_video(video, concurrency=8, **kwargs)
                print(f"score_video {label:<10} {len(report.frames):>4} frames scored in "
                      f"{time.perf_counter() - start:6.1f} s (decode + PNG + gRPC + model), "
                      f"{report.frames_failed} failed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
