"""Serving benchmark: the ensemble over gRPC against in-process PyTorch, same photos, same cores, one run.

    python -m loadtest.bench [--seconds 20] [--concurrency 1 8] [--batching on off]

Phases run one after another, never overlapping, so each has the machine's cores to itself:
  1. preprocessing in-process: decode and patch sampling, per image;
  2. (a) eager PyTorch on preprocessed batches (the floor) and (b) the exported TorchScript
     module, in this process: single-image latency and batch-of-8 throughput;
  3. (c) a real tritonserver (started here on free ports, or --url), closed-loop gRPC clients at
     each concurrency: images/s and latency percentiles, then the server's own split of the time
     per model (queue / compute input / infer / output), from its statistics;
  with --batching on off, (c) runs once per setting (dynamic batching removed from both
  composing models for "off").
Prints a table; ratios are against (a) measured in the same run.
"""

from __future__ import annotations

import argparse
import copy
import contextlib
import platform
import re
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import torch

from iqa.contract import ENSEMBLE_MODEL, IMAGE_INPUT, NETWORK_MODEL, PREPROCESS_MODEL
from iqa.preprocess import decode, preprocess, sample_patches
from iqa.serving.launcher import REPO, Ports, TritonServer, eager_twin, free_ports, read_model_metadata
from loadtest.settings import duration_s

PHOTOS = REPO / "tests" / "data"
MODEL_PT = REPO / "model_repository" / "iqa_resnet50" / "1" / "model.pt"


def percentiles(samples_s: list[float]) -> dict[str, float]:
    ms = np.asarray(samples_s) * 1000
    return {"p50": float(np.percentile(ms, 50)), "p95": float(np.percentile(ms, 95)), "p99": float(np.percentile(ms, 99))}


def time_calls(fn, seconds: float, min_calls: int = 5) -> list[float]:
    fn()  # warm-up
    samples, deadline = [], time.perf_counter() + seconds
    while time.perf_counter() < deadline or len(samples) < min_calls:
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def bench_preprocess(payloads: list[bytes], seconds: float) -> dict[str, float]:
    decode_s = time_calls(lambda: [decode(p) for p in payloads], seconds / 2)
    pixels = [decode(p) for p in payloads]
    sample_s = time_calls(lambda: [sample_patches(x) for x in pixels], seconds / 2)
    n = len(payloads)
    return {"decode_ms": statistics.median(decode_s) / n * 1000, "sample_ms": statistics.median(sample_s) / n * 1000}


def bench_in_process(model, patches: np.ndarray, batch: int, seconds: float, device: str = "cpu") -> dict[str, float]:
    """Latency per call and throughput of a module on preprocessed patches, `batch` images a call."""
    inputs = torch.from_numpy(np.resize(patches, (batch, *patches.shape[1:]))).to(device)

    def call():
        model(inputs)
        if device.startswith("cuda"):
            torch.cuda.synchronize()  # time the work, not the kernel launches

    with torch.inference_mode():
        calls = time_calls(call, seconds)
    return {**percentiles(calls), "img_per_s": batch / statistics.median(calls)}


def fp16_difference(model, patches: np.ndarray, device: str) -> float:
    """Largest score difference between fp32 and fp16 on the photos (the served fp16 must stay within 0.01)."""
    inputs = torch.from_numpy(patches).to(device)
    with torch.inference_mode():
        full = torch.cat(model(inputs), dim=1).float()
        half = torch.cat(copy.deepcopy(model).half()(inputs), dim=1).float()
    return float((full - half).abs().max())


def serve_fp16(model: str, config: str) -> str:
    """Config edit: the Python-backend runner casts the network to fp16 (iqa.serving.torchscript_model)."""
    if model != NETWORK_MODEL:
        return config
    return config + '\nparameters: { key: "precision", value: { string_value: "fp16" } }\n'


def closed_loop(url: str, payloads: list[bytes], concurrency: int, seconds: float,
                model: str = ENSEMBLE_MODEL) -> dict[str, float]:
    """`concurrency` requests to `model` always in flight, one image each, for `seconds`."""
    import tritonclient.grpc as grpcclient

    latencies: list[float] = []
    failures = 0
    slots = threading.Semaphore(concurrency)
    lock = threading.Lock()
    tensors = []
    for data in payloads:
        tensor = grpcclient.InferInput(IMAGE_INPUT, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[data]], dtype=np.object_))
        tensors.append(tensor)

    with grpcclient.InferenceServerClient(url) as client:
        for tensor in tensors:  # warm-up: every photo once
            client.infer(model, [tensor], client_timeout=120)

        def done(result, error, started):
            nonlocal failures
            with lock:
                if error is not None:
                    failures += 1
                else:
                    latencies.append(time.perf_counter() - started)
            slots.release()

        start = time.perf_counter()
        sent = 0
        while time.perf_counter() - start < seconds:
            slots.acquire()
            client.async_infer(model, [tensors[sent % len(tensors)]],
                               callback=lambda result, error, t=time.perf_counter(): done(result, error, t), client_timeout=120)
            sent += 1
        for _ in range(concurrency):
            slots.acquire()
        elapsed = time.perf_counter() - start
    return {**percentiles(latencies), "img_per_s": len(latencies) / elapsed, "requests": sent, "failures": failures}


PHASES = ("queue", "compute_input", "compute_infer", "compute_output")


def server_stats(url: str) -> dict[str, dict]:
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(url) as client:
        return {model: client.get_inference_statistics(model, as_json=True)["model_stats"][0]
                for model in (PREPROCESS_MODEL, NETWORK_MODEL)}


def time_split(before: dict[str, dict], after: dict[str, dict]) -> dict[str, dict[str, float]]:
    """Mean ms per request in each server phase between two snapshots, per composing model."""

    def delta(model: str, *keys: str) -> int:
        return _lookup(after[model], keys) - _lookup(before[model], keys)

    split = {}
    for model in after:
        requests = max(delta(model, "inference_stats", "success", "count"), 1)
        split[model] = {p: delta(model, "inference_stats", p, "ns") / requests / 1e6 for p in PHASES}
        split[model]["images_per_execution"] = delta(model, "inference_count") / max(delta(model, "execution_count"), 1)
    return split


def _lookup(stats: dict, keys: tuple[str, ...]) -> int:
    for key in keys:
        stats = stats.get(key, {})
    return int(stats or 0)  # protobuf JSON writes int64 as strings and leaves zeros out


def without_dynamic_batching(model: str, config: str) -> str:
    return re.sub(r"dynamic_batching\s*\{[^}]*\}", "", config)


def _edits(no_batching: bool, fp16: bool):
    edits = [e for e, wanted in ((without_dynamic_batching, no_batching), (serve_fp16, fp16)) if wanted]
    if not edits:
        return None

    def edit(model: str, config: str) -> str:
        for each in edits:
            config = each(model, config)
        return config

    return edit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Ensemble over gRPC vs in-process PyTorch.")
    parser.add_argument("--seconds", type=duration_s, default=20.0, help="per measured phase (seconds, or 20s, 1m)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--batching", nargs="+", choices=["on", "off"], default=["on"])
    parser.add_argument("--url", help="measure this running server (gRPC host:port) instead of starting one")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device for the in-process rows (the server picks its own: KIND_GPU if it has one)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="in-process batch sizes")
    parser.add_argument("--fp16", action="store_true",
                        help="add fp16 in-process rows and serve the network in fp16 (Python-backend runner)")
    args = parser.parse_args(argv)

    payloads = [p.read_bytes() for p in sorted(PHOTOS.glob("*.jpg"))]
    patches = np.stack([preprocess(p) for p in payloads])
    metadata = read_model_metadata(MODEL_PT)
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, "
          f"{torch.get_num_threads()} torch threads; photos: {len(payloads)} from {PHOTOS.relative_to(REPO)}/; "
          f"weights: {'trained' if metadata.get('trained') else 'random init'}")

    prep = bench_preprocess(payloads, args.seconds / 2)
    print(f"\npreprocess per image (in-process): decode {prep['decode_ms']:.2f} ms, sample {prep['sample_ms']:.2f} ms")

    eager = eager_twin(MODEL_PT).to(args.device)
    scripted = torch.jit.load(str(MODEL_PT), map_location=args.device).eval()
    rows = {}
    for batch in args.batches:
        rows[f"(a) eager PyTorch, in-process, batch {batch}"] = bench_in_process(
            eager, patches, batch, args.seconds / 2, args.device)
        rows[f"(b) TorchScript, in-process, batch {batch}"] = bench_in_process(
            scripted, patches, batch, args.seconds / 2, args.device)
    if args.fp16:
        print(f"fp16 vs fp32 on the photos: max |score difference| = {fp16_difference(eager, patches, args.device):.4f}"
              " (must stay within 0.01)")
        half = copy.deepcopy(eager).half()
        for batch in args.batches:
            rows[f"(a16) eager PyTorch fp16, in-process, batch {batch}"] = bench_in_process(
                half, patches, batch, args.seconds / 2, args.device)
        del half
    del eager, scripted

    split: dict[str, dict] = {}
    for setting in (args.batching[:1] if args.url else args.batching):
        run_dir = REPO / ".run" / f"bench-{setting}"
        run_dir.mkdir(parents=True, exist_ok=True)
        server = contextlib.nullcontext() if args.url else TritonServer(
            ports=Ports(*free_ports(3)), run_dir=run_dir, log_file=run_dir / "tritonserver.log",
            config_edit=_edits(setting == "off", args.fp16))
        with server:
            url = args.url or server.grpc_url
            for concurrency in args.concurrency:
                label = f"(c) ensemble gRPC, batching {setting}, concurrency {concurrency}"
                before = server_stats(url)
                rows[label] = closed_loop(url, payloads, concurrency, args.seconds)
                split[label] = time_split(before, server_stats(url))

    # The floor: in-process eager PyTorch at its best batch size on this machine.
    floor = max((r for label, r in rows.items() if label.startswith("(a)")), key=lambda r: r["img_per_s"])
    print(f"\n{'path':<52} {'img/s':>7} {'x (a)':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'fail':>5}")
    for label, row in rows.items():
        print(f"{label:<52} {row['img_per_s']:>7.2f} {row['img_per_s'] / floor['img_per_s']:>6.2f} "
              f"{row['p50']:>8.1f} {row['p95']:>8.1f} {row['p99']:>8.1f} {row.get('failures', 0):>5}")
    print("x (a): images/s over the best (a) row. (a)/(b): latency per call. (c): per request, closed loop.")
    print("\nwhere the time goes: server-side mean ms per request (Triton statistics, measured phase only)")
    for label, models in split.items():
        print(f"  {label}")
        for model, phases in models.items():
            print(f"    {model:<16} " + "  ".join(f"{k} {v:.2f}" for k, v in phases.items()))
    return 0



if __name__ == "__main__":
    raise SystemExit(main())
