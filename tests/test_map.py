"""The degradation map (`iqa_degradation_map`): tiling, the network's per-cell scores, the real server,
the client's score_map and `iqa map`.

The pictures are built here from the test photos: a blurred half, a noisy quadrant, a JPEG sky
over a lossless foreground. They are mirrored out to 1024 x 768 (real pixels, 8 x 6 cells) so
that each region holds whole cells.
"""

from __future__ import annotations

import asyncio
import io
import json
import queue

import numpy as np
import pytest
import torch
import tritonclient.grpc as grpcclient
from PIL import Image, ImageFilter
from tritonclient.utils import InferenceServerException

from iqa.contract import (
    CELL_BOXES, CELL_SCORES, CELLS_NETWORK_MODEL, ENSEMBLE_MODEL, GRID, IMAGE_SIZE, MAP_MODEL, MAP_OUTPUTS,
    MAP_PREPROCESS_MODEL, MAX_CELLS, PATCH_SIZE, SCORE_NAMES,
)
from iqa.network import CellMap, DegradationNet
from iqa.preprocess import ImageError, cell_grid, preprocess_map, tile
from iqa_client import AsyncIQAClient, BadImageError, DegradationMap, IQAClient, MapCell, ModelError, Scores
from iqa_client import cli
from tests import odd_images
from tests.conftest import DATA, image_tensor
from tests.odd_images import CASES

TOLERANCE = 1e-4  # as in test_server: same model, different batch companions
WIDTH, HEIGHT = 1024, 768  # 8 x 6 cells, each half / quadrant made of whole cells


def photo(name: str) -> np.ndarray:
    return np.asarray(Image.open(DATA / f"{name}.jpg").convert("RGB"))


def mirrored(rgb: np.ndarray, height: int = HEIGHT, width: int = WIDTH) -> np.ndarray:
    return np.pad(rgb, ((0, height - rgb.shape[0]), (0, width - rgb.shape[1]), (0, 0)), mode="symmetric")


def png(rgb: np.ndarray) -> bytes:
    return odd_images.encode(Image.fromarray(rgb), "PNG")


def inside(boxes: np.ndarray, left: int, top: int, right: int, bottom: int) -> np.ndarray:
    """Which cells lie wholly inside the region."""
    return (boxes[:, 0] >= left) & (boxes[:, 1] >= top) & (boxes[:, 2] <= right) & (boxes[:, 3] <= bottom)


# --- tiling (no server) --------------------------------------------------------------------------------


@pytest.mark.parametrize("height, width", [(384, 512), (299, 512), (482, 320), (100, 500), (128, 128), (777, 1001)])
def test_cells_cover_every_pixel_at_native_resolution(height, width):
    rgb = np.random.default_rng(height * width).integers(0, 256, (height, width, 3), dtype=np.uint8)
    tiles = tile(rgb)
    rows, columns = tiles.grid
    assert (rows, columns) == (-(-max(height, PATCH_SIZE) // PATCH_SIZE), -(-max(width, PATCH_SIZE) // PATCH_SIZE))
    count = rows * columns
    covered = np.zeros((height, width), dtype=bool)
    for cell, (left, top, right, bottom) in zip(tiles.cells[:count], tiles.boxes[:count]):
        assert 0 <= left < right <= width and 0 <= top < bottom <= height
        if (right - left, bottom - top) == (PATCH_SIZE, PATCH_SIZE):  # the pixels themselves, not a resampling
            np.testing.assert_array_equal(cell.transpose(1, 2, 0), rgb[top:bottom, left:right])
        covered[top:bottom, left:right] = True
    assert covered.all()
    assert (tiles.cells[count:] == 0).all() and (tiles.boxes[count:] == -1).all()
    assert list(tiles.image_size) == [height, width]


@pytest.mark.parametrize("height, width", [(3000, 4000), (1080, 1920), (8000, 6000), (200, 16000), (128, 9000)])
def test_a_large_picture_gets_at_most_max_cells_spread_evenly_over_it(height, width):
    rows, columns = cell_grid(height, width)
    assert rows * columns <= MAX_CELLS and rows * columns > MAX_CELLS * 0.85  # the cap is used, not wasted
    # the grid keeps the picture's proportions
    assert 1 / 1.5 < (columns / rows) / (width / height) < 1.5
    rgb = np.zeros((height, width, 3), dtype=np.uint8) if height * width <= 24_000_000 else None
    if rgb is not None:
        tiles = tile(rgb)
        boxes = tiles.boxes[: rows * columns]
        assert boxes[:, 0].min() == 0 and boxes[:, 2].max() == width  # from edge to edge
        assert boxes[:, 1].min() == 0 or rows == 1
        assert ((boxes[:, 2] - boxes[:, 0]) == PATCH_SIZE).all()  # native resolution: 128-pixel cells


def test_a_small_picture_is_one_mirrored_cell_with_its_box_clipped_to_the_picture():
    tiles = tile(photo("sheep")[:40, :60])
    assert list(tiles.grid) == [1, 1] and list(tiles.boxes[0]) == [0, 0, 60, 40]
    with pytest.raises(ImageError, match="at least 32 pixels"):
        tile(photo("sheep")[:20])


# --- the network's per-cell scores (in process) -------------------------------------------------------


@pytest.fixture(scope="module")
def cell_map(reference_model) -> CellMap:
    return CellMap(reference_model).eval()


@pytest.fixture(scope="module")
def map_in_process(cell_map):
    """Encoded bytes -> {output name: array} for one image, computed here with the same preprocessing."""

    def run(data: bytes) -> dict[str, np.ndarray]:
        tiles = preprocess_map(data)
        with torch.inference_mode():
            scores = cell_map(torch.from_numpy(tiles.cells[None]), torch.from_numpy(tiles.grid[None]))
        outputs = dict(zip([CELL_SCORES, *SCORE_NAMES], (s[0].numpy() for s in scores)))
        return {**outputs, GRID: tiles.grid, CELL_BOXES: tiles.boxes, IMAGE_SIZE: tiles.image_size}

    return run


def test_a_cells_scores_are_the_networks_scores_for_that_patch_and_pooling_is_the_networks_rule(cell_map, photos):
    half_flat = photo("sheep").copy()
    half_flat[:, half_flat.shape[1] // 2:] = 128  # its right half a plain fill: flat cells, no evidence
    tiles = [preprocess_map(data) for data in (photos["sheep"], photos["rocks"], png(half_flat))]
    cells, grids = torch.from_numpy(np.stack([t.cells for t in tiles])), torch.from_numpy(np.stack([t.grid for t in tiles]))
    with torch.inference_mode():
        cell_scores, *pooled = cell_map(cells, grids)
        flat_cells = 0
        for i, t in enumerate(tiles):
            count = int(t.grid.prod())
            logits = cell_map.net.patch_logits(cells[i, :count])
            evidence = DegradationNet.patch_evidence(cells[i : i + 1, :count])[0]
            flat_cells += int((~evidence).sum())
            # A cell's scores are the network's own for that patch; a flat cell's are 0.0 (no evidence).
            expected_cells = torch.where(evidence[:, None], torch.sigmoid(logits), torch.zeros_like(logits))
            np.testing.assert_allclose(cell_scores[i, :count], expected_cells, atol=1e-5)
            assert cell_scores[i, count:].isnan().all()
            expected = torch.sigmoid(DegradationNet.pool(logits[None], evidence[None]))[0]  # the 4-patch score's rule
            np.testing.assert_allclose(torch.cat([p[i] for p in pooled]), expected, atol=1e-5)
    assert flat_cells > 0, "the half-flat picture has no flat cell: the no-evidence branch went untested"


# --- the real server ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def grpc(triton):
    with grpcclient.InferenceServerClient(triton.grpc_url) as client:
        yield client


def infer_map(grpc, items: list[bytes]) -> dict[str, np.ndarray]:
    result = grpc.infer(MAP_MODEL, [image_tensor(items)], client_timeout=300)
    return {name: result.as_numpy(name) for name in MAP_OUTPUTS}


def assert_maps_equal(served: dict[str, np.ndarray], expected: dict[str, np.ndarray], row: int = 0) -> None:
    for name in (GRID, CELL_BOXES, IMAGE_SIZE):
        np.testing.assert_array_equal(served[name][row], expected[name], err_msg=name)
    count = int(expected[GRID].prod())
    np.testing.assert_allclose(served[CELL_SCORES][row][:count], expected[CELL_SCORES][:count], atol=TOLERANCE)
    assert np.isnan(served[CELL_SCORES][row][count:]).all()
    for name in SCORE_NAMES:
        np.testing.assert_allclose(served[name][row], expected[name], atol=TOLERANCE, err_msg=name)


def test_served_cell_scores_equal_in_process_cell_scores(grpc, photos, map_in_process):
    served = infer_map(grpc, list(photos.values()))  # one request, one row per photo, in order
    for row, data in enumerate(photos.values()):
        assert_maps_equal(served, map_in_process(data), row)
    # distinct cells get distinct scores: the agreement is not that of two constants
    assert np.nanstd(served[CELL_SCORES][:, :, 1]) > 10 * TOLERANCE


def test_every_cell_inside_a_blurred_left_half_scores_more_blur_than_every_cell_of_the_sharp_half(grpc):
    rgb = mirrored(photo("rocks"))
    rgb[:, : WIDTH // 2] = np.asarray(Image.fromarray(rgb[:, : WIDTH // 2]).filter(ImageFilter.GaussianBlur(3)))
    served = infer_map(grpc, [png(rgb)])
    count = int(served[GRID][0].prod())
    boxes, blur = served[CELL_BOXES][0][:count], served[CELL_SCORES][0][:count, 1]
    blurred, sharp = inside(boxes, 0, 0, WIDTH // 2, HEIGHT), inside(boxes, WIDTH // 2, 0, WIDTH, HEIGHT)
    assert blurred.sum() == sharp.sum() == count // 2
    assert blur[blurred].min() > blur[sharp].max(), (blur[blurred], blur[sharp])


def test_noise_added_to_one_quadrant_gives_that_quadrants_cells_the_highest_noise_scores(grpc):
    rgb = mirrored(photo("rocks")).astype(np.float64)
    quadrant = (slice(0, HEIGHT // 2), slice(0, WIDTH // 2))
    rgb[quadrant] += np.random.default_rng(0).normal(0, 0.05 * 255, rgb[quadrant].shape)  # white noise, var 0.0025
    served = infer_map(grpc, [png(np.clip(np.rint(rgb), 0, 255).astype(np.uint8))])
    count = int(served[GRID][0].prod())
    boxes, noise = served[CELL_BOXES][0][:count], served[CELL_SCORES][0][:count, 0]
    noisy = inside(boxes, 0, 0, WIDTH // 2, HEIGHT // 2)
    assert noisy.sum() == count // 4
    assert set(np.argsort(noise)[-noisy.sum():]) == set(np.flatnonzero(noisy)), noise.reshape(served[GRID][0])


def test_a_jpeg_compressed_sky_over_a_png_foreground_maps_compression_to_the_sky(grpc):
    sheep = photo("sheep")  # 512 x 299: sky above y = 128, fields below
    sky = np.asarray(Image.open(io.BytesIO(odd_images.encode(Image.fromarray(sheep), "JPEG", quality=20))))
    composed = sheep.copy()
    composed[:PATCH_SIZE] = sky[:PATCH_SIZE]  # the sky as a JPEG decoded it, the rest as shot, sent as PNG
    served = infer_map(grpc, [png(composed)])
    count = int(served[GRID][0].prod())
    boxes, compression = served[CELL_BOXES][0][:count], served[CELL_SCORES][0][:count, 2]
    compressed, clean = inside(boxes, 0, 0, 512, PATCH_SIZE), inside(boxes, 0, PATCH_SIZE, 512, 299)
    assert compressed.any() and clean.any()
    assert compression[compressed].min() > compression[clean].max(), (compression[compressed], compression[clean])


@pytest.mark.parametrize("degrade", ["white_noise", "gaussian_blur"])
def test_the_pooled_score_of_a_uniformly_degraded_photo_agrees_with_iqa_degradation(grpc, degrade):
    rocks = photo("rocks")  # texture in every cell: the 4 patches and the 15 cells see the same thing
    if degrade == "white_noise":
        noisy = rocks + np.random.default_rng(1).normal(0, 0.04 * 255, rocks.shape)
        degraded = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)
    else:
        degraded = np.asarray(Image.fromarray(rocks).filter(ImageFilter.GaussianBlur(2)))
    data = png(degraded)
    served = infer_map(grpc, [data])
    four_patch = grpc.infer(ENSEMBLE_MODEL, [image_tensor([data])], client_timeout=300)
    pooled = np.array([served[n][0, 0] for n in SCORE_NAMES])
    patches = np.array([four_patch.as_numpy(n)[0, 0] for n in SCORE_NAMES])
    assert pooled.max() > 0.3  # the degradation registers, so agreement is not that of two clean scores
    np.testing.assert_allclose(pooled, patches, atol=0.05)


def infer_concurrently(grpc, requests: list[list[bytes]]) -> list:
    answers: queue.Queue = queue.Queue()
    for index, items in enumerate(requests):
        grpc.async_infer(MAP_MODEL, [image_tensor(items)], client_timeout=300,
                         callback=lambda result, error, index=index: answers.put((index, result, error)))
    outcomes: list = [None] * len(requests)
    for _ in requests:
        index, result, error = answers.get(timeout=330)
        outcomes[index] = error if error is not None else {n: result.as_numpy(n) for n in MAP_OUTPUTS}
    return outcomes


def executions(grpc, model: str) -> tuple[int, int]:
    stats = grpc.get_inference_statistics(model, as_json=True)["model_stats"][0]
    return int(stats.get("inference_count", 0)), int(stats.get("execution_count", 0))


def test_a_bad_image_in_a_dynamic_batch_gets_its_own_invalid_argument_and_batch_mates_are_mapped(
        grpc, photos, map_in_process):
    good = list(photos.values()) * 2
    bad_at = len(good) // 2
    requests = [[d] for d in good[:bad_at]] + [[CASES["truncated_jpeg"][0]()]] + [[d] for d in good[bad_at:]]
    before = {m: executions(grpc, m) for m in (MAP_PREPROCESS_MODEL, CELLS_NETWORK_MODEL)}

    outcomes = infer_concurrently(grpc, requests)

    error = outcomes[bad_at]
    assert isinstance(error, InferenceServerException) and error.status() == "StatusCode.INVALID_ARGUMENT"
    assert "bad image" in error.message() and "truncated" in error.message()
    for index, outcome in enumerate(outcomes):
        if index != bad_at:
            assert_maps_equal(outcome, map_in_process(requests[index][0]))
    # both composing models batched: the bad request really shared a batch with good ones
    for model, (inferences0, executions0) in before.items():
        inferences, executions_now = executions(grpc, model)
        assert executions_now - executions0 < inferences - inferences0, model


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_odd_input_gets_a_map_or_the_same_clear_error_as_iqa_degradation(case, grpc, photos, map_in_process):
    make, error = CASES[case]
    data = make()
    if error is None:
        assert_maps_equal(infer_map(grpc, [data]), map_in_process(data))
    else:
        with pytest.raises(InferenceServerException, match=error) as caught:
            infer_map(grpc, [data])
        assert caught.value.status() == "StatusCode.INVALID_ARGUMENT"
    assert grpc.is_server_ready() and grpc.is_model_ready(MAP_MODEL)


def test_an_exif_rotated_image_maps_like_the_upright_one(grpc):
    upright, rotated = odd_images.exif_rotated_png()
    served, expected = infer_map(grpc, [rotated]), infer_map(grpc, [upright])
    for name in MAP_OUTPUTS:
        np.testing.assert_allclose(served[name], expected[name], atol=TOLERANCE, err_msg=name)


# --- the client and the command line -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(triton):
    with IQAClient(triton.grpc_url, timeout=300) as client:
        yield client


def test_score_map_returns_the_grid_boxes_cell_scores_and_pooled_scores(client, map_in_process):
    data = (DATA / "rocks.jpg").read_bytes()
    scored = client.score_map(DATA / "rocks.jpg")
    expected = map_in_process(data)
    assert isinstance(scored, DegradationMap)
    assert scored.grid == tuple(expected[GRID]) and (scored.height, scored.width) == tuple(expected[IMAGE_SIZE])
    assert scored.source == str(DATA / "rocks.jpg") and scored.image == data
    assert len(scored.cells) == scored.rows * scored.columns
    for index, cell in enumerate(scored.cells):
        assert (cell.row, cell.column) == divmod(index, scored.columns)
        assert cell.box == tuple(expected[CELL_BOXES][index])
        np.testing.assert_allclose([cell.scores.noise, cell.scores.blur, cell.scores.compression],
                                   expected[CELL_SCORES][index], atol=TOLERANCE)
    np.testing.assert_allclose(scored.array("blur"), expected[CELL_SCORES][: len(scored.cells), 1].reshape(scored.grid),
                               atol=TOLERANCE)
    np.testing.assert_allclose([scored.pooled.noise, scored.pooled.blur, scored.pooled.compression],
                               [expected[n][0] for n in SCORE_NAMES], atol=TOLERANCE)
    as_json = json.loads(scored.to_json())
    assert as_json["grid"] == list(scored.grid) and len(as_json["cells"]) == len(scored.cells)
    assert as_json["cells"][3]["box"] == list(scored.cells[3].box)
    assert as_json["pooled"] == scored.pooled.to_dict()


def test_the_plot_draws_the_picture_under_a_heat_map_per_score(client, tmp_path):
    rgb = photo("rocks").copy()
    rgb[:, :288] = np.asarray(Image.fromarray(rgb[:, :288]).filter(ImageFilter.GaussianBlur(3)))
    scored = client.score_map(rgb)
    scored.plot(tmp_path / "map.png")
    drawn = np.asarray(Image.open(tmp_path / "map.png").convert("RGB")).astype(np.int64)
    assert drawn.shape[1] == 1500  # 15 inches at 100 dpi: three panels side by side
    # The blur panel (the middle third) is redder over the blurred left half than over the sharp right.
    panel = drawn[:, 500:1000]
    rows = slice(panel.shape[0] // 4, 3 * panel.shape[0] // 4)
    redness = panel[rows, :, 0] - panel[rows, :, 2]
    assert redness[:, 30:150].mean() > redness[:, 250:350].mean() + 20


def test_a_phone_photos_spread_cells_are_drawn_as_tiles_a_person_can_see(tmp_path):
    """4000 x 3000 gets 7 x 9 cells of 128 px with gaps between them (cell_grid): each is drawn over the part
    of the picture nearest to it, so one degraded cell shows as a ninth of the width, not as a speck."""
    from iqa_client.degradation_map import _drawn_regions

    height, width = 3000, 4000
    rows, columns = cell_grid(height, width)
    assert (rows, columns) == (7, 9)
    tops, lefts = (np.rint(np.linspace(0, side - 128, n)).astype(int) for side, n in ((height, rows), (width, columns)))
    boxes = [(left, top, left + 128, top + 128) for top in tops for left in lefts]
    degraded = 3 * columns + 4  # the centre cell
    cells = tuple(MapCell(i // columns, i % columns, tuple(int(v) for v in box),
                          Scores(0.0, 1.0 if i == degraded else 0.0, 0.0)) for i, box in enumerate(boxes))
    grey = io.BytesIO()
    Image.new("RGB", (width, height), (128, 128, 128)).save(grey, "JPEG")
    scored = DegradationMap("phone.jpg", width, height, rows, columns, cells, Scores(0.0, 0.1, 0.0), grey.getvalue())

    tiles = _drawn_regions(scored)
    assert sum((x1 - x0) * (y1 - y0) for x0, y0, x1, y1 in tiles) == pytest.approx(width * height)  # no gap, no overlap
    for (x0, y0, x1, y1), cell in zip(tiles, cells):
        assert x0 <= cell.box[0] and y0 <= cell.box[1] and cell.box[2] <= x1 and cell.box[3] <= y1

    scored.plot(tmp_path / "map.png")
    drawn = np.asarray(Image.open(tmp_path / "map.png").convert("RGB")).astype(np.int64)
    red = (drawn[..., 0] - drawn[..., 2]) > 30  # the degraded tile over grey; clean tiles are see-through
    panel_width = drawn.shape[1] // 3
    picture = slice(0, int(panel_width * 0.8))  # each panel's picture, left of its colour bar
    blur, noise = red[:, panel_width:][:, picture].sum(), red[:, picture].sum()
    picture_pixels = (panel_width * 0.8) ** 2 * height / width  # about what a panel shows of the picture
    assert blur - noise > picture_pixels / (rows * columns) / 2, (blur, noise)  # a tile, at least half of it
    assert blur - noise > 10 * picture_pixels * 128 * 128 / (width * height)  # ten times the box alone


PLOTTED = {  # what the picture is -> (PIL image, format), and the RGB the server decodes it to
    "transparent red PNG": (Image.new("RGBA", (64, 48), (255, 0, 0, 0)), "PNG", (255, 255, 255)),
    "blue HEIC": (Image.new("RGB", (64, 48), (0, 0, 255)), "HEIF", (0, 0, 255)),
    "16-bit grey PNG": (Image.fromarray(np.full((48, 64), 100 * 257, np.uint16)), "PNG", (100, 100, 100)),
}


@pytest.mark.parametrize("case", sorted(PLOTTED))
def test_the_plot_draws_the_picture_as_the_server_decodes_it(case, tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")
    pillow_heif.register_heif_opener()
    picture, fmt, rgb = PLOTTED[case]
    buffer = io.BytesIO()
    picture.save(buffer, format=fmt)
    cell = MapCell(0, 0, (0, 0, 64, 48), Scores(0.0, 0.0, 0.0))
    scored = DegradationMap("x", 64, 48, 1, 1, (cell,), Scores(0.0, 0.0, 0.0), image=buffer.getvalue())
    shown = np.asarray(scored._picture(1200)).astype(np.int64)
    assert np.abs(shown - np.array(rgb)).max() <= 8, shown.reshape(-1, 3)[0]  # HEIC is lossy
    scored.plot(tmp_path / "map.png")


def test_score_map_many_keeps_order_and_isolates_a_bad_item_and_the_async_twin_agrees(client, triton, photos):
    items = [photos["sheep"], b"not an image", photos["lighthouse"]]
    outcomes = client.score_map_many(items, concurrency=2)
    assert isinstance(outcomes[1], BadImageError) and outcomes[1].index == 1
    assert [o.grid for o in (outcomes[0], outcomes[2])] == [(3, 4), (4, 3)]

    async def async_maps():
        async with AsyncIQAClient(triton.grpc_url, timeout=300) as async_client:
            return (await async_client.score_map(photos["sheep"]),
                    await async_client.score_map_many(items, concurrency=2))

    single, many = asyncio.run(async_maps())
    assert isinstance(many[1], BadImageError)
    for mapped in (single, many[0]):
        assert mapped.grid == outcomes[0].grid
        for a, b in zip(mapped.cells, outcomes[0].cells):
            assert a.box == b.box
            np.testing.assert_allclose(a.scores.blur, b.scores.blur, atol=TOLERANCE)


def test_a_model_that_is_not_a_map_is_refused_on_the_first_score_map(triton):
    with IQAClient(triton.grpc_url, map_model=ENSEMBLE_MODEL, timeout=60) as client:
        with pytest.raises(ModelError, match="not an iqa_degradation_map model"):
            client.score_map(DATA / "sheep.jpg")


def test_iqa_map_prints_json_and_writes_the_plot(client, triton, tmp_path, capsys):
    plot = tmp_path / "map.png"
    assert cli.main(["map", str(DATA / "sheep.jpg"), "--json", "--plot", str(plot), "--url", triton.grpc_url]) == 0
    printed, expected = json.loads(capsys.readouterr().out), client.score_map(DATA / "sheep.jpg")
    assert printed["grid"] == list(expected.grid) and [c["box"] for c in printed["cells"]] == [
        list(c.box) for c in expected.cells]
    np.testing.assert_allclose([c["blur"] for c in printed["cells"]], [c.scores.blur for c in expected.cells],
                               atol=TOLERANCE)
    assert Image.open(plot).format == "PNG"

    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8 not really")
    assert cli.main(["map", str(broken), "--url", triton.grpc_url]) == 1
    assert f"failed: {broken}" in capsys.readouterr().err
    assert cli.main(["map", str(broken), "--json", "--url", triton.grpc_url]) == 1
    printed = capsys.readouterr()
    assert json.loads(printed.out)["error"].startswith("bad image: ") and f"failed: {broken}" in printed.err


def test_iqa_map_checks_the_map_model_it_calls_and_not_the_4_patch_one(triton, capsys):
    photo_path = str(DATA / "sheep.jpg")
    # --model names the 4-patch ensemble, which `iqa map` never calls: refused, naming --map-model.
    assert cli.main(["--model", "nosuch", "map", photo_path, "--url", triton.grpc_url]) == 2
    assert "iqa map calls --map-model" in capsys.readouterr().err
    assert cli.main(["map", photo_path, "--map-model", "nosuch", "--url", triton.grpc_url]) == 3
    assert "nosuch" in capsys.readouterr().err
    # The 4-patch ensemble is not a map model: refused at connect, before any image is sent.
    assert cli.main(["map", photo_path, "--map-model", "iqa_degradation", "--url", triton.grpc_url]) == 3
    assert "is not an iqa_degradation_map model" in capsys.readouterr().err


def test_connect_map_checks_the_map_model_in_both_clients(triton):
    with IQAClient(triton.grpc_url, model="nosuch", connect=False) as client:
        client.connect(map=True)
        with pytest.raises(ModelError, match="nosuch"):
            client.connect()

    async def run():
        client = AsyncIQAClient(triton.grpc_url, map_model="iqa_degradation")
        try:
            with pytest.raises(ModelError, match="is not an iqa_degradation_map model"):
                await client.connect(map=True)
            await client.connect()
        finally:
            await client.close()

    asyncio.run(run())


def test_the_stability_benchmark_cuts_the_shifts_and_crops_it_says():
    from loadtest import map_bench

    rgb = photo("sheep")
    height, width = rgb.shape[:2]
    for count in (2, 16):
        cut = map_bench.variants(rgb, count=count)
        shifts, crops = cut[:count], cut[count:]
        assert len(crops) == count
        assert {s.shape for s in shifts} == {(height - map_bench.SHIFT, width - map_bench.SHIFT, 3)}
        assert len({s.ctypes.data for s in shifts}) == count  # each at its own offset
        smallest = 1 - 2 * map_bench.MAX_TRIM  # each side trimmed by at most MAX_TRIM
        assert all(smallest * height - 2 <= c.shape[0] <= height and smallest * width - 2 <= c.shape[1] <= width
                   for c in crops)
    with pytest.raises(SystemExit):
        map_bench.main(["--stability-only", "--variants", "1"])
