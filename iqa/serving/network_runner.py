"""The network as the Python-backend runner serves it: precision, memory layout and CUDA graphs.

On an H200 (FINDINGS.md, batch 128, images/s): eager fp32 4,430; fp16 + channels_last 11,158; the
same replayed from a CUDA graph 11,481 (batch 32: 7,971 eager against 10,057 replayed). A graph
replays one fixed batch size, so each dynamic batch is padded to the next captured size and the
padding rows' scores are dropped; a batch larger than every captured size runs eagerly.

Config parameters of iqa_resnet50 (read by iqa.serving.torchscript_model):
  precision         "fp32" (default) or "fp16"
  channels_last     "true" to run convolutions in NHWC (what tensor cores want)
  cuda_graphs       batch sizes to capture, e.g. "1,2,4,8,16,32"; only on a GPU
Every size is captured when the runner is made (the model's load), into one shared memory pool; a batch
whose padded size was not captured runs eagerly, never capturing on a live request.
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
                 inference_mode: bool = True, optimized: bool = True, input_shape: tuple[int, ...] | None = None,
                 input_dtype: torch.dtype = torch.uint8):
        self.inference_mode, self.optimized = inference_mode, optimized  # the libtorch backend's switches
        if precision not in ("fp32", "fp16"):
            raise ValueError(f"precision must be fp32 or fp16, not {precision!r}")
        self.device = device
        self.model = model.half() if precision == "fp16" else model
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.graph_sizes = graph_sizes if graph_sizes and device.type == "cuda" else []
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, list[torch.Tensor]]] = {}
        if self.graph_sizes:
            if input_shape is None:
                raise ValueError("cuda_graphs needs the input's shape (per row) to capture at start")
            # Every size now, none on a live request: a capture synchronises the device, runs the garbage
            # collector and empties the cache. One memory pool for all, the largest first, so the pool is
            # sized once: replays never overlap (one execution at a time per instance) and each replay's
            # outputs are copied out before the next, so graphs may reuse each other's intermediates.
            pool = torch.cuda.graph_pool_handle()
            for size in capture_order(self.graph_sizes):
                self._graphs[size] = self._capture(size, tuple(input_shape), input_dtype, pool)

    def __call__(self, *inputs: torch.Tensor) -> list[torch.Tensor]:
        batch = inputs[0]
        rows = batch.shape[0]
        size = padded_size(rows, self.graph_sizes) if self.graph_sizes and len(inputs) == 1 else None
        captured = self._graphs.get(size)
        if captured is not None and tuple(captured[1].shape[1:]) != tuple(batch.shape[1:]):
            captured = None  # not the shape captured at start: eager
        grad_off = torch.inference_mode() if self.inference_mode else torch.no_grad()
        with grad_off, torch.jit.optimized_execution(self.optimized):
            if captured is None:
                return [s.float() for s in self.model(*inputs)]
            graph, static_in, static_out = captured
            static_in[:rows].copy_(batch)
            static_in[rows:].zero_()  # padding rows: scored and dropped
            graph.replay()
            return [s[:rows].float().clone() for s in static_out]

    def _capture(self, size: int, shape: tuple[int, ...], dtype: torch.dtype, pool):
        static_in = torch.zeros((size, *shape), dtype=dtype, device=self.device)
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream), torch.inference_mode():
            for _ in range(3):  # warm-up outside the graph, on a side stream, as capture requires
                self.model(static_in)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool), torch.inference_mode():
            static_out = list(self.model(static_in))
        return graph, static_in, static_out


def capture_order(sizes: list[int]) -> list[int]:
    """The order NetworkRunner captures its graphs in: largest first, so the shared pool is sized by the
    first capture and the others fit into it."""
    return sorted(set(sizes), reverse=True)
