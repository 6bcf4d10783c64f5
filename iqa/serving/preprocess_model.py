"""The Python-backend glue both preprocessing models share (`iqa_preprocess`, `iqa_map_preprocess`).

A dynamic batch of requests is decoded in a thread pool; each request gets exactly one response;
an image that cannot be decoded fails its own request and no other in the batch. What a model
makes of one image (its `prepare`) lives in iqa.preprocess; its model.py only names it.
"""

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from iqa.contract import IMAGE_INPUT
from iqa.preprocess import ImageError
from iqa.serving.cpu_limit import decode_threads


class PreprocessModel:
    """Base of a preprocessing TritonPythonModel. Subclasses set:

    outputs: the output tensor names, in the order `prepare` returns the arrays;
    prepare: encoded image bytes -> one array per output for that image (raises ImageError);
    and may override prepare_batch, which handles a whole dynamic batch (default: `prepare` for each
    image in the thread pool).
    """

    outputs: tuple[str, ...] = ()
    prepare: Callable[[bytes], tuple[np.ndarray, ...]]

    def initialize(self, args):
        # Pillow's decoders release the GIL, so a dynamic batch decodes in parallel (decode_threads).
        config = json.loads(args["model_config"])
        explicit = config.get("parameters", {}).get("decode_threads", {}).get("string_value", "")
        instances = sum(int(group.get("count", 1)) for group in config.get("instance_group", [])) or 1
        self.threads = int(explicit) if explicit else decode_threads(instances)
        self.pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="decode")

    def execute(self, requests):
        images = [pb_utils.get_input_tensor_by_name(r, IMAGE_INPUT).as_numpy().reshape(-1) for r in requests]
        flat = [bytes(item) for rows in images for item in rows]
        outcomes = self.prepare_batch(flat)

        responses, start = [], 0
        for rows in images:
            mine = outcomes[start : start + len(rows)]
            start += len(rows)
            failures = [(i, err) for i, err in enumerate(mine) if isinstance(err, Exception)]
            if failures:
                responses.append(_error_response(failures, len(rows)))
            else:
                tensors = [pb_utils.Tensor(name, np.stack([arrays[i] for arrays in mine]))
                           for i, name in enumerate(self.outputs)]
                responses.append(pb_utils.InferenceResponse(tensors))
        return responses

    def finalize(self):
        self.pool.shutdown(wait=False, cancel_futures=True)

    def prepare_batch(self, payloads: list[bytes]) -> list:
        """Each payload's arrays (a tuple, one per output) or the exception that refused it."""
        return list(self.pool.map(self._try_prepare, payloads))

    def _try_prepare(self, data):
        try:
            return self.prepare(data)
        except Exception as err:  # reported per request below; never fails the batch
            return err


def _error_response(failures, rows):
    index, err = failures[0]
    where = f"image {index} of {rows} in this request: " if rows > 1 else ""
    if isinstance(err, ImageError):
        code, message = pb_utils.TritonError.INVALID_ARG, f"bad image: {where}{err}"
    else:
        code, message = pb_utils.TritonError.INTERNAL, f"preprocessing failed: {where}{type(err).__name__}: {err}"
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))
