"""Locust smoke runs against the real server (conftest's `triton`): real Locust, real gRPC, bounded."""

import argparse
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iqa.serving.launcher import REPO, free_ports
from loadtest import run
from loadtest.preflight import GrpcClient, load_corpus
from loadtest.prepare_corpus import prepare, repository_photos
from loadtest.run import run_locust
from loadtest.settings import duration_s, knee_settings

LOCUST = Path(sys.executable).parent / "locust"  # the console script a Locust user runs


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


def test_answers_without_the_three_scores_count_as_failures_with_their_reason(triton, tmp_path):
    # iqa_preprocess answers every request, but with PATCHES instead of NOISE / BLUR / COMPRESSION.
    summary = run_locust(triton.grpc_url, users=2, run_time_s=5, out=tmp_path / "reports",
                         corpus=corpus_in(tmp_path), model="iqa_preprocess")
    assert summary.requests > 0 and summary.failures == summary.requests, summary.line()
    # the summary names the server, gives no throughput for a run where nothing succeeded, and says why
    assert summary.line() == f"{triton.grpc_url}: all {summary.requests} requests failed: no throughput or latency " \
                             "to report"
    assert sum(n for n, _ in summary.failure_reasons) == summary.failures
    assert all(reason.startswith("NOISE: expected shape (") for _, reason in summary.failure_reasons), \
        summary.failure_reasons


def plain_locust(host: str, seconds: int, log: Path, limit_s: float) -> tuple[int, str]:
    """(exit status, stderr) of `locust -f loadtest/locustfile.py --headless -u 4 -t <seconds>s --host <host>`,
    run from the repository as a Locust user runs it. Past limit_s its Python stacks are dumped into the
    log (faulthandler, SIGABRT) and it is killed: a hang shows where it hangs."""
    with open(log, "w") as stderr:
        process = subprocess.Popen([str(LOCUST), "-f", "loadtest/locustfile.py", "--headless", "-u", "4", "-t",
                                    f"{seconds}s", "--host", host, "--only-summary"], cwd=REPO,
                                   stdout=subprocess.DEVNULL, stderr=stderr, env={**os.environ, "PYTHONFAULTHANDLER": "1"})
        try:
            status = process.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            time.sleep(2)
            process.kill()
            status = process.wait()
    return status, log.read_text()


def test_a_plain_locust_run_of_the_locustfile_sends_real_traffic_without_preparation(triton, tmp_path):
    """`locust -f loadtest/locustfile.py --headless -u 4 -t 30s --host ...` with no `make loadtest` before:
    its first log line says where the images come from."""
    status, log = plain_locust(triton.grpc_url, 20, tmp_path / "locust.log", limit_s=150)
    assert status == 0, log[-4000:]  # 20 s of load, then the requests in flight finish
    ours = [line for line in log.splitlines() if "/loadtest: " in line]
    assert re.search(r"corpus: (\d+ images from .*loadtest/corpus|.*loadtest/corpus holds no images: sending 24 made "
                     r"in memory from the repository's 3 test photos)", ours[0]), ours
    aggregated = re.search(r"^\s*Aggregated\s+(\d+)\s+(\d+)\(", log, flags=re.MULTILINE)
    assert aggregated and int(aggregated[1]) >= 10 and int(aggregated[2]) == 0, log[-3000:]


def test_without_a_corpus_the_locustfile_sends_the_test_photos_in_the_corpus_formats(tmp_path):
    images, origin = load_corpus(tmp_path / "nothing here")
    assert len(images) == len(repository_photos()) * 8 and "made in memory from the repository's 3 test photos" in origin
    prepared = sorted(prepare(tmp_path / "corpus"))
    assert sorted(images) == sorted(p.read_bytes() for p in prepared)  # the very bytes prepare_corpus writes
    from_folder, origin = load_corpus(tmp_path / "corpus")
    assert sorted(from_folder) == sorted(images) and origin == f"24 images from {tmp_path / 'corpus'}"


def test_a_plain_locust_run_against_a_stopped_server_ends_at_once_saying_so(tmp_path):
    url = f"127.0.0.1:{free_ports(1)[0]}"
    started = time.monotonic()
    status, log = plain_locust(url, 30, tmp_path / "locust.log", limit_s=60)
    assert status == 3, log[-3000:]
    assert f"no Triton server answers at {url}" in log and "ending the run before any request" in log
    assert "Aggregated" not in log and "req/s" not in log
    assert time.monotonic() - started < 25


def test_make_loadtest_against_a_stopped_server_says_unreachable_and_prints_no_throughput(tmp_path, capsys):
    url = f"127.0.0.1:{free_ports(1)[0]}"
    assert run.main(["--url", url, "--run-time", "20s", "--out", str(tmp_path), "--corpus", str(tmp_path / "c")]) == 3
    captured = capsys.readouterr()
    assert f"server: {url} (given by --url)" in captured.out
    assert f"no Triton server answers at {url}" in captured.err and "no load test run, no figures" in captured.err
    assert "req/s" not in captured.out + captured.err and not list(tmp_path.glob("*.csv"))


@pytest.mark.parametrize(("text", "seconds"), [("90", 90), ("2.5", 2.5), ("20s", 20), ("2m", 120), ("1h30m", 5400)])
def test_durations_take_locusts_syntax_everywhere(text, seconds):
    assert duration_s(text) == seconds
    assert run.parser().parse_args(["--run-time", text]).run_time == seconds
    assert knee_settings({"IQA_STEP_SECONDS": text, "IQA_STEPS": "1,2"}).length_s == 2 * seconds


def test_a_bad_duration_is_a_usage_error_naming_the_forms(capsys):
    with pytest.raises(SystemExit) as stop:
        run.parser().parse_args(["--run-time", "2 minutes"])
    assert stop.value.code == 2 and "argument --run-time: '2 minutes': Invalid time span format. Valid formats: 20, " \
        "20s, 3m" in capsys.readouterr().err
    with pytest.raises(argparse.ArgumentTypeError):
        duration_s("20x")


def test_the_runners_read_durations_without_importing_locust():
    # locust's __init__ monkey-patches the process for gevent: the runners start servers and threads.
    code = "import sys, loadtest.run, loadtest.soak, loadtest.overload; assert 'locust' not in sys.modules; " \
           "assert 'gevent' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


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
    # now with the failure's reason in Locust's table
    assert "larger than max" in summary.output, summary.output[-3000:]


def test_the_load_test_grpc_client_closes_its_channel_once():
    """tritonclient closes again in __del__; under gevent a second close of a channel hung Locust at exit."""
    client = GrpcClient(f"127.0.0.1:{free_ports(1)[0]}")
    closes, real_close = [], client._channel.close
    client._channel.close = lambda: (closes.append(1), real_close())[1]
    client.close()
    client.__del__()  # what garbage collection calls
    assert closes == [1]


@pytest.mark.parametrize("users", ["0", "-2"])
def test_fewer_than_one_user_is_a_usage_error_naming_users(users, capsys):
    with pytest.raises(SystemExit) as stop:
        run.parser().parse_args(["--users", users])
    assert stop.value.code == 2 and f"argument --users: must be at least 1, got '{users}'" in capsys.readouterr().err
