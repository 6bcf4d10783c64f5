"""Bounded fuzzing through the real server: mutated and random bytes sent over gRPC get three scores
in [0, 1] or an INVALID_ARGUMENT error naming the problem, and the server stays healthy.

The in-process decode path gets 2000 cases (tests/test_fuzz_preprocess.py); this sends fewer, since
each is a round trip through both composing models, to catch what only the server adds (the
backend glue, error mapping, a crash of the stub).
"""

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tritonclient.utils import InferenceServerException

from iqa.contract import ENSEMBLE_MODEL, SCORE_NAMES
from tests.conftest import image_tensor
from tests.test_fuzz_preprocess import mutated

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def client(triton):
    with grpcclient.InferenceServerClient(triton.grpc_url) as client:
        yield client


def score_or_clear_error(client, data: bytes) -> None:
    try:
        result = client.infer(ENSEMBLE_MODEL, [image_tensor([data])], client_timeout=60)
    except InferenceServerException as err:
        assert err.status() == "StatusCode.INVALID_ARGUMENT", (err.status(), err.message())
        assert "bad image" in err.message()
        return
    scores = np.array([result.as_numpy(name)[0, 0] for name in SCORE_NAMES])
    assert np.isfinite(scores).all() and ((scores >= 0) & (scores <= 1)).all(), scores


# The session server is shared: a fixture from the module scope is fine with hypothesis here.
SETTINGS = dict(deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow,
                                                                        HealthCheck.function_scoped_fixture])


@settings(max_examples=60, **SETTINGS)
@given(data=mutated())
def test_mutated_images_through_the_server_get_scores_or_invalid_argument(client, data):
    score_or_clear_error(client, data)


@settings(max_examples=20, **SETTINGS)
@given(data=st.binary(max_size=2048))
def test_random_bytes_through_the_server_get_invalid_argument(client, data):
    score_or_clear_error(client, data)


def test_the_server_still_scores_a_photo_after_the_fuzzing(client, photos):
    # Triton's readiness stays true with a dead stub: only a real inference shows the server is whole.
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(ENSEMBLE_MODEL)
    score_or_clear_error(client, photos["sheep"])
    client.infer(ENSEMBLE_MODEL, [image_tensor([photos["sheep"]])], client_timeout=60)
