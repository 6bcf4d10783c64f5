"""`make loadtest`: run Locust headless against the service, bounded in time, and summarise it.

    python -m loadtest.run [--users 8] [--run-time 60] [--find-knee] [--url host:port]

Uses the server at --url, else one already answering on 127.0.0.1:8001 (`make serve`), else
starts the local server on free ports for the run. Loopback only. Writes Locust's CSV files and
HTML report to --out and prints requests, throughput, p50/p95/p99 and failures; exits 1 when any
request failed or none was made.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from iqa.serving.launcher import REPO, Ports, TritonServer, answers_200, free_ports
from loadtest.prepare_corpus import DEFAULT_OUT as DEFAULT_CORPUS
from loadtest.prepare_corpus import prepare

LOCUSTFILE = REPO / "loadtest" / "locustfile.py"
KNEE_SHAPE = REPO / "loadtest" / "knee_shape.py"


@dataclass(frozen=True)
class Summary:
    requests: int
    failures: int
    req_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    returncode: int
    output: str  # Locust's stdout (the knee table) then its stderr (logs, stats tables)
    knee_table: str  # what loadtest/knee_shape.py printed, "" without --find-knee

    def line(self) -> str:
        return (f"{self.requests} requests, {self.failures} failed, {self.req_per_s:.2f} req/s, "
                f"p50 {self.p50_ms:.0f} ms, p95 {self.p95_ms:.0f} ms, p99 {self.p99_ms:.0f} ms")


def run_locust(grpc_url: str, *, users: int, run_time_s: int, out: Path, corpus: Path, model: str | None = None,
               max_requests: int = 0, find_knee: bool = False, env: dict | None = None,
               extra: list[str] = ()) -> Summary:
    """One bounded headless Locust run against grpc_url; the summary comes from its CSV file."""
    out.mkdir(parents=True, exist_ok=True)
    files = f"{LOCUSTFILE},{KNEE_SHAPE}" if find_knee else str(LOCUSTFILE)
    command = [sys.executable, "-m", "locust", "-f", files, "--headless", "--host", grpc_url,
               "--corpus", str(corpus), "--csv", str(out / "locust"), "--html", str(out / "report.html"),
               "--only-summary", "--max-requests", str(max_requests), *extra]
    if model:
        command += ["--model", model]
    if not find_knee:
        command += ["-u", str(users), "-r", str(users), "-t", f"{run_time_s}s"]
    settings = {**os.environ, **(env or {})}
    steps = len(settings.get("IQA_STEPS", "1,2,4,8,16,32").split(",")) if find_knee else 0
    budget = (steps * float(settings.get("IQA_STEP_SECONDS", "20")) if find_knee else run_time_s) + 60
    completed = subprocess.run(command, capture_output=True, text=True, timeout=budget, cwd=REPO, env=settings)
    with open(out / "locust_stats.csv", newline="") as handle:
        total = next(row for row in csv.DictReader(handle) if row["Name"] == "Aggregated")
    return Summary(requests=int(total["Request Count"]), failures=int(total["Failure Count"]),
                   req_per_s=float(total["Requests/s"]), p50_ms=float(total["50%"]), p95_ms=float(total["95%"]),
                   p99_ms=float(total["99%"]), returncode=completed.returncode,
                   output=completed.stdout + completed.stderr, knee_table=completed.stdout.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="gRPC host:port of a running server (default: 127.0.0.1:8001 if up, "
                                      "else a local server started for the run)")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--run-time", type=int, default=60, help="seconds (ignored with --find-knee)")
    parser.add_argument("--max-requests", type=int, default=20000, help="stop after this many requests")
    parser.add_argument("--find-knee", action="store_true", help="step users up (loadtest/knee_shape.py)")
    parser.add_argument("--model", help="model to call (default iqa_degradation)")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--debian", action="store_true", help="prepare the corpus with the Debian photos too")
    parser.add_argument("--out", type=Path, default=REPO / "loadtest" / "reports")
    args = parser.parse_args(argv)

    if not (args.corpus.is_dir() and any(args.corpus.iterdir())):
        print(f"preparing the corpus in {args.corpus}")
        prepare(args.corpus, args.debian)

    server = None
    if args.url:
        url = args.url
    elif answers_200("http://127.0.0.1:8000/v2/health/ready"):
        url = "127.0.0.1:8001"
        print("using the server already running on 127.0.0.1:8001")
    else:
        run_dir = REPO / ".run" / "loadtest"
        run_dir.mkdir(parents=True, exist_ok=True)
        server = TritonServer(ports=Ports(*free_ports(3)), run_dir=run_dir, log_file=run_dir / "tritonserver.log")
        print(f"starting a local server for the run (log: {run_dir / 'tritonserver.log'})")
    with server or contextlib.nullcontext():
        summary = run_locust(server.grpc_url if server else url, users=args.users, run_time_s=args.run_time,
                             out=args.out, corpus=args.corpus, model=args.model, max_requests=args.max_requests,
                             find_knee=args.find_knee)
    if summary.knee_table:
        print(summary.knee_table)
    print(f"{summary.line()}\nreports: {args.out}/locust_stats.csv, {args.out}/report.html")
    return 0 if summary.failures == 0 and summary.requests > 0 and summary.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
