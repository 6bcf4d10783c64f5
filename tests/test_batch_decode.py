"""The batched region decode (the GPU path of iqa_preprocess), run on nvImageCodec's CPU backend.

The same code runs on a GPU with nvJPEG (iqa.batch_decode.RegionDecoder("cuda:0")); here torch
tensors on the CPU stand in for the device. What it cannot decode takes the CPU route, so every
input of the bad-input matrix gets exactly the error it gets without it.
"""

import numpy as np
import pytest

from iqa.batch_decode import RegionDecoder, preprocess_batch
from iqa.contract import PATCH_SHAPE
from iqa.preprocess import ImageError, preprocess
from tests.odd_images import CASES
from tests.test_jpeg_regions import KINDS


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
