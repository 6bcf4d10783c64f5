"""Triton Python-backend model `iqa_preprocess`: encoded image bytes -> uint8 patches.

Glue only: the decoding and sampling live in iqa.preprocess (one image) and iqa.batch_decode (a
dynamic batch), the batching and the per-request errors (a bad image fails its own request, no other
in the dynamic batch) in iqa.serving.preprocess_model.

Config parameter `region_decode_device` (absent: every image alone on the CPU, iqa.preprocess):
"cuda" (this instance's GPU) or "cuda:N" decodes the batch's JPEG patch regions together on the GPU
(iqa.batch_decode.RegionDecoder); "cpu" runs the same batched code on nvImageCodec's CPU backend
(how tests/test_batch_decode.py serves it). Whatever it cannot decode takes the CPU route with the
CPU route's errors. A device that cannot decode fails the model's load: asked for the GPU, it never
serves from the CPU unannounced. Absent from the committed config until measured on a GPU.
"""

import json

import triton_python_backend_utils as pb_utils

from iqa.batch_decode import preprocess_batch
from iqa.contract import PATCHES
from iqa.serving.preprocess_model import PreprocessModel


class TritonPythonModel(PreprocessModel):
    outputs = (PATCHES,)

    def initialize(self, args):
        super().initialize(args)
        parameters = json.loads(args["model_config"]).get("parameters", {})
        device = parameters.get("region_decode_device", {}).get("string_value", "")
        self.region_decoder = None
        if device:
            from iqa.batch_decode import RegionDecoder

            device = f"cuda:{args.get('model_instance_device_id', 0)}" if device == "cuda" else device
            try:
                self.region_decoder = RegionDecoder(device)
            except (RuntimeError, ValueError) as err:
                raise pb_utils.TritonModelException(f"iqa_preprocess: region_decode_device {device}: {err}") from None
            pb_utils.Logger.log_info(f"iqa_preprocess: JPEG patch regions decoded in batches on {device}")

    def prepare_batch(self, payloads):
        outcomes = preprocess_batch(payloads, self.region_decoder, self.pool.map)
        return [outcome if isinstance(outcome, Exception) else (outcome,) for outcome in outcomes]
