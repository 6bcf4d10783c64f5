"""Overload at 10x saturation with the committed queue policy: bounded waits, clear refusals, no crash.

    .venv/bin/python -m loadtest.overload [--concurrency 80] [--duration 60s] [--url host:port]

`--concurrency` clients (default 80: ten times the 8 that saturate the ensemble on this 2-core VM,
BENCHMARKS.md) score the test photos through the ensemble without retries for `--duration`. Prints
the refusals by status and message, the latency of accepted requests (the wait is bounded by the
queue policy: 64 requests and 5 s per composing model without a GPU), wrong answers, and whether the server is
still live and ready. Uses --url, else starts the local server for the run. Exits 1 on a wrong answer,
a refusal other than UNAVAILABLE, or a server that did not survive.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import time

import tritonclient.grpc as grpcclient

from iqa.contract import ENSEMBLE_MODEL
from iqa_client.cli import HelpFormatter
from loadtest.pressure import OK, WRONG, Pressure, local_server, sample_photos, summary
from loadtest.settings import duration_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--concurrency", type=int, default=80, help="clients scoring at once, without retries")
    parser.add_argument("--duration", "--seconds", type=duration_s, default="60s",
                        help="how long to overload (seconds, or 30s, 2m)")
    parser.add_argument("--url", help="gRPC host:port of a running server (none: start a local one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    images = sample_photos()
    server = None if args.url else local_server("overload", watchdog=False)
    with server or contextlib.nullcontext():
        url = args.url or server.grpc_url
        with Pressure(url, images, concurrency=args.concurrency, timeout_s=120) as load:
            time.sleep(args.duration)
        outcomes = load.outcomes
        with grpcclient.InferenceServerClient(url) as client:
            healthy = client.is_server_live() and client.is_server_ready() and client.is_model_ready(ENSEMBLE_MODEL)
        crashed = server is not None and server.process.poll() is not None

    accepted = [o for o in outcomes if o.status == OK]
    print(f"{args.concurrency} clients for {args.duration:.0f} s: {len(accepted) / args.duration:.2f} accepted req/s")
    print(summary(outcomes))
    print(f"max wait of an accepted request: {max((o.latency_s for o in accepted), default=0):.2f} s; "
          f"server live and ready afterwards: {healthy}; crashed: {crashed}")
    unexpected = [o for o in outcomes if o.status not in (OK, "StatusCode.UNAVAILABLE")]
    return 1 if unexpected or any(o.status == WRONG for o in outcomes) or not healthy or crashed else 0


if __name__ == "__main__":
    raise SystemExit(main())
