"""conversion/export.py: the traced module reproduces the eager one, or nothing is written."""

import json
import subprocess
import sys

import pytest
import torch

from conversion import export
from iqa.contract import CELL_SCORES, MAX_CELLS, PATCH_SHAPE, SCORE_NAMES
from iqa.network import CellMap
from iqa.serving.launcher import read_model_metadata


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """model.pt, and the degradation map's cells_model.pt beside it, from one seeded initialisation."""
    path = tmp_path_factory.mktemp("export") / "model.pt"
    metadata = export.export(weights=None, output=path, seed=7, cells_output=path.with_name("cells_model.pt"))
    return path, metadata


def test_traced_module_equals_eager_on_random_and_real_inputs(exported):
    path, _ = exported
    eager = export.build_model(seed=7)
    traced = torch.jit.load(str(path))
    for name, batch in export.check_inputs(export.DEFAULT_CHECK_IMAGES):
        assert export.max_difference(eager, traced, batch) <= export.TOLERANCE, name


def test_exported_file_loads_and_runs_in_a_fresh_process(exported):
    path, _ = exported
    program = (
        "import torch, json, sys\n"
        f"m = torch.jit.load({str(path)!r}, map_location='cpu')\n"
        f"x = torch.randint(0, 256, (5, {', '.join(map(str, PATCH_SHAPE))}), dtype=torch.uint8)\n"
        "out = m(x)\n"
        "print(json.dumps([list(o.shape) for o in out] + [float(min(o.min() for o in out)), float(max(o.max() for o in out))]))\n"
    )
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    *shapes, low, high = json.loads(result.stdout.strip().splitlines()[-1])
    assert shapes == [[5, 1]] * 3
    assert 0.0 <= low <= high <= 1.0


def test_untrained_export_says_so_inside_the_file(exported):
    path, metadata = exported
    assert metadata["trained"] is False and metadata["random_init_seed"] == 7
    assert read_model_metadata(path) == metadata


def test_a_trace_that_differs_from_eager_is_refused_and_not_written(tmp_path, monkeypatch):
    honest_trace = export.trace

    def tampered_trace(model):
        # A trace that does not compute what the eager model does (here: other weights).
        return honest_trace(export.build_model(seed=99))

    monkeypatch.setattr(export, "trace", tampered_trace)
    output = tmp_path / "model.pt"
    with pytest.raises(export.ExportMismatch, match="differs from eager"):
        export.export(weights=None, output=output)
    assert not output.exists()
    cells_output = tmp_path / "cells_model.pt"
    assert export.main(["--output", str(output), "--cells-output", str(cells_output)]) == 1
    assert not output.exists() and not cells_output.exists()


def test_a_cells_trace_that_differs_from_eager_is_refused_and_neither_file_is_written(tmp_path, monkeypatch):
    honest_trace = export.trace_cells
    monkeypatch.setattr(export, "trace_cells", lambda cell_map: honest_trace(CellMap(export.build_model(seed=99))))
    output, cells_output = tmp_path / "model.pt", tmp_path / "cells_model.pt"
    with pytest.raises(export.ExportMismatch, match="differs from eager"):
        export.export(weights=None, output=output, cells_output=cells_output)
    assert not output.exists() and not cells_output.exists()


def test_the_exported_module_follows_its_dtype_and_device(exported):
    path, _ = exported
    traced = torch.jit.load(str(path))
    # A device frozen into the trace would move GPU inputs back to the CPU inside the model.
    assert "torch.device(" not in traced.code
    photos = export.check_inputs(export.DEFAULT_CHECK_IMAGES)[-1][1]
    with torch.inference_mode():
        full = torch.cat(traced(photos), dim=1)
        half_module = traced.half()
        half = torch.cat(half_module(photos), dim=1)
    # The network follows the module's dtype; pooling and the sigmoid stay fp32 (0.0 keeps meaning "no evidence").
    assert all(p.dtype == torch.float16 for p in half_module.parameters()) and half.dtype == torch.float32
    assert 0 < (full - half).abs().max() <= 0.01  # it did run in fp16; the fp16 serving bound (loadtest/bench.py --fp16)


# --- the degradation map's network: a second export of the same weights ----------------------------


def test_the_cells_module_equals_eager_on_random_grids_and_real_photos(exported):
    path, _ = exported
    eager = CellMap(export.build_model(seed=7)).eval()
    traced = torch.jit.load(str(path.with_name("cells_model.pt")))
    cases = export.check_cell_inputs(export.DEFAULT_CHECK_IMAGES)
    assert any(int(grid.prod(dim=1).max()) == MAX_CELLS for _, (_, grid) in cases), "a full grid is checked"
    for name, batch in cases:
        assert export.max_difference(eager, traced, batch) <= export.TOLERANCE, name


def test_the_cells_file_records_the_weights_of_model_pt_and_its_own_tensors(exported):
    path, metadata = exported
    cells = read_model_metadata(path.with_name("cells_model.pt"))
    for key in ("trained", "weights", "weights_sha256", "random_init_seed", "torch"):
        assert cells[key] == metadata[key], key
    assert cells["outputs"] == [CELL_SCORES, *SCORE_NAMES] and cells["input_shape"][1] == MAX_CELLS


def test_the_exported_cells_module_follows_its_dtype_and_device(exported):
    path, _ = exported
    traced = torch.jit.load(str(path.with_name("cells_model.pt")))
    assert "torch.device(" not in traced.code  # cell positions are built from GRID's own device
    cells, grid = (t[:1] for t in export.check_cell_inputs(export.DEFAULT_CHECK_IMAGES)[-1][1])  # one photo: fp16 is slow on CPU
    with torch.inference_mode():
        full, half = traced(cells, grid), traced.half()(cells, grid)
    assert all(p.dtype == torch.float16 for p in traced.parameters())  # .half() converted the traced module in place
    assert all(h.dtype == torch.float32 for h in half)  # pooling and sigmoids in fp32 (iqa/network.py)
    for f, h in zip(full, half):
        assert torch.where(f.isnan() & h.isnan(), 0.0, (f - h.float()).abs()).max() <= 0.01
