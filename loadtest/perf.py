"""NVIDIA's perf_analyzer against the ensemble, with the in-process stage ceilings measured in the same run.

    python -m loadtest.perf --perf-analyzer PATH [--url HOST:PORT] [--sizes 512x384 4000x3000]
                            [--concurrency 1 16 64 128 256] [--window-ms 5000] [--device cuda] [--out DIR]

1. Builds the pictures (camera-like JPEGs made from the photos in tests/data, 16 of 512x384 and 4 of
   4000x3000 by default) and, per size, perf_analyzer's --input-data JSON: the BYTES input IMAGE as
   base64 of a 4-byte little-endian length followed by the encoded image (FINDINGS.md).
2. Serves the repository with the real tritonserver (the launcher, free ports) unless --url is given.
3. Runs perf_analyzer once per size and concurrency (closed loop, --percentile 99) and reads its CSV:
   images/s, p50 and p99 latency, the server-side split (queue, compute). A run that fails any request
   is reported with perf_analyzer's own error line (it stops at the first failed request).
4. Measures, in this process on the same machine, what each stage alone can do: the network
   (eager fp32; with --device cuda also fp16 + channels_last, eager and replayed from a CUDA graph),
   preprocessing of each size on one core and on every core (iqa.preprocess.preprocess), and, on a
   GPU, nvJPEG whole-picture decode (torchvision) and nvImageCodec's GPU decode of the patch regions.
Prints one table and writes it as JSON to --out. loadtest/gpu/perf.sh runs this on the GPU machine.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import csv
import json
import multiprocessing
import os
import platform
import shutil
import statistics
import struct
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from iqa.contract import ENSEMBLE_MODEL, IMAGE_INPUT, PATCH_SHAPE
from iqa.serving.launcher import REPO, Ports, TritonServer, free_ports
from loadtest.decode_bench import camera_like_jpeg

PHOTOS = sorted((REPO / "tests" / "data").glob("*.jpg"))
PICTURES_PER_SIZE = {"512x384": 16, "4000x3000": 4}
MODEL_PT = REPO / "model_repository" / "iqa_resnet50" / "1" / "model.pt"


def pictures(size: str, count: int | None = None) -> list[bytes]:
    """`count` distinct camera-like JPEGs of `size` (WIDTHxHEIGHT), cycling over the test photos."""
    width, height = (int(v) for v in size.split("x"))
    count = count or PICTURES_PER_SIZE.get(size, 4)
    return [camera_like_jpeg(width, height, photo=PHOTOS[i % len(PHOTOS)], seed=i) for i in range(count)]


def input_data(images: list[bytes]) -> dict:
    """perf_analyzer's --input-data for the BYTES input: one entry per image, length-prefixed, base64."""
    return {"data": [{IMAGE_INPUT: {"b64": base64.b64encode(struct.pack("<I", len(image)) + image).decode()}}
                     for image in images]}


def perf_analyzer_command(binary: str, url: str, data_json: Path, concurrency: int, csv_path: Path,
                          window_ms: int = 5000, stability_percentage: float = 10, request_count: int = 0) -> list[str]:
    """Closed loop at `concurrency`; windows of `window_ms`, or of `request_count` requests when given
    (a slow CPU server answers too few requests in a time window to settle)."""
    windows = (["--measurement-mode", "count_windows", "--measurement-request-count", str(request_count)]
               if request_count else ["--measurement-interval", str(window_ms)])
    return [binary, "-m", ENSEMBLE_MODEL, "-i", "grpc", "-u", url, "--input-data", str(data_json),
            "--concurrency-range", f"{concurrency}:{concurrency}", *windows,
            "--stability-percentage", f"{stability_percentage:g}", "--percentile", "99", "--max-trials", "6",
            "-f", str(csv_path)]


def read_report(csv_path: Path) -> dict[str, float]:
    """The row perf_analyzer's -f CSV holds for one concurrency: img/s, latencies (ms), server split (ms)."""
    with open(csv_path, newline="") as handle:
        (row,) = list(csv.DictReader(handle))
    us = {key: float(value) for key, value in row.items() if value not in ("", None) and _number(value)}
    return {"img_per_s": us["Inferences/Second"], "p50_ms": us["p50 latency"] / 1000, "p99_ms": us["p99 latency"] / 1000,
            "queue_ms": us.get("Server Queue", 0) / 1000,
            "compute_ms": sum(us.get(k, 0) for k in ("Server Compute Input", "Server Compute Infer",
                                                       "Server Compute Output")) / 1000}


def _number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def run_perf_analyzer(binary: str, url: str, images: list[bytes], concurrency: int, work: Path, **windows) -> dict:
    """One closed-loop perf_analyzer measurement; {'error': ...} if it failed requests or did not settle."""
    data_json, csv_path = work / "input.json", work / f"c{concurrency}.csv"
    data_json.write_text(json.dumps(input_data(images)))
    command = perf_analyzer_command(binary, url, data_json, concurrency, csv_path, **windows)
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    if run.returncode != 0 or not csv_path.exists():
        lines = [line for line in (run.stdout + run.stderr).splitlines() if line.strip()]
        error = next((line for line in lines if "error" in line.lower() or "failed" in line.lower()), lines[-1:])
        return {"error": error if isinstance(error, str) else " ".join(error), "returncode": run.returncode}
    return read_report(csv_path)


# --- in-process stage ceilings -----------------------------------------------------------------------


def _time_per_call(fn, seconds: float, sync=lambda: None) -> float:
    fn()
    sync()
    samples, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(samples) < 3:
        start = time.perf_counter()
        fn()
        sync()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def network_ceilings(device: str, batch: int, seconds: float) -> dict[str, float]:
    """images/s of the exported network's eager twin on `batch` images, as the server could run it."""
    import torch

    from iqa.serving.launcher import eager_twin

    model = eager_twin(MODEL_PT).to(device).eval()
    patches = torch.randint(0, 256, (batch, *PATCH_SHAPE), dtype=torch.uint8, device=device)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    rows = {}
    with torch.inference_mode():
        rows[f"network eager fp32, batch {batch}"] = batch / _time_per_call(lambda: model(patches), seconds, sync)
        if device.startswith("cuda"):
            half = model.half().to(memory_format=torch.channels_last)
            rows[f"network fp16 + channels_last, batch {batch}"] = batch / _time_per_call(
                lambda: half(patches), seconds, sync)
            graph, static = torch.cuda.CUDAGraph(), patches.clone()
            stream = torch.cuda.Stream()
            with torch.cuda.stream(stream):
                for _ in range(3):  # warm-up on a side stream, as CUDA graph capture requires
                    half(static)
            torch.cuda.current_stream().wait_stream(stream)
            with torch.cuda.graph(graph):
                half(static)
            rows[f"network fp16 + channels_last, CUDA graph, batch {batch}"] = batch / _time_per_call(
                graph.replay, seconds, sync)
    return rows


def _preprocess_all(images: list[bytes]) -> int:
    from iqa.preprocess import preprocess

    for image in images:
        preprocess(image)
    return len(images)


def preprocess_ceilings(size: str, images: list[bytes], seconds: float) -> dict[str, float]:
    """images/s of iqa.preprocess.preprocess on one core and in one process per core."""
    rows = {}
    one = _time_per_call(lambda: _preprocess_all(images), seconds) / len(images)
    rows[f"preprocess {size}, 1 core"] = 1 / one
    cores = len(os.sched_getaffinity(0))
    rounds = max(1, int(seconds / max(one * len(images), 1e-3)))
    with multiprocessing.get_context("spawn").Pool(cores) as pool:
        pool.map(_preprocess_all, [images] * cores)  # warm-up: imports and the decoder in each worker
        start = time.perf_counter()
        done = sum(pool.map(_preprocess_all, [images] * (cores * rounds)))
        rows[f"preprocess {size}, {cores} processes"] = done / (time.perf_counter() - start)
    return rows


def gpu_decode_ceilings(size: str, images: list[bytes], batch: int, seconds: float, backend: str = "gpu") -> dict:
    """images/s decoding a batch of JPEGs on the GPU: nvJPEG whole (torchvision), and nvImageCodec regions.

    backend="cpu" runs the same nvImageCodec region code on its CPU backend (how it is tested here).
    """
    rows = {}
    batch_images = (images * (batch // len(images) + 1))[:batch]
    if backend == "gpu":
        import torch
        import torchvision.io

        encoded = [torch.frombuffer(bytearray(i), dtype=torch.uint8) for i in batch_images]
        rows[f"nvJPEG (torchvision) whole picture {size}, batch {batch}"] = batch / _time_per_call(
            lambda: torchvision.io.decode_jpeg(encoded, device="cuda"), seconds, torch.cuda.synchronize)
    from iqa.batch_decode import RegionDecoder

    decode = RegionDecoder("cuda:0" if backend == "gpu" else "cpu")
    taken = sum(patches is not None for patches in decode(batch_images))
    rows[f"nvImageCodec {backend.upper()} patch regions {size}, batch {batch} ({taken} of {batch} taken)"] = \
        batch / _time_per_call(lambda: decode(batch_images), seconds, _sync(backend))
    return rows


FRAME = 16  # pixels of texture round a near-flat picture (near_flat_jpegs)


def near_flat_jpegs(width: int = 1600, height: int = 1200) -> list[bytes]:
    """Large JPEGs (the region route's sizes) of plain fills with a gentle ramp or a grain of 1 to 3 levels:
    their patches lie on both sides of FLAT_PATCH_RANGE (2), where a decoder that differs by one level
    (nvJPEG's IDCT against libjpeg-turbo's) flips a patch between "no evidence" and evidence, and a score
    to or from 0.0. A textured frame of FRAME pixels runs round each, far from the patches: a picture whose
    edges are uniform may have borders to trim (iqa.borders), and the region route leaves it to the CPU."""
    import io

    from PIL import Image

    rng = np.random.default_rng(7)
    ramp = ((np.arange(width) // 48) % 3).astype(np.int16)[None, :, None]  # steps of 0, 1, 2: a spread of 2 per patch
    out = []
    for grain in (0, 1, 2, 3):
        for fill in ((128, 128, 128), (40, 90, 200)):
            noise = rng.integers(0, grain + 1, (height, width, 1), dtype=np.int16) if grain else \
                np.broadcast_to(ramp, (height, width, 1))
            pixels = np.clip(np.array(fill, np.int16) + noise, 0, 255).astype(np.uint8)
            frame = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            pixels[:FRAME], pixels[-FRAME:], pixels[:, :FRAME], pixels[:, -FRAME:] = \
                frame[:FRAME], frame[-FRAME:], frame[:, :FRAME], frame[:, -FRAME:]
            buffer = io.BytesIO()
            Image.fromarray(pixels).save(buffer, "JPEG", quality=95)
            out.append(buffer.getvalue())
    return out


def region_decode_agreement(decoder, images: list[bytes], model) -> dict:
    """The batched region decode against the CPU route on the same JPEGs: the largest score difference
    and how many pictures changed between "no evidence" (all 0.0) and a score. The GPU decode may be
    turned on only within 0.01 and with no flip (iqa/batch_decode.py)."""
    import torch

    from iqa.preprocess import preprocess

    routed = decoder(images)
    pairs = [(got, preprocess(data)) for got, data in zip(routed, images) if got is not None]
    if not pairs:
        return {"pictures": 0, "max_abs_difference": 0.0, "no_evidence_flips": 0}
    with torch.inference_mode():
        device, cpu = (torch.cat(model(torch.from_numpy(np.stack(side))), dim=1).numpy() for side in zip(*pairs))
    flips = int(np.sum((device == 0).all(axis=1) != (cpu == 0).all(axis=1)))
    return {"pictures": len(pairs), "max_abs_difference": float(np.abs(device - cpu).max()), "no_evidence_flips": flips}


def _sync(backend: str):
    if backend != "gpu":
        return lambda: None
    import torch

    return torch.cuda.synchronize


# --- the run -----------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--perf-analyzer", default=os.environ.get("PERF_ANALYZER") or shutil.which("perf_analyzer")
                        or str(REPO.parent / "shared" / "tools" / "perf_analyzer"))
    parser.add_argument("--url", help="measure this running server (gRPC host:port) instead of starting one")
    parser.add_argument("--sizes", nargs="+", default=list(PICTURES_PER_SIZE))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64, 128, 256])
    parser.add_argument("--window-ms", type=int, default=5000, help="perf_analyzer's --measurement-interval")
    parser.add_argument("--request-count", type=int, default=0,
                        help="windows of this many requests instead of --window-ms (count_windows mode)")
    parser.add_argument("--stability-percentage", type=float, default=10)
    parser.add_argument("--device", default="cpu", help="device for the in-process network ceilings")
    parser.add_argument("--network-batch", type=int, default=128)
    parser.add_argument("--ceiling-seconds", type=float, default=5.0)
    parser.add_argument("--no-ceilings", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", REPO / ".run" / "perf")))
    args = parser.parse_args(argv)
    if not Path(args.perf_analyzer).exists():
        parser.error(f"perf_analyzer not found at {args.perf_analyzer}: pass --perf-analyzer or set PERF_ANALYZER")
    args.out.mkdir(parents=True, exist_ok=True)

    images = {size: pictures(size) for size in args.sizes}
    print(f"machine: {platform.node()} {platform.machine()}, {len(os.sched_getaffinity(0))} cores, "
          f"device {args.device}; perf_analyzer {args.perf_analyzer}; "
          + "; ".join(f"{size}: {len(batch)} JPEGs, mean {np.mean([len(i) for i in batch]) / 1024:.0f} KiB"
                      for size, batch in images.items()), flush=True)
    results: dict = {"served": {}, "ceilings": {}}
    run_dir = REPO / ".run" / "perf"
    server = contextlib.nullcontext() if args.url else TritonServer(
        ports=Ports(*free_ports(3)), run_dir=run_dir, log_file=run_dir / "tritonserver.log", exit_timeout_s=10)
    with server, tempfile.TemporaryDirectory() as work:
        url = args.url or server.grpc_url
        for size, batch in images.items():
            for concurrency in args.concurrency:
                row = run_perf_analyzer(args.perf_analyzer, url, batch, concurrency, Path(work), window_ms=args.window_ms,
                                        stability_percentage=args.stability_percentage, request_count=args.request_count)
                results["served"][f"{size} c{concurrency}"] = row
                print(f"  served {size:>9} concurrency {concurrency:>3}: " + (
                    f"ERROR {row['error']}" if "error" in row else
                    f"{row['img_per_s']:8.1f} img/s  p50 {row['p50_ms']:7.1f} ms  p99 {row['p99_ms']:7.1f} ms  "
                    f"server queue {row['queue_ms']:6.1f} ms  compute {row['compute_ms']:6.1f} ms"), flush=True)
    if not args.no_ceilings:
        ceilings = results["ceilings"]
        ceilings.update(network_ceilings(args.device, args.network_batch, args.ceiling_seconds))
        for size, batch in images.items():
            ceilings.update(preprocess_ceilings(size, batch, args.ceiling_seconds))
            if args.device.startswith("cuda"):
                ceilings.update(gpu_decode_ceilings(size, batch, 32, args.ceiling_seconds))
        if args.device.startswith("cuda"):
            from iqa.batch_decode import RegionDecoder
            from iqa.network import build_model

            photos = [image for batch in images.values() for image in batch] + near_flat_jpegs()
            results["region_decode_agreement"] = agreement = region_decode_agreement(
                RegionDecoder("cuda:0"), photos, build_model(seed=0))
            print(f"  GPU region decode against the CPU route (photos and near-flat pictures): {agreement}", flush=True)
        for label, value in ceilings.items():
            print(f"  ceiling {label:<62} {value:10.1f} img/s", flush=True)
    (args.out / "perf.json").write_text(json.dumps(results, indent=2))
    print(f"written: {args.out / 'perf.json'}")
    return 0 if all("error" not in row for row in results["served"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
