"""The shipped model_repository/ as the real tritonserver serves it: what loads, and its limits.

The production image serves these files unchanged; locally the launcher may change only what the
machine forces (launcher.MACHINE_CHANGES). These tests read back what the running server serves.
"""

from __future__ import annotations

import os
import queue
import shutil

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from google.protobuf import json_format, text_format
from tritonclient.grpc import model_config_pb2 as pb
from tritonclient.utils import InferenceServerException

from iqa import contract
from iqa.serving import launcher
from iqa.serving.launcher import LaunchError, Ports, TritonServer, free_ports
from tests.conftest import DATA, image_tensor, without_warmup
from tests.test_launcher import _with_machine_changes


@pytest.fixture(scope="module")
def client(triton):
    with grpcclient.InferenceServerClient(triton.grpc_url) as client:
        yield client


def served_config(client, model: str) -> pb.ModelConfig:
    return json_format.ParseDict(client.get_model_config(model, as_json=True)["config"], pb.ModelConfig(),
                                 ignore_unknown_fields=True)


@pytest.mark.parametrize("model", launcher.MODELS)
def test_the_server_serves_the_shipped_config_with_only_the_machine_changes(client, model):
    committed = text_format.Parse((launcher.DEFAULT_REPOSITORY / model / "config.pbtxt").read_text(), pb.ModelConfig())
    # Without a GPU (this machine, CI) the documented changes apply; with one, none may.
    expected = _with_machine_changes(committed, model) if launcher.gpu_count() == 0 else committed
    # Triton fills in what the file leaves out (defaults, instance group names): every field the file
    # sets must be served as set.
    assert_contains(served_config(client, model), expected, model)


def assert_contains(served, expected, path: str) -> None:
    """Every field set in the protobuf message `expected` has the same value in `served`, recursively."""
    for field, value in expected.ListFields():
        where, got = f"{path}.{field.name}", getattr(served, field.name)
        if field.message_type is None:
            assert got == value, where
        elif field.message_type.GetOptions().map_entry:
            assert set(got) == set(value), where
            for key in value:
                if field.message_type.fields_by_name["value"].message_type is None:
                    assert got[key] == value[key], f"{where}[{key}]"
                else:
                    assert_contains(got[key], value[key], f"{where}[{key}]")
        elif field.is_repeated:
            assert len(got) == len(value), where
            for index, (got_item, item) in enumerate(zip(got, value)):
                assert_contains(got_item, item, f"{where}[{index}]")
        else:
            assert_contains(got, value, where)


def test_the_network_is_served_by_a_backend_named_pytorch(client):
    network = served_config(client, contract.NETWORK_MODEL)
    assert (network.backend, network.platform) == ("pytorch", "pytorch_libtorch")


def test_a_platform_name_given_as_the_backend_fails_the_load(tmp_path):
    """What the repository shipped before: `backend: "pytorch_libtorch"` names no backend, and Triton exits."""
    source = tmp_path / "repository"
    shutil.copytree(launcher.DEFAULT_REPOSITORY, source, symlinks=False)
    config = source / contract.NETWORK_MODEL / "config.pbtxt"
    config.write_text(config.read_text().replace('backend: "pytorch"', 'backend: "pytorch_libtorch"'))
    log = tmp_path / "tritonserver.log"
    server = TritonServer(repository=source, run_dir=tmp_path / "run", ports=Ports(*free_ports(3)), log_file=log,
                          exit_timeout_s=5, ready_timeout_s=120, config_edit=without_warmup())
    with pytest.raises(LaunchError, match="exited with code 1 before it was ready") as raised:
        with server:
            pass
    assert "unable to find backend library for backend 'pytorch_libtorch'" in log.read_text()
    # The error carries the end of the log, so a CI report shows why without the log file.
    assert "failed to load all models" in str(raised.value)


def test_a_server_not_ready_in_time_is_stopped_and_the_error_names_what_was_not_ready(tmp_path):
    """No server loads its models within a second: the launcher stops it and says which checks still failed,
    with the end of the log (a CI run once saw only "not ready within 120 s")."""
    log = tmp_path / "tritonserver.log"
    server = TritonServer(run_dir=tmp_path / "run", ports=Ports(*free_ports(3)), log_file=log,
                          exit_timeout_s=10, ready_timeout_s=1, config_edit=without_warmup())
    with pytest.raises(LaunchError, match=r"not ready within 1 s \(still not ready: [^)]*models/") as raised:
        with server:
            pass
    assert "its last" in str(raised.value) and str(log) in str(raised.value)
    assert server.process.poll() is not None, "the server that was not ready in time still runs"


def _largest_image() -> bytes:
    """A valid JPEG of exactly MAX_IMAGE_BYTES: a photo followed by padding, which decoders ignore after EOI."""
    photo = (DATA / "sheep.jpg").read_bytes()
    return photo + bytes(contract.MAX_IMAGE_BYTES - len(photo))


def _shm_regions(triton: TritonServer) -> dict[str, int]:
    """This server's Python-backend regions in /dev/shm -> size in bytes (named by the launcher's prefix)."""
    prefix = next(a for a in triton.command_line if "shm-region-prefix-name=" in a).rsplit("=", 1)[1]
    return {entry.name: entry.stat().st_size for entry in os.scandir("/dev/shm") if entry.name.startswith(prefix)}


def test_the_largest_accepted_requests_succeed_at_once_and_no_region_grows(client, triton):
    """8 images of the largest accepted size to both ensembles at the same time: every region of
    /dev/shm keeps its start size (growing a region under load has crashed Triton, server#8882)."""
    rows = [_largest_image()] * contract.MAX_REQUEST_ROWS
    answers: queue.Queue = queue.Queue()
    for model in (contract.ENSEMBLE_MODEL, contract.MAP_MODEL):
        client.async_infer(model, [image_tensor(rows)], client_timeout=600,
                           callback=lambda result, error, model=model: answers.put((model, result, error)))
    for _ in range(2):
        model, result, error = answers.get(timeout=660)
        assert error is None, f"{model}: {error}"
        for name in contract.SCORE_NAMES:
            scores = result.as_numpy(name)
            assert scores.shape == (contract.MAX_REQUEST_ROWS, 1) and np.all((scores >= 0) & (scores <= 1)), model
    regions = _shm_regions(triton)
    assert regions, "no Python-backend region found in /dev/shm"
    assert set(regions.values()) == {contract.SHM_DEFAULT_BYTES}, f"a region grew: {regions}"


def test_a_request_of_more_rows_than_the_limit_is_refused_by_the_server(client):
    rows = [(DATA / "sheep.jpg").read_bytes()] * (contract.MAX_REQUEST_ROWS + 1)
    with pytest.raises(InferenceServerException) as refused:
        client.infer(contract.ENSEMBLE_MODEL, [image_tensor(rows)], client_timeout=60)
    assert refused.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert f"must be <= {contract.MAX_REQUEST_ROWS}" in refused.value.message()


def _padded(size: int) -> bytes:
    """A JPEG (sheep.jpg followed by zeros, which decoders ignore after EOI) of exactly `size` bytes."""
    photo = (DATA / "sheep.jpg").read_bytes()
    return photo + bytes(size - len(photo))


def test_an_image_just_over_the_limit_is_refused_by_name_and_its_batch_mates_are_scored(client, triton):
    """One image of MAX_IMAGE_BYTES + 1 among normal ones sent at once (so that they can share a dynamic
    batch): it alone gets INVALID_ARGUMENT naming the limit, the others their scores, and no region grows."""
    over = _padded(contract.MAX_IMAGE_BYTES + 1)
    normal = (DATA / "rocks.jpg").read_bytes()
    answers: queue.Queue = queue.Queue()
    sent = [over, normal, normal, normal]
    for index, data in enumerate(sent):
        client.async_infer(contract.ENSEMBLE_MODEL, [image_tensor([data])], client_timeout=300,
                           callback=lambda result, error, index=index: answers.put((index, result, error)))
    outcomes = {}
    for _ in sent:
        index, result, error = answers.get(timeout=360)
        outcomes[index] = (result, error)
    result, error = outcomes[0]
    assert result is None and error.status() == "StatusCode.INVALID_ARGUMENT", error
    assert f"more than the limit of {contract.MAX_IMAGE_BYTES} bytes" in error.message()
    for index in range(1, len(sent)):
        result, error = outcomes[index]
        assert error is None, error
        assert all(0.0 <= float(result.as_numpy(name)[0, 0]) <= 1.0 for name in contract.SCORE_NAMES)
    assert set(_shm_regions(triton).values()) == {contract.SHM_DEFAULT_BYTES}, "a region grew"


def test_a_request_larger_than_a_region_fails_without_growing_it_and_the_server_carries_on(client, triton):
    """Triton has no gRPC request-size limit (2 GiB messages): a request larger than a whole region reaches
    the Python backend, which would grow the region past /dev/shm (SIGBUS, an evicted pod). The launcher
    caps the server's file sizes at the region size (watchdog.confined): the execution fails with
    an error, no region grows, and the next request is scored."""
    with pytest.raises(InferenceServerException) as refused:
        client.infer(contract.ENSEMBLE_MODEL, [image_tensor([_padded(contract.SHM_DEFAULT_BYTES)])], client_timeout=300)
    assert "Failed to increase the shared memory pool size" in refused.value.message(), refused.value
    assert set(_shm_regions(triton).values()) == {contract.SHM_DEFAULT_BYTES}, "a region grew"
    result = client.infer(contract.ENSEMBLE_MODEL, [image_tensor([(DATA / "rocks.jpg").read_bytes()])], client_timeout=120)
    assert 0.0 <= float(result.as_numpy("NOISE")[0, 0]) <= 1.0
