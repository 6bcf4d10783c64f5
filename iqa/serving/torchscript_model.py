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
from iqa.serving.network_runner import NetworkRunner, parse_sizes


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        on_gpu = args["model_instance_kind"] == "GPU"
        self.device = torch.device(f"cuda:{args['model_instance_device_id']}" if on_gpu else "cpu")
        path = os.path.join(args["model_repository"], args["model_version"], "model.pt")
        self.model = torch.jit.load(path, map_location=self.device).eval()
        # parameters: precision (fp32 | fp16), channels_last, cuda_graphs (iqa.serving.network_runner).
        parameters = {key: value.get("string_value", "") for key, value in config.get("parameters", {}).items()}
        try:
            graph_sizes = parse_sizes(parameters["cuda_graphs"]) if parameters.get("cuda_graphs") else None
            self.runner = NetworkRunner(self.model, self.device, parameters.get("precision", "fp32"),
                                        channels_last=parameters.get("channels_last", "false") == "true",
                                        graph_sizes=graph_sizes)
        except ValueError as err:
            raise pb_utils.TritonModelException(str(err)) from None
        self.output_names = [output["name"] for output in config["output"]]
        if tuple(self.output_names) != NETWORK_OUTPUTS:
            raise pb_utils.TritonModelException(f"config outputs {self.output_names} != {NETWORK_OUTPUTS}")

    def execute(self, requests):
        # One forward pass for the whole dynamic batch, then split it back per request.
        arrays = [pb_utils.get_input_tensor_by_name(r, NETWORK_INPUT).as_numpy() for r in requests]
        sizes = [len(a) for a in arrays]
        batch = torch.from_numpy(np.concatenate(arrays) if len(arrays) > 1 else arrays[0]).to(self.device)
        scores = [s.cpu().numpy() for s in self.runner(batch)]
        responses, start = [], 0
        for size in sizes:
            tensors = [pb_utils.Tensor(name, s[start : start + size]) for name, s in zip(self.output_names, scores)]
            responses.append(pb_utils.InferenceResponse(tensors))
            start += size
        return responses

