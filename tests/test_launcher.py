"""The local launcher's own decisions, checked without starting a server."""

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from iqa.serving import launcher
from iqa.serving.launcher import LaunchError, Ports, TritonServer


def test_a_taken_port_is_reported_by_number_and_name(tmp_path):
    with socket.socket() as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        server = TritonServer(ports=Ports(http=taken, grpc=taken + 1, metrics=taken + 2), run_dir=tmp_path)
        with pytest.raises(LaunchError, match=rf"port {taken} \(HTTP\) is already in use"):
            server.start()
    assert server.process is None


def test_a_missing_binary_is_reported_with_what_to_do(tmp_path):
    with pytest.raises(LaunchError, match="not found or not executable"):
        launcher.find_tritonserver(tmp_path / "no-such-tritonserver")


def test_the_wheel_server_is_found_by_default():
    assert launcher.find_tritonserver().name == "tritonserver"


@pytest.mark.parametrize("model", launcher.NETWORK_MODELS)  # the 4-patch network and the map's cells network
def test_without_libtorch_or_gpu_the_network_runs_in_the_python_runner(tmp_path, model):
    repository, changes = launcher.prepare_repository(launcher.DEFAULT_REPOSITORY, tmp_path, libtorch=False, gpus=0)
    network = (repository / model / "config.pbtxt").read_text()
    assert 'backend: "python"' in network and "KIND_CPU" in network and "KIND_GPU" not in network
    assert "iqa.serving.torchscript_model" in (repository / model / "1" / "model.py").read_text()
    assert any(c.startswith(f"{model}: ") and "Python-backend TorchScript runner" in c for c in changes)
    # the committed repository itself is untouched: it stays the production (libtorch, GPU) one
    committed = (launcher.DEFAULT_REPOSITORY / model / "config.pbtxt").read_text()
    assert 'backend: "pytorch_libtorch"' in committed and "KIND_GPU" in committed


def test_with_libtorch_and_a_gpu_the_repository_is_served_as_committed(tmp_path):
    repository, changes = launcher.prepare_repository(launcher.DEFAULT_REPOSITORY, tmp_path, libtorch=True, gpus=1)
    for model in launcher.MODELS:
        served = (repository / model / "config.pbtxt").read_text()
        assert served == (launcher.DEFAULT_REPOSITORY / model / "config.pbtxt").read_text()
    assert changes == []
    assert not (repository / "iqa_resnet50" / "1" / "model.py").exists()


def test_a_repository_without_model_pt_asks_for_the_export(tmp_path):
    source = tmp_path / "repo"
    for model in launcher.MODELS:
        (source / model / "1").mkdir(parents=True)
        (source / model / "config.pbtxt").write_text("")
    with pytest.raises(LaunchError, match="make export"):
        launcher.prepare_repository(source, tmp_path / "run", libtorch=False, gpus=0)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_killed_launcher_takes_its_server_down(tmp_path):
    program = (
        "import time\n"
        "from pathlib import Path\n"
        "from iqa.serving.launcher import Ports, TritonServer, free_ports\n"
        f"server = TritonServer(ports=Ports(*free_ports(3)), run_dir=Path({str(tmp_path)!r}),\n"
        f"                      log_file=Path({str(tmp_path / 'log')!r}), exit_timeout_s=5).start()\n"
        "print(server.process.pid, flush=True)\n"
        "time.sleep(600)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", program], stdout=subprocess.PIPE, text=True)
    try:
        server_pid = int(parent.stdout.readline())
        time.sleep(2)
        assert _alive(server_pid)
    finally:
        parent.kill()  # SIGKILL: no handler in the parent gets to run
        parent.wait()
    deadline = time.monotonic() + 60
    while _alive(server_pid) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(server_pid), "tritonserver outlived the process that started it"


def test_the_start_up_log_says_plainly_when_the_model_is_untrained(tmp_path, caplog):
    server = TritonServer(run_dir=tmp_path)
    with caplog.at_level("WARNING", logger="iqa.launcher"):
        server.command()  # everything start() does before launching the process
    trained = launcher.read_model_metadata(launcher.DEFAULT_REPOSITORY / "iqa_resnet50" / "1" / "model.pt")["trained"]
    assert server.trained is trained
    assert ("scores it serves are NOT meaningful" in caplog.text) is (not trained)


def test_the_admin_secret_reaches_the_server_but_not_the_log(tmp_path, caplog, monkeypatch):
    server = TritonServer(ports=Ports(*launcher.free_ports(3)), run_dir=tmp_path)
    monkeypatch.setattr(subprocess, "Popen", lambda args, **kwargs: type("P", (), {"args": args})())
    with caplog.at_level("INFO", logger="iqa.launcher"):
        server.start()
    assert any(server.admin.secret in arg for arg in server.process.args)
    assert "starting" in caplog.text and server.admin.secret not in caplog.text
