"""Python-backend stand-in for the `pytorch_libtorch` backend, serving the same model.pt.

The libtorch backend ships only in NVIDIA's NGC container. Elsewhere the
launcher puts a one-line model.py that imports this class beside model.pt and
switches `iqa_resnet50` (and the map's `iqa_resnet50_cells`) to `backend: "python"`: same
config, same tensors, same TorchScript file, run by the torch in the server's Python environment.
Like the libtorch backend, it binds tensors by position: the config's inputs, in order, are the
module's arguments, and its outputs, in order, the module's results.
"""

import json
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils


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
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]
        for names in (self.input_names, self.output_names):
            if [name.rpartition("__")[2] for name in names] != [str(i) for i in range(len(names))]:
                raise pb_utils.TritonModelException(f"tensor names {names} do not follow libtorch's <name>__<index>")

    def execute(self, requests):
        # One forward pass for the whole dynamic batch, then split it back per request.
        arrays = [[pb_utils.get_input_tensor_by_name(r, name).as_numpy() for r in requests] for name in self.input_names]
        sizes = [len(a) for a in arrays[0]]
        batch = [torch.from_numpy(np.concatenate(a) if len(a) > 1 else a[0]).to(self.device) for a in arrays]
        with torch.inference_mode():
            scores = [s.float().cpu().numpy() for s in self.model(*batch)]
        responses, start = [], 0
        for size in sizes:
            tensors = [pb_utils.Tensor(name, s[start : start + size]) for name, s in zip(self.output_names, scores)]
            responses.append(pb_utils.InferenceResponse(tensors))
            start += size
        return responses

