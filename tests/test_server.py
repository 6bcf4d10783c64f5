"""The ensemble as users reach it: a real tritonserver (started by conftest) over gRPC."""

from __future__ import annotations

import io
import queue

import numpy as np
import pytest
from PIL import Image
import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from iqa import jpeg_regions
from iqa.contract import ENSEMBLE_MODEL, NETWORK_MODEL, PREPROCESS_MODEL, SCORE_NAMES
from iqa.preprocess import patch_origins
from tests import odd_images
from tests.conftest import image_tensor
from tests.odd_images import CASES

# The server runs the same TorchScript ops as the in-process eager model; what differs is the
# batch the image shares, which changes float summation order in the convolutions.
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def client(triton):
    with grpcclient.InferenceServerClient(triton.grpc_url) as client:
        yield client


def infer(client, items: list[bytes]) -> np.ndarray:
    """Score a request of len(items) rows -> array [rows, 3] in SCORE_NAMES order."""
    result = client.infer(ENSEMBLE_MODEL, [image_tensor(items)], client_timeout=120)
    return np.concatenate([result.as_numpy(name) for name in SCORE_NAMES], axis=1)


def infer_concurrently(client, requests: list[list[bytes]]) -> list[np.ndarray | InferenceServerException]:
    """Send every request at once (async gRPC), so the server's dynamic batchers see them together."""
    answers: queue.Queue = queue.Queue()
    for index, items in enumerate(requests):
        client.async_infer(ENSEMBLE_MODEL, [image_tensor(items)],
                           callback=lambda result, error, index=index: answers.put((index, result, error)),
                           client_timeout=300)
    outcomes: list = [None] * len(requests)
    for _ in requests:
        index, result, error = answers.get(timeout=330)
        outcomes[index] = error if error is not None else np.concatenate(
            [result.as_numpy(name) for name in SCORE_NAMES], axis=1)
    return outcomes


def counts(client, model: str) -> tuple[int, int]:
    stats = client.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def expected_row(score_in_process, data: bytes) -> np.ndarray:
    scores = score_in_process(data)
    return np.array([scores[name] for name in SCORE_NAMES], dtype=np.float32)


def test_ensemble_scores_equal_in_process_scores_on_real_photos(client, photos, score_in_process):
    served = {name: infer(client, [data])[0] for name, data in photos.items()}
    for name, data in photos.items():
        np.testing.assert_allclose(served[name], expected_row(score_in_process, data), atol=TOLERANCE, err_msg=name)
        assert served[name].dtype == np.float32 and ((0 <= served[name]) & (served[name] <= 1)).all()
    # Distinct photos get distinct scores, so agreement above is not the agreement of two constants.
    rows = np.stack(list(served.values()))
    assert np.ptp(rows, axis=0).max() > 10 * TOLERANCE


def test_a_request_of_several_images_gets_one_row_each_in_order(client, photos, score_in_process):
    items = list(photos.values())
    served = infer(client, items + items[::-1])
    expected = np.stack([expected_row(score_in_process, d) for d in items + items[::-1]])
    np.testing.assert_allclose(served, expected, atol=TOLERANCE)


def test_dynamic_batching_batches_both_composing_models(client, photos):
    before = {m: counts(client, m) for m in (PREPROCESS_MODEL, NETWORK_MODEL)}
    requests = [[data] for data in list(photos.values()) * 8]
    outcomes = infer_concurrently(client, requests)
    assert all(isinstance(o, np.ndarray) for o in outcomes), outcomes
    for model, (inferences0, executions0) in before.items():
        inferences, executions = counts(client, model)
        assert inferences - inferences0 == len(requests), model
        assert executions - executions0 < inferences - inferences0, (
            f"{model}: {executions - executions0} executions for {inferences - inferences0} inferences")


def test_a_corrupt_image_inside_a_dynamic_batch_fails_alone(client, photos, score_in_process):
    good = list(photos.values()) * 4
    bad_at = len(good) // 2
    truncated = CASES["truncated_jpeg"][0]()
    requests = [[d] for d in good[:bad_at]] + [[truncated]] + [[d] for d in good[bad_at:]]
    executions_before = counts(client, PREPROCESS_MODEL)[1]

    outcomes = infer_concurrently(client, requests)

    error = outcomes[bad_at]
    assert isinstance(error, InferenceServerException)
    assert error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "bad image" in error.message() and "truncated" in error.message()
    for index, outcome in enumerate(outcomes):
        if index != bad_at:
            np.testing.assert_allclose(outcome[0], expected_row(score_in_process, requests[index][0]),
                                       atol=TOLERANCE)
    # the requests did share executions, so the bad one really sat in a batch with good ones
    assert counts(client, PREPROCESS_MODEL)[1] - executions_before < len(requests)


def test_a_bad_row_fails_its_own_request_and_names_the_row(client, photos):
    good = next(iter(photos.values()))
    with pytest.raises(InferenceServerException, match="image 1 of 3 in this request: empty input") as caught:
        infer(client, [good, b"", good])
    assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_odd_input_gets_scores_or_a_clear_error_and_the_server_stays_healthy(case, client, photos,
                                                                                   score_in_process):
    make, error = CASES[case]
    data = make()
    if error is None:
        served = infer(client, [data])[0]
        np.testing.assert_allclose(served, expected_row(score_in_process, data), atol=TOLERANCE)
    else:
        with pytest.raises(InferenceServerException, match=error) as caught:
            infer(client, [data])
        assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready(ENSEMBLE_MODEL)
    photo = photos["sheep"]
    np.testing.assert_allclose(infer(client, [photo])[0], expected_row(score_in_process, photo), atol=TOLERANCE)


def test_an_exif_rotated_image_scores_like_the_upright_one(client):
    upright, rotated = odd_images.exif_rotated_png()
    np.testing.assert_allclose(infer(client, [rotated]), infer(client, [upright]), atol=TOLERANCE)


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heic_and_avif_photos_score_like_the_png_of_the_same_photo(fmt, client, photos):
    """Within the codec's own effect: noise and blur within 0.05; compression moves a little either way
    (the codec adds artefacts of its own but also smooths the JPEG blocks of these source photos)."""
    for name, jpeg in photos.items():
        picture = Image.open(io.BytesIO(jpeg)).convert("RGB")
        png, encoded = infer(client, [odd_images.encode(picture, "PNG"), odd_images.encode(picture, fmt, quality=90)])
        noise, blur, compression = encoded - png
        assert abs(noise) <= 0.05 and abs(blur) <= 0.05 and abs(compression) <= 0.1, (name, png, encoded)


def test_pictures_the_service_reads_as_another_file_score_as_that_file(client):
    """A float TIFF in 0..1 as the 8-bit PNG of round(value * 255); an APNG whose default image is outside
    its animation as its first animation frame; a JPEG missing only its end marker as the complete JPEG,
    a large one too (the complete file takes the JPEG region route, the other the full decode)."""
    grey = odd_images.float_grey()
    apng, shown = odd_images.apng(default_image=True)
    large = odd_images.encode(odd_images.photo().resize((2048, 1536), Image.Resampling.LANCZOS), "JPEG", quality=90)
    assert jpeg_regions.plan(large, patch_origins) is not None and jpeg_regions.plan(large[:-2], patch_origins) is None
    eight_bits = Image.fromarray(np.rint(grey * 255).astype(np.uint8))
    pairs = {
        "float TIFF": (odd_images.float_tiff(grey), odd_images.encode(eight_bits, "PNG")),
        "APNG": (apng, odd_images.encode(shown, "PNG")),
        "JPEG without EOI": (odd_images.jpeg_without_end_marker(),
                             odd_images.encode(odd_images.photo(), "JPEG", quality=90)),
        "large JPEG without EOI": (large[:-2], large),
    }
    for name, (data, equivalent) in pairs.items():
        np.testing.assert_allclose(infer(client, [data]), infer(client, [equivalent]), atol=TOLERANCE, err_msg=name)
