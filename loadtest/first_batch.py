"""The first call at a batch size the model has not seen, under the PyTorch backend's three JIT settings.

    .venv/bin/python -m loadtest.first_batch [--device cuda] [--repeats 5]

Why: the PyTorch backend runs TorchScript through the JIT graph executor, whose profiling mode
specialises the graph to the input shapes it has seen; a new batch size after warm-up can then pay
for a new specialisation (triton-inference-server/server#3012 reports 2.85 s at batch 2 after warm-up
at batch 1). Dynamic batching hands the network every size from 1 to NETWORK_MAX_BATCH. The settings,
as the backend's config parameters (pytorch_backend README, "Parameters") name them:
  profiling  the default: optimised execution with the profiling executor;
  legacy     ENABLE_JIT_PROFILING "false": optimised execution, no shape profiling;
  off        DISABLE_OPTIMIZED_EXECUTION "true": no graph-executor optimisation at all.
model_repository/iqa_resnet50/config.pbtxt says which the repository uses and why, from this table.

Each setting runs in its own process (the JIT's state is process-wide): the warm-up batch sizes of
the config first, then each new size once ("first call") and `--repeats` more times (median, "steady").
The two settings alternate for `--rounds` rounds (a shared machine's load shifts by the minute) and
each figure is the median over the rounds. Prints one table; the ratio first / steady is the stall a
request at that size would pay.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

from iqa.contract import NETWORK_MAX_BATCH, PATCH_SHAPE
from iqa.serving.launcher import REPO

MODEL_PT = REPO / "model_repository" / "iqa_resnet50" / "1" / "model.pt"
WARMUP_SIZES = (1, 8)  # model_warmup in model_repository/iqa_resnet50/config.pbtxt
NEW_SIZES = (2, 3, 5, 13, NETWORK_MAX_BATCH)


SETTINGS = ("profiling", "legacy", "off")


def measure(setting: str, device: str, repeats: int) -> dict[int, tuple[float, float]]:
    """Batch size -> (first call ms, median steady ms), in this process."""
    import torch

    torch._C._jit_set_profiling_mode(setting != "legacy")  # what ENABLE_JIT_PROFILING sets in libtorch

    model = torch.jit.load(str(MODEL_PT), map_location=device).eval()

    def call(size: int) -> float:
        batch = torch.randint(0, 256, (size, *PATCH_SHAPE), dtype=torch.uint8, device=device)
        start = time.perf_counter()
        outputs = model(batch)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        del outputs
        return (time.perf_counter() - start) * 1000

    results = {}
    with torch.inference_mode(), torch.jit.optimized_execution(setting != "off"):
        for size in WARMUP_SIZES:
            for _ in range(3):
                call(size)
        for size in NEW_SIZES:
            first = call(size)
            results[size] = (first, statistics.median(call(size) for _ in range(repeats)))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: %(default)s)")
    parser.add_argument("--repeats", type=int, default=5, help="steady-state calls per size (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs of each setting (default: %(default)s)")
    parser.add_argument("--child", choices=SETTINGS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(measure(args.child, args.device, args.repeats)))
        return 0
    if not MODEL_PT.is_file():
        parser.error(f"{MODEL_PT} is missing: run `make export` first")
    runs: dict[str, list[dict]] = {setting: [] for setting in SETTINGS}
    for _ in range(args.rounds):
        for setting in runs:
            child = subprocess.run([sys.executable, "-m", "loadtest.first_batch", "--child", setting,
                                    "--device", args.device, "--repeats", str(args.repeats)],
                                   capture_output=True, text=True, cwd=REPO, check=True)
            runs[setting].append({int(k): v for k, v in json.loads(child.stdout.strip().splitlines()[-1]).items()})
    table = {setting: {size: tuple(statistics.median(run[size][i] for run in results) for i in (0, 1))
                       for size in NEW_SIZES} for setting, results in runs.items()}
    print(f"TorchScript model.pt on {args.device}, warm-up at batch {', '.join(map(str, WARMUP_SIZES))}; "
          f"ms per call (steady: median of {args.repeats}; medians of {args.rounds} alternating rounds)")
    print(f"{'batch':>5} | " + " | ".join(f"{name + ': first':>16} {'steady':>8} {'ratio':>6}" for name in SETTINGS))
    for size in NEW_SIZES:
        cells = [table[name][size] for name in SETTINGS]
        print(f"{size:>5} | " + " | ".join(f"{first:>16.1f} {steady:>8.1f} {first / steady:>6.2f}"
                                           for first, steady in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
