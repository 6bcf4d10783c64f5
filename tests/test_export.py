"""conversion/export.py: the traced module reproduces the eager one, or nothing is written."""

import json
import subprocess
import sys

import pytest
import torch

from conversion import export
from iqa.contract import PATCH_SHAPE
from iqa.serving.launcher import read_model_metadata


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "model.pt"
    metadata = export.export(weights=None, output=path, seed=7)
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
    assert export.main(["--output", str(output)]) == 1
    assert not output.exists()


def test_the_exported_module_follows_its_dtype_and_device(exported):
    path, _ = exported
    traced = torch.jit.load(str(path))
    # A device frozen into the trace would move GPU inputs back to the CPU inside the model.
    assert "torch.device(" not in traced.code
    photos = export.check_inputs(export.DEFAULT_CHECK_IMAGES)[-1][1]
    with torch.inference_mode():
        full = torch.cat(traced(photos), dim=1)
        half = torch.cat(traced.half()(photos), dim=1)
    assert half.dtype == torch.float16
    assert (full - half.float()).abs().max() <= 0.01  # the fp16 serving bound (loadtest/bench.py --fp16)
