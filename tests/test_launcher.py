"""The local launcher's own decisions, most checked without starting a server; its start, stop and restart
against the real tritonserver."""

import http.client
import re
import signal
import socket
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as pb

from iqa.serving import launcher
from iqa.serving.launcher import LaunchError, Ports, TritonServer
from tests.conftest import without_warmup


def test_taken_ports_are_reported_together_by_number_and_name(tmp_path):
    with socket.socket() as http, socket.socket() as grpc:
        for holder in (http, grpc):
            holder.bind(("0.0.0.0", 0))
            holder.listen()
        taken = http.getsockname()[1], grpc.getsockname()[1]
        server = TritonServer(ports=Ports(http=taken[0], grpc=taken[1], metrics=launcher.free_ports(1)[0]),
                              run_dir=tmp_path)
        with pytest.raises(LaunchError) as refused:
            server.start()
    message = str(refused.value)
    assert f"port {taken[0]} (HTTP), port {taken[1]} (gRPC) are already in use" in message
    assert "--http-port N --grpc-port N" in message and "SERVE_ARGS" in message
    assert server.process is None


def test_a_port_left_in_time_wait_is_free_and_a_listening_one_is_not():
    with socket.socket() as listener:
        # As Triton's HTTP, gRPC and metrics servers listen: the connections they accept inherit SO_REUSEADDR.
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        assert launcher.busy_ports({"test": port}) == {"test": port}
    accepted.close()  # the server side closes first: its end of the connection enters TIME-WAIT
    client.close()
    assert "06" in launcher.tcp_states(port), "the connection should be in TIME-WAIT"
    assert launcher.busy_ports({"test": port}) == {}


def _serve(ports: list[int], run_dir: Path) -> subprocess.Popen:
    """`make serve`'s launcher (watchdog included) on the given ports, as its own process."""
    http, grpc, metrics, health = ports
    return subprocess.Popen([sys.executable, "-m", "iqa.serving.launcher", "--http-port", str(http),
                             "--grpc-port", str(grpc), "--metrics-port", str(metrics), "--health-port", str(health),
                             "--run-dir", str(run_dir), "--exit-timeout", "5"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait_for(process: subprocess.Popen, text: str, timeout_s: float = 180) -> str:
    seen, deadline = [], time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = process.stdout.readline()
        if not line:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    process.kill()
    raise AssertionError(f"no {text!r} from the launcher:\n" + "".join(seen)[-3000:])


def test_a_restart_right_after_a_stop_serves_again(tmp_path):
    ports = launcher.free_ports(4)
    for attempt in range(2):
        server = _serve(ports, tmp_path / "run")
        try:
            _wait_for(server, "serving until Ctrl-C")
            # A client that lets the server close first leaves the server's end in TIME-WAIT on the port,
            # as the watchdog's probes and any curl do: the next start must not mind.
            urllib.request.urlopen(f"http://127.0.0.1:{ports[0]}/v2/health/ready", timeout=10).close()
            server.send_signal(signal.SIGTERM)
            tail = server.communicate(timeout=60)[0]
        finally:
            server.kill()
        assert server.returncode == 0, tail
        assert "06" in launcher.tcp_states(ports[0]), f"attempt {attempt}: no TIME-WAIT on the HTTP port to restart over"


def test_a_missing_binary_is_reported_with_what_to_do(tmp_path):
    with pytest.raises(LaunchError, match="not found or not executable"):
        launcher.find_tritonserver(tmp_path / "no-such-tritonserver")


def test_the_wheel_server_is_found_by_default():
    assert launcher.find_tritonserver().name == "tritonserver"


def _parsed(text: str) -> pb.ModelConfig:
    return text_format.Parse(text, pb.ModelConfig())


def _with_machine_changes(committed: pb.ModelConfig, model: str) -> pb.ModelConfig:
    """The committed config with exactly what launcher.MACHINE_CHANGES describes for a machine without GPU."""
    expected = pb.ModelConfig()
    expected.CopyFrom(committed)
    for group in expected.instance_group:
        if group.kind == pb.ModelInstanceGroup.KIND_GPU:
            group.kind = pb.ModelInstanceGroup.KIND_CPU
        if model in launcher.PREPROCESS_MODELS:
            group.count = 1
    if model in launcher.GPU_QUEUE_POLICY_MODELS:
        expected.dynamic_batching.default_queue_policy.max_queue_size = launcher.CPU_QUEUE_SIZE
        expected.dynamic_batching.default_queue_policy.default_timeout_microseconds = launcher.CPU_QUEUE_TIMEOUT_US
    return expected


def test_without_a_gpu_only_the_documented_machine_changes_are_made(tmp_path):
    repository, changes = launcher.prepare_repository(launcher.DEFAULT_REPOSITORY, tmp_path, gpus=0)
    for model in launcher.MODELS:
        committed = _parsed((launcher.DEFAULT_REPOSITORY / model / "config.pbtxt").read_text())
        served = _parsed((repository / model / "config.pbtxt").read_text())
        assert served == _with_machine_changes(committed, model), model
    gpu_kind, one_decoder, cpu_queues = launcher.MACHINE_CHANGES
    assert sorted(changes) == sorted([f"{model}: {gpu_kind}" for model in launcher.NETWORK_MODELS]
                                     + [f"{model}: {one_decoder}" for model in launcher.PREPROCESS_MODELS]
                                     + [f"{model}: {cpu_queues}" for model in launcher.GPU_QUEUE_POLICY_MODELS])
    # the networks keep their production backend: no model.py of their own, nothing rewritten to python
    for model in launcher.NETWORK_MODELS:
        assert _parsed((repository / model / "config.pbtxt").read_text()).backend == "pytorch"
        assert not (repository / model / "1" / "model.py").exists()


def test_with_a_gpu_the_repository_is_served_as_committed(tmp_path):
    repository, changes = launcher.prepare_repository(launcher.DEFAULT_REPOSITORY, tmp_path, gpus=1)
    for model in launcher.MODELS:
        served = repository / model / "config.pbtxt"
        assert served.is_symlink() and served.read_text() == (launcher.DEFAULT_REPOSITORY / model / "config.pbtxt").read_text()
    assert changes == []


def test_the_wheel_gets_a_python_based_pytorch_backend_beside_the_python_backend(tmp_path):
    backends, changes = launcher.prepare_backends(launcher.find_tritonserver(), tmp_path)
    assert (backends / "python" / "libtriton_python.so").is_file()
    assert (backends / "python" / "triton_python_backend_stub").is_file()
    assert "iqa.serving.torchscript_model" in (backends / "pytorch" / "model.py").read_text()
    assert len(changes) == 1 and "libtriton_pytorch.so absent" in changes[0]


def _fake_install(root: Path, *, pytorch: bool) -> Path:
    """A Triton install laid out like the NGC image's /opt/tritonserver (empty files)."""
    (root / "bin").mkdir(parents=True)
    binary = root / "bin" / "tritonserver"
    binary.write_text("")
    binary.chmod(0o755)
    for name in ("python/libtriton_python.so", "python/triton_python_backend_stub", "onnxruntime/libtriton_onnxruntime.so")\
            + (("pytorch/libtriton_pytorch.so",) if pytorch else ()):
        (root / "backends" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "backends" / name).write_text("")
    return binary


def test_an_install_with_the_pytorch_backend_is_used_as_it_is(tmp_path):
    binary = _fake_install(tmp_path / "opt", pytorch=True)
    assert launcher.prepare_backends(binary, tmp_path / "run") == ((tmp_path / "opt" / "backends").resolve(), [])


def test_an_install_without_the_pytorch_backend_keeps_its_backends_and_gains_the_stand_in(tmp_path):
    binary = _fake_install(tmp_path / "opt", pytorch=False)
    backends, changes = launcher.prepare_backends(binary, tmp_path / "run")
    assert (backends / "onnxruntime").resolve() == (tmp_path / "opt" / "backends" / "onnxruntime").resolve()
    assert (backends / "python" / "triton_python_backend_stub").exists()
    assert (backends / "pytorch" / "model.py").is_file() and changes


def test_without_a_gpu_the_queues_fit_the_cpu_and_refuse_with_the_same_words(tmp_path):
    repository, changes = launcher.prepare_repository(launcher.DEFAULT_REPOSITORY, tmp_path, gpus=0)
    for model in (launcher.PREPROCESS_MODEL, launcher.NETWORK_MODEL):
        served = (repository / model / "config.pbtxt").read_text()
        assert re.search(rf"max_queue_size: {launcher.CPU_QUEUE_SIZE}\n", served), model
        assert re.search(rf"default_timeout_microseconds: {launcher.CPU_QUEUE_TIMEOUT_US}\n", served), model
        assert "timeout_action: REJECT" in served  # refusals stay UNAVAILABLE (tests/test_overload.py)
        assert any(c.startswith(f"{model}: no GPU on this machine, queue policy") for c in changes)


def test_the_cpu_queue_policy_touches_only_the_queue_policy():
    config = ("dynamic_batching {\n  max_queue_delay_microseconds: 500\n  default_queue_policy {\n"
              "    max_queue_size: 1024\n    default_timeout_microseconds: 2000000\n    timeout_action: REJECT\n  }\n}\n")
    assert launcher.cpu_queue_policy(config) == config.replace("1024", str(launcher.CPU_QUEUE_SIZE)).replace(
        "2000000", str(launcher.CPU_QUEUE_TIMEOUT_US))
    assert launcher.cpu_queue_policy('name: "x"\nmax_batch_size: 8\n') == 'name: "x"\nmax_batch_size: 8\n'


def test_a_repository_without_model_pt_asks_for_the_export(tmp_path):
    source = tmp_path / "repo"
    for model in launcher.MODELS:
        (source / model / "1").mkdir(parents=True)
        (source / model / "config.pbtxt").write_text("")
    with pytest.raises(LaunchError, match="make export"):
        launcher.prepare_repository(source, tmp_path / "run", gpus=0)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _group(pgid: int) -> list[str]:
    """Command lines of the live processes in process group `pgid`."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append((stat.parent / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
        except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
            continue
    return members


def test_a_killed_launcher_takes_its_server_and_its_stubs_down(tmp_path):
    program = (
        "import time\n"
        "from pathlib import Path\n"
        "from iqa.serving.launcher import Ports, TritonServer, free_ports\n"
        f"server = TritonServer(ports=Ports(*free_ports(3)), run_dir=Path({str(tmp_path)!r}),\n"
        f"                      log_file=Path({str(tmp_path / 'log')!r}), exit_timeout_s=5).start()\n"
        "print(server.process.pid, server.shm_prefix, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    try:
        pid, prefix = parent.stdout.readline().split()
        server_pid = int(pid)
        # Kill it while the models load: a stub still starting is what used to be left behind, orphaned.
        deadline = time.monotonic() + 60
        while not any("triton_python_backend_stub" in c for c in _group(server_pid)) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any("triton_python_backend_stub" in c for c in _group(server_pid)), "no stub started"
    finally:
        parent.kill()  # SIGKILL: no handler in the parent gets to run
        parent.wait()
    # The janitor kills what is left of the group, then removes the regions: wait for both.
    deadline = time.monotonic() + 60
    while (_group(server_pid) or list(Path("/dev/shm").glob(f"{prefix}*"))) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(server_pid), "tritonserver outlived the process that started it"
    assert not _group(server_pid), f"left behind: {_group(server_pid)}"
    assert not list(Path("/dev/shm").glob(f"{prefix}*")), "shared-memory regions left behind"


def test_the_start_up_log_says_plainly_when_the_model_is_untrained(tmp_path, caplog):
    server = TritonServer(run_dir=tmp_path)
    with caplog.at_level("WARNING", logger="iqa.launcher"):
        server.command()  # everything start() does before launching the process
    trained = launcher.read_model_metadata(launcher.DEFAULT_REPOSITORY / "iqa_resnet50" / "1" / "model.pt")["trained"]
    assert server.trained is trained
    assert ("scores it serves are NOT meaningful" in caplog.text) is (not trained)


def test_the_admin_secret_reaches_the_server_but_not_the_log(tmp_path, caplog, monkeypatch):
    server = TritonServer(ports=Ports(*launcher.free_ports(3)), run_dir=tmp_path)
    monkeypatch.setattr(subprocess, "Popen", lambda args, **kwargs: type("P", (), {"args": args, "pid": 0})())
    with caplog.at_level("INFO", logger="iqa.launcher"):
        server.start()
    assert any(server.admin.secret in arg for arg in server.process.args)
    assert "starting" in caplog.text and server.admin.secret not in caplog.text


def test_a_stop_held_up_by_an_open_http_connection_says_so(tmp_path, caplog):
    server = TritonServer(ports=Ports(*launcher.free_ports(3)), run_dir=tmp_path, log_file=tmp_path / "log",
                          exit_timeout_s=5, config_edit=without_warmup())
    with server:
        keep_alive = http.client.HTTPConnection("127.0.0.1", server.ports.http, timeout=10)
        keep_alive.request("GET", "/v2/health/ready")
        keep_alive.getresponse().read()  # HTTP/1.1: the connection stays open after the answer
        with caplog.at_level("WARNING", logger="iqa.launcher"):
            server.stop()
        keep_alive.close()
    assert f"1 HTTP connection(s) to port {server.ports.http} are open" in caplog.text
    assert "--exit-timeout-secs (5 s)" in caplog.text


def test_regions_of_launchers_that_no_longer_run_are_removed_and_no_others(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # its PID now names no process
    names = [f"iqa_{gone.pid}_8001_0f1e", f"iqa_{os.getpid()}_8001_0f1e", "iqa_triton_0f1e", "other_0f1e"]
    for name in names:
        (tmp_path / name).write_bytes(b"\0")
    assert launcher.remove_orphaned_regions(tmp_path) == [names[0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])


def test_a_second_launcher_on_the_same_run_directory_is_refused_by_name_until_the_first_stops(tmp_path):
    """Its ports not bound yet while the first loads, a second launcher would pass the port check, relink the
    repository under the loading server and report that server's readiness as its own (a new user's trial)."""
    first = TritonServer(ports=Ports(*launcher.free_ports(3)), run_dir=tmp_path / "run")
    second = TritonServer(ports=Ports(*launcher.free_ports(3)), run_dir=tmp_path / "run")
    first.lock_run_dir()
    with pytest.raises(LaunchError, match=rf"another launcher \(PID {os.getpid()}\) is starting or serving from "
                                          rf".*run: stop it first, or give this one its own run directory \(--run-dir\)"):
        second.start()
    assert second.process is None  # refused before anything was started or relinked
    first.stop()  # never started: nothing to stop but the lock
    second.lock_run_dir()
    second.stop()
    third = TritonServer(ports=Ports(*launcher.free_ports(3)), run_dir=tmp_path / "another")
    third.lock_run_dir()  # another run directory is another server
    third.stop()
    # A start that fails before anything runs leaves the run directory free.
    failing = TritonServer(ports=Ports(*launcher.free_ports(3)), run_dir=tmp_path / "run", tritonserver="/nonexistent")
    with pytest.raises(LaunchError, match="not found or not executable"):
        failing.start()
    assert failing.run_lock is None
    first.lock_run_dir()
    first.stop()
