"""Health that tells the truth, and recovery from a dead Python-backend stub.

Triton keeps answering ready when a Python-backend stub process dies (SIGKILL, the OOM killer):
every later request to that model fails with "Stub process '<model>_0_0' is not healthy" while
/v2/health/ready says true. The watchdog watches what Triton does not:

- the stub processes of the Python-backend models (children of tritonserver), every quarter second;
- that the public ensemble scores: real requests that succeeded (Triton's counters, every
  `probe_interval_s`), or else a real inference of a small built-in image (while not ready, when
  requests fail, and at least every `idle_probe_interval_s` of an idle server).

A dead or unhealthy stub is recovered by unloading and loading its model (the server runs in
explicit model-control mode; the model-repository API is restricted to a secret header that the
watchdog sends and clients never get, see `AdminAccess`). It serves the verdict over HTTP on the health port:

    GET /ready  200 while the last probe scored the image and every stub is alive; else 503
    GET /live   503 once the service has been not ready for `give_up_after_s` (recovery failed):
                the orchestrator should restart the container

Standard library only: it also runs inside the NGC image as the container's entry point
(`python3 -m iqa.serving.watchdog -- tritonserver ...`), where it starts the server, adds the
restricted-API flags with a fresh secret, forwards SIGTERM, and exits when recovery fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import secrets
import signal
import struct
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zlib
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from iqa.contract import ENSEMBLE_MODEL, IMAGE_INPUT, OVERLOAD_MESSAGES, SCORE_NAMES

log = logging.getLogger("iqa.watchdog")

STUB_BINARY = "triton_python_backend_stub"
# Seconds a server may take from start to its first ready (load every model, warm the network up):
# the watchdog's --start-timeout, the launcher's wait, the image's HEALTHCHECK start period and the
# Kubernetes startupProbe's budget (periodSeconds x failureThreshold) are all this one value
# (tests/test_deploy.py checks). Measured: 2.5-3.0 s from start to ready on a 2-vCPU VM (the launcher's
# "ready N s after start" log line, 3 starts); a GPU node adds CUDA context creation and cuDNN
# initialisation (seconds), the NGC image's figure is unmeasured. 40x the measured time covers those
# and a slow, busy node, and still stops a server that will never come up within two minutes.
START_TIMEOUT_S = 120
_UNHEALTHY_STUB = re.compile(r"Stub process '(?P<instance>[^']+)' is not healthy")
# Triton's APIs that change what the server serves or reads: only the watchdog may call them.
RESTRICTED_HTTP = "model-repository,shared-memory,trace,logging"
RESTRICTED_GRPC = RESTRICTED_HTTP


@dataclass(frozen=True)
class AdminAccess:
    """The secret header that unlocks Triton's model-repository API (load / unload).

    The secret reaches tritonserver on its command line (server_flags), so whoever can list the
    machine's (or container's) processes can read it; it is never sent to a client or logged.

    tritonserver checks `--http-restricted-api=<apis>:<key>=<value>` against the HTTP header <key>,
    and `--grpc-restricted-protocol=<apis>:<key>=<value>` against the gRPC metadata
    `triton-grpc-protocol-<key>`. Without it a client gets HTTP 403 / gRPC UNAVAILABLE
    ("This protocol is restricted, expecting header ...").
    """

    secret: str = field(default_factory=lambda: secrets.token_urlsafe(24), repr=False)
    key: str = "iqa-admin-key"

    def server_flags(self) -> list[str]:
        return [f"--http-restricted-api={RESTRICTED_HTTP}:{self.key}={self.secret}",
                f"--grpc-restricted-protocol={RESTRICTED_GRPC}:{self.key}={self.secret}"]

    @property
    def http_headers(self) -> dict[str, str]:
        return {self.key: self.secret}

    @property
    def grpc_headers(self) -> dict[str, str]:
        return {f"triton-grpc-protocol-{self.key}": self.secret}


# --- what the watchdog looks at --------------------------------------------------------------------


def probe_image() -> bytes:
    """A 64 x 64 PNG (a colour gradient with a checker), made here so the probe needs no file."""
    size = 64
    rows = b"".join(b"\x00" + bytes(channel for x in range(size) for channel in
                                    (x * 4, y * 4, 255 if (x // 8 + y // 8) % 2 else 0)) for y in range(size))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


PROBE_IMAGE = probe_image()


@dataclass(frozen=True)
class Probe:
    ok: bool
    busy: bool = False  # refused by the queue policy: says nothing about health
    message: str = ""

    def unhealthy_model(self) -> str | None:
        """The model whose stub Triton reported unhealthy ('iqa_preprocess_0_0' -> 'iqa_preprocess')."""
        match = _UNHEALTHY_STUB.search(self.message)
        return re.sub(r"(_\d+)+$", "", match["instance"]) if match else None


def probe(http_url: str, timeout_s: float, model: str = ENSEMBLE_MODEL) -> Probe:
    """Score PROBE_IMAGE through `model` over HTTP (binary tensor extension); ok if three scores in [0, 1]."""
    item = struct.pack("<I", len(PROBE_IMAGE)) + PROBE_IMAGE  # BYTES element: 4-byte length, then the bytes
    header = json.dumps({
        "inputs": [{"name": IMAGE_INPUT, "shape": [1, 1], "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(item)}}],
        "outputs": [{"name": name, "parameters": {"binary_data": False}} for name in SCORE_NAMES],
    }).encode()
    request = urllib.request.Request(f"http://{http_url}/v2/models/{model}/infer", data=header + item, method="POST",
                                     headers={"Content-Type": "application/octet-stream",
                                              "Inference-Header-Content-Length": str(len(header))})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body = json.loads(response.read())
    except urllib.error.HTTPError as err:
        message = _error_text(err)
        return Probe(ok=False, busy=any(m in message for m in OVERLOAD_MESSAGES), message=message)
    except (urllib.error.URLError, OSError, ValueError) as err:
        return Probe(ok=False, message=f"no answer: {err}")
    scores = {o["name"]: o.get("data", []) for o in body.get("outputs", [])}
    values = [v for name in SCORE_NAMES for v in scores.get(name, [])]
    if len(values) != len(SCORE_NAMES) or not all(0.0 <= v <= 1.0 for v in values):
        return Probe(ok=False, message=f"wrong answer: {scores}")
    return Probe(ok=True)


def _error_text(err: urllib.error.HTTPError) -> str:
    try:
        return json.loads(err.read()).get("error", str(err))
    except (ValueError, OSError):
        return str(err)


def python_stubs(server_pid: int) -> dict[str, list[int]]:
    """Model name -> PIDs of the live Python-backend stubs tritonserver `server_pid` runs for it."""
    stubs: dict[str, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            command = (entry / "cmdline").read_bytes().split(b"\0")
            state, parent = (entry / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except OSError:
            continue  # gone meanwhile
        if command[0].endswith(STUB_BINARY.encode()) and int(parent) == server_pid and state != "Z":
            model = Path(command[1].decode()).parents[1].name  # <repository>/<model>/<version>/model.py
            stubs.setdefault(model, []).append(int(entry.name))
    return stubs


def stub_alive(pid: int, server_pid: int) -> bool:
    """Whether `pid` is still a live (not zombie) child of tritonserver `server_pid`: one file read."""
    try:
        state, parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[:2]
    except OSError:
        return False
    return state != "Z" and int(parent) == server_pid


def served_counts(http_url: str, timeout_s: float, model: str = ENSEMBLE_MODEL) -> tuple[int, int] | None:
    """(successful, failed) inference requests `model` has answered since it was loaded (Triton's statistics
    extension, GET /v2/models/<model>/stats), or None when the server does not answer."""
    try:
        with urllib.request.urlopen(f"http://{http_url}/v2/models/{model}/stats", timeout=timeout_s) as response:
            stats = json.loads(response.read())["model_stats"]
        counts = [(int(s["inference_stats"]["success"]["count"]), int(s["inference_stats"]["fail"]["count"]))
                  for s in stats]
    except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError):
        return None
    return (sum(c[0] for c in counts), sum(c[1] for c in counts)) if counts else None


def _admin_call(http_url: str, path: str, access: AdminAccess, timeout_s: float) -> None:
    request = urllib.request.Request(f"http://{http_url}{path}", data=b"{}", method="POST",
                                     headers={**access.http_headers, "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout_s):
        pass


def reload_model(http_url: str, model: str, access: AdminAccess, timeout_s: float = 300.0) -> None:
    """Unload then load `model` (loading an unchanged loaded model is a no-op: it keeps a dead stub).
    The ensemble that uses it goes unready with it and is reloaded by Triton once it is back."""
    _admin_call(http_url, f"/v2/repository/models/{model}/unload", access, timeout_s)
    _admin_call(http_url, f"/v2/repository/models/{model}/load", access, timeout_s)


# --- the watchdog --------------------------------------------------------------------------------------


@dataclass
class Verdict:
    ready: bool
    live: bool
    reason: str


class Watchdog:
    """Watches one tritonserver (its PID and HTTP address), recovers dead stubs, and judges health.

    watchdog = Watchdog(server.http_url, server.process.pid, access).start()
    watchdog.verdict()   # Verdict(ready=True, live=True, reason="scored the probe image")

    Evidence of health, cheapest first (a probe costs a whole inference: on the CPU default a fifth of a
    core at one every 2 s):
    - every poll_s, whether the stub PIDs it knows are alive (one /proc file each; a full /proc scan
      only at start and after a reload);
    - every probe_interval_s, the ensemble's request counters (Triton's statistics): real requests that
      succeeded since the last look count as a passed probe;
    - a probe inference: while not ready (at start, after a reload or a failure), at once when the
      counters show failed requests, and otherwise when nothing has shown the service working for
      idle_probe_interval_s (an idle server: one probe per that interval instead of one per 2 s).
    """

    # probe_timeout_s: longer than the longest wait the queue policy lets an accepted request have
    # (2 x 5 s of queue plus a batch), so a probe under overload is answered or refused, not cut off.
    def __init__(self, http_url: str, server_pid: int, access: AdminAccess, *, probe_interval_s: float = 2.0,
                 idle_probe_interval_s: float = 30.0, probe_timeout_s: float = 30.0, give_up_after_s: float = 60.0,
                 poll_s: float = 0.25, reload_backoff_s: float = 5.0) -> None:
        self.http_url, self.server_pid, self.access = http_url, server_pid, access
        self.probe_interval_s, self.probe_timeout_s = probe_interval_s, probe_timeout_s
        self.idle_probe_interval_s = idle_probe_interval_s
        self._stub_pids: dict[str, list[int]] = {}
        self._counts: tuple[int, int] | None = None  # the ensemble's (success, fail) at the last look
        self._evidence_at = float("-inf")  # when a probe passed or real requests last succeeded
        self.probes = 0  # probe inferences sent (BENCHMARKS.md, idle CPU)
        self.give_up_after_s, self.poll_s, self.reload_backoff_s = give_up_after_s, poll_s, reload_backoff_s
        self._next_reload = 0.0
        self.stubs: dict[str, int] = {}  # model -> how many stubs it runs (one per instance), learnt at start
        self.recoveries = 0
        self._ready, self._reason = False, "starting"
        self._not_ready_since = time.monotonic()
        self._draining, self._started = False, False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="iqa-watchdog", daemon=True)
        self._probes = ThreadPoolExecutor(max_workers=1, thread_name_prefix="iqa-probe")

    def start(self) -> Watchdog:
        self._stub_pids = python_stubs(self.server_pid)
        self.stubs = {model: len(pids) for model, pids in self._stub_pids.items()}
        with self._lock:
            self._started, self._not_ready_since = True, time.monotonic()
        log.info("watchdog: %s's request counters every %.1f s, a probe inference when they show no success for "
                 "%.0f s or a failure; stubs watched: %s", ENSEMBLE_MODEL, self.probe_interval_s, self.idle_probe_interval_s,
                 ", ".join(f"{model} ({count})" for model, count in sorted(self.stubs.items())) or "none")
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=self.probe_timeout_s + 5)
        self._probes.shutdown(wait=False, cancel_futures=True)

    def drain(self) -> None:
        """Shutdown has begun: say not ready at once, so load balancers stop sending new requests."""
        self._draining = True
        self._set(False, "shutting down")

    def verdict(self) -> Verdict:
        with self._lock:
            stale = time.monotonic() - self._not_ready_since if not self._ready else 0.0
            # Before start() the startup probe judges; while draining, exiting is already under way.
            live = not self._started or self._draining or stale < self.give_up_after_s
            return Verdict(self._ready and not self._draining, live, self._reason)

    def _set(self, ready: bool, reason: str) -> None:
        with self._lock:
            if ready != self._ready:
                log.log(logging.INFO if ready else logging.WARNING, "watchdog: %s (%s)",
                        "ready" if ready else "NOT ready", reason)
                self._not_ready_since = time.monotonic()
            self._ready, self._reason = ready, reason

    def _dead_stubs(self) -> list[str]:
        """Models with fewer live stubs than instances: the known PIDs first, a full scan when one is gone."""
        if all(stub_alive(pid, self.server_pid) for pids in self._stub_pids.values() for pid in pids) and \
                all(len(self._stub_pids.get(model, ())) >= count for model, count in self.stubs.items()):
            return []
        self._stub_pids = python_stubs(self.server_pid)
        return sorted(model for model, count in self.stubs.items() if len(self._stub_pids.get(model, ())) < count)

    def _needs_probe(self, now: float) -> bool:
        """Look at the ensemble's counters; True when only a probe inference can tell."""
        counts = served_counts(self.http_url, min(self.probe_timeout_s, 5.0))
        last, self._counts = self._counts, counts
        if not self._ready or counts is None or last is None or counts < last:  # counters reset by a reload
            return not self._ready or counts is None or now - self._evidence_at >= self.idle_probe_interval_s
        if counts[1] > last[1]:
            return True  # real requests failed: find out why
        if counts[0] > last[0]:
            self._evidence_at = now  # real requests were scored: as good as a passed probe
            return False
        return now - self._evidence_at >= self.idle_probe_interval_s

    def _run(self) -> None:
        pending: Future | None = None
        next_look = 0.0
        while not self._stop.wait(self.poll_s):
            if self._draining:
                continue
            dead = self._dead_stubs()
            if dead and time.monotonic() >= self._next_reload:
                self._recover(dead, f"stub process of {', '.join(dead)} died")
                self._stub_pids = python_stubs(self.server_pid)
                pending, next_look = None, 0.0  # a probe in flight saw the old state
                continue
            now = time.monotonic()
            if pending is None and now >= next_look:
                next_look = now + self.probe_interval_s
                if self._needs_probe(now):
                    self.probes += 1
                    pending = self._probes.submit(probe, self.http_url, self.probe_timeout_s)
            if pending is not None and pending.done():
                result, pending = pending.result(), None
                self._counts = None  # the probe itself counts as a request: look afresh next time
                if result.ok:
                    self._evidence_at = time.monotonic()
                self._judge(result)

    def _judge(self, result: Probe) -> None:
        if result.ok:
            self._set(True, "scored the probe image")
        elif result.busy:
            log.debug("watchdog: probe refused by the queue policy (%s): no verdict", result.message)
        elif model := result.unhealthy_model():
            self._recover([model], result.message)
        else:
            self._set(False, f"probe failed: {result.message}")

    def _recover(self, models: list[str], reason: str) -> None:
        self._set(False, reason)
        for model in models:
            log.warning("watchdog: reloading %s (%s)", model, reason)
            start = time.monotonic()
            try:
                reload_model(self.http_url, model, self.access)
            except (urllib.error.URLError, OSError) as err:
                self._set(False, f"reloading {model} failed: {err}")
                self._next_reload = time.monotonic() + self.reload_backoff_s  # then again, while it persists
                return
            self.recoveries += 1
            log.info("watchdog: %s reloaded in %.1f s", model, time.monotonic() - start)
        self._set(False, f"reloaded {', '.join(models)}; waiting for a probe to pass")


class HealthServer:
    """GET /ready and /live on `port`, answering from the watchdog's verdict (JSON body with the reason)."""

    def __init__(self, watchdog: Watchdog, port: int, host: str = "0.0.0.0") -> None:
        verdict = watchdog.verdict

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                current = verdict()
                ok = {"/ready": current.ready, "/live": current.live}.get(self.path)
                if ok is None:
                    self.send_error(404, "GET /ready or /live")
                    return
                body = json.dumps({"ready": current.ready, "live": current.live, "reason": current.reason}).encode()
                self.send_response(200 if ok else 503)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):  # probes every few seconds: not worth a log line each
                pass

        self.httpd = ThreadingHTTPServer((host, port), Handler)
        self.port = self.httpd.server_address[1]
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="iqa-health", daemon=True)

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --- the container's entry point -----------------------------------------------------------------------


def answers_200(url: str) -> bool:
    """True when an HTTP GET of url answers 200 within 2 s (Triton's health endpoints, /ready here)."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


SHM_DIR = Path("/dev/shm")
_SHM_PREFIX_FLAG = re.compile(r"--backend-config=python,shm-region-prefix-name=(?P<prefix>.+)")
_SHM_DEFAULT_FLAG = re.compile(r"--backend-config=python,shm-default-byte-size=(?P<bytes>\d+)")


def shm_region_bytes(command: list[str]) -> int | None:
    """The Python backend's region start size on a tritonserver command line
    (`--backend-config=python,shm-default-byte-size=N`), or None when it is not set."""
    sizes = [int(match["bytes"]) for arg in command if (match := _SHM_DEFAULT_FLAG.fullmatch(arg))]
    return sizes[-1] if sizes else None


def confined(command: list[str], region_bytes: int | None, *, die_with_parent: bool = False) -> list[str]:
    """`command` (a tritonserver command line) behind small util-linux programs that, from their exec on,
    keep every Python-backend region at the size it starts with (`region_bytes`; an oversized request
    fails, no region grows) and, with `die_with_parent`, SIGTERM the server when the thread that
    started it ends (Linux PR_SET_PDEATHSIG: no server outlives a killed launcher, test run or benchmark).
    Each step execs the next, so the process keeps its pid.

    Why a region must not grow: Triton has no request-size limit in front of the Python backend: gRPC
    takes messages up to 2 GiB (server src/common.h MAX_GRPC_MESSAGE_SIZE = INT32_MAX, src/grpc/grpc_server.cc
    SetMaxMessageSize; 2.51 and 2.73 alike), HTTP has --http-max-input-size only from 2.59 on (server
    commit af8bb9302), and the backend copies every input into its instance's region before model code
    sees it (python_backend src/python_be.cc GetInputTensor -> PbTensor::SaveToSharedMemory), growing
    the region by ftruncate when it does not fit (src/shm_manager.h Construct -> GrowIfNeeded), with no
    upper bound. A region is a file: with RLIMIT_FSIZE at the start size (`prlimit --fsize`) that
    ftruncate fails with EFBIG (Linux inode_newsize_ok; SIGXFSZ, which would kill the server, is ignored
    by the shell step and stays ignored across exec), the backend reports "Failed to increase the
    shared memory pool size" for that execution, and the server and its other executions carry on.
    Files the server writes are capped alike (its log, when stdout is a file: keep it below the region size).

    Why programs and not a Popen preexec_fn (what this did before): Python code between fork and exec
    can deadlock in a process with other threads (Python's subprocess docs: "not safe in the presence of
    threads"); a CI run's server restart, started while a client thread's gRPC calls were retrying,
    was never ready in 120 s.

    Raises FileNotFoundError naming the program when `prlimit` or `setpriv` (util-linux, in every Debian
    and Ubuntu base image) is missing.
    """
    import shutil

    needed = (["prlimit"] if region_bytes else []) + (["setpriv"] if die_with_parent else [])
    for program in needed:
        if shutil.which(program) is None:
            raise FileNotFoundError(f"{program} (util-linux) is not on PATH: it starts tritonserver confined")
    prefix: list[str] = []
    if region_bytes:
        prefix += ["/bin/sh", "-c", 'trap "" XFSZ; exec "$@"', "iqa-confine",
                   "prlimit", f"--fsize={region_bytes}:{region_bytes}", "--"]
    if die_with_parent:
        prefix += ["setpriv", "--pdeathsig", "TERM", "--"]
    return prefix + list(command)


def shm_region_prefix(command: list[str]) -> str | None:
    """The Python backend's region-name prefix set on a tritonserver command line
    (`--backend-config=python,shm-region-prefix-name=P`), or None when it is not set."""
    for arg in command:
        match = _SHM_PREFIX_FLAG.fullmatch(arg)
        if match:
            return match["prefix"]
    return None


def remove_regions(prefix: str, shm_dir: Path = SHM_DIR) -> list[str]:
    """Remove the shared-memory files whose names start with `prefix`; return their names.

    For regions no live server uses: Triton removes its regions when it exits, but not when it is
    killed (SIGKILL, the OOM killer), and a Kubernetes Memory emptyDir outlives the container, so
    a restarted container would find them still there, counted against the pod's memory limit.
    Raises ValueError for a prefix that is empty or names another directory.
    """
    if not prefix or "/" in prefix or prefix.startswith("."):
        raise ValueError(f"not a shared-memory region prefix: {prefix!r}")
    removed = []
    for region in shm_dir.iterdir():
        if region.name.startswith(prefix) and region.is_file():
            region.unlink(missing_ok=True)
            removed.append(region.name)
    return removed


def wait_until_ready(http_url: str, process: subprocess.Popen, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline and process.poll() is None:
        if answers_200(f"http://{http_url}/v2/health/ready"):
            return True
        time.sleep(1)
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run tritonserver under the watchdog: python3 -m iqa.serving.watchdog [options] -- tritonserver ...")
    parser.add_argument("--health-port", type=int, default=8003)
    parser.add_argument("--http-port", type=int, default=8000, help="tritonserver's --http-port (for probes)")
    parser.add_argument("--start-timeout", type=float, default=START_TIMEOUT_S,
                        help="seconds to wait for the first ready (default: %(default)s)")
    parser.add_argument("--give-up-after", type=float, default=60,
                        help="seconds not ready before /live fails and the server is stopped")
    parser.add_argument("server", nargs=argparse.REMAINDER, help="-- then the tritonserver command line")
    args = parser.parse_args(argv)
    command = args.server[1:] if args.server[:1] == ["--"] else args.server
    if not command:
        parser.error("give the tritonserver command after --")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    prefix = shm_region_prefix(command)
    if prefix:  # the container's only server, not started yet: whatever carries its prefix is stale
        stale = remove_regions(prefix)
        if stale:
            log.warning("removed %d shared-memory region(s) an earlier server left in %s (killed before it could "
                        "remove them): %s", len(stale), SHM_DIR, ", ".join(sorted(stale)))
    access = AdminAccess()
    region_bytes = shm_region_bytes(command)
    server = subprocess.Popen(confined([*command, *access.server_flags()], region_bytes))
    http_url = f"127.0.0.1:{args.http_port}"
    watchdog = Watchdog(http_url, server.pid, access, give_up_after_s=args.give_up_after)
    health = HealthServer(watchdog, args.health_port).start()

    def on_signal(signum, _frame):
        log.info("%s: draining tritonserver", signal.Signals(signum).name)
        watchdog.drain()
        server.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if not wait_until_ready(http_url, server, args.start_timeout):
        if server.poll() is not None or watchdog.verdict().reason == "shutting down":
            return server.wait()
        log.error("tritonserver was not ready within %.0f s: stopping it", args.start_timeout)
        server.send_signal(signal.SIGTERM)
        server.wait()
        return 1
    watchdog.start()
    while server.poll() is None:
        if not watchdog.verdict().live:
            log.error("watchdog: not ready for %.0f s, recovery failed: stopping tritonserver", args.give_up_after)
            server.send_signal(signal.SIGTERM)
            server.wait()
            return 1
        time.sleep(1)
    watchdog.stop()
    health.stop()
    return server.returncode


if __name__ == "__main__":
    sys.exit(main())
