"""Export the degradation network to TorchScript for Triton's `iqa_resnet50` and `iqa_resnet50_cells`.

    python -m conversion.export [--weights training/weights/iqa_resnet50.fp16.pt]

Two files from the same weights: the 4-patch scorer (DegradationNet) and the degradation
map's per-cell scorer (CellMap). Traces on CPU in fp32 with torch.jit.trace, then checks
each traced module against its eager one on random inputs (several batch sizes, and cell
grids of several sizes) and on real photos; unless both agree within 1e-5 everywhere,
neither file is written.

Target runtime: the file is traced with torch 2.14.1 and served by the libtorch
of the NGC image docker/ pins (`tritonserver:26.09-py3`, Triton 2.73.0, libtorch
2.14.0a0). What decides whether a libtorch loads it is the archive's file-format
`version` record (4 here: the writer records the newest operator version the module
uses, and aten::div.Tensor, the patch-pooling mean's division, changed semantics at
version 4, with an upgrader for older files: torch._C._get_operator_version_map()
gives bumped_at_version 4, upgrader div_Tensor_0_3), which every libtorch 2.x reads
(versions 1-10); torch 2.0.1, 2.8.0, 2.12.1 and 2.14.1
load it and give identical outputs on CPU (checked 2026-11-30). tests/test_deploy.py
checks the record against the image's libtorch.

Without trained weights it exports a seeded random initialisation and records
that in the file (extra file `iqa.json`), so the launcher can warn that the
scores mean nothing yet.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import sys
import warnings
from pathlib import Path

import numpy as np
import torch

from iqa.contract import CELL_SCORES, CELLS_SHAPE, MAX_CELLS, PATCH_SHAPE, SCORE_NAMES
from iqa.network import CellMap, build_model
from iqa.preprocess import preprocess, preprocess_map

REPO = Path(__file__).resolve().parent.parent
DEFAULT_WEIGHTS = REPO / "training" / "weights" / "iqa_resnet50.fp16.pt"
DEFAULT_OUTPUT = REPO / "model_repository" / "iqa_resnet50" / "1" / "model.pt"
DEFAULT_CELLS_OUTPUT = REPO / "model_repository" / "iqa_resnet50_cells" / "1" / "model.pt"
DEFAULT_CHECK_IMAGES = REPO / "tests" / "data"
METADATA_FILE = "iqa.json"
TOLERANCE = 1e-5
CHECK_BATCH_SIZES = (1, 3, 8)
# Cell grids (rows, columns) per image of each random check batch: a full grid, mixed and single cells.
CHECK_GRIDS = (((8, MAX_CELLS // 8),), ((2, 3), (1, 1), (1, 4)), tuple((1 + i % 2, 1 + i % 3) for i in range(8)))

log = logging.getLogger("iqa.export")


class ExportMismatch(RuntimeError):
    """The traced module does not reproduce the eager one."""


def trace(model: torch.nn.Module) -> torch.jit.ScriptModule:
    return _trace(model, torch.randint(0, 256, (2, *PATCH_SHAPE), dtype=torch.uint8))


def trace_cells(cell_map: CellMap) -> torch.jit.ScriptModule:
    cells = torch.randint(0, 256, (2, *CELLS_SHAPE), dtype=torch.uint8)
    return _trace(cell_map, (cells, torch.tensor([[1, 2], [2, 1]], dtype=torch.int32)))


def _trace(module: torch.nn.Module, example) -> torch.jit.ScriptModule:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # "TorchScript is deprecated": the NGC backend still loads it
        return torch.jit.trace(module, example, check_trace=False)


def check_inputs(image_dir: Path) -> list[tuple[str, torch.Tensor]]:
    """The batches traced and eager must agree on: random patches of several batch sizes, and real photos."""
    generator = torch.Generator().manual_seed(1234)
    cases = [
        (f"random batch of {n}", torch.randint(0, 256, (n, *PATCH_SHAPE), dtype=torch.uint8, generator=generator))
        for n in CHECK_BATCH_SIZES
    ]
    photos = _photos(image_dir)
    real = torch.from_numpy(np.stack([preprocess(p.read_bytes()) for p in photos]))
    cases.append((f"{len(photos)} photos from {image_dir.name}/", real))
    return cases


def check_cell_inputs(image_dir: Path) -> list[tuple[str, tuple[torch.Tensor, torch.Tensor]]]:
    """(cells, grid) batches the traced and eager CellMap must agree on: random cells in grids of
    several sizes (CHECK_GRIDS), and the real photos cut into their map cells."""
    generator = torch.Generator().manual_seed(4321)
    cases = []
    for grids in CHECK_GRIDS:
        cells = torch.randint(0, 256, (len(grids), *CELLS_SHAPE), dtype=torch.uint8, generator=generator)
        cases.append((f"random cells, grids {grids}", (cells, torch.tensor(grids, dtype=torch.int32))))
    tiles = [preprocess_map(p.read_bytes()) for p in _photos(image_dir)]
    real = (torch.from_numpy(np.stack([t.cells for t in tiles])), torch.from_numpy(np.stack([t.grid for t in tiles])))
    cases.append((f"{len(tiles)} photos from {image_dir.name}/ in cells", real))
    return cases


def _photos(image_dir: Path) -> list[Path]:
    photos = sorted(p for p in image_dir.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp"))
    if not photos:
        raise FileNotFoundError(f"no photos in {image_dir} to check the export on")
    return photos


def max_difference(eager: torch.nn.Module, traced: torch.jit.ScriptModule,
                   batch: torch.Tensor | tuple[torch.Tensor, ...]) -> float:
    """Largest |eager - traced| over every output; NaN where only one of them is NaN (the map's padding)."""
    inputs = batch if isinstance(batch, tuple) else (batch,)
    with torch.inference_mode():
        expected, got = eager(*inputs), traced(*inputs)
    return max(torch.where(e.isnan() & g.isnan(), 0.0, (e - g).abs()).max().item() for e, g in zip(expected, got))


def export(weights: Path | None, output: Path, image_dir: Path = DEFAULT_CHECK_IMAGES, seed: int = 0,
           cells_output: Path | None = None) -> dict:
    """Trace, check and write model.pt (and the map's cells model.pt if `cells_output`); returns the record
    stored in model.pt. Raises ExportMismatch, writing nothing, if a traced module differs from eager."""
    model = build_model(str(weights) if weights else None, seed=seed)
    # (output, eager, traced, check cases, what the file records about its tensors)
    exports = [(output, model, trace(model), check_inputs(image_dir),
                {"input_shape": ["batch", *PATCH_SHAPE], "outputs": list(SCORE_NAMES)})]
    if cells_output is not None:
        cell_map = CellMap(model).eval()
        exports.append((cells_output, cell_map, trace_cells(cell_map), check_cell_inputs(image_dir),
                        {"input_shape": ["batch", *CELLS_SHAPE], "grid_shape": ["batch", 2],
                         "outputs": [CELL_SCORES, *SCORE_NAMES]}))
    for path, eager, traced, cases, _ in exports:
        for name, batch in cases:
            diff = max_difference(eager, traced, batch)
            log.info("%s: traced vs eager on %s: max |diff| = %.2e", type(eager).__name__, name, diff)
            if not diff <= TOLERANCE:  # also catches NaN
                raise ExportMismatch(f"traced module differs from eager on {name}: {diff:.3e} > {TOLERANCE}")

    record = {
        "trained": weights is not None,
        "weights": str(weights.relative_to(REPO) if weights.is_relative_to(REPO) else weights) if weights else None,
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest() if weights else None,
        "random_init_seed": None if weights else seed,
        "torch": torch.__version__,
    }
    for path, _, traced, _, shapes in exports:
        _write(traced, path, {**record, **shapes})
    return {**record, **exports[0][4]}


def _write(traced: torch.jit.ScriptModule, output: Path, metadata: dict) -> None:
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_suffix(".pt.partial")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(traced, str(partial), _extra_files={METADATA_FILE: json.dumps(metadata)})
    partial.replace(output)  # never leave a half-written model.pt for the server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", type=Path, default=None,
                        help=f"fp16/fp32 state dict (default: {DEFAULT_WEIGHTS.relative_to(REPO)} if present)")
    parser.add_argument("--output", type=Path, default=DEFAULT_OUTPUT)
    parser.add_argument("--cells-output", type=Path, default=DEFAULT_CELLS_OUTPUT,
                        help="the degradation map's per-cell network (iqa_resnet50_cells)")
    parser.add_argument("--check-images", type=Path, default=DEFAULT_CHECK_IMAGES,
                        help="folder of photos the traced module must reproduce eager scores on")
    parser.add_argument("--seed", type=int, default=0, help="random initialisation seed when there are no weights")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")

    weights = args.weights or (DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.exists() else None)
    if weights is None:
        log.warning("no trained weights (%s): exporting a RANDOM initialisation (seed %d); "
                    "its scores are NOT meaningful", DEFAULT_WEIGHTS.relative_to(REPO), args.seed)
    try:
        metadata = export(weights, args.output, args.check_images, args.seed, cells_output=args.cells_output)
    except ExportMismatch as err:
        log.error("refusing to write %s and %s: %s", args.output, args.cells_output, err)
        return 1
    log.info("wrote %s and %s (%s)", args.output, args.cells_output,
             "trained weights" if metadata["trained"] else "UNTRAINED random init")
    return 0


if __name__ == "__main__":
    sys.exit(main())
