"""The batched region decode (the GPU path of iqa_preprocess), run on nvImageCodec's CPU backend.

The same code runs on a GPU with nvJPEG and CuPy (iqa.batch_decode.RegionDecoder("cuda:0")); here
numpy arrays on the CPU stand in for the device, in-process and served by the real tritonserver with
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


# Kinds the device never decodes (iqa.batch_decode): nvJPEG's CMYK / YCCK colours are not libjpeg's, and a
# progressive frame holds every coefficient of the picture while it decodes.
CPU_ROUTE_KINDS = {kind for kind in KINDS if kind in ("cmyk", "ycck") or "progressive" in kind}


def test_a_batch_of_every_jpeg_kind_gets_the_patches_of_the_cpu_route(region_decoder):
    kinds = sorted(KINDS)
    payloads = [KINDS[kind]() for kind in kinds]
    patches = region_decoder(payloads)
    assert {"cmyk", "ycck", "progressive_420"} <= CPU_ROUTE_KINDS
    for kind, data, got in zip(kinds, payloads, patches):
        if kind in CPU_ROUTE_KINDS:
            assert got is None, f"{kind}: must be passed on to the CPU route"
            continue
        assert got is not None, f"{kind}: the batched decode passed it on"
        assert isinstance(got, np.ndarray) and got.shape == PATCH_SHAPE and got.dtype == np.uint8
        np.testing.assert_array_equal(got, preprocess(data), err_msg=kind)


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


def test_cmyk_ycck_and_progressive_jpegs_get_the_cpu_routes_patches_in_a_batch(region_decoder):
    kinds = sorted(CPU_ROUTE_KINDS)
    payloads = [KINDS[kind]() for kind in kinds]
    for kind, data, outcome in zip(kinds, payloads, preprocess_batch(payloads, region_decoder)):
        np.testing.assert_array_equal(outcome, preprocess(data), err_msg=kind)


def test_the_batch_holds_its_planned_pixels_from_the_decode_budget_while_it_decodes(region_decoder):
    """The existing budget test's method (tests/test_decode_budget.py): with the budget held elsewhere the
    batch waits, and it decodes once that is released."""
    import threading

    from iqa import jpeg_regions
    from iqa.decode_budget import DECODE_BUDGET
    from iqa.preprocess import patch_origins

    payloads = [KINDS["baseline_420"](), KINDS["exif_orientation_6"]()] * 4
    planned = sum(jpeg_regions.plan(data, patch_origins).pixels for data in payloads)
    assert planned < DECODE_BUDGET.capacity
    done = threading.Event()
    worker = threading.Thread(target=lambda: (region_decoder(payloads), done.set()))
    with DECODE_BUDGET.hold(DECODE_BUDGET.capacity - planned + 1):  # leaves one pixel too few
        worker.start()
        assert not done.wait(0.5), "the batch decoded without holding its pixels"
    assert done.wait(60), "the batch never ran once the budget was free"
    worker.join()


def test_asking_for_a_gpu_that_cannot_decode_is_an_error_at_load_not_a_silent_cpu_route():
    """This machine has no GPU driver: a RegionDecoder on cuda must refuse to exist (the model's load fails),
    although nvImageCodec's Decoder() itself does not raise there."""
    with pytest.raises(RuntimeError, match="cannot decode JPEGs on cuda:0"):
        RegionDecoder("cuda:0")
    with pytest.raises(ValueError, match="cpu, cuda or cuda:N"):
        RegionDecoder("gpu")


def test_the_gpu_decoders_list_the_hardware_jpeg_engines_first_and_no_cpu_backend():
    from nvidia import nvimgcodec

    from iqa.jpeg_regions import GPU_BACKENDS

    assert GPU_BACKENDS[0] == "HW_GPU_ONLY" and "CPU_ONLY" not in GPU_BACKENDS
    assert all(hasattr(nvimgcodec.BackendKind, kind) for kind in GPU_BACKENDS)


def test_nvjpeg_is_installed_where_nvimgcodecs_nvjpeg_extension_looks():
    """nvImageCodec's nvJPEG extension dlopens libnvjpeg.so.13 through its own RUNPATH; the nvidia-nvjpeg
    wheel (pyproject.toml) must put it in one of those directories, or the GPU decoders never register."""
    import re
    from pathlib import Path

    from nvidia import nvimgcodec

    extension = next((Path(nvimgcodec.__file__).parent / "extensions").glob("libnvjpeg_ext.so*"))
    binary = extension.read_bytes()
    assert b"libnvjpeg.so.13" in binary
    runpath = re.search(rb"\$ORIGIN[^\x00]*", binary)[0].decode()
    folders = [Path(entry.replace("$ORIGIN", str(extension.parent))).resolve() for entry in runpath.split(":")]
    assert any((folder / "libnvjpeg.so.13").is_file() for folder in folders), (runpath, folders)
    setup = (Path(__file__).parents[1] / "loadtest" / "gpu" / "setup.sh").read_text()
    assert "nvidia/nvjpeg/lib" not in setup and "nvidia/cu13/lib" in setup


def test_the_gpu_agreement_check_covers_pictures_on_both_sides_of_the_flat_rule(region_decoder):
    """loadtest.perf compares the GPU decode's scores with the CPU route's on near-flat pictures too; on the CPU
    backend both routes give the same pixels, so the check must read no difference and no flip."""
    import torch

    from iqa.network import DegradationNet, build_model
    from loadtest.perf import near_flat_jpegs, region_decode_agreement

    flat = near_flat_jpegs(1024, 768)
    evidence = [DegradationNet.patch_evidence(torch.from_numpy(preprocess(data)[None]))[0] for data in flat]
    assert any(not e.any() for e in evidence) and any(e.all() for e in evidence), "both sides of FLAT_PATCH_RANGE"
    agreement = region_decode_agreement(region_decoder, flat, build_model(seed=0))
    assert agreement == {"pictures": len(flat), "max_abs_difference": 0.0, "no_evidence_flips": 0}


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
