"""Soak: saturating load for minutes; no request may fail and memory must not creep.

    .venv/bin/python -m loadtest.soak [--duration 10m] [--concurrency 8] [--warm-up 2m]

Starts the local server with its watchdog, keeps `--concurrency` clients (8 saturate this 2-core
VM, BENCHMARKS.md) scoring the test photos for `--duration`, and samples the resident memory of
tritonserver plus its Python-backend stubs every 10 s. Growth is the median of the last minute
against the median of the first minute after `--warm-up`; the trend (least-squares slope
over all samples after the warm-up) tells a leak, which keeps climbing, from a one-time step up
when a larger dynamic batch first comes along. Exits 1 on any failed or wrong answer, or growth
above 5 %. Durations in Locust's syntax (90, 20s, 2m, 1h30m).
"""

from __future__ import annotations

import argparse
import logging
import statistics
import time
from pathlib import Path

from iqa.serving.watchdog import python_stubs
from iqa_client.cli import HelpFormatter
from loadtest.pressure import Pressure, local_server, sample_photos, summary
from loadtest.settings import duration_s

MAX_GROWTH = 0.05
SAMPLE_S = 10


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def server_rss(server_pid: int) -> int:
    """tritonserver and its Python-backend stubs together."""
    return rss_bytes(server_pid) + sum(rss_bytes(pid) for pids in python_stubs(server_pid).values() for pid in pids)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--duration", type=duration_s, default="10m", help="how long to load (seconds, or 30s, 10m)")
    parser.add_argument("--concurrency", type=int, default=8, help="clients scoring at once")
    parser.add_argument("--warm-up", type=duration_s, default="2m", help="load before the memory baseline")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    images = sample_photos()
    server = local_server("soak", watchdog=True)
    samples: list[tuple[float, int]] = []
    with server:
        start = time.monotonic()
        with Pressure(server.grpc_url, images, concurrency=args.concurrency) as load:
            while time.monotonic() - start < args.duration:
                time.sleep(SAMPLE_S)
                samples.append((time.monotonic() - start, server_rss(server.process.pid)))
                print(f"{samples[-1][0]:6.0f} s  {samples[-1][1] / 2**20:8.1f} MiB  "
                      f"{len(load.outcomes)} requests", flush=True)
        recoveries = server.guard.recoveries
    outcomes = load.outcomes
    baseline = [rss for t, rss in samples if args.warm_up <= t < args.warm_up + 60]
    final = [rss for t, rss in samples if t >= samples[-1][0] - 60]
    growth = statistics.median(final) / statistics.median(baseline) - 1 if baseline and final else float("nan")
    after = [(t, rss) for t, rss in samples if t >= args.warm_up]
    slope = statistics.linear_regression(*zip(*after)).slope * 60 / 2**20 if len(after) > 1 else float("nan")
    failed = [o for o in outcomes if not o.ok]
    print(summary(outcomes))
    print(f"{args.duration / 60:.0f} min at concurrency {args.concurrency}: {len(outcomes) / args.duration:.2f} req/s, "
          f"{len(failed)} failed; server + stubs RSS {statistics.median(baseline) / 2**20:.0f} MiB after warm-up -> "
          f"{statistics.median(final) / 2**20:.0f} MiB at the end ({growth:+.1%}), trend {slope:+.1f} MiB/min; "
          f"watchdog reloads: {recoveries}")
    return 0 if not failed and growth <= MAX_GROWTH else 1


if __name__ == "__main__":
    raise SystemExit(main())
