"""Step the users up to find the knee: the highest throughput whose p99 latency stays under a limit.

    locust -f loadtest/locustfile.py,loadtest/knee_shape.py --headless --host 127.0.0.1:8001

Each step holds a number of users for IQA_STEP_SECONDS (default 20; or 30s, 1m) and is measured on
its own (requests, failures, p50/p99 from the step's responses only). The table and the knee are
printed when the test ends. IQA_STEPS="1,2,4,8,16,32" and IQA_P99_LIMIT_MS (default 1000) configure
it (loadtest/settings.py); the run lasts steps x step seconds: 2 minutes by default.
"""

from __future__ import annotations

from locust import LoadTestShape, events

from loadtest.settings import knee_settings

SETTINGS = knee_settings()
STEPS = list(SETTINGS.steps)
STEP_SECONDS = SETTINGS.step_s
P99_LIMIT_MS = SETTINGS.p99_limit_ms
# The first seconds of a step are spawning and queue filling: measured from here on.
SETTLE_SECONDS = min(5.0, STEP_SECONDS / 4)


class StepUpToTheKnee(LoadTestShape):
    def __init__(self) -> None:
        super().__init__()
        self.results: list[dict] = []
        self._open: tuple[int, float, dict] | None = None  # (users, time, snapshot) of the measured window

    def tick(self):
        elapsed = self.get_run_time()
        step = int(elapsed // STEP_SECONDS)
        into_step = elapsed - step * STEP_SECONDS
        if self._open and (step >= len(STEPS) or STEPS[step] != self._open[0]):
            self._close(elapsed)
        if step >= len(STEPS):
            return None
        if self._open is None and into_step >= SETTLE_SECONDS:
            self._open = (STEPS[step], elapsed, _snapshot(self.runner.stats.total))
        return STEPS[step], STEPS[step]

    def _close(self, now: float) -> None:
        users, started, before = self._open
        after = _snapshot(self.runner.stats.total)
        requests = after["requests"] - before["requests"]
        times = {k: after["times"].get(k, 0) - before["times"].get(k, 0) for k in after["times"]}
        self.results.append({"users": users, "req_per_s": requests / max(now - started, 1e-9),
                             "failures": after["failures"] - before["failures"], "requests": requests,
                             "p50_ms": _percentile(times, 0.50), "p99_ms": _percentile(times, 0.99)})
        self._open = None


def _snapshot(total) -> dict:
    return {"requests": total.num_requests, "failures": total.num_failures, "times": dict(total.response_times)}


def _percentile(histogram: dict[int, int], q: float) -> float:
    """Percentile of Locust's bucketed response times (ms -> count)."""
    count = sum(histogram.values())
    if count == 0:
        return float("nan")
    seen = 0
    for millis in sorted(histogram):
        seen += histogram[millis]
        if seen >= q * count:
            return float(millis)
    return float(max(histogram))


def knee(results: list[dict], limit_ms: float = P99_LIMIT_MS) -> dict | None:
    """The step with the highest throughput among those whose p99 is under the limit and had no failures."""
    good = [r for r in results if r["p99_ms"] <= limit_ms and r["failures"] == 0 and r["requests"]]
    return max(good, key=lambda r: r["req_per_s"]) if good else None


@events.quitting.add_listener
def _report(environment, **_):
    shape = environment.shape_class
    if not isinstance(shape, StepUpToTheKnee):
        return
    if shape._open:
        shape._close(shape.get_run_time())
    print(f"\n{'users':>5} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'failures':>8}")
    for r in shape.results:
        print(f"{r['users']:>5} {r['req_per_s']:>8.2f} {r['p50_ms']:>8.0f} {r['p99_ms']:>8.0f} {r['failures']:>8}")
    best = knee(shape.results)
    print(f"knee (p99 <= {P99_LIMIT_MS:.0f} ms): " + (f"{best['users']} users, {best['req_per_s']:.2f} req/s, "
          f"p99 {best['p99_ms']:.0f} ms" if best else "no step met the limit"))
