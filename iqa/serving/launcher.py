"""Local launcher: serve model_repository/ with the real `tritonserver`, no Docker needed.

    python -m iqa.serving.launcher [--sample tests/data/sheep.jpg]

1. finds `tritonserver`: --tritonserver, $IQA_TRITONSERVER, the `nvidia-pytriton`
   wheel, or `tritonserver` on PATH;
2. prepares the Python backend: the wheel ships the backend and one stub per
   Python version separately, so they are put together in .run/backends/;
3. serves the shipped repository as it is: where the PyTorch backend (`libtriton_pytorch.so`,
   NGC-only) is absent, a Python-based backend named `pytorch` (Triton's python_based_backends:
   a `model.py` in backends/pytorch/ run by the Python backend) serves the same model.pt with
   iqa.serving.torchscript_model, so `backend: "pytorch"` loads unchanged. A runtime copy in
   .run/model_repository/ (links to the committed files) carries only the changes this machine
   forces, each logged (MACHINE_CHANGES): without a GPU, KIND_GPU -> KIND_CPU, one preprocessing
   instance and the CPU's queue policy;
4. starts the server in explicit model-control mode with the model-repository API locked
   behind a per-run secret header, waits until every model is ready, and stops it cleanly on
   SIGINT / SIGTERM;
5. runs the watchdog (iqa.serving.watchdog): a real inference through the ensemble every few
   seconds and a watch on the Python-backend stubs; a dead stub's model is reloaded, and the
   health port (8003) answers /ready and /live truthfully, which Triton's own endpoints do not.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from iqa.contract import (
    CELLS_NETWORK_MODEL,
    ENSEMBLE_MODEL,
    MAP_MODEL,
    MAP_PREPROCESS_MODEL,
    NETWORK_MODEL,
    PREPROCESS_MODEL,
    SHM_DEFAULT_BYTES,
    SHM_GROWTH_BYTES,
)
from iqa.serving.watchdog import (
    SHM_DIR,
    START_TIMEOUT_S,
    AdminAccess,
    HealthServer,
    Watchdog,
    answers_200,
    confined,
    remove_regions,
    shm_region_bytes,
)

REPO = Path(__file__).resolve().parents[2]
DEFAULT_REPOSITORY = REPO / "model_repository"
DEFAULT_RUN_DIR = REPO / ".run"
MODELS = (PREPROCESS_MODEL, NETWORK_MODEL, ENSEMBLE_MODEL, MAP_PREPROCESS_MODEL, CELLS_NETWORK_MODEL, MAP_MODEL)
NETWORK_MODELS = (NETWORK_MODEL, CELLS_NETWORK_MODEL)  # TorchScript model.pt files, served alike
PREPROCESS_MODELS = (PREPROCESS_MODEL, MAP_PREPROCESS_MODEL)

# gRPC connections are closed (GOAWAY) after this long, in-flight calls get the grace to finish: a client
# reconnects and so reaches replicas added since it connected (docker/README.md, "Load balancing gRPC").
# The image's server command line carries the same values (tests/test_deploy.py checks).
GRPC_MAX_CONNECTION_AGE_MS = 60_000
GRPC_MAX_CONNECTION_AGE_GRACE_MS = 30_000  # the client's default timeout per call

log = logging.getLogger("iqa.launcher")


class LaunchError(RuntimeError):
    """The server cannot be started as asked; the message says what to do."""


@dataclass
class Ports:
    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    def named(self) -> dict[str, int]:
        return {"HTTP": self.http, "gRPC": self.grpc, "metrics": self.metrics}


# --- finding the server -----------------------------------------------------------


def find_tritonserver(explicit: str | os.PathLike | None = None) -> Path:
    """The tritonserver binary: explicit path, $IQA_TRITONSERVER, the nvidia-pytriton wheel, or PATH."""
    explicit = explicit or os.environ.get("IQA_TRITONSERVER")
    if explicit:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise LaunchError(f"tritonserver not found or not executable at {path}")
        return path
    try:
        import pytriton

        wheel_binary = Path(pytriton.__file__).parent / "tritonserver" / "bin" / "tritonserver"
        if wheel_binary.is_file():
            return wheel_binary
    except ImportError:
        pass
    on_path = shutil.which("tritonserver")
    if on_path:
        return Path(on_path)
    raise LaunchError(
        "tritonserver not found: install the project (`make venv`, which brings the nvidia-pytriton "
        "wheel), put tritonserver on PATH, or pass --tritonserver /path/to/tritonserver"
    )


# What the Python-based backend `pytorch` runs where the real one is absent (backends/pytorch/model.py).
_PYTORCH_BACKEND_MODEL_PY = '''"""Written by iqa.serving.launcher: a Python-based backend named `pytorch`.

The PyTorch (libtorch) backend ships only in NVIDIA's NGC image. Here Triton's Python backend runs
this file for every model whose config says `backend: "pytorch"`: the same model.pt, run by torch.
"""
from iqa.serving.torchscript_model import TritonPythonModel  # noqa: F401
'''


def prepare_backends(binary: Path, run_dir: Path) -> tuple[Path, list[str]]:
    """A backend directory with a Python backend (stub for this interpreter beside it) and a `pytorch` backend.

    Returns (directory, changes): where the server has its own PyTorch backend (the NGC image's
    /opt/tritonserver/backends/pytorch/libtriton_pytorch.so) nothing is changed; elsewhere the Python-based
    backend `pytorch` (Triton docs, "Python-based Backends") stands in for it, and the change says so.
    Raises LaunchError when no Python-backend stub fits this interpreter.
    """
    root = binary.resolve().parent.parent
    installed = root / "backends"
    full_install = (installed / "python" / "triton_python_backend_stub").exists()
    if full_install and (installed / "pytorch" / "libtriton_pytorch.so").exists():
        return installed, []  # the NGC image: every backend the repository names is there
    backends = run_dir / "backends"
    shutil.rmtree(backends, ignore_errors=True)
    backends.mkdir(parents=True)
    if full_install:  # a Triton install without the PyTorch backend: link what it has
        for entry in installed.iterdir():
            if entry.name != "pytorch":
                (backends / entry.name).symlink_to(entry)
    else:  # the nvidia-pytriton wheel ships the Python backend and one stub per Python version apart
        version = f"{sys.version_info.major}.{sys.version_info.minor}"
        stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
        if not stub.exists():
            raise LaunchError(f"no Python-backend stub for Python {version} beside {binary} (looked for {stub})")
        shutil.copytree(installed / "python", backends / "python", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
    (backends / "pytorch").mkdir()
    (backends / "pytorch" / "model.py").write_text(_PYTORCH_BACKEND_MODEL_PY)
    return backends, [f"backend pytorch: libtriton_pytorch.so absent (NGC-only), model.pt is served by the Python-based "
                      f"backend {backends / 'pytorch' / 'model.py'} (iqa.serving.torchscript_model)"]


def server_environment(binary: Path) -> dict[str, str]:
    """PATH and LD_LIBRARY_PATH for the server and the Python-backend stubs it spawns.

    The stub embeds Python and ignores PYTHONPATH: it takes its sys.path from the
    first `python3` on PATH, so this interpreter's bin goes first (the venv's).
    """
    env = dict(os.environ)
    libdirs = []
    wheel_libs = binary.resolve().parents[3] / "nvidia_pytriton.libs"
    if wheel_libs.is_dir():
        libdirs.append(str(wheel_libs))
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        libdirs.append(sysconfig.get_config_var("LIBDIR"))
    elif (binary.resolve().parent.parent / "python_backend_stubs").is_dir():
        raise LaunchError(
            f"{sys.executable} was built without --enable-shared: the Python-backend stub needs "
            f"libpython{sys.version_info.major}.{sys.version_info.minor}.so. Use a shared-library "
            "Python (Debian's python3.11, or pyenv with PYTHON_CONFIGURE_OPTS=--enable-shared)"
        )
    env["LD_LIBRARY_PATH"] = os.pathsep.join(libdirs + [env.get("LD_LIBRARY_PATH", "")]).strip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.pop("PYTHONHOME", None)
    return env


def gpu_count() -> int:
    nvidia_smi = shutil.which("nvidia-smi")
    if not nvidia_smi:
        return 0
    try:
        listing = subprocess.run([nvidia_smi, "-L"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(line.startswith("GPU ") for line in listing.stdout.splitlines()) if listing.returncode == 0 else 0


# --- the runtime repository --------------------------------------------------------

# The queue policy for a machine without a GPU (BENCHMARKS.md "Queue policy"). There the network
# serves ~12 img/s (two cores): a wait bound of 5 s holds 12 x 5 = 60 requests, rounded to 64. The
# committed configs carry the GPU policy (1024 requests, 2 s), under which a CPU would let requests
# wait ~85 s before refusing any.
CPU_QUEUE_SIZE = 64
CPU_QUEUE_TIMEOUT_US = 5_000_000
# The models whose committed policy is sized for a GPU; the degradation map's (32 requests, 10 s) is
# the same on both machines (model_repository/iqa_map_preprocess/config.pbtxt says why).
GPU_QUEUE_POLICY_MODELS = (PREPROCESS_MODEL, NETWORK_MODEL)


def cpu_queue_policy(config: str) -> str:
    """A model config with its default_queue_policy set to the CPU's size and wait bound.

    Only `max_queue_size` and `default_timeout_microseconds` change; a config without a queue
    policy is returned as it is. Refusals keep their wording (iqa_client.contract.OVERLOAD_MESSAGES).
    """
    config = re.sub(r"(default_queue_policy\s*\{[^}]*?max_queue_size:\s*)\d+", rf"\g<1>{CPU_QUEUE_SIZE}", config)
    return re.sub(r"(default_queue_policy\s*\{[^}]*?default_timeout_microseconds:\s*)\d+",
                  rf"\g<1>{CPU_QUEUE_TIMEOUT_US}", config)


# Every change the launcher may make to the shipped configs: what a machine without a GPU forces.
# Anything else it serves is the committed file (tests/test_launcher.py serves the shipped files).
MACHINE_CHANGES = (
    "no GPU on this machine, KIND_GPU -> KIND_CPU",
    "no GPU on this machine, one preprocessing instance",
    f"no GPU on this machine, queue policy {CPU_QUEUE_SIZE} requests / {CPU_QUEUE_TIMEOUT_US / 1e6:g} s",
)


def prepare_repository(source: Path, run_dir: Path, *, gpus: int,
                       edit: Callable[[str, str], str] | None = None) -> tuple[Path, list[str]]:
    """Link the repository into run_dir, with the changes this machine forces; returns (path, changes made).

    With a GPU the configs are served exactly as committed. Without one (MACHINE_CHANGES): KIND_GPU
    instances become KIND_CPU, `iqa_preprocess` runs one instance instead of several (on a CPU the
    network takes ~90 % of the time, so extra decoders only compete with it: BENCHMARKS.md), and both
    composing models get the CPU's queue policy (cpu_queue_policy).
    `edit(model, config_text) -> config_text`, if given, is applied last (benchmarks use it to
    compare batching settings without touching the committed configs). Raises LaunchError when a
    model or model.pt is missing.
    """
    missing = [m for m in MODELS if not (source / m / "config.pbtxt").is_file()]
    if missing:
        raise LaunchError(f"{source} lacks the models {missing}")
    for network in NETWORK_MODELS:
        model_pt = source / network / "1" / "model.pt"
        if not model_pt.is_file():
            raise LaunchError(f"{model_pt} is missing: export it first with `make export` (python -m conversion.export)")

    target = run_dir / "model_repository"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(source, target, copy_function=_link, ignore=shutil.ignore_patterns("__pycache__", "*.partial"))

    gpu_kind, one_decoder, cpu_queues = MACHINE_CHANGES
    changes = []
    for model in MODELS:
        config_path = target / model / "config.pbtxt"
        config = config_path.read_text()
        served = config
        if gpus == 0 and "KIND_GPU" in served:
            served = served.replace("KIND_GPU", "KIND_CPU")
            changes.append(f"{model}: {gpu_kind}")
        if gpus == 0 and model in PREPROCESS_MODELS:
            single = re.sub(r"count: *\d+", "count: 1", served)
            if single != served:
                served = single
                changes.append(f"{model}: {one_decoder}")
        if gpus == 0 and model in GPU_QUEUE_POLICY_MODELS and (fitted := cpu_queue_policy(served)) != served:
            served = fitted
            changes.append(f"{model}: {cpu_queues}")
        if edit is not None and (edited := edit(model, served)) != served:
            served = edited
            changes.append(f"{model}: config edited for this run")
        if served != config:
            config_path.unlink()  # a link to the committed file: write the served copy beside it instead
            config_path.write_text(served)
    return target, changes


def _link(src: str, dst: str) -> None:
    os.symlink(os.path.abspath(src), dst)


def read_model_metadata(model_pt: Path) -> dict:
    """The export's record (conversion/export.py) stored inside model.pt, without loading torch."""
    with zipfile.ZipFile(model_pt) as archive:
        for name in archive.namelist():
            if name.endswith("/extra/iqa.json"):
                return json.loads(archive.read(name))
    return {}


def free_ports(count: int) -> list[int]:
    """Ports the kernel reports free right now (for tests and benchmarks that must not clash)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def eager_twin(model_pt: Path):
    """The eager network with the very weights model.pt was exported from (for in-process comparisons)."""
    from iqa.network import build_model

    metadata = read_model_metadata(model_pt)
    if metadata.get("trained"):
        return build_model(str(REPO / metadata["weights"]))
    return build_model(seed=metadata["random_init_seed"])


def busy_ports(ports: dict[str, int], host: str = "0.0.0.0") -> dict[str, int]:
    """The named ports (name -> port) that a server could not bind on `host` right now.

    Binds as tritonserver's HTTP, gRPC and metrics servers and the watchdog's health server do, with
    SO_REUSEADDR: a port held by a listener is busy, one left in TIME-WAIT by a stopped server's
    connections is not (the server itself binds it at once, so a check without SO_REUSEADDR refused a
    restart that would have worked). Port 0 (pick a free one) is never busy.
    """
    busy = {}
    for name, port in ports.items():
        if port == 0:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
            except OSError:
                busy[name] = port
    return busy


def check_ports_free(ports: dict[str, int]) -> None:
    """Raise LaunchError naming every busy port at once, with how to find its holder and pick another."""
    busy = busy_ports(ports)
    if busy:
        listing = ", ".join(f"port {port} ({name})" for name, port in busy.items())
        options = " ".join(f"--{name.lower()}-port N" for name in busy)
        raise LaunchError(
            f"{listing} {'is' if len(busy) == 1 else 'are'} already in use: stop what holds "
            f"{'it' if len(busy) == 1 else 'them'} (`ss -ltnp 'sport = :{next(iter(busy.values()))}'`) or choose "
            f"other ports: {options} (make serve SERVE_ARGS='{options}')")


def tcp_states(port: int) -> list[str]:
    """States of this machine's TCP sockets on local `port`, as Linux /proc/net/tcp{,6} codes
    ("01" ESTABLISHED, "06" TIME_WAIT, "0A" LISTEN, ...)."""
    states = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port:
                states.append(fields[3])
    return states


# --- the server --------------------------------------------------------------------


@dataclass
class TritonServer:
    """One tritonserver process serving the runtime copy of the repository.

    with TritonServer(ports=Ports(18000, 18001, 18002)) as server:
        server.grpc_url  # "127.0.0.1:18001"
    """

    repository: Path = DEFAULT_REPOSITORY
    run_dir: Path = DEFAULT_RUN_DIR
    ports: Ports = field(default_factory=Ports)
    tritonserver: str | None = None
    exit_timeout_s: int = 30
    ready_timeout_s: float = START_TIMEOUT_S
    log_verbose: int = 0
    log_file: Path | None = None  # server output; None: inherit this process's stdout/stderr
    extra_args: list[str] = field(default_factory=list)
    config_edit: Callable[[str, str], str] | None = None  # see prepare_repository
    # The watchdog (reload of a dead stub's model, truthful /ready and /live on health_port; 0 picks a
    # free port). Off by default: its probe inferences would show in the statistics tests count.
    watchdog: bool = False
    health_port: int = 8003
    admin: AdminAccess = field(default_factory=AdminAccess)  # the secret for load / unload
    process: subprocess.Popen | None = None
    command_line: list[str] = field(default_factory=list)  # what start() ran (holds the admin secret: never log it)
    trained: bool = False  # set at start from the record inside model.pt
    guard: Watchdog | None = None
    health: HealthServer | None = None
    janitor: subprocess.Popen | None = None  # cleans up after the server if this process is killed (start())
    run_lock: int | None = None  # the open run_dir/launcher.lock this launcher holds while it serves (lock_run_dir)

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.ports.http}"

    @property
    def shm_prefix(self) -> str:
        """The name prefix of this server's Python-backend regions in /dev/shm (one server per gRPC port);
        remove_orphaned_regions reads the launcher's PID back from it."""
        return f"iqa_{os.getpid()}_{self.ports.grpc}_"

    @property
    def health_url(self) -> str:
        """http://127.0.0.1:<port> of the watchdog's /ready and /live (with watchdog=True, once started)."""
        return f"http://127.0.0.1:{self.health.port}" if self.health else ""

    def command(self) -> tuple[list[str], dict[str, str]]:
        """Prepare backends and repository; return the server's command line and environment."""
        binary = find_tritonserver(self.tritonserver)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        backends, backend_changes = prepare_backends(binary, self.run_dir)
        repository, changes = prepare_repository(self.repository, self.run_dir, gpus=gpu_count(),
                                                 edit=self.config_edit)
        for change in backend_changes + changes:
            log.info("%s", change)
        self.trained = self._log_weights(self.repository / NETWORK_MODEL / "1" / "model.pt")
        args = [
            str(binary),
            f"--model-repository={repository}",
            f"--backend-directory={backends}",
            f"--http-port={self.ports.http}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-port={self.ports.metrics}",
            f"--exit-timeout-secs={self.exit_timeout_s}",
            f"--grpc-max-connection-age={GRPC_MAX_CONNECTION_AGE_MS}",
            f"--grpc-max-connection-age-grace={GRPC_MAX_CONNECTION_AGE_GRACE_MS}",
            f"--log-verbose={self.log_verbose}",
            "--strict-readiness=true",
            # Explicit mode loads everything at start, as "none" would, and lets the watchdog reload a
            # model whose stub died; only the holder of self.admin's secret may load or unload.
            "--model-control-mode=explicit",
            "--load-model=*",
            *self.admin.server_flags(),
            # The configs are complete: without auto-complete the Python backend starts no extra stub
            # per model at load, which takes seconds off every (re)load.
            "--disable-auto-complete-config",
            # Region sizes derived in iqa/contract.py (the Docker image passes the same).
            f"--backend-config=python,shm-default-byte-size={SHM_DEFAULT_BYTES}",
            f"--backend-config=python,shm-growth-byte-size={SHM_GROWTH_BYTES}",
            # Shared-memory regions are named per server, so several servers can share a machine.
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            *self.extra_args,
        ]
        return args, server_environment(binary)

    @staticmethod
    def _log_weights(model_pt: Path) -> bool:
        metadata = read_model_metadata(model_pt)
        if not metadata.get("trained"):
            log.warning("*** %s was exported from a RANDOM initialisation (no trained weights): "
                        "the scores it serves are NOT meaningful yet ***", model_pt.relative_to(REPO)
                        if model_pt.is_relative_to(REPO) else model_pt)
        else:
            log.info("serving trained weights %s (sha256 %s)", metadata.get("weights"),
                     (metadata.get("weights_sha256") or "?")[:12])
        return bool(metadata.get("trained"))

    def start(self) -> TritonServer:
        check_ports_free(self.ports.named() | ({"health": self.health_port} if self.watchdog else {}))
        self.lock_run_dir()
        try:
            return self._start()
        except BaseException:
            if self.process is None:  # nothing started: the run directory is free again
                self._release_run_dir()
            raise

    def _start(self) -> TritonServer:
        orphaned = remove_orphaned_regions()
        if orphaned:
            log.warning("removed %d shared-memory region(s) of launchers that no longer run (killed with their "
                        "janitor): %s", len(orphaned), ", ".join(sorted(orphaned)))
        args, env = self.command()
        self.command_line = args
        log.info("starting %s", " ".join(args).replace(self.admin.secret, "<admin secret>"))
        output = open(self.log_file, "ab") if self.log_file else None
        try:
            # Own session: a Ctrl-C in the terminal reaches the launcher, which drains the server itself.
            self.process = subprocess.Popen(confined(args, shm_region_bytes(args), die_with_parent=True), env=env,
                                            stdout=output, stderr=subprocess.STDOUT if output else None,
                                            start_new_session=True)
        finally:
            if output:
                output.close()
        # If this process is killed, the server gets SIGTERM (watchdog.confined: setpriv --pdeathsig) and exits, but a
        # Python-backend stub still starting then can deadlock in its own exit and live on, orphaned
        # (seen: the network's stub, ~1 GB, when the launcher was killed during start-up). The janitor
        # outlives this process: once both it and the server are gone, it kills what is left of the
        # server's process group and removes its shared-memory regions. stop() does the same itself.
        self.janitor = subprocess.Popen(["/bin/sh", "-c", _JANITOR, "iqa-janitor", str(os.getpid()), str(self.process.pid),
                                         self.shm_prefix], start_new_session=True, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return self

    def wait_ready(self) -> None:
        """Block until the server and every model answer ready; raise LaunchError if it dies or stalls."""
        started = time.monotonic()
        deadline = started + self.ready_timeout_s
        urls = [f"http://{self.http_url}/v2/health/ready"] + [
            f"http://{self.http_url}/v2/models/{m}/ready" for m in MODELS]
        not_ready = urls
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                raise LaunchError(f"tritonserver exited with code {code} before it was ready{self._log_tail()}")
            not_ready = [url for url in urls if not answers_200(url)]
            if not not_ready:
                log.info("ready %.1f s after start (models loaded and warmed up): gRPC %s, HTTP %s, metrics 127.0.0.1:%d",
                         time.monotonic() - started, self.grpc_url, self.http_url, self.ports.metrics)
                return
            time.sleep(0.5)
        self.stop()
        waiting = ", ".join(url.split("/v2/", 1)[1] for url in not_ready)
        raise LaunchError(f"tritonserver was not ready within {self.ready_timeout_s:.0f} s (still not ready: {waiting})"
                          f"{self._log_tail()}")

    def _log_tail(self, lines: int = 20) -> str:
        """The end of the server's log for an error message: where it is and its last `lines` lines."""
        if not self.log_file:
            return ""
        try:
            with open(self.log_file, "rb") as log_file:
                log_file.seek(0, os.SEEK_END)
                log_file.seek(max(0, log_file.tell() - 16384))
                tail = log_file.read().decode("utf-8", "replace").splitlines()[-lines:]
        except OSError as err:
            return f" (its log {self.log_file} could not be read: {err})"
        return f" (its log: {self.log_file}; its last {len(tail)} lines:\n" + "\n".join(tail) + ")"

    def start_watchdog(self) -> None:
        """Watch the ready server (reload dead stubs) and serve /ready and /live on health_port."""
        guard = Watchdog(self.http_url, self.process.pid, self.admin)
        try:
            self.health = HealthServer(guard, self.health_port).start()
        except OSError as err:
            raise LaunchError(f"the health port {self.health_port} cannot be opened ({err}): stop what holds it "
                              f"or pass --health-port") from None
        self.guard = guard.start()
        log.info("health: %s/ready and /live (a real inference through %s)", self.health_url, ENSEMBLE_MODEL)

    def stop(self) -> int | None:
        """SIGTERM (Triton drains in-flight requests), SIGKILL after the exit timeout plus a margin."""
        if self.guard:
            self.guard.drain()
        try:
            return self._stop_server()
        finally:
            if self.guard:
                self.guard.stop()
            if self.health:
                self.health.stop()
            self.guard = self.health = None
            if self.process is None or self.process.poll() is not None:
                self._release_run_dir()

    def _release_run_dir(self) -> None:
        if self.run_lock is not None:
            os.close(self.run_lock)  # releases the lock
            self.run_lock = None

    def lock_run_dir(self) -> None:
        """Hold run_dir/launcher.lock (flock) from start to stop; raise LaunchError while another launcher holds it.

        A second launcher on the same run_dir would relink the model repository and backends under a server
        that is still loading them, and, its ports not yet bound by the first (Triton binds them after the
        models load), it would pass the port check and report the first server's readiness as its own. The
        kernel drops the lock when its holder exits, killed or not; the server and the janitor do not inherit it."""
        if self.run_lock is not None:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.run_dir / "launcher.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise LaunchError(f"another launcher (PID {holder}) is starting or serving from {self.run_dir}: stop it "
                              f"first, or give this one its own run directory (--run-dir)") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.run_lock = fd

    def _stop_server(self) -> int | None:
        try:
            return self._stop_process()
        finally:
            self._clean_up_after_server()

    def _clean_up_after_server(self) -> None:
        """Once the server has exited: SIGKILL what is left of its process group (stubs it left behind)
        and remove its regions in /dev/shm (a killed stub's region is never removed by Triton)."""
        if self.process is None or self.process.poll() is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        remove_regions(self.shm_prefix)
        if self.janitor is not None:
            self.janitor.kill()
            self.janitor.wait()
            self.janitor = None

    def _stop_process(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            pass
        # Triton 2.51 waits, up to its exit timeout, for open HTTP connections to close before it stops.
        waiting = tcp_states(self.ports.http).count("01")  # ESTABLISHED
        if waiting:
            log.warning("tritonserver drains: %d HTTP connection(s) to port %d are open (a keep-alive client such as "
                        "a browser or a client session), and Triton waits up to --exit-timeout-secs (%d s) for them "
                        "to close; close them to stop sooner", waiting, self.ports.http, self.exit_timeout_s)
        try:
            return self.process.wait(timeout=self.exit_timeout_s + 15)
        except subprocess.TimeoutExpired:
            log.error("tritonserver did not exit in time: killing it")
            os.killpg(self.process.pid, signal.SIGKILL)
            return self.process.wait()

    def __enter__(self) -> TritonServer:
        self.start()
        try:
            self.wait_ready()
            if self.watchdog:
                self.start_watchdog()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


_LAUNCHER_REGION = re.compile(r"iqa_(?P<pid>\d+)_\d+_")  # TritonServer.shm_prefix


def remove_orphaned_regions(shm_dir: Path = SHM_DIR) -> list[str]:
    """Remove the Python-backend regions of launchers that no longer run; return their names.

    The janitor removes a killed launcher's regions, but not when it is killed too (a whole process
    tree or sandbox stopped at once): those regions (up to SHM_DEFAULT_BYTES each, tmpfs memory) would
    stay until reboot. A region belongs to the launcher whose PID its name carries; one whose PID is
    alive is left alone, whoever it is. PIDs are this PID namespace's: launchers in other containers
    that share this /dev/shm (docker --ipc=host) would look gone, so give each container its own.
    """
    removed = []
    for region in shm_dir.glob("iqa_*"):
        match = _LAUNCHER_REGION.match(region.name)
        if match and not _process_exists(int(match["pid"])):
            region.unlink(missing_ok=True)
            removed.append(region.name)
    return removed


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


# Run by /bin/sh with $1 the launcher's PID, $2 the server's (its process group), $3 the region prefix.
_JANITOR = ('while kill -0 "$1" 2>/dev/null; do sleep 1; done; '
            'while kill -0 "$2" 2>/dev/null; do sleep 1; done; '
            'kill -KILL "-$2" 2>/dev/null; rm -f /dev/shm/"$3"*')


def score_sample(grpc_url: str, image: Path) -> dict[str, float]:
    """Score one image through the public ensemble over gRPC (what `make serve` shows)."""
    from iqa_client import IQAClient

    from iqa.contract import SCORE_NAMES

    with IQAClient(grpc_url, timeout=60) as client:
        scores = client.score(image)
    return {name: getattr(scores, name.lower()) for name in SCORE_NAMES}


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each option's default in --help, unless it has none or its text already says it."""

    def _get_help_string(self, action):
        if action.default is None or "(default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Serve model_repository/ with a local tritonserver (make serve SERVE_ARGS='...' passes these).",
        formatter_class=HelpFormatter)
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY, help="the repository to serve")
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR,
                        help="where the runtime copy of the repository and the backends go")
    parser.add_argument("--tritonserver", help="path to the tritonserver binary (default: $IQA_TRITONSERVER, "
                        "the nvidia-pytriton wheel, then PATH)")
    parser.add_argument("--http-port", type=int, default=8000, help="Triton's HTTP/REST port")
    parser.add_argument("--grpc-port", type=int, default=8001, help="Triton's gRPC port (what clients use)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="Triton's Prometheus metrics port")
    parser.add_argument("--health-port", type=int, default=8003, help="the watchdog's /ready and /live")
    parser.add_argument("--exit-timeout", type=int, default=30, help="seconds Triton waits for in-flight requests")
    parser.add_argument("--log-verbose", type=int, default=0, help="Triton's --log-verbose level")
    parser.add_argument("--sample", type=Path, help="score this image through the ensemble once ready")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    server = TritonServer(repository=args.model_repository, run_dir=args.run_dir,
                          ports=Ports(args.http_port, args.grpc_port, args.metrics_port),
                          tritonserver=args.tritonserver, exit_timeout_s=args.exit_timeout,
                          log_verbose=args.log_verbose, watchdog=True, health_port=args.health_port)

    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        if not stopping:
            stopping = True
            log.info("%s: shutting tritonserver down", signal.Signals(signum).name)
            raise KeyboardInterrupt

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    try:
        server.start()
        server.wait_ready()
        server.start_watchdog()
        if args.sample:
            scores = score_sample(server.grpc_url, args.sample)
            log.info("%s scored through %s over gRPC: %s%s", args.sample, ENSEMBLE_MODEL,
                     "  ".join(f"{k}={v:.4f}" for k, v in scores.items()),
                     "" if server.trained else "  (UNTRAINED model: these numbers mean nothing yet)")
        log.info("serving until Ctrl-C")
        while server.process.poll() is None:
            if not server.guard.verdict().live:
                log.error("not ready for %.0f s and recovery failed: stopping (%s)", server.guard.give_up_after_s,
                          server.guard.verdict().reason)
                server.stop()
                return 1
            time.sleep(1)
        log.error("tritonserver exited on its own with code %s", server.process.returncode)
        server.stop()
        return server.process.returncode or 1
    except LaunchError as err:
        log.error("%s", err)
        server.stop()
        return 2
    except KeyboardInterrupt:
        code = server.stop()
        log.info("tritonserver stopped (exit code %s)", code)
        return 0


if __name__ == "__main__":
    sys.exit(main())
