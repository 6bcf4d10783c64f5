"""Fixtures: a real tritonserver for the session, and the in-process reference it must agree with."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from iqa.contract import SCORE_NAMES
from iqa.preprocess import preprocess
from iqa.serving.launcher import REPO, Ports, TritonServer, eager_twin, free_ports

DATA = Path(__file__).parent / "data"
MODEL_PT = REPO / "model_repository" / "iqa_resnet50" / "1" / "model.pt"


@pytest.fixture(scope="session")
def photos() -> dict[str, bytes]:
    return {p.stem: p.read_bytes() for p in sorted(DATA.glob("*.jpg"))}


def serve(tmp_path_factory, name: str, config_edit=None) -> TritonServer:
    """The repository, its configs edited by `config_edit(model, text)` if given, for the real tritonserver
    on free ports (a context manager: it starts on entry, stops on exit)."""
    run_dir = tmp_path_factory.mktemp(name)
    return TritonServer(ports=Ports(*free_ports(3)), run_dir=run_dir, log_file=run_dir / "tritonserver.log",
                        exit_timeout_s=10, config_edit=config_edit)


@pytest.fixture(scope="session")
def triton(tmp_path_factory) -> TritonServer:
    """The repository served by the real tritonserver on free ports, for the whole session."""
    logging.basicConfig(level=logging.INFO)
    with serve(tmp_path_factory, "triton") as server:
        yield server
    print(f"tritonserver log: {server.log_file}")


@pytest.fixture(scope="session")
def reference_model() -> torch.nn.Module:
    """The eager network with the very weights model.pt was exported from."""
    return eager_twin(MODEL_PT)


@pytest.fixture(scope="session")
def score_in_process(reference_model):
    """Encoded bytes -> {score name: value}, computed in this process with the same preprocessing."""

    def score(data: bytes) -> dict[str, float]:
        with torch.inference_mode():
            outputs = reference_model(torch.from_numpy(preprocess(data)[None]))
        return {name: float(out[0, 0]) for name, out in zip(SCORE_NAMES, outputs)}

    return score


def image_tensor(items: list[bytes]):
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput("IMAGE", [len(items), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(items, dtype=np.object_).reshape(-1, 1))
    return tensor
