"""Triton Python-backend model `iqa_preprocess`: encoded image bytes -> uint8 patches.

Glue only: the decoding and sampling live in iqa.preprocess, the batching and the per-request
errors (a bad image fails its own request, no other in the dynamic batch) in
iqa.serving.preprocess_model.
"""

from iqa.contract import PATCHES
from iqa.preprocess import preprocess
from iqa.serving.preprocess_model import PreprocessModel


class TritonPythonModel(PreprocessModel):
    outputs = (PATCHES,)

    @staticmethod
    def prepare(data):
        return (preprocess(data),)
