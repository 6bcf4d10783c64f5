"""The network as the Python-backend runner serves it: precision, memory layout and CUDA graphs.

On an H200 (FINDINGS.md, batch 128, images/s): eager fp32 4,430; fp16 + channels_last 11,158; the
same replayed from a CUDA graph 11,481 (batch 32: 7,971 eager against 10,057 replayed). A graph
replays one fixed batch size, so each dynamic batch is padded to the next captured size and the
padding rows' scores are dropped; a batch larger than every captured size runs eagerly.

Config parameters of iqa_resnet50 (read by iqa.serving.torchscript_model):
  precision         "fp32" (default) or "fp16"
  channels_last     "true" to run convolutions in NHWC (what tensor cores want)
  cuda_graphs       batch sizes to capture, e.g. "1,2,4,8,16,32"; only on a GPU
Status (issue 13, item 3): padding, precision and layout are tested on CPU (tests/test_network_runner.py);
capture and replay need a GPU: loadtest/gpu/perf.sh measures them in-process, and the served path
must be checked there (scores within 0.01 of fp32) before the committed config turns them on.
"""

from __future__ import annotations

import bisect

import torch


def parse_sizes(text: str) -> list[int]:
    """"1,2,4,8" -> [1, 2, 4, 8]; raises ValueError naming what is wrong."""
    sizes = sorted({int(part) for part in text.replace(" ", "").split(",") if part})
    if not sizes or sizes[0] < 1:
        raise ValueError(f"cuda_graphs must list positive batch sizes, not {text!r}")
    return sizes


def padded_size(rows: int, sizes: list[int]) -> int | None:
    """The smallest captured size that holds `rows`, or None when none does (run eagerly)."""
    at = bisect.bisect_left(sizes, rows)
    return sizes[at] if at < len(sizes) else None


class NetworkRunner:
    """Calls a scripted network on its input batches (uint8 patches [N, K, 3, P, P]; the map's cells and
    grid): a list of fp32 output tensors, N rows each. CUDA graphs serve single-input networks only."""

    def __init__(self, model: torch.nn.Module, device: torch.device, precision: str = "fp32",
                 channels_last: bool = False, graph_sizes: list[int] | None = None,
                 inference_mode: bool = True, optimized: bool = True):
        self.inference_mode, self.optimized = inference_mode, optimized  # the libtorch backend's switches
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be fp32 or fp16, not {precision!r}")
        self.device = device
        self.model = model.half() if precision == "fp16" else model
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.graph_sizes = graph_sizes if graph_sizes and device.type == "cuda" else []
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, list[torch.Tensor]]] = {}
        self._example_shape = None

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        batch = inputs[0]
        rows = batch.shape[0]
        size = padded_size(rows, self.graph_sizes) if self.graph_sizes and len(inputs) == 1 else None
        grad_off = torch.inference_mode() if self.inference_mode else torch.no_grad()
        with grad_off, torch.jit.optimized_execution(self.optimized):
            if size is None:
                return [s.float() for s in self.model(*inputs)]
            graph, static_in, static_out = self._graph(size, batch.shape[1:], batch.dtype)
            static_in[:rows].copy_(batch)
            static_in[rows:].zero_()  # padding rows: scored and dropped
            graph.replay()
            return [s[:rows].float().clone() for s in static_out]

    def _graph(self, size: int, shape, dtype):
        if size not in self._graphs:
            static_in = torch.zeros((size, *shape), dtype=dtype, device=self.device)
            stream = torch.cuda.Stream(self.device)
            stream.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(stream), torch.inference_mode():
                for _ in range(3):  # warm-up outside the graph, on a side stream, as capture requires
                    self.model(static_in)
            torch.cuda.current_stream(self.device).wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph), torch.inference_mode():
                static_out = list(self.model(static_in))
            self._graphs[size] = (graph, static_in, static_out)
        return self._graphs[size]
