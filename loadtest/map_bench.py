"""What the degradation map costs and what it buys: `iqa_degradation_map` next to `iqa_degradation`.

    python -m loadtest.map_bench [--seconds 15] [--rounds 3] [--concurrency 1 4] [--large] [--url host:8001]
    python -m loadtest.map_bench --stability-only | --cost-only

1. Network cost in process: the 4-patch network and the map's cells network on each preprocessed
   photo, one image per call, alternating call by call; median wall-clock ms per image and the
   process's CPU ms per image (all threads; what a busy shared machine distorts least), and the ratios.
2. Cost through a real tritonserver (started here on free ports, or --url): closed-loop gRPC
   clients on the same photos, one image per request, the two ensembles measured in alternation
   for --rounds rounds (a shared machine drifts; alternation keeps each pair comparable). Prints
   the median images/s and latency percentiles, and the median of the per-round ratios.
   --large adds the photos mirrored out to 1920 x 1080 (JPEG q95): 60 cells a map instead of 12-15.
3. Stability, in process (the server returns the same scores within 1e-4, tests/test_map.py): each
   photo, clean and uniformly degraded (white noise, Gaussian blur, JPEG: one mid-range strength
   each), under 16 one-pixel shifts (a (W-3) x (H-3) window at offsets 0..3 in x and y) and 16 small
   crops (each side trimmed by 0-5 %, seeded), scored by the 4-patch path and by the map's pooled
   score. Prints the standard deviation and range (max - min) over those 32 pictures of every score
   (clean) or of the degraded one's own score.
"""

from __future__ import annotations

import argparse
import io
import platform
import statistics
import time

import numpy as np
import torch
from PIL import Image
from tritonclient.utils import InferenceServerException

from iqa.contract import ENSEMBLE_MODEL, MAP_MODEL, SCORE_NAMES
from iqa.network import CellMap
from iqa.preprocess import decode, preprocess, preprocess_map, sample_patches, tile
from iqa.serving.launcher import REPO, Ports, TritonServer, eager_twin, free_ports
from loadtest.bench import MODEL_PT, PHOTOS, closed_loop

SHIFT = 3  # one-pixel shifts 0..SHIFT in x and y
CROPS = 16
MAX_TRIM = 0.05  # of each side, for the small crops


def _white_noise(rgb: np.ndarray) -> np.ndarray:
    noisy = rgb + np.random.default_rng(0).normal(0, 0.04 * 255, rgb.shape)  # variance 0.0016 on [0, 1]
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _gaussian_blur(rgb: np.ndarray) -> np.ndarray:
    from PIL import ImageFilter

    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(2)))


def _jpeg(rgb: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG", quality=20)
    return decode(buffer.getvalue())


# condition -> (degradation, the score it moves; None: every score)
CONDITIONS = {"clean": (lambda rgb: rgb, None), "noise 0.04": (_white_noise, "NOISE"),
              "blur 2 px": (_gaussian_blur, "BLUR"), "JPEG q20": (_jpeg, "COMPRESSION")}


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


def network_cost(photo_sets: dict[str, list[bytes]], seconds: float, device: str) -> None:
    net = eager_twin(MODEL_PT).to(device)
    cell_map = CellMap(net).eval()
    print(f"\nnetwork cost in process ({device}), one image per call, the two networks alternating for {seconds:g} s")
    print(f"{'photos':<26} {'cells/image':>11} {'4-patch ms':>10} {'map ms':>8} {'ratio':>6} "
          f"{'4-patch CPU ms':>14} {'map CPU ms':>10} {'ratio':>6}")
    for label, payloads in photo_sets.items():
        patches = [torch.from_numpy(preprocess(p)[None]).to(device) for p in payloads]
        tiles = [preprocess_map(p) for p in payloads]
        cells = [(torch.from_numpy(t.cells[None]).to(device), torch.from_numpy(t.grid[None]).to(device)) for t in tiles]
        times: dict[str, list[float]] = {"4-patch": [], "map": []}
        cpu: dict[str, list[float]] = {"4-patch": [], "map": []}
        deadline = time.perf_counter() + seconds
        with torch.inference_mode():
            net(patches[0]), cell_map(*cells[0])  # warm-up
            while time.perf_counter() < deadline or len(times["map"]) < 2 * len(payloads):
                for index in range(len(payloads)):
                    for name, call in (("4-patch", lambda: net(patches[index])), ("map", lambda: cell_map(*cells[index]))):
                        start, start_cpu = time.perf_counter(), time.process_time()
                        call()
                        if device.startswith("cuda"):
                            torch.cuda.synchronize()
                        times[name].append(time.perf_counter() - start)
                        cpu[name].append(time.process_time() - start_cpu)
        four, mapped = (statistics.median(times[k]) * 1000 for k in ("4-patch", "map"))
        four_cpu, mapped_cpu = (statistics.median(cpu[k]) * 1000 for k in ("4-patch", "map"))
        count = statistics.mean(int(t.grid.prod()) for t in tiles)
        print(f"{label:<26} {count:>11.1f} {four:>10.1f} {mapped:>8.1f} {mapped / four:>5.2f}x "
              f"{four_cpu:>14.1f} {mapped_cpu:>10.1f} {mapped_cpu / four_cpu:>5.2f}x")


def cost(url: str, photo_sets: dict[str, list[bytes]], concurrencies: list[int], seconds: float, rounds: int) -> None:
    print(f"\ncost: closed-loop gRPC, one image per request, {seconds:g} s per measurement, {rounds} alternating rounds")
    print(f"{'photos':<26} {'conc':>4} {'ensemble':<20} {'img/s':>7} {'p50 ms':>8} {'p95 ms':>8} {'fail':>5}"
          f" {'map/4-patch p50':>16} {'4-patch/map img/s':>18}")
    for label, payloads in photo_sets.items():
        for concurrency in concurrencies:
            runs: dict[str, list[dict]] = {ENSEMBLE_MODEL: [], MAP_MODEL: []}
            try:
                for _ in range(rounds):
                    for model in runs:
                        runs[model].append(closed_loop(url, payloads, concurrency, seconds, model=model))
            except InferenceServerException as err:  # a warm-up request failed: say so, measure the rest
                print(f"{label:<26} {concurrency:>4} stopped: {err.status()} {err.message()}")
                continue
            pairs = list(zip(runs[ENSEMBLE_MODEL], runs[MAP_MODEL]))
            slower = statistics.median(m["p50"] / e["p50"] for e, m in pairs)
            fewer = statistics.median(e["img_per_s"] / max(m["img_per_s"], 1e-9) for e, m in pairs)
            for model, measured in runs.items():
                row = {k: statistics.median(r[k] for r in measured) for k in ("img_per_s", "p50", "p95")}
                failures = sum(r["failures"] for r in measured)
                ratios = f"{slower:>15.2f}x {fewer:>17.2f}x" if model == MAP_MODEL else ""
                print(f"{label:<26} {concurrency:>4} {model:<20} {row['img_per_s']:>7.2f} {row['p50']:>8.0f} "
                      f"{row['p95']:>8.0f} {failures:>5} {ratios}")
    print("img/s, p50, p95: medians over the rounds; the ratios: medians of the rounds' ratios")


# --- stability ---------------------------------------------------------------------------------------


def variants(rgb: np.ndarray, seed: int = 0, count: int = CROPS) -> list[np.ndarray]:
    """The first `count` of the (SHIFT + 1)^2 one-pixel shifts of a slightly smaller window, then `count`
    small crops of the same photo (count <= 16)."""
    height, width = rgb.shape[:2]
    shifted = [rgb[dy : dy + height - SHIFT, dx : dx + width - SHIFT]
               for dy in range(SHIFT + 1) for dx in range(SHIFT + 1)][:count]
    rng = np.random.default_rng(seed)
    cropped = []
    for _ in range(count):
        top, bottom = rng.integers(0, int(MAX_TRIM * height) + 1, 2)
        left, right = rng.integers(0, int(MAX_TRIM * width) + 1, 2)
        cropped.append(rgb[top : height - bottom, left : width - right])
    return shifted + cropped


def stability(names_and_pixels: list[tuple[str, np.ndarray]], count: int = CROPS) -> None:
    net = eager_twin(MODEL_PT)
    cell_map = CellMap(net).eval()
    print(f"\nstability: {count} one-pixel shifts + {count} crops (each side trimmed 0-{MAX_TRIM:.0%}) "
          "per photo and condition, in process")
    print(f"{'photo':<11} {'condition':<11} {'score':<12} {'4-patch sd':>10} {'map sd':>8} {'4-patch range':>14} "
          f"{'map range':>10} {'4-patch mean':>13} {'map mean':>9}")
    ratios: dict[bool, list[float]] = {True: [], False: []}  # degraded?, sd(4-patch) / sd(map)
    for name, clean in names_and_pixels:
        for condition, (degrade, moved) in CONDITIONS.items():
            four, pooled = [], []
            with torch.inference_mode():
                for variant in variants(degrade(clean), count=count):
                    four.append(torch.cat(net(torch.from_numpy(sample_patches(variant)[None])), dim=1)[0].numpy())
                    tiles = tile(variant)
                    outputs = cell_map(torch.from_numpy(tiles.cells[None]), torch.from_numpy(tiles.grid[None]))
                    pooled.append(torch.cat(outputs[1:], dim=1)[0].numpy())
            four, pooled = np.array(four), np.array(pooled)
            for i, score in enumerate(SCORE_NAMES):
                if moved not in (None, score):
                    continue
                ratios[moved is not None].append(four[:, i].std() / max(pooled[:, i].std(), 1e-9))
                print(f"{name:<11} {condition:<11} {score.lower():<12} {four[:, i].std():>10.4f} "
                      f"{pooled[:, i].std():>8.4f} {np.ptp(four[:, i]):>14.4f} {np.ptp(pooled[:, i]):>10.4f} "
                      f"{four[:, i].mean():>13.3f} {pooled[:, i].mean():>9.3f}")
    for degraded, label in ((False, "clean photos, every score"), (True, "degraded photos, the degraded score")):
        print(f"median sd(4-patch) / sd(map), {label}: {np.median(ratios[degraded]):.1f} "
              f"(range {min(ratios[degraded]):.1f}-{max(ratios[degraded]):.1f})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=15.0, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--large", action="store_true", help="also 1920 x 1080 versions of the photos (60 cells)")
    parser.add_argument("--url", help="measure this running server (gRPC host:port) instead of starting one")
    parser.add_argument("--stability-only", action="store_true", help="skip the cost measurements (no server)")
    parser.add_argument("--cost-only", action="store_true", help="skip the stability measurement")
    parser.add_argument("--variants", type=int, default=CROPS, choices=range(2, (SHIFT + 1) ** 2 + 1),
                        metavar=f"2-{(SHIFT + 1) ** 2}",
                        help="one-pixel shifts, and as many small crops, per photo and condition in the stability "
                        "measurement (fewer: a quicker, rougher run)"),
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device for the in-process rows (the server picks its own)")
    args = parser.parse_args(argv)

    paths = sorted(PHOTOS.glob("*.jpg"))
    payloads = [p.read_bytes() for p in paths]
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"torch threads; photos: {', '.join(p.name for p in paths)} from {PHOTOS.relative_to(REPO)}/")
    if not args.stability_only:
        photo_sets = {"test photos (12-15 cells)": payloads}
        if args.large:
            photo_sets["1920x1080 (60 cells)"] = large_versions(payloads)
        network_cost(photo_sets, args.seconds, args.device)
        if args.url:
            cost(args.url, photo_sets, args.concurrency, args.seconds, args.rounds)
        else:
            run_dir = REPO / ".run" / "map-bench"
            run_dir.mkdir(parents=True, exist_ok=True)
            with TritonServer(ports=Ports(*free_ports(3)), run_dir=run_dir, log_file=run_dir / "tritonserver.log",
                              exit_timeout_s=10) as server:
                cost(server.grpc_url, photo_sets, args.concurrency, args.seconds, args.rounds)
    if not args.cost_only:
        stability([(p.stem, decode(p.read_bytes())) for p in paths], args.variants)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
