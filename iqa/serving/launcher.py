"""Local launcher: serve model_repository/ with the real `tritonserver`, no Docker needed.

    python -m iqa.serving.launcher [--sample tests/data/sheep.jpg]

1. finds `tritonserver`: --tritonserver, $IQA_TRITONSERVER, the `nvidia-pytriton`
   wheel, or `tritonserver` on PATH;
2. prepares the Python backend: the wheel ships the backend and one stub per
   Python version separately, so they are put together in .run/backends/;
3. lays out a runtime copy of the repository in .run/model_repository/ (links to
   the committed files) and adapts it to this machine: KIND_GPU -> KIND_CPU where
   there is no GPU, and where the `pytorch_libtorch` backend is absent (everywhere
   but the NGC image) `iqa_resnet50` is served from the same model.pt by a
   Python-backend TorchScript runner (iqa.serving.torchscript_model);
4. starts the server in explicit model-control mode with the model-repository API locked
   behind a per-run secret header, waits until every model is ready, and stops it cleanly on
   SIGINT / SIGTERM;
5. runs the watchdog (iqa.serving.watchdog): a real inference through the ensemble every few
   seconds and a watch on the Python-backend stubs; a dead stub's model is reloaded, and the
   health port (8003) answers /ready and /live truthfully, which Triton's own endpoints do not.
"""

from __future__ import annotations

import argparse
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
)
from iqa.serving.watchdog import AdminAccess, HealthServer, Watchdog, answers_200

REPO = Path(__file__).resolve().parents[2]
DEFAULT_REPOSITORY = REPO / "model_repository"
DEFAULT_RUN_DIR = REPO / ".run"
MODELS = (PREPROCESS_MODEL, NETWORK_MODEL, ENSEMBLE_MODEL, MAP_PREPROCESS_MODEL, CELLS_NETWORK_MODEL, MAP_MODEL)
NETWORK_MODELS = (NETWORK_MODEL, CELLS_NETWORK_MODEL)  # TorchScript model.pt files, served alike
PREPROCESS_MODELS = (PREPROCESS_MODEL, MAP_PREPROCESS_MODEL)
# Room for a full dynamic batch in each Python-backend stub's shared memory without growing it on the
# hot path: the degradation map's is the largest (8 x 64 x 3 x 128 x 128 bytes = 25.2 MB of cells, which
# took a 28 MB region for 7 images), the 4-patch one 32 x 4 x 3 x 128 x 128 = 6.3 MB. Growing a region
# under concurrent requests crashed stubs of this Python backend (2.51) twice in ~5 loaded runs with
# 16 MiB (segfaults in its shared-memory allocator; server#8882 reports the same with MB payloads);
# none grew or crashed at 64 MiB. tmpfs pages cost memory only once touched.
PYTHON_SHM_BYTES = 64 * 1024 * 1024

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


def prepare_backends(binary: Path, run_dir: Path) -> Path:
    """A backend directory whose Python backend has the stub for this interpreter beside it."""
    root = binary.resolve().parent.parent
    if (root / "backends" / "python" / "triton_python_backend_stub").exists():
        return root / "backends"  # a full install (the NGC image's /opt/tritonserver)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.exists():
        raise LaunchError(f"no Python-backend stub for Python {version} beside {binary} (looked for {stub})")
    backends = run_dir / "backends"
    shutil.rmtree(backends, ignore_errors=True)
    shutil.copytree(root / "backends" / "python", backends / "python", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(stub, backends / "python" / "triton_python_backend_stub")
    return backends


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

_RUNNER_MODEL_PY = '''"""Generated by iqa.serving.launcher: the libtorch backend is absent, model.pt is served by torch."""
from iqa.serving.torchscript_model import TritonPythonModel  # noqa: F401
'''


def prepare_repository(source: Path, run_dir: Path, *, libtorch: bool, gpus: int,
                       edit: Callable[[str, str], str] | None = None) -> tuple[Path, list[str]]:
    """Link the repository into run_dir and adapt its configs to this machine; returns (path, changes made).

    `edit(model, config_text) -> config_text`, if given, is applied last (benchmarks use it to
    compare batching settings without touching the committed configs).
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

    changes = []
    for model in MODELS:
        config_path = target / model / "config.pbtxt"
        config = config_path.read_text()
        if model in NETWORK_MODELS and not libtorch:
            config = config.replace('backend: "pytorch_libtorch"', 'backend: "python"')
            (target / model / "1" / "model.py").write_text(_RUNNER_MODEL_PY)
            changes.append(f"{model}: pytorch_libtorch backend absent, serving model.pt with the Python-backend "
                           "TorchScript runner (iqa.serving.torchscript_model)")
        if gpus == 0 and "KIND_GPU" in config:
            config = config.replace("KIND_GPU", "KIND_CPU")
            changes.append(f"{model}: no GPU on this machine, KIND_GPU -> KIND_CPU")
        if gpus == 0 and model in PREPROCESS_MODELS:
            # Several decode instances pay off only when a GPU runs the network (BENCHMARKS.md); on
            # CPU the network takes ~90 % of the time and extra decoders only compete with it.
            single = re.sub(r"count: *\d+", "count: 1", config)
            if single != config:
                config = single
                changes.append(f"{model}: no GPU on this machine, one preprocessing instance")
        if edit is not None and (edited := edit(model, config)) != config:
            config = edited
            changes.append(f"{model}: config edited for this run")
        config_path.unlink()
        config_path.write_text(config)
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


def check_ports_free(ports: Ports) -> None:
    for name, port in ports.named().items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                raise LaunchError(
                    f"port {port} ({name}) is already in use: stop what holds it "
                    f"(`ss -ltnp 'sport = :{port}'`) or pass --{name.lower()}-port"
                ) from None


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
    ready_timeout_s: float = 180.0
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
    trained: bool = False  # set at start from the record inside model.pt
    guard: Watchdog | None = None
    health: HealthServer | None = None

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.ports.http}"

    @property
    def health_url(self) -> str:
        """http://127.0.0.1:<port> of the watchdog's /ready and /live (with watchdog=True, once started)."""
        return f"http://127.0.0.1:{self.health.port}" if self.health else ""

    def command(self) -> tuple[list[str], dict[str, str]]:
        """Prepare backends and repository; return the server's command line and environment."""
        binary = find_tritonserver(self.tritonserver)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        backends = prepare_backends(binary, self.run_dir)
        libtorch = (backends / "pytorch").is_dir()
        repository, changes = prepare_repository(self.repository, self.run_dir, libtorch=libtorch, gpus=gpu_count(),
                                                  edit=self.config_edit)
        for change in changes:
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
            f"--backend-config=python,shm-default-byte-size={PYTHON_SHM_BYTES}",
            # Shared-memory regions are named per server, so several servers can share a machine.
            f"--backend-config=python,shm-region-prefix-name=iqa_{os.getpid()}_{self.ports.grpc}_",
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
        check_ports_free(self.ports)
        args, env = self.command()
        log.info("starting %s", " ".join(args).replace(self.admin.secret, "<admin secret>"))
        output = open(self.log_file, "ab") if self.log_file else None
        try:
            # Own session: a Ctrl-C in the terminal reaches the launcher, which drains the server itself.
            self.process = subprocess.Popen(args, env=env, stdout=output, stderr=subprocess.STDOUT if output else None,
                                            start_new_session=True, preexec_fn=_terminate_with_parent)
        finally:
            if output:
                output.close()
        return self

    def wait_ready(self) -> None:
        """Block until the server and every model answer ready; raise LaunchError if it dies or stalls."""
        deadline = time.monotonic() + self.ready_timeout_s
        urls = [f"http://{self.http_url}/v2/health/ready"] + [
            f"http://{self.http_url}/v2/models/{m}/ready" for m in MODELS]
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = None if self.process is None else self.process.returncode
                where = f" (its log: {self.log_file})" if self.log_file else ""
                raise LaunchError(f"tritonserver exited with code {code} before it was ready{where}")
            if all(answers_200(url) for url in urls):
                log.info("ready: gRPC %s, HTTP %s, metrics 127.0.0.1:%d",
                         self.grpc_url, self.http_url, self.ports.metrics)
                return
            time.sleep(0.5)
        self.stop()
        raise LaunchError(f"tritonserver was not ready within {self.ready_timeout_s:.0f} s")

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

    def _stop_server(self) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
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


def _terminate_with_parent() -> None:
    """In the child before exec: SIGTERM the server if its parent dies, so no server outlives
    a killed launcher, test run or benchmark (Linux prctl PR_SET_PDEATHSIG)."""
    import ctypes

    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def score_sample(grpc_url: str, image: Path) -> dict[str, float]:
    """Score one image through the public ensemble over gRPC (what `make serve` shows)."""
    from iqa_client import IQAClient

    from iqa.contract import SCORE_NAMES

    with IQAClient(grpc_url, timeout=60) as client:
        scores = client.score(image)
    return {name: getattr(scores, name.lower()) for name in SCORE_NAMES}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve model_repository/ with a local tritonserver.")
    parser.add_argument("--model-repository", type=Path, default=DEFAULT_REPOSITORY)
    parser.add_argument("--run-dir", type=Path, default=DEFAULT_RUN_DIR, help="where the runtime copy goes")
    parser.add_argument("--tritonserver", help="path to the tritonserver binary (default: wheel, then PATH)")
    parser.add_argument("--http-port", type=int, default=8000)
    parser.add_argument("--grpc-port", type=int, default=8001)
    parser.add_argument("--metrics-port", type=int, default=8002)
    parser.add_argument("--health-port", type=int, default=8003, help="the watchdog's /ready and /live")
    parser.add_argument("--exit-timeout", type=int, default=30, help="seconds Triton waits for in-flight requests")
    parser.add_argument("--log-verbose", type=int, default=0)
    parser.add_argument("--sample", type=Path, help="score this image through the ensemble once ready")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    server = TritonServer(repository=args.model_repository, run_dir=args.run_dir,
                          ports=Ports(args.http_port, args.grpc_port, args.metrics_port),
                          tritonserver=args.tritonserver, exit_timeout_s=args.exit_timeout,
                          log_verbose=args.log_verbose, health_port=args.health_port)

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
