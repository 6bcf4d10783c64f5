"""Weights between two networks: (1 - alpha) * A + alpha * B, tensor by tensor.

    python -m training.interpolate training/weights/iqa_resnet50.fp16.pt RUN/weights.fp16.pt \
        --alpha 0.5 0.7 0.85 --out-dir RUNS/soup          # writes RUNS/soup/alpha-0.70.fp16.pt, ...
    python -m training.select RUNS/soup/*.fp16.pt          # then judge them like any checkpoint

Weight-space ensembling of a fine-tuned network with the one it started from (WiSE-FT: Wortsman et al.,
"Robust fine-tuning of zero-shot models", CVPR 2022): for two networks on one path of training (B warm-
restarted from A), the weights in between often keep most of B's gains while giving back part of what B
lost. Here B is a warm restart that learnt the codecs and lost a little on some blur kinds; alpha is chosen
on the `selection` photos by training.select and reported on the `report` ones.

Floating-point tensors (weights, biases, batch-norm running means and variances) are interpolated in fp32 and
stored in the dtype of A; integer tensors (batch-norm `num_batches_tracked`) are taken from B. Raises
ValueError when the two files do not hold the same tensor names and shapes, or alpha is outside [0, 1].
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def interpolate(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], alpha: float) -> dict[str, torch.Tensor]:
    """State dict (1 - alpha) * a + alpha * b (alpha in [0, 1]; 0 gives a, 1 gives b), in a's dtypes."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    if a.keys() != b.keys():
        raise ValueError(f"the two networks hold different tensors: only in A {sorted(a.keys() - b.keys())[:5]}, "
                         f"only in B {sorted(b.keys() - a.keys())[:5]}")
    out = {}
    for name, ta in a.items():
        tb = b[name]
        if ta.shape != tb.shape:
            raise ValueError(f"{name}: shape {tuple(ta.shape)} in A, {tuple(tb.shape)} in B")
        if ta.is_floating_point():
            out[name] = torch.lerp(ta.float(), tb.float(), alpha).to(ta.dtype)
        else:
            out[name] = tb.clone()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="the weights at alpha 0 (e.g. the committed ones)")
    parser.add_argument("b", type=Path, help="the weights at alpha 1 (e.g. a warm restart's)")
    parser.add_argument("--alpha", type=float, nargs="+", required=True, help="one or more values in [0, 1]")
    parser.add_argument("--out-dir", type=Path, required=True)
    args = parser.parse_args(argv)
    a = torch.load(args.a, map_location="cpu", weights_only=True)
    b = torch.load(args.b, map_location="cpu", weights_only=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for alpha in args.alpha:
        try:
            mixed = interpolate(a, b, alpha)
        except ValueError as err:
            parser.error(str(err))
        path = args.out_dir / f"alpha-{alpha:.2f}.fp16.pt"
        torch.save(mixed, path)
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
