"""Triton Python-backend model `iqa_preprocess`: encoded image bytes -> uint8 patches.

Glue only: the decoding and sampling live in iqa.preprocess (one image) and iqa.batch_decode (a
dynamic batch). Each request gets exactly one response; an image that cannot be decoded fails its
own request and no other in the dynamic batch.

Config parameter `region_decode_device` (absent: every image alone on the CPU, iqa.preprocess):
"cuda" (this instance's GPU) or "cuda:N" decodes the batch's JPEG patch regions together with nvJPEG
(iqa.batch_decode.RegionDecoder); "cpu" runs the same batched code on nvImageCodec's CPU backend
(how tests/test_batch_decode.py serves it). Whatever it cannot decode takes the CPU route with the
CPU route's errors. Absent from the committed config until measured on a GPU.
"""

import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from iqa.batch_decode import preprocess_batch
from iqa.contract import IMAGE_INPUT, PATCHES
from iqa.preprocess import ImageError


class TritonPythonModel:
    def initialize(self, args):
        # Pillow's and libjpeg-turbo's decoders release the GIL, so a dynamic batch decodes in parallel.
        threads = len(os.sched_getaffinity(0))
        self.pool = ThreadPoolExecutor(max_workers=max(1, min(threads, 8)), thread_name_prefix="decode")
        parameters = json.loads(args["model_config"]).get("parameters", {})
        device = parameters.get("region_decode_device", {}).get("string_value", "")
        self.region_decoder = None
        if device:
            from iqa.batch_decode import RegionDecoder

            device = f"cuda:{args.get('model_instance_device_id', 0)}" if device == "cuda" else device
            try:
                self.region_decoder = RegionDecoder(device)
                pb_utils.Logger.log_info(f"iqa_preprocess: JPEG patch regions decoded in batches on {device}")
            except Exception as err:  # the CPU route serves everything
                pb_utils.Logger.log_warn(f"iqa_preprocess: no batched decode on {device} ({type(err).__name__}: {err})")

    def execute(self, requests):
        images = [pb_utils.get_input_tensor_by_name(r, IMAGE_INPUT).as_numpy().reshape(-1) for r in requests]
        flat = [bytes(item) for rows in images for item in rows]
        outcomes = preprocess_batch(flat, self.region_decoder, self.pool.map)

        responses, start = [], 0
        for rows in images:
            mine = outcomes[start : start + len(rows)]
            start += len(rows)
            failures = [(i, err) for i, err in enumerate(mine) if isinstance(err, Exception)]
            if failures:
                responses.append(_error_response(failures, len(rows)))
            else:
                responses.append(pb_utils.InferenceResponse([pb_utils.Tensor(PATCHES, np.stack(mine))]))
        return responses

    def finalize(self):
        self.pool.shutdown(wait=False, cancel_futures=True)


def _error_response(failures, rows):
    index, err = failures[0]
    where = f"image {index} of {rows} in this request: " if rows > 1 else ""
    if isinstance(err, ImageError):
        code, message = pb_utils.TritonError.INVALID_ARG, f"bad image: {where}{err}"
    else:
        code, message = pb_utils.TritonError.INTERNAL, f"preprocessing failed: {where}{type(err).__name__}: {err}"
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
