"""What the degradation map costs and what it buys: `iqa_degradation_map` next to `iqa_degradation`.

    python -m loadtest.map_bench [--seconds 15] [--rounds 3] [--concurrency 1 4] [--large] [--url host:8001]
    python -m loadtest.map_bench --stability-only

1. Cost, through a real tritonserver (started here on free ports, or --url): closed-loop gRPC
   clients on the same photos, one image per request, the two ensembles measured in alternation
   for --rounds rounds (a shared machine drifts; alternation keeps each pair comparable). Prints
   the median images/s and latency percentiles, and the median of the per-round ratios.
   --large adds the photos mirrored out to 1920 x 1080 (JPEG q95): 60 cells a map instead of 12-15.
2. Stability, in process (the server returns the same scores within 1e-4, tests/test_map.py): each
   photo under 25 one-pixel shifts (a (W-4) x (H-4) window at offsets 0..4 in x and y) and 25 small
   crops (each side trimmed by 0-5 %, seeded), scored by the 4-patch path and by the map's pooled
   score. Prints each score's standard deviation and range (max - min) over those 50 pictures.
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics

import numpy as np
import torch
from PIL import Image

from iqa.contract import ENSEMBLE_MODEL, MAP_MODEL, SCORE_NAMES
from iqa.network import CellMap
from iqa.preprocess import decode, sample_patches, tile
from iqa.serving.launcher import REPO, Ports, TritonServer, eager_twin, free_ports
from loadtest.bench import MODEL_PT, PHOTOS, closed_loop

SHIFT = 4  # one-pixel shifts 0..SHIFT in x and y
CROPS = 25
MAX_TRIM = 0.05  # of each side, for the small crops


# --- cost --------------------------------------------------------------------------------------------


def large_versions(payloads: list[bytes]) -> list[bytes]:
    """Each photo mirrored out to 1920 x 1080 (real pixels, no resampling), as JPEG q95."""
    out = []
    for data in payloads:
        rgb = decode(data)
        reps = (-(-1080 // rgb.shape[0]), -(-1920 // rgb.shape[1]))
        big = np.pad(rgb, ((0, reps[0] * rgb.shape[0]), (0, reps[1] * rgb.shape[1]), (0, 0)), mode="symmetric")
        buffer = io.BytesIO()
        Image.fromarray(big[:1080, :1920]).save(buffer, format="JPEG", quality=95)
        out.append(buffer.getvalue())
    return out


def cost(url: str, photo_sets: dict[str, list[bytes]], concurrencies: list[int], seconds: float, rounds: int) -> None:
    print(f"\ncost: closed-loop gRPC, one image per request, {seconds:g} s per measurement, {rounds} alternating rounds")
    print(f"{'photos':<22} {'conc':>4} {'ensemble':<20} {'img/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'fail':>5}"
          f" {'map/4-patch time':>17}")
    for label, payloads in photo_sets.items():
        for concurrency in concurrencies:
            runs: dict[str, list[dict]] = {ENSEMBLE_MODEL: [], MAP_MODEL: []}
            for _ in range(rounds):
                for model in runs:
                    runs[model].append(closed_loop(url, payloads, concurrency, seconds, model=model))
            ratios = [m["p50"] / e["p50"] for e, m in zip(runs[ENSEMBLE_MODEL], runs[MAP_MODEL])]
            for model, measured in runs.items():
                row = {k: statistics.median(r[k] for r in measured) for k in ("img_per_s", "p50", "p95")}
                failures = sum(r["failures"] for r in measured)
                ratio = f"{statistics.median(ratios):>13.2f} x" if model == MAP_MODEL else ""
                print(f"{label:<22} {concurrency:>4} {model:<20} {row['img_per_s']:>7.2f} {row['p50']:>8.0f} "
                      f"{row['p95']:>8.0f} {failures:>5} {ratio:>17}")
    print("img/s, p50, p95: medians over the rounds; map/4-patch time: median of the rounds' p50 ratios")


# --- stability ---------------------------------------------------------------------------------------


def variants(rgb: np.ndarray, seed: int = 0) -> list[np.ndarray]:
    """25 one-pixel shifts of a slightly smaller window, then 25 small crops of the same photo."""
    height, width = rgb.shape[:2]
    shifted = [rgb[dy : dy + height - SHIFT, dx : dx + width - SHIFT]
               for dy in range(SHIFT + 1) for dx in range(SHIFT + 1)]
    rng = np.random.default_rng(seed)
    cropped = []
    for _ in range(CROPS):
        top, bottom = rng.integers(0, int(MAX_TRIM * height) + 1, 2)
        left, right = rng.integers(0, int(MAX_TRIM * width) + 1, 2)
        cropped.append(rgb[top : height - bottom, left : width - right])
    return shifted + cropped


def stability(names_and_pixels: list[tuple[str, np.ndarray]]) -> None:
    net = eager_twin(MODEL_PT)
    cell_map = CellMap(net).eval()
    print(f"\nstability: {(SHIFT + 1) ** 2} one-pixel shifts + {CROPS} crops (each side trimmed 0-{MAX_TRIM:.0%}) "
          "per photo, in process")
    print(f"{'photo':<12} {'score':<12} {'4-patch sd':>10} {'map sd':>8} {'4-patch range':>14} {'map range':>10}"
          f" {'4-patch mean':>13} {'map mean':>9}")
    spreads = {"4-patch": [], "map": []}
    for name, rgb in names_and_pixels:
        four, pooled = [], []
        with torch.inference_mode():
            for variant in variants(rgb):
                four.append(torch.cat(net(torch.from_numpy(sample_patches(variant)[None])), dim=1)[0].numpy())
                tiles = tile(variant)
                outputs = cell_map(torch.from_numpy(tiles.cells[None]), torch.from_numpy(tiles.grid[None]))
                pooled.append(torch.cat(outputs[1:], dim=1)[0].numpy())
        four, pooled = np.array(four), np.array(pooled)
        for i, score in enumerate(SCORE_NAMES):
            spreads["4-patch"].append(four[:, i].std())
            spreads["map"].append(pooled[:, i].std())
            print(f"{name:<12} {score.lower():<12} {four[:, i].std():>10.4f} {pooled[:, i].std():>8.4f} "
                  f"{np.ptp(four[:, i]):>14.4f} {np.ptp(pooled[:, i]):>10.4f} {four[:, i].mean():>13.3f} "
                  f"{pooled[:, i].mean():>9.3f}")
    ratio = np.median(np.array(spreads["4-patch"]) / np.maximum(spreads["map"], 1e-9))
    print(f"median over photos and scores of sd(4-patch) / sd(map): {ratio:.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--large", action="store_true", help="also 1920 x 1080 versions of the photos (60 cells)")
    parser.add_argument("--url", help="measure this running server (gRPC host:port) instead of starting one")
    parser.add_argument("--stability-only", action="store_true", help="skip the cost measurement (no server)")
    args = parser.parse_args(argv)

    paths = sorted(PHOTOS.glob("*.jpg"))
    payloads = [p.read_bytes() for p in paths]
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"torch threads; photos: {', '.join(p.name for p in paths)} from {PHOTOS.relative_to(REPO)}/")
    if not args.stability_only:
        photo_sets = {"test photos (12-15 cells)": payloads}
        if args.large:
            photo_sets["1920x1080 (60 cells)"] = large_versions(payloads)
        if args.url:
            cost(args.url, photo_sets, args.concurrency, args.seconds, args.rounds)
        else:
            run_dir = REPO / ".run" / "map-bench"
            run_dir.mkdir(parents=True, exist_ok=True)
            with TritonServer(ports=Ports(*free_ports(3)), run_dir=run_dir, log_file=run_dir / "tritonserver.log",
                              exit_timeout_s=10) as server:
                cost(server.grpc_url, photo_sets, args.concurrency, args.seconds, args.rounds)
    stability([(p.stem, decode(p.read_bytes())) for p in paths])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
