"""Locust smoke runs against the real server (conftest's `triton`): real Locust, real gRPC, bounded."""

import re

from loadtest.prepare_corpus import prepare
from loadtest.run import run_locust


def corpus_in(tmp_path):
    corpus = tmp_path / "corpus"
    prepare(corpus)
    return corpus


def test_a_short_locust_run_has_no_failures_and_every_response_carries_three_scores(triton, tmp_path):
    out = tmp_path / "reports"
    summary = run_locust(triton.grpc_url, users=4, run_time_s=20, out=out, corpus=corpus_in(tmp_path))
    assert summary.returncode == 0, summary.output[-3000:]
    assert summary.requests >= 10 and summary.failures == 0, summary.line()
    assert (out / "report.html").stat().st_size > 0 and (out / "locust_stats.csv").exists()


def test_answers_without_the_three_scores_count_as_failures(triton, tmp_path):
    # iqa_preprocess answers every request, but with PATCHES instead of NOISE / BLUR / COMPRESSION.
    summary = run_locust(triton.grpc_url, users=2, run_time_s=5, out=tmp_path / "reports",
                         corpus=corpus_in(tmp_path), model="iqa_preprocess")
    assert summary.requests > 0 and summary.failures == summary.requests, summary.line()


def test_the_step_shape_reports_each_step_and_the_knee(triton, tmp_path):
    summary = run_locust(triton.grpc_url, users=0, run_time_s=0, out=tmp_path / "reports", corpus=corpus_in(tmp_path),
                         find_knee=True, env={"IQA_STEPS": "1,2", "IQA_STEP_SECONDS": "8", "IQA_P99_LIMIT_MS": "60000"})
    assert summary.returncode == 0, summary.output[-3000:]
    rows = re.findall(r"^\s+(\d+)\s+([\d.]+)\s+(\d+)\s+(\d+)\s+(\d+)$", summary.output, flags=re.MULTILINE)
    assert [int(r[0]) for r in rows] == [1, 2], summary.output[-3000:]
    assert all(float(r[1]) > 0 and int(r[4]) == 0 for r in rows)
    # The knee is the step with the highest throughput (printed to 2 decimals, so equal rows can tie).
    top = max(float(r[1]) for r in rows)
    knee = re.search(r"knee \(p99 <= 60000 ms\): (\d+) users, ([\d.]+) req/s", summary.output)
    assert knee and float(knee[2]) == top and knee[1] in [r[0] for r in rows if float(r[1]) == top], summary.output


def test_grpc_channel_options_reach_every_users_channel(triton, tmp_path):
    # A send limit below every image's size: if the option reaches the channel, gRPC refuses each call.
    summary = run_locust(triton.grpc_url, users=2, run_time_s=5, out=tmp_path / "reports", corpus=corpus_in(tmp_path),
                         extra=["--grpc-channel-options", '{"grpc.max_send_message_length": 1024}'])
    # (without the option the same run has no failures: test_a_short_locust_run_has_no_failures_...)
    assert summary.requests > 0 and summary.failures == summary.requests, summary.line()
