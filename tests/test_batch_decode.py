"""The batched region decode (the GPU path of iqa_preprocess), run on nvImageCodec's CPU backend.

The same code runs on a GPU with nvJPEG (iqa.batch_decode.RegionDecoder("cuda:0")); here torch
tensors on the CPU stand in for the device, in-process and served by the real tritonserver with
iqa_preprocess's `region_decode_device` set to "cpu". What it cannot decode takes the CPU route, so
every input of the bad-input matrix gets exactly the error it gets without it.
"""

import numpy as np
import pytest

from iqa.batch_decode import RegionDecoder, preprocess_batch
from iqa.contract import ENSEMBLE_MODEL, PATCH_SHAPE, PREPROCESS_MODEL, SCORE_NAMES
from iqa.preprocess import ImageError, preprocess
from tests.conftest import image_tensor, serve
from tests.odd_images import CASES
from tests.test_jpeg_regions import KINDS
from tests.test_server import TOLERANCE


@pytest.fixture(scope="module")
def region_decoder():
    return RegionDecoder("cpu")


def test_a_batch_of_every_jpeg_kind_gets_the_patches_of_the_cpu_route(region_decoder):
    kinds = sorted(KINDS)
    payloads = [KINDS[kind]() for kind in kinds]
    patches = region_decoder(payloads)
    for kind, data, got in zip(kinds, payloads, patches):
        assert got is not None, f"{kind}: the batched decode passed it on"
        assert tuple(got.shape) == PATCH_SHAPE and str(got.dtype) == "torch.uint8"
        np.testing.assert_array_equal(got.numpy(), preprocess(data), err_msg=kind)


def test_every_bad_input_keeps_its_error_and_its_batch_mates_their_patches(region_decoder):
    good = KINDS["exif_orientation_6"]()
    names = sorted(CASES)
    payloads = [good] + [CASES[name][0]() for name in names] + [good]
    outcomes = preprocess_batch(payloads, region_decoder)
    for name, outcome in zip(names, outcomes[1:-1]):
        make, error = CASES[name]
        if error is None:
            np.testing.assert_array_equal(outcome, preprocess(make()), err_msg=name)
            continue
        with pytest.raises(ImageError) as alone:
            preprocess(make())
        assert isinstance(outcome, ImageError) and str(outcome) == str(alone.value), name
        assert error in str(outcome), name
    for outcome in (outcomes[0], outcomes[-1]):
        np.testing.assert_array_equal(outcome, preprocess(good))


def test_a_failing_device_sends_the_whole_batch_the_cpu_route():
    def broken(payloads):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    payloads = [KINDS["baseline_420"](), b"not an image"]
    outcomes = preprocess_batch(payloads, broken)
    np.testing.assert_array_equal(outcomes[0], preprocess(payloads[0]))
    assert isinstance(outcomes[1], ImageError) and "not a recognised image" in str(outcomes[1])


def batched_on_cpu(model: str, config: str) -> str:
    if model != PREPROCESS_MODEL:
        return config
    return config + '\nparameters: { key: "region_decode_device", value: { string_value: "cpu" } }\n'


@pytest.fixture(scope="module")
def batched_server(tmp_path_factory):
    """The repository served with iqa_preprocess's batched region decode on (nvImageCodec's CPU backend)."""
    with serve(tmp_path_factory, "batched", batched_on_cpu) as server:
        yield server


def test_served_with_the_batched_decode_bad_inputs_keep_their_errors_and_batch_mates_their_scores(
        batched_server, score_in_process):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    assert "JPEG patch regions decoded in batches on cpu" in batched_server.log_file.read_text()
    good = KINDS["exif_orientation_6"]()
    names = sorted(CASES)
    with grpcclient.InferenceServerClient(batched_server.grpc_url) as client:
        for name in names:
            make, error = CASES[name]
            rows = [good, make(), good]
            if error is None:
                result = client.infer(ENSEMBLE_MODEL, [image_tensor(rows)], client_timeout=300)
                served = np.concatenate([result.as_numpy(score) for score in SCORE_NAMES], axis=1)
                for row, data in zip(served, rows):
                    expected = score_in_process(data)
                    np.testing.assert_allclose(row, [expected[score] for score in SCORE_NAMES], atol=TOLERANCE,
                                               err_msg=name)
            else:
                with pytest.raises(InferenceServerException) as caught:
                    client.infer(ENSEMBLE_MODEL, [image_tensor(rows)], client_timeout=300)
                with pytest.raises(ImageError) as alone:
                    preprocess(make())
                assert caught.value.status() == "StatusCode.INVALID_ARGUMENT", name
                assert f"bad image: image 1 of 3 in this request: {alone.value}" in caught.value.message(), name
                assert error in caught.value.message(), name
