"""The Python-based backend `pytorch`: serves model.pt where NVIDIA's PyTorch backend is absent.

The PyTorch (libtorch) backend ships only in NVIDIA's NGC container. Elsewhere the launcher
(iqa/serving/launcher.py) installs a Python-based backend named `pytorch` whose model.py imports
this class, so the committed configs that say `backend: "pytorch"` (`iqa_resnet50`, the map's
`iqa_resnet50_cells`) load unchanged: same tensors, same batching, same TorchScript file, run by the
torch in the server's Python environment. Like the libtorch backend, it binds tensors by position:
the config's inputs, in order, are the module's arguments, and its outputs, in order, the module's
results ("<name>__<index>").

It honours the PyTorch backend's parameters the repository sets, with the same meaning
(github.com/triton-inference-server/pytorch_backend, README "Parameters"):
  DISABLE_OPTIMIZED_EXECUTION "true": run the TorchScript graph without the JIT's graph-executor
      optimisations (torch.jit.optimized_execution(False), as the backend's setGraphExecutorOptimize);
  INFERENCE_MODE "true" (the default): run under torch.inference_mode.
Local only (iqa/serving/network_runner.py): `precision` "fp16" serves the network in half precision
(loadtest/bench.py --fp16), `channels_last` "true" runs its convolutions in NHWC, and `cuda_graphs`
("1,2,4,8,16,32") replays CUDA graphs of those batch sizes on a GPU (single-input models).
"""

import json
import os

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from iqa.serving.network_runner import NetworkRunner, parse_sizes


# The config's input types the networks take (iqa_resnet50: UINT8 patches; the map's cells and grid).
_TORCH_DTYPES = {"TYPE_UINT8": torch.uint8, "TYPE_INT32": torch.int32, "TYPE_FP32": torch.float32}


def _parameter(config: dict, key: str, default: str) -> str:
    return config.get("parameters", {}).get(key, {}).get("string_value", default)


def _flag(config: dict, key: str, default: bool) -> bool:
    value = _parameter(config, key, str(default).lower()).strip().lower()
    if value not in ("true", "false"):
        raise pb_utils.TritonModelException(f"parameter {key} must be \"true\" or \"false\", not {value!r}")
    return value == "true"


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        on_gpu = args["model_instance_kind"] == "GPU"
        self.device = torch.device(f"cuda:{args['model_instance_device_id']}" if on_gpu else "cpu")
        path = os.path.join(args["model_repository"], args["model_version"], "model.pt")
        self.model = torch.jit.load(path, map_location=self.device).eval()
        # parameters: the libtorch backend's INFERENCE_MODE and DISABLE_OPTIMIZED_EXECUTION, and the runner's
        # precision (fp32 | fp16), channels_last, cuda_graphs (iqa.serving.network_runner).
        sizes = _parameter(config, "cuda_graphs", "")
        try:
            self.runner = NetworkRunner(self.model, self.device, _parameter(config, "precision", "fp32"),
                                        channels_last=_flag(config, "channels_last", False),
                                        graph_sizes=parse_sizes(sizes) if sizes else None,
                                        inference_mode=_flag(config, "INFERENCE_MODE", True),
                                        optimized=not _flag(config, "DISABLE_OPTIMIZED_EXECUTION", False),
                                        input_shape=tuple(int(d) for d in config["input"][0]["dims"]),
                                        input_dtype=_TORCH_DTYPES[config["input"][0]["data_type"]])
        except ValueError as err:
            raise pb_utils.TritonModelException(str(err)) from None
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
        scores = [s.cpu().numpy() for s in self.runner(*batch)]
        responses, start = [], 0
        for size in sizes:
            tensors = [pb_utils.Tensor(name, s[start : start + size]) for name, s in zip(self.output_names, scores)]
            responses.append(pb_utils.InferenceResponse(tensors))
            start += size
        return responses
