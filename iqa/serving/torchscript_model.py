"""Python-backend stand-in for the `pytorch_libtorch` backend, serving the same model.pt.

The libtorch backend ships only in NVIDIA's NGC container. Elsewhere the
launcher puts a one-line model.py that imports this class beside model.pt and
switches `iqa_resnet50` to `backend: "python"`: same config, same tensors,
same TorchScript file, run by the torch in the server's Python environment.
"""

import json
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from iqa.contract import NETWORK_INPUT, NETWORK_OUTPUTS


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        on_gpu = args["model_instance_kind"] == "GPU"
        self.device = torch.device(f"cuda:{args['model_instance_device_id']}" if on_gpu else "cpu")
        path = os.path.join(args["model_repository"], args["model_version"], "model.pt")
        self.model = torch.jit.load(path, map_location=self.device).eval()
        # parameters { key: "precision" value { string_value: "fp16" } }: serve the network in half
        # precision (benchmarks: keeps scores within 0.01 of fp32, see loadtest/bench.py --fp16).
        precision = config.get("parameters", {}).get("precision", {}).get("string_value", "fp32")
        if precision == "fp16":
            self.model = self.model.half()
        elif precision != "fp32":
            raise pb_utils.TritonModelException(f"precision must be fp32 or fp16, not {precision!r}")
        self.output_names = [output["name"] for output in config["output"]]
        if tuple(self.output_names) != NETWORK_OUTPUTS:
            raise pb_utils.TritonModelException(f"config outputs {self.output_names} != {NETWORK_OUTPUTS}")

    def execute(self, requests):
        # One forward pass for the whole dynamic batch, then split it back per request.
        arrays = [pb_utils.get_input_tensor_by_name(r, NETWORK_INPUT).as_numpy() for r in requests]
        sizes = [len(a) for a in arrays]
        batch = torch.from_numpy(np.concatenate(arrays) if len(arrays) > 1 else arrays[0]).to(self.device)
        with torch.inference_mode():
            scores = [s.float().cpu().numpy() for s in self.model(batch)]
        responses, start = [], 0
        for size in sizes:
            tensors = [pb_utils.Tensor(name, s[start : start + size]) for name, s in zip(self.output_names, scores)]
            responses.append(pb_utils.InferenceResponse(tensors))
            start += size
        return responses

