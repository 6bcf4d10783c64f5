"""Triton Python-backend model `iqa_map_preprocess`: encoded image bytes -> the whole picture in cells.

Glue only: decoding and tiling live in iqa.preprocess (preprocess_map), the batching and the
per-request errors in iqa.serving.preprocess_model, shared with `iqa_preprocess`.
"""

from iqa.contract import CELL_BOXES, CELLS, GRID, IMAGE_SIZE
from iqa.preprocess import preprocess_map
from iqa.serving.preprocess_model import PreprocessModel


class TritonPythonModel(PreprocessModel):
    outputs = (CELLS, GRID, CELL_BOXES, IMAGE_SIZE)  # the order of iqa.preprocess.Tiles

    @staticmethod
    def prepare(data):
        return preprocess_map(data)
