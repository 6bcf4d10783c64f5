"""Closed-loop gRPC load that records every request's fate, for the fault and overload runs.

    with Pressure(url, images, concurrency=80) as load:
        time.sleep(60)
    load.outcomes   # one Outcome per request: when it was sent and answered, and how

Each of `concurrency` threads sends one image at a time through the ensemble with plain
tritonclient, without retries, so every refusal the server makes is seen and counted; a
response counts as correct only when it carries the three scores in [0, 1] (and, given
`expected`, equals them). After a refusal a thread pauses briefly, as a retrying client would.
"""

from __future__ import annotations

import itertools
import statistics
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from iqa.contract import ENSEMBLE_MODEL, IMAGE_INPUT, SCORE_NAMES
from iqa.serving.launcher import REPO, Ports, TritonServer, free_ports

OK = "OK"
WRONG = "WRONG_ANSWER"  # an answer without three scores in [0, 1], or not the expected ones
TOLERANCE = 1e-4  # the same image scored in a different dynamic batch (tests/test_server.py)


def sample_photos() -> list[bytes]:
    """The encoded photos of tests/data, which every fault and overload run sends."""
    return [p.read_bytes() for p in sorted((REPO / "tests" / "data").glob("*.jpg"))]


def local_server(name: str, *, watchdog: bool) -> TritonServer:
    """A server for one measurement command, on free ports, logging to .run/<name>/tritonserver.log."""
    run_dir = REPO / ".run" / name
    run_dir.mkdir(parents=True, exist_ok=True)
    return TritonServer(ports=Ports(*free_ports(3)), run_dir=run_dir, log_file=run_dir / "tritonserver.log",
                        watchdog=watchdog, health_port=free_ports(1)[0])


@dataclass(frozen=True)
class Outcome:
    sent_s: float  # time.monotonic() when sent
    done_s: float
    status: str  # OK, WRONG_ANSWER or the gRPC status ("StatusCode.UNAVAILABLE")
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == OK

    @property
    def latency_s(self) -> float:
        return self.done_s - self.sent_s


@dataclass
class Pressure:
    url: str
    images: list[bytes]
    concurrency: int = 8
    timeout_s: float = 60.0
    expected: list[np.ndarray] | None = None  # per image: scores in SCORE_NAMES order
    pause_after_error_s: float = 0.05
    outcomes: list[Outcome] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._user, args=(n,), name=f"pressure-{n}", daemon=True)
                         for n in range(self.concurrency)]

    def start(self) -> Pressure:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[Outcome]:
        """Stop sending; wait for the requests in flight to be answered."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout_s + 10)
        return self.outcomes

    def __enter__(self) -> Pressure:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def since(self, start_s: float) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.sent_s >= start_s]

    def _user(self, n: int) -> None:
        client = grpcclient.InferenceServerClient(self.url)
        try:
            for index in itertools.islice(itertools.cycle(range(len(self.images))), n % len(self.images), None):
                if self._stop.is_set():
                    return
                outcome = self._one(client, index)
                with self._lock:
                    self.outcomes.append(outcome)
                if not outcome.ok:
                    time.sleep(self.pause_after_error_s)
        finally:
            client.close()

    def _one(self, client: grpcclient.InferenceServerClient, index: int) -> Outcome:
        tensor = grpcclient.InferInput(IMAGE_INPUT, [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[self.images[index]]], dtype=np.object_))
        sent = time.monotonic()
        try:
            result = client.infer(ENSEMBLE_MODEL, [tensor], client_timeout=self.timeout_s)
        except InferenceServerException as err:
            return Outcome(sent, time.monotonic(), str(err.status()), err.message() or str(err))
        done = time.monotonic()
        try:
            scores = np.array([float(result.as_numpy(name).reshape(-1)[0]) for name in SCORE_NAMES])
        except (AttributeError, IndexError, TypeError, ValueError) as err:
            return Outcome(sent, done, WRONG, f"unreadable answer: {err}")
        if not ((scores >= 0) & (scores <= 1)).all():
            return Outcome(sent, done, WRONG, f"scores out of [0, 1]: {scores}")
        if self.expected is not None and not np.allclose(scores, self.expected[index], atol=TOLERANCE):
            return Outcome(sent, done, WRONG, f"scores {scores} != expected {self.expected[index]}")
        return Outcome(sent, done, OK)


def summary(outcomes: list[Outcome]) -> str:
    """Counts by status (and message), and the latency of the correct answers."""
    by_status = Counter((o.status, _short(o.message)) for o in outcomes)
    lines = [f"{len(outcomes)} requests"]
    lines += [f"  {count:6d}  {status}{': ' + message if message else ''}" for (status, message), count
              in by_status.most_common()]
    ok = sorted(o.latency_s for o in outcomes if o.ok)
    if ok:
        lines.append(f"  correct answers: latency median {statistics.median(ok) * 1000:.0f} ms, "
                     f"p99 {ok[int(0.99 * (len(ok) - 1))] * 1000:.0f} ms, max {ok[-1] * 1000:.0f} ms")
    return "\n".join(lines)


def _short(message: str) -> str:
    """The message without the per-request noise (request ids, addresses), for counting."""
    message = message.replace("[request id: <id_unknown>] ", "")
    return message.split("; last error")[0][:100]
