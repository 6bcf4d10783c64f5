"""Fixtures: a real tritonserver for the session, and the in-process reference it must agree with."""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable
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


def without_warmup(config_edit=None, keep: Iterable[str] = ()):
    """A config edit: `config_edit(model, text)` if given, then the model_warmup removed from every model
    but those in `keep`.

    For the servers a module starts for a lifecycle or a config of its own (a restart, a kill, SIGTERM,
    TLS, small queues, ...), whose tests do not depend on warm-up. Warm-up (config.pbtxt: the GPU's cuDNN
    algorithm choice and allocator growth) runs ResNet-50 on ~100 random patches at each start: such a
    fixture's set-up took 10.7-12.1 s with it and 3.7-5.0 s without on the 2-vCPU VM (BENCHMARKS.md,
    "The test suite's time"). The session's `triton` (which tests/test_production_repository.py checks) and
    tests/test_launcher.py's launcher runs serve the repository as shipped, warm-up included."""
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    def edit(model: str, text: str) -> str:
        if config_edit is not None:
            text = config_edit(model, text)
        if model in keep or "model_warmup" not in text:
            return text
        config = text_format.Parse(text, model_config_pb2.ModelConfig())
        config.ClearField("model_warmup")
        return text_format.MessageToString(config)

    return edit


def serve(tmp_path_factory, name: str, config_edit=None, *, warmup: bool = False, **settings) -> TritonServer:
    """The repository, its configs edited by `config_edit(model, text)` if given, for the real tritonserver
    on free ports (a context manager: it starts on entry, stops on exit). Without its warm-up unless
    `warmup` (see without_warmup); `settings` go to TritonServer (extra_args, exit_timeout_s, ...)."""
    run_dir = tmp_path_factory.mktemp(name)
    settings = {"exit_timeout_s": 10, **settings}
    return TritonServer(ports=Ports(*free_ports(3)), run_dir=run_dir, log_file=run_dir / "tritonserver.log",
                        config_edit=config_edit if warmup else without_warmup(config_edit), **settings)


@pytest.fixture(scope="session")
def triton(tmp_path_factory) -> TritonServer:
    """The repository served by the real tritonserver on free ports, for the whole session."""
    logging.basicConfig(level=logging.INFO)
    with serve(tmp_path_factory, "triton", warmup=True) as server:  # as shipped
        yield server
    print(f"tritonserver log: {server.log_file}")


@pytest.fixture(scope="session")
def reference_model() -> torch.nn.Module:
    """The eager network with the very weights model.pt was exported from."""
    return eager_twin(MODEL_PT)


@pytest.fixture(scope="session")
def score_in_process(reference_model):
    """Encoded bytes -> {score name: value}, computed in this process with the same preprocessing; each
    input's scores are computed once per session (many tests compare the same photos)."""

    @functools.lru_cache(maxsize=256)
    def scores(data: bytes) -> tuple[float, ...]:
        with torch.inference_mode():
            outputs = reference_model(torch.from_numpy(preprocess(data)[None]))
        return tuple(float(out[0, 0]) for out in outputs)

    def score(data: bytes) -> dict[str, float]:
        return dict(zip(SCORE_NAMES, scores(data)))

    return score


def image_tensor(items: list[bytes]):
    import tritonclient.grpc as grpcclient

    tensor = grpcclient.InferInput("IMAGE", [len(items), 1], "BYTES")
    tensor.set_data_from_numpy(np.array(items, dtype=np.object_).reshape(-1, 1))
    return tensor
