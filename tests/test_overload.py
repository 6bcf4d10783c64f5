"""Overload: far past its capacity the real server refuses the excess at once with UNAVAILABLE,
answers what it accepts correctly, and the client's retries turn refusals into scores.

The server here is the production repository with its queues shrunk to QUEUE requests (through the
launcher's config_edit hook), so a few dozen concurrent requests overload it within seconds on
two CPU cores. The 60-second run at 10x saturation with the committed queue sizes is
`python -m loadtest.overload` (docs/operations.md "Overload").
"""

from __future__ import annotations

import re
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from iqa.contract import ENSEMBLE_MODEL, SCORE_NAMES
from iqa_client import IQAClient, RetryPolicy, Scores, ServerBusyError
from loadtest.pressure import OK, Pressure, summary
from tests.conftest import serve

QUEUE = 2
CONCURRENCY = 24  # ~3x what saturates this ensemble on 2 cores (BENCHMARKS.md)
REFUSED = ("StatusCode.UNAVAILABLE", re.compile(r"Exceeds maximum queue size|Request timeout expired"))


def small_queues(model: str, config: str) -> str:
    return re.sub(r"max_queue_size: \d+", f"max_queue_size: {QUEUE}", config)


@pytest.fixture(scope="module")
def crowded(tmp_path_factory):
    with serve(tmp_path_factory, "crowded", small_queues) as server:
        yield server


@pytest.fixture(scope="module")
def expected(photos, score_in_process):
    return [np.array([score_in_process(data)[name] for name in SCORE_NAMES]) for data in photos.values()]


def test_past_its_queues_the_server_refuses_with_unavailable_and_answers_the_rest_correctly(crowded, photos,
                                                                                          expected):
    load = Pressure(crowded.grpc_url, list(photos.values()), concurrency=CONCURRENCY, expected=expected).start()
    time.sleep(10)
    outcomes = load.stop()

    refused = [o for o in outcomes if not o.ok]
    assert refused and any(o.ok for o in outcomes), summary(outcomes)
    for outcome in refused:
        assert outcome.status == REFUSED[0] and REFUSED[1].search(outcome.message), summary(outcomes)
    # Refused at once, not after waiting: the queue is full when they arrive.
    assert np.median([o.latency_s for o in refused]) < 0.5, summary(outcomes)
    with grpcclient.InferenceServerClient(crowded.grpc_url) as client:
        assert client.is_server_ready() and client.is_model_ready(ENSEMBLE_MODEL)
    assert sum(o.status == OK for o in outcomes) + len(refused) == len(outcomes)


def test_the_client_retries_refusals_until_every_image_is_scored(crowded, photos):
    images = list(photos.values()) * 8
    with grpcclient.InferenceServerClient(crowded.grpc_url) as stats:
        before = _failures(stats)
        # Retries bounded by the 120 s timeout alone, not a count, so a slow (shared) machine passes too.
        with IQAClient(crowded.grpc_url, timeout=120, retry=RetryPolicy(attempts=10_000, max_backoff_s=1.0)) as client:
            outcomes = client.score_many(images, concurrency=CONCURRENCY)
        refusals = _failures(stats) - before
    assert all(isinstance(o, Scores) for o in outcomes), [o for o in outcomes if not isinstance(o, Scores)][:3]
    assert refusals > 0, "the server refused nothing: this test did not overload it"


def test_without_retries_the_client_names_the_overload(crowded, photos):
    images = list(photos.values()) * 8
    with IQAClient(crowded.grpc_url, timeout=120, retry=RetryPolicy(attempts=1)) as client:
        outcomes = client.score_many(images, concurrency=CONCURRENCY)
    busy = [o for o in outcomes if isinstance(o, ServerBusyError)]
    assert busy and all(isinstance(o, (Scores, ServerBusyError)) for o in outcomes), outcomes
    assert "at capacity" in str(busy[0]) and REFUSED[1].search(str(busy[0]))


def _failures(client) -> int:
    stats = client.get_inference_statistics(ENSEMBLE_MODEL, as_json=True)["model_stats"][0]
    return int(stats["inference_stats"].get("fail", {}).get("count", 0))
