"""The README's degradation-map example: a photo with its left half blurred, mapped by the server.

    .venv/bin/python -m docs.map_example [--url host:8001] [--output FILE]

Takes tests/data/rocks.jpg (576 x 384, texture in every cell), blurs its left half (Gaussian,
sigma 3 px), sends it as PNG to `iqa_degradation_map` (a server at --url, else one started here on
free ports) and to `iqa_degradation`, prints both, and writes the map's plot to .run/map-example/
(git-ignored); `--output docs/map_example.jpg` replaces the README's committed picture.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from iqa.serving.launcher import REPO, Ports, TritonServer, free_ports

PHOTO = REPO / "tests" / "data" / "rocks.jpg"
BLUR_SIGMA = 3.0


def blurred_left_half(path: Path = PHOTO, sigma: float = BLUR_SIGMA) -> np.ndarray:
    """RGB uint8 [H, W, 3]: the photo with the left half of its columns Gaussian-blurred."""
    rgb = np.asarray(Image.open(path).convert("RGB")).copy()
    half = rgb.shape[1] // 2
    rgb[:, :half] = np.asarray(Image.fromarray(rgb[:, :half]).filter(ImageFilter.GaussianBlur(sigma)))
    return rgb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running server's gRPC host:port (default: start one)")
    parser.add_argument("--output", type=Path, default=REPO / ".run" / "map-example" / "map_example.jpg",
                        help="where the plot goes (default: %(default)s; docs/map_example.jpg is the README's)")
    args = parser.parse_args(argv)
    from iqa_client import IQAClient

    run_dir = REPO / ".run" / "map-example"
    run_dir.mkdir(parents=True, exist_ok=True)
    server = contextlib.nullcontext() if args.url else TritonServer(
        ports=Ports(*free_ports(3)), run_dir=run_dir, log_file=run_dir / "tritonserver.log", exit_timeout_s=10)
    with server, IQAClient(args.url or server.grpc_url, timeout=300) as client:
        picture = blurred_left_half()
        mapped, whole = client.score_map(picture), client.score(picture)
    print(f"{PHOTO.name}, left half blurred (sigma {BLUR_SIGMA:g} px): {mapped.rows} x {mapped.columns} cells")
    for name in ("noise", "blur", "compression"):
        print(f"  {name:<12} map pooled {getattr(mapped.pooled, name):.3f}  4-patch {getattr(whole, name):.3f}")
        for row in mapped.array(name):
            print("    " + " ".join(f"{value:.2f}" for value in row))
    mapped.plot(args.output, title=f"{PHOTO.name}, left half blurred (Gaussian, sigma {BLUR_SIGMA:g} px): "
                                   f"{mapped.rows} x {mapped.columns} cells of 128 px")
    print(f"plot: {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
