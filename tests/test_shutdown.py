"""Graceful shutdown of the real server: SIGTERM in the middle of load loses no accepted request.

What Triton 2.51 does on SIGTERM (measured, docs/operations.md "Shutdown"): it finishes the requests in
flight, refuses new ones (UNAVAILABLE "Server is stopping", then NOT_FOUND "has no available
versions" once the models are unloaded, then UNAVAILABLE connection refused; a call that lands
as the gRPC server closes gets CANCELLED), and exits 0 within --exit-timeout-secs. The IQA client
retries all of these.
"""

from __future__ import annotations

import signal
import time

import numpy as np

from iqa.contract import SCORE_NAMES
from iqa.serving.launcher import Ports, TritonServer, free_ports
from loadtest.pressure import Pressure, summary
from tests.conftest import without_warmup

EXIT_TIMEOUT_S = 10


def refused_while_stopping(status: str, message: str) -> bool:
    # CANCELLED: a call that arrives as the gRPC server itself shuts down (rare; the client retries it).
    return status in ("StatusCode.UNAVAILABLE", "StatusCode.CANCELLED") or (
        status == "StatusCode.NOT_FOUND" and "has no available versions" in message)


def test_sigterm_under_load_finishes_accepted_requests_refuses_new_ones_and_exits_in_time(
        tmp_path, photos, score_in_process):
    expected = [np.array([score_in_process(d)[n] for n in SCORE_NAMES]) for d in photos.values()]
    server = TritonServer(ports=Ports(*free_ports(3)), run_dir=tmp_path, log_file=tmp_path / "tritonserver.log",
                          exit_timeout_s=EXIT_TIMEOUT_S, config_edit=without_warmup())
    with server:
        load = Pressure(server.grpc_url, list(photos.values()), concurrency=6, expected=expected).start()
        time.sleep(5)
        sigterm = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        code = server.process.wait(timeout=EXIT_TIMEOUT_S + 20)
        exited = time.monotonic()
        outcomes = load.stop()

    before = [o for o in outcomes if o.sent_s < sigterm]
    assert sum(o.ok for o in before) >= 6, summary(before)
    # Each request sent before the signal is answered correctly, or, if it had not reached the
    # scheduler yet when the signal came, refused as stopping (not accepted, so not lost: clients
    # retry it). Anything else (an error, a wrong answer, a hang) is an accepted request lost.
    for outcome in before:
        assert outcome.ok or (refused_while_stopping(outcome.status, outcome.message)
                              and outcome.done_s >= sigterm), summary(before)
    later = [o for o in outcomes if o.sent_s >= sigterm]
    assert any(not o.ok for o in later), "nothing was refused: the load stopped before the server did"
    for outcome in later:
        assert outcome.ok or refused_while_stopping(outcome.status, outcome.message), summary(later)
    assert code == 0, (tmp_path / "tritonserver.log").read_text()[-3000:]
    assert exited - sigterm <= EXIT_TIMEOUT_S
