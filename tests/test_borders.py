"""Patches land on the picture's content (issue 25, item 1): letterbox, pillarbox, a product on a white canvas,
a compressed border that is not pure black, a picture that is 95 % border; served == in-process.

The rule is iqa.borders': uniform borders on opposite sides are not content. A picture without them keeps its
patches exactly where they were; one that is uniform throughout still scores 0/0/0 (no evidence)."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from PIL import Image, ImageFilter

from iqa import jpeg_regions
from iqa.borders import BORDER_RANGE, content_box
from iqa.contract import ENSEMBLE_MODEL, PATCH_SIZE, SCORE_NAMES
from iqa.network import DegradationNet
from iqa.preprocess import decode, patch_origins, preprocess, preprocess_map, sample_patches
from tests.conftest import DATA, image_tensor

TOLERANCE = 1e-4  # served vs in-process (tests/test_server.py)


def photo(height: int = 540) -> np.ndarray:
    """rocks.jpg scaled to `height` rows (its proportions kept), RGB uint8."""
    image = Image.open(DATA / "rocks.jpg").convert("RGB")
    return np.asarray(image.resize((round(image.width * height / image.height), height), Image.Resampling.LANCZOS))


def noisy(rgb: np.ndarray, sigma: float = 25.0, seed: int = 0) -> np.ndarray:
    grain = np.random.default_rng(seed).normal(0, sigma, rgb.shape)
    return np.clip(rgb + grain, 0, 255).astype(np.uint8)


def blurred(rgb: np.ndarray, sigma: float = 3.0) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(sigma)))


def encoded(rgb: np.ndarray, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt, **params)
    return buffer.getvalue()


def framed(content: np.ndarray, height: int, width: int, colour=(0, 0, 0)) -> tuple[np.ndarray, tuple[int, int]]:
    """`content` centred on a height x width canvas of `colour`; returns the picture and the content's (top, left)."""
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = colour
    top, left = (height - content.shape[0]) // 2, (width - content.shape[1]) // 2
    canvas[top : top + content.shape[0], left : left + content.shape[1]] = content
    return canvas, (top, left)


def strip(kind: str) -> np.ndarray:
    """A 304 x 540 vertical strip of a photo (a phone video's frame), degraded as the issue's field report."""
    centre = photo()[:, 300:604]
    return {"noise": noisy, "blur": blurred, "clean": lambda x: x}[kind](np.ascontiguousarray(centre))


def evidence(patches: np.ndarray) -> np.ndarray:
    return DegradationNet.patch_evidence(torch.from_numpy(patches[None]))[0].numpy()


# --- the content box ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("colour", [(0, 0, 0), (255, 255, 255), (40, 90, 160)])
def test_bars_of_any_colour_on_opposite_sides_are_trimmed_to_the_content(colour):
    content = strip("noise")
    pillarbox, (top, left) = framed(content, 540, 960, colour)
    assert content_box(pillarbox) == (0, left, 540, left + 304)
    letterbox, (top, left) = framed(np.ascontiguousarray(photo(300)[:, :900]), 540, 900, colour)
    letterbox[top : top + 300] = noisy(letterbox[top : top + 300], 6)  # content's edge rows are textured
    assert content_box(letterbox) == (top, 0, top + 300, 900)
    canvas, (top, left) = framed(noisy(photo(300)[:, :300], 6), 900, 900, colour)
    assert content_box(canvas) == (top, left, top + 300, left + 300)


def test_a_picture_without_uniform_borders_keeps_its_whole_frame_and_its_patches():
    picture = photo()
    assert content_box(picture) == (0, 0, *picture.shape[:2])
    height, width = picture.shape[:2]
    assert patch_origins(height, width, content_box(picture)) == patch_origins(height, width)


def test_one_uniform_edge_alone_is_content_as_an_overexposed_sky_is():
    picture = photo().copy()
    picture[:40] = 255  # a burnt-out sky along the top only
    assert content_box(picture) == (0, 0, *picture.shape[:2])


def test_a_noisy_border_is_content():
    bars, _ = framed(strip("clean"), 540, 960)
    grain = noisy(bars, sigma=BORDER_RANGE)  # film grain over the whole frame, bars included
    assert content_box(grain) == (0, 0, 540, 960)


def test_a_uniform_picture_keeps_its_frame_and_still_scores_no_evidence():
    grey = np.full((400, 600, 3), 77, np.uint8)
    assert content_box(grey) == (0, 0, 400, 600)
    assert not evidence(sample_patches(grey)).any()


# --- the patches ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["noise", "blur", "clean"])
def test_a_pillarboxed_strip_gets_the_very_patches_of_the_strip_alone(kind):
    content = strip(kind)
    picture, (top, left) = framed(content, 540, 960)
    inside = sample_patches(picture)
    np.testing.assert_array_equal(inside, sample_patches(content))
    assert evidence(inside).all()


def test_a_product_on_a_white_canvas_gets_the_patches_of_the_product_alone():
    product = noisy(photo(300)[:, 100:400], sigma=12)
    canvas, _ = framed(product, 900, 900, (255, 255, 255))
    np.testing.assert_array_equal(sample_patches(canvas), sample_patches(product))


@pytest.mark.parametrize("quality", [15, 50, 90])
def test_a_compressed_border_that_is_not_pure_black_is_trimmed_too(quality):
    """Dark grey bars through JPEG: the bars stay within a level or two, ringing only where content begins."""
    picture, (top, left) = framed(strip("noise"), 540, 960, (24, 24, 24))
    decoded = decode(encoded(picture, "JPEG", quality=quality))
    box = content_box(decoded)
    assert box[0] == 0 and box[2] == 540
    assert left - 16 <= box[1] <= left and left + 304 <= box[3] <= left + 304 + 16, box
    origins = patch_origins(540, 960, box)
    assert all(left - 8 <= x and x + PATCH_SIZE <= left + 304 + 8 for _, x in origins), origins
    assert evidence(sample_patches(decoded)).all()


def test_a_picture_that_is_95_percent_border_gets_patches_around_its_content():
    content = noisy(photo(200)[:, :200], sigma=20)
    canvas, (top, left) = framed(content, 900, 900, (255, 255, 255))  # content: 4.9 % of the picture
    patches = sample_patches(canvas)
    assert evidence(patches).all()
    for y, x in patch_origins(900, 900, content_box(canvas)):
        # every patch overlaps the content by more than half of its area
        overlap = (min(y + PATCH_SIZE, top + 200) - max(y, top)) * (min(x + PATCH_SIZE, left + 200) - max(x, left))
        assert overlap > PATCH_SIZE * PATCH_SIZE / 2, (y, x)


def test_the_jpeg_crop_route_declines_a_bordered_picture_and_the_full_decode_finds_the_content():
    picture, _ = framed(noisy(np.ascontiguousarray(photo(1080)[:, 300:908]), 4), 1080, 1920)
    data = encoded(picture, "JPEG", quality=90)
    assert jpeg_regions.sample_patches(data, patch_origins) is None
    np.testing.assert_array_equal(preprocess(data), sample_patches(decode(data)))
    assert evidence(preprocess(data)).all()


def test_the_jpeg_crop_route_still_answers_when_one_pair_of_edges_is_content():
    """A uniform left edge whose right edge is textured: nothing is trimmed, and the crop proves it."""
    picture = noisy(np.asarray(Image.fromarray(photo(1080)).resize((1920, 1080))), 4)
    picture[:, :60] = 0  # one black bar, on the left only
    data = encoded(picture, "JPEG", quality=90)
    cropped = jpeg_regions.sample_patches(data, patch_origins)
    assert cropped is not None
    np.testing.assert_array_equal(cropped, sample_patches(decode(data)))


def test_the_map_sends_cells_wholly_in_the_borders_as_flat_and_keeps_every_cell_on_content():
    picture, (top, left) = framed(strip("noise"), 540, 960, (24, 24, 24))
    tiles = preprocess_map(encoded(picture, "JPEG", quality=30))
    count = int(tiles.grid.prod())
    boxes = tiles.boxes[:count]
    on_content = (boxes[:, 0] < left + 304) & (boxes[:, 2] > left)
    flat = ~evidence(tiles.cells[:count])
    assert on_content.any() and (~on_content).any()
    assert flat[~on_content].all() and not tiles.cells[:count][~on_content].any()
    assert not flat[on_content].any()


# --- through the real server ----------------------------------------------------------------------------------


def bordered_cases() -> dict[str, bytes]:
    noise_box, _ = framed(strip("noise"), 540, 960)
    blur_box, _ = framed(strip("blur"), 540, 960)
    jpeg_strip = decode(encoded(strip("clean"), "JPEG", quality=15))
    product, _ = framed(blurred(photo(300)[:, 100:400], 2.0), 900, 900, (255, 255, 255))
    small, _ = framed(noisy(photo(200)[:, :200], sigma=20), 900, 900, (255, 255, 255))
    letterbox, _ = framed(noisy(np.ascontiguousarray(photo(300)[:, :960]), 12), 540, 960)
    return {
        "pillarbox_noise_png": encoded(noise_box),
        "pillarbox_blur_jpeg": encoded(blur_box, "JPEG", quality=92),
        "pillarbox_jpeg_q15_png": encoded(framed(jpeg_strip, 540, 960)[0]),
        "letterbox_grey_jpeg": encoded(framed(np.ascontiguousarray(letterbox[120:420]), 540, 960, (24, 24, 24))[0],
                                       "JPEG", quality=40),
        "product_on_white_jpeg": encoded(product, "JPEG", quality=90),
        "95_percent_border_png": encoded(small),
    }


@pytest.fixture(scope="module")
def grpc(triton):
    with grpcclient.InferenceServerClient(triton.grpc_url) as client:
        yield client


def test_bordered_pictures_are_served_as_scored_in_process_and_none_scores_no_evidence(grpc, score_in_process):
    cases = bordered_cases()
    result = grpc.infer(ENSEMBLE_MODEL, [image_tensor(list(cases.values()))], client_timeout=300)
    served = np.concatenate([result.as_numpy(name) for name in SCORE_NAMES], axis=1)
    for row, (name, data) in enumerate(cases.items()):
        expected = np.array([score_in_process(data)[score] for score in SCORE_NAMES], np.float32)
        np.testing.assert_allclose(served[row], expected, atol=TOLERANCE, err_msg=name)
        assert served[row].max() > 0.0, f"{name} scored the no-evidence answer 0/0/0"
    noise, blur = SCORE_NAMES.index("NOISE"), SCORE_NAMES.index("BLUR")
    alone = {kind: score_in_process(encoded(strip(kind))) for kind in ("noise", "blur")}
    assert served[0, noise] == pytest.approx(alone["noise"]["NOISE"], abs=TOLERANCE)  # the same patches
    assert served[0, noise] > 0.5 and served[1, blur] > 0.5
