"""`make loadtest`: run Locust headless against the service, bounded in time, and summarise it.

    .venv/bin/python -m loadtest.run [--users 8] [--run-time 60s] [--find-knee] [--url host:port]

Uses the server at --url, else one already answering on 127.0.0.1:8001 (`make serve`), else
starts the local server on free ports for the run; the output names the server it measured, and
a server that does not answer ends the run at once (exit status 3) with no figures. Loopback only.
Writes Locust's CSV files and HTML report to --out (default loadtest/reports/, which git ignores) and
prints requests, throughput, p50/p95/p99 and the failures with their reasons; exits 1 when any request
failed or none was made. While Locust runs, a progress line goes to stderr every 10 s.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from iqa.contract import ENSEMBLE_MODEL
from iqa_client.cli import PROGRESS_INTERVAL_S, HelpFormatter
from iqa.serving.launcher import REPO, Ports, TritonServer, free_ports
from loadtest.preflight import server_problem
from loadtest.prepare_corpus import DEFAULT_OUT as DEFAULT_CORPUS
from loadtest.prepare_corpus import prepare
from loadtest.settings import KNEE_DEFAULTS, duration_s, knee_settings

LOCUSTFILE = REPO / "loadtest" / "locustfile.py"
KNEE_SHAPE = REPO / "loadtest" / "knee_shape.py"
LOCAL_URL = "127.0.0.1:8001"  # where `make serve` listens
EXIT_SERVER_UNUSABLE = 3  # as the `iqa` command line's and the locustfile's


@dataclass(frozen=True)
class Summary:
    url: str
    requests: int
    failures: int
    req_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    returncode: int
    output: str  # Locust's stdout (the knee table) then its stderr (logs, stats tables)
    knee_table: str  # what loadtest/knee_shape.py printed, "" without --find-knee
    failure_reasons: tuple[tuple[int, str], ...] = ()  # (occurrences, reason), most frequent first

    def line(self) -> str:
        if self.requests == 0:
            return f"{self.url}: no request was made (Locust exit status {self.returncode})"
        if self.failures == self.requests:
            return f"{self.url}: all {self.requests} requests failed: no throughput or latency to report"
        return (f"{self.url}: {self.requests} requests, {self.failures} failed, {self.req_per_s:.2f} req/s, "
                f"p50 {self.p50_ms:.0f} ms, p95 {self.p95_ms:.0f} ms, p99 {self.p99_ms:.0f} ms")

    def reasons(self) -> str:
        return "\n".join(f"  {count} x {reason}" for count, reason in self.failure_reasons)


def run_locust(grpc_url: str, *, users: int, run_time_s: float, out: Path, corpus: Path, model: str | None = None,
               max_requests: int = 0, find_knee: bool = False, env: dict | None = None,
               extra: list[str] = ()) -> Summary:
    """One bounded headless Locust run against grpc_url; the summary comes from its CSV files."""
    out.mkdir(parents=True, exist_ok=True)
    for stale in out.glob("locust_*.csv"):  # a run that writes none must not be read as the last one's
        stale.unlink()
    files = f"{LOCUSTFILE},{KNEE_SHAPE}" if find_knee else str(LOCUSTFILE)
    command = [sys.executable, "-m", "locust", "-f", files, "--headless", "--host", grpc_url,
               "--corpus", str(corpus), "--csv", str(out / "locust"), "--html", str(out / "report.html"),
               "--only-summary", "--max-requests", str(max_requests), *extra]
    if model:
        command += ["--model", model]
    if not find_knee:
        command += ["-u", str(users), "-r", str(users), "-t", f"{max(1, round(run_time_s))}s"]
    settings = {**os.environ, **(env or {})}
    planned_s = knee_settings(settings).length_s if find_knee else run_time_s
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                          env=settings) as process, progress_lines(f"loadtest: {grpc_url}", planned_s):
        try:
            stdout, stderr = process.communicate(timeout=planned_s + 60)
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    completed = subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
    output = completed.stdout + completed.stderr
    total = _rows(out / "locust_stats.csv")
    aggregated = next((row for row in total if row["Name"] == "Aggregated"), None)
    if aggregated is None:
        return Summary(grpc_url, 0, 0, 0.0, 0.0, 0.0, 0.0, completed.returncode, output, completed.stdout.strip())
    reasons: dict[str, int] = {}
    for row in _rows(out / "locust_failures.csv"):
        reasons[row["Error"]] = reasons.get(row["Error"], 0) + int(row["Occurrences"])
    return Summary(url=grpc_url, requests=int(aggregated["Request Count"]), failures=int(aggregated["Failure Count"]),
                   req_per_s=float(aggregated["Requests/s"]), p50_ms=float(aggregated["50%"]),
                   p95_ms=float(aggregated["95%"]), p99_ms=float(aggregated["99%"]), returncode=completed.returncode,
                   output=output, knee_table=completed.stdout.strip(),
                   failure_reasons=tuple(sorted(((n, r) for r, n in reasons.items()), reverse=True)))


@contextlib.contextmanager
def progress_lines(label: str, planned_s: float, interval_s: float = PROGRESS_INTERVAL_S):
    """A line on stderr every interval_s while a long run goes on (Locust prints nothing until its summary), as
    `iqa` does when stderr is no terminal."""
    stop, started = threading.Event(), time.monotonic()

    def tick():
        while not stop.wait(interval_s):
            print(f"{label}: {time.monotonic() - started:.0f} s of about {planned_s:.0f} s", file=sys.stderr, flush=True)

    ticker = threading.Thread(target=tick, daemon=True, name="loadtest-progress")
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()


def _rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1 (Locust's own refusal would name --spawn-rate, which the user never gave)."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--url", help="gRPC host:port of a running server (else 127.0.0.1:8001 if it answers, "
                                      "else a local server started for the run)")
    parser.add_argument("--users", type=positive_int, default=8, help="concurrent Locust users (ignored with --find-knee)")
    parser.add_argument("--run-time", type=duration_s, default="60s",
                        help="how long to load, in Locust's syntax: 90, 20s, 2m, 1h30m (ignored with --find-knee)")
    parser.add_argument("--max-requests", type=int, default=20000, help="stop after this many requests")
    parser.add_argument("--find-knee", action="store_true",
                        help="step the users up and report the highest throughput whose p99 stays under a limit "
                             "(loadtest/knee_shape.py); settings from the environment: IQA_STEPS "
                             f"({KNEE_DEFAULTS['IQA_STEPS']}), IQA_STEP_SECONDS ({KNEE_DEFAULTS['IQA_STEP_SECONDS']}, "
                             f"or 30s, 1m), IQA_P99_LIMIT_MS ({KNEE_DEFAULTS['IQA_P99_LIMIT_MS']}); "
                             "it lasts steps x step seconds (2 minutes by default)")
    parser.add_argument("--model", default=ENSEMBLE_MODEL, help="model to call")
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="folder of images to send")
    parser.add_argument("--debian", action="store_true", help="prepare the corpus with the Debian photos too")
    parser.add_argument("--out", type=Path, default=REPO / "loadtest" / "reports",
                        help="where Locust's CSV files and HTML report go (loadtest/reports/ is git-ignored)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)

    server = None
    if args.url:
        url, origin = args.url, "given by --url"
    elif server_problem(LOCAL_URL, args.model, timeout_s=2.0) is None:
        url, origin = LOCAL_URL, "already running; pass --url to measure another"
    else:
        run_dir = REPO / ".run" / "loadtest"
        run_dir.mkdir(parents=True, exist_ok=True)
        server = TritonServer(ports=Ports(*free_ports(3)), run_dir=run_dir, log_file=run_dir / "tritonserver.log")
        url, origin = server.grpc_url, f"started for this run, log: {run_dir / 'tritonserver.log'}"
    print(f"server: {url} ({origin})", flush=True)
    with server or contextlib.nullcontext():
        problem = server_problem(url, args.model)
        if problem:
            print(f"loadtest: {problem}: no load test run, no figures", file=sys.stderr)
            return EXIT_SERVER_UNUSABLE
        if not (args.corpus.is_dir() and any(args.corpus.iterdir())):
            print(f"preparing the corpus in {args.corpus}")
            prepare(args.corpus, args.debian)
        summary = run_locust(url, users=args.users, run_time_s=args.run_time, out=args.out, corpus=args.corpus,
                             model=args.model, max_requests=args.max_requests, find_knee=args.find_knee)
    if summary.knee_table:
        print(summary.knee_table)
    print(summary.line())
    if summary.failure_reasons:
        print(f"failures by reason:\n{summary.reasons()}")
    if summary.requests:
        print(f"reports: {args.out}/locust_stats.csv, {args.out}/report.html")
    else:
        print(summary.output[-3000:], file=sys.stderr)
    return 0 if summary.failures == 0 and summary.requests > 0 and summary.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
