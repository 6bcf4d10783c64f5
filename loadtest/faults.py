"""Kill a Python-backend stub under load and measure how the service notices and recovers.

    python -m loadtest.faults [--repeat 3] [--concurrency 4]

Starts the local server with its watchdog (as `make serve` does), keeps `--concurrency` clients
scoring the test photos, and for each composing model with a stub, `--repeat` times: SIGKILLs the
stub (what the OOM killer does), then records how long until the watchdog's /ready says 503, how
long until every answer is correct again, and how many requests failed meanwhile. Prints one line
per fault and the medians. Exits 1 if an answer was wrong (rather than an error) or a fault was
not recovered.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import statistics
import time
from collections import Counter
from dataclasses import dataclass

from iqa.serving.launcher import TritonServer
from iqa.serving.watchdog import answers_200, python_stubs
from loadtest.pressure import WRONG, Pressure, local_server, sample_photos


@dataclass(frozen=True)
class FaultReport:
    model: str
    not_ready_after_s: float | None  # None: /ready never said 503
    correct_again_after_s: float | None  # None: not within the wait
    failed_requests: int
    wrong_answers: int
    seen: str = ""  # what the failed requests got, by status

    def line(self) -> str:
        def seconds(value):
            return "never" if value is None else f"{value:.1f} s"
        return (f"{self.model}: not ready after {seconds(self.not_ready_after_s)}, correct answers again after "
                f"{seconds(self.correct_again_after_s)}, {self.failed_requests} failed requests, "
                f"{self.wrong_answers} wrong answers{' (' + self.seen + ')' if self.seen else ''}")


def ready(health_url: str) -> bool:
    """The watchdog's verdict: GET <health_url>/ready answers 200."""
    return answers_200(f"{health_url}/ready")


def kill_stub(server: TritonServer, model: str, load: Pressure, *, wait_s: float = 60.0,
              settle_s: float = 3.0) -> FaultReport:
    """SIGKILL `model`'s stub while `load` runs; watch /ready and the answers until both are good again."""
    (pid, *_) = python_stubs(server.process.pid)[model]
    killed = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    not_ready_at = None
    deadline = killed + wait_s
    while time.monotonic() < deadline:
        is_ready = ready(server.health_url)
        if not is_ready and not_ready_at is None:
            not_ready_at = time.monotonic()
        if not_ready_at is not None and is_ready:
            break
        time.sleep(0.1)
    time.sleep(settle_s)  # answers keep coming: "correct again" must hold for a while, not once
    outcomes = load.since(killed - 60)
    after = [o for o in outcomes if o.done_s >= killed]
    failed = [o for o in after if not o.ok]
    # Correct again: from the first request sent after which nothing failed.
    last_failure_sent = max((o.sent_s for o in failed), default=killed)
    recovered = [o.sent_s for o in after if o.ok and o.sent_s > last_failure_sent]
    correct_again = (min(recovered) - killed) if recovered else None
    seen = Counter(f"{o.status.removeprefix('StatusCode.')} {o.message.split(',')[-1].strip()[:60]!r}"
                   for o in failed)
    return FaultReport(model, None if not_ready_at is None else not_ready_at - killed, correct_again,
                       len(failed), sum(o.status == WRONG for o in after),
                       "; ".join(f"{n} {what}" for what, n in seen.most_common()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    images = sample_photos()
    server = local_server("faults", watchdog=True)
    reports = []
    with server:
        models = sorted(python_stubs(server.process.pid))
        print(f"stubs: {', '.join(models)}; {args.concurrency} clients; log {server.log_file}")
        with Pressure(server.grpc_url, images, concurrency=args.concurrency) as load:
            time.sleep(5)
            for round_ in range(args.repeat):
                for model in models:
                    report = kill_stub(server, model, load)
                    print(f"round {round_ + 1}: {report.line()}", flush=True)
                    reports.append(report)
    for model in models:
        mine = [r for r in reports if r.model == model]
        times = [r.correct_again_after_s for r in mine if r.correct_again_after_s is not None]
        flags = [r.not_ready_after_s for r in mine if r.not_ready_after_s is not None]
        print(f"{model}: median not-ready after {statistics.median(flags):.1f} s, median correct again after "
              f"{statistics.median(times):.1f} s, median {statistics.median(r.failed_requests for r in mine)} "
              f"failed requests per fault ({len(mine)} faults)" if times and flags else f"{model}: NOT recovered")
    bad = any(r.wrong_answers or r.correct_again_after_s is None or r.not_ready_after_s is None for r in reports)
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
