"""The watchdog's own decisions, checked without a server (tests/test_faults.py runs it against one)."""

import json
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from iqa.contract import PATCH_SHAPE
from iqa.preprocess import preprocess
from iqa.serving.watchdog import (
    PROBE_IMAGE,
    AdminAccess,
    HealthServer,
    Probe,
    Watchdog,
    confined,
    remove_regions,
    shm_region_bytes,
    shm_region_prefix,
)


def test_the_probe_image_is_one_the_preprocessing_accepts():
    assert preprocess(PROBE_IMAGE).shape == PATCH_SHAPE


def test_an_unhealthy_stub_message_names_the_model_to_reload():
    message = "in ensemble 'iqa_degradation', Stub process 'iqa_preprocess_0_0' is not healthy."
    assert Probe(ok=False, message=message).unhealthy_model() == "iqa_preprocess"
    assert Probe(ok=False, message="Stub process 'iqa_resnet50_0' is not healthy.").unhealthy_model() == "iqa_resnet50"
    assert Probe(ok=False, message="in ensemble 'iqa_degradation', Exceeds maximum queue size").unhealthy_model() is None


def get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}") if err.code != 404 else {}


@pytest.fixture
def health():
    watchdog = Watchdog("127.0.0.1:9", server_pid=-1, access=AdminAccess(), give_up_after_s=1.0)
    server = HealthServer(watchdog, port=0, host="127.0.0.1").start()
    yield watchdog, f"http://127.0.0.1:{server.port}"
    server.stop()
    watchdog.stop()


def test_before_the_first_probe_the_service_is_not_ready_but_live(health):
    _, url = health
    assert get(f"{url}/ready") == (503, {"ready": False, "live": True, "reason": "starting"})
    assert get(f"{url}/live")[0] == 200
    assert get(f"{url}/metrics")[0] == 404


def test_draining_says_not_ready_and_stays_live(health):
    watchdog, url = health
    watchdog.drain()
    status, body = get(f"{url}/ready")
    assert status == 503 and body["reason"] == "shutting down" and get(f"{url}/live")[0] == 200


def test_once_started_a_service_that_stays_unready_past_the_limit_is_reported_not_live(health):
    watchdog, url = health  # no server answers on port 9: every probe fails
    watchdog.start()
    deadline = time.monotonic() + 10
    while get(f"{url}/live")[0] == 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    status, body = get(f"{url}/live")
    assert status == 503 and not body["ready"] and "probe failed: no answer" in body["reason"]


def test_the_admin_secret_is_fresh_and_long_and_never_printed():
    one, two = AdminAccess(), AdminAccess()
    assert one.secret != two.secret and len(one.secret) >= 24
    assert one.secret not in repr(one)
    assert one.grpc_headers == {"triton-grpc-protocol-iqa-admin-key": one.secret}


def test_stale_regions_are_found_by_the_prefix_on_the_server_command_line(tmp_path):
    command = ["tritonserver", "--backend-config=python,shm-default-byte-size=1024",
               "--backend-config=python,shm-region-prefix-name=iqa_triton_"]
    assert shm_region_prefix(command) == "iqa_triton_"
    assert shm_region_prefix(command[:2]) is None
    for name in ("iqa_triton_a1", "iqa_triton_b2", "iqa_tritonx", "other_region"):
        (tmp_path / name).write_bytes(b"\0")
    assert sorted(remove_regions("iqa_triton_", tmp_path)) == ["iqa_triton_a1", "iqa_triton_b2"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iqa_tritonx", "other_region"]
    for bad in ("", "../etc/", ".hidden"):
        with pytest.raises(ValueError, match="not a shared-memory region prefix"):
            remove_regions(bad, tmp_path)


def test_the_region_size_on_the_command_line_caps_what_the_server_process_may_grow_a_file_to(tmp_path):
    """What confined does to the server: a file (a region) may be created at the start size, but growing
    it fails with EFBIG instead of SIGXFSZ killing the process; the process keeps the pid Popen gave."""
    region = 1024 * 1024
    command = ["tritonserver", f"--backend-config=python,shm-default-byte-size={region}"]
    assert shm_region_bytes(command) == region and shm_region_bytes(command[:1]) is None
    path = tmp_path / "region"
    grow = (f"import os\nf = os.open({str(path)!r}, os.O_RDWR | os.O_CREAT)\nos.ftruncate(f, {region})\n"
            f"try:\n    os.ftruncate(f, {region} + 16 * 1024 * 1024)\nexcept OSError as err:\n    print(err.errno)\n"
            f"print(os.getpid())\n")
    process = subprocess.Popen(confined([sys.executable, "-c", grow], region), stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert out.split() == ["27", str(process.pid)]  # EFBIG, in the very process Popen started
    assert path.stat().st_size == region
    assert confined(command, None) == command


def test_a_confined_server_dies_with_the_thread_that_started_it(tmp_path):
    """die_with_parent: the started process gets SIGTERM when the thread that started it ends (what keeps a
    killed launcher from leaving a server behind), with no Python code run between fork and exec."""
    started = {}

    def start():
        process = started["process"] = subprocess.Popen(confined(["sleep", "60"], None, die_with_parent=True))
        cmdline = Path(f"/proc/{process.pid}/cmdline")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not cmdline.read_bytes().startswith(b"sleep"):
            time.sleep(0.05)  # setpriv has set PDEATHSIG once it has exec'd sleep: only then may this thread end

    thread = threading.Thread(target=start)
    thread.start()
    thread.join()
    assert started["process"].wait(timeout=30) == -signal.SIGTERM


def test_real_requests_that_succeed_stand_in_for_probes_and_failures_or_idleness_call_for_one():
    """The watchdog reads the ensemble's request counters (Triton's statistics); here a small HTTP server
    answers them as Triton's /v2/models/<model>/stats does."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    import threading

    counts = {"success": 10, "fail": 0}

    class Stats(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = json.dumps({"model_stats": [{"name": "iqa_degradation", "inference_stats": {
                "success": {"count": counts["success"]}, "fail": {"count": counts["fail"]}}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    stats = ThreadingHTTPServer(("127.0.0.1", 0), Stats)
    threading.Thread(target=stats.serve_forever, daemon=True).start()
    try:
        watchdog = Watchdog(f"127.0.0.1:{stats.server_address[1]}", server_pid=-1, access=AdminAccess(),
                            idle_probe_interval_s=30.0)
        assert watchdog._needs_probe(0.0), "not ready yet: only a probe can tell"
        watchdog._set(True, "scored the probe image")
        watchdog._evidence_at = 100.0
        assert not watchdog._needs_probe(101.0)  # first look after a probe: a baseline
        counts["success"] += 5
        assert not watchdog._needs_probe(125.0) and watchdog._evidence_at == 125.0  # real requests scored
        assert not watchdog._needs_probe(150.0)  # idle for 25 s: no probe yet
        assert watchdog._needs_probe(155.0)  # idle for 30 s: probe
        counts["fail"] += 1
        assert watchdog._needs_probe(156.0)  # a request failed: probe at once
        counts["success"] = 0  # the ensemble reloaded: its counters start again
        assert watchdog._needs_probe(157.0)  # no evidence since 125 s: probe, whatever the counters say
    finally:
        stats.shutdown()
        stats.server_close()
