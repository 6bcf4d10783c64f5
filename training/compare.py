"""Which warm restart is worth this CPU's hours: each option for the same CPU budget, judged by training.select.

    python -m training.compare --bank ~/.cache/iqa-degradation/bank-v1 --cpu-minutes 30
    python -m training.compare ... --options plain,frozen_bn_ema      # a subset (runs already made are kept)

Every option starts from the committed weights, trains on the same bank of degraded pictures (training.bank)
with the same batch (8 pictures x 4 views) for the same CPU time of its own process, then all of them are
scored beside the committed weights on the evaluations training never touched (training.select: reference
KADID code, real pipelines; the own KADID reading and grey copies as guards) on the `selection` half of the
validation photos. The table gives, per option: steps and patch sets made in its budget, the change of the
independent mean SRCC and of the real pipelines' mean specificity, the worst kind's SRCC change, the
verdict, and the gain per CPU hour (the independent mean SRCC change plus the specificity change, per hour).
Runs are resumable and kept in --out: a second call only evaluates (and trains what is missing).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from training import photos as photo_pool
from training import select

# name -> (what it is, training.train flags)
OPTIONS: dict[str, tuple[str, list[str]]] = {
    "plain": ("all layers, batch-norm statistics re-estimated, lr 1e-4 (the restart that broke camera shake)",
              ["--bn", "train", "--lr", "1e-4"]),
    "frozen_bn_ema": ("all layers, batch norm frozen, EMA 0.98, lr 3e-5",
                      ["--bn", "frozen", "--ema", "0.98", "--lr", "3e-5"]),
    "top_stages": ("stem to layer2 frozen (no backward there), batch norm frozen, EMA 0.98, lr 1e-4",
                   ["--bn", "frozen", "--ema", "0.98", "--lr", "1e-4", "--freeze-through", "layer2"]),
}


def run_option(name: str, flags: list[str], args: argparse.Namespace) -> Path:
    run = args.out / name
    weights = run / "weights.fp16.pt"
    if (run / "log.jsonl").exists() and any('"final": true' in line for line in (run / "log.jsonl").open()):
        print(f"{name}: kept ({run})", flush=True)
        return weights
    command = [sys.executable, "-m", "training.train", "--device", "cpu", "--init", str(args.init),
               "--bank", str(args.bank), "--batch", "8", "--views", "4", "--workers", "1", "--steps", "100000",
               "--cpu-minutes", str(args.cpu_minutes), "--validation-pictures", "64", "--validate-every", "100000",
               "--checkpoint-every", "300", "--seed", "7", *flags]
    command += ["--resume", str(run)] if (run / "checkpoint.pt").exists() else ["--run", str(run)]
    print(f"{name}: {' '.join(command)}", flush=True)
    with (args.out / f"{name}.out").open("a") as out:
        subprocess.run(command, check=True, stdout=out, stderr=subprocess.STDOUT)
    return weights


def run_summary(run: Path) -> dict:
    entries = [json.loads(line) for line in (run / "log.jsonl").open()]
    final = [e for e in entries if e.get("final")][-1]
    rates = [e["patch_sets_per_s"] for e in entries if "patch_sets_per_s" in e]
    return {"steps": final["step"], "cpu_h": final["cpu_s"] / 3600, "wall_h": final["elapsed_s"] / 3600,
            "patch_sets": final["step"] * 8 * 4, "patch_sets_per_s": float(np.median(rates)) if rates else 0.0}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bank", type=Path, required=True)
    parser.add_argument("--init", type=Path, default=select.COMMITTED)
    parser.add_argument("--cpu-minutes", type=float, default=30.0)
    parser.add_argument("--options", default=",".join(OPTIONS))
    parser.add_argument("--out", type=Path, default=photo_pool.CACHE / "compare")
    parser.add_argument("--pool", type=Path, default=photo_pool.CACHE / "pool")
    parser.add_argument("--photos", choices=("selection", "report", "all"), default="selection")
    args = parser.parse_args(argv)
    names = [n for n in args.options.split(",") if n]
    unknown = set(names) - set(OPTIONS)
    if unknown:
        parser.error(f"unknown option(s) {sorted(unknown)}: choose from {', '.join(OPTIONS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    weights = {name: run_option(name, OPTIONS[name][1], args) for name in names}

    references, positions = select.photo_set(args.pool, args.photos)
    cache = photo_pool.CACHE / "select"
    scorers = {"baseline": select.Scorer(args.init, cache)}
    scorers.update({name: select.Scorer(path, cache) for name, path in weights.items()})
    figures = select.evaluate(scorers, references, positions)
    print(f"\n{len(references)} validation photos ({args.photos}), CPU budget {args.cpu_minutes:g} min per option\n")
    print(select.table(figures))
    base = figures["baseline"]
    lines = ["| option | what | steps | patch sets | CPU h | Δ independent SRCC | Δ real specificity | "
             "worst kind Δ SRCC | accepted | gain per CPU h |", "|---|---|---:|---:|---:|---:|---:|---|---|---:|"]
    for name in names:
        f, summary = figures[name], run_summary(args.out / name)
        d_srcc = f.independent_srcc() - base.independent_srcc()
        d_spec = f.real_specificity() - base.real_specificity() if base.specificity.get("real") else 0.0
        worst = min(((f.srcc[s][k] - v, f"{s} {k}") for s, kinds in base.srcc.items() for k, v in kinds.items()))
        accepted, _ = select.verdict(base, f)
        lines.append(f"| {name} | {OPTIONS[name][0]} | {summary['steps']} | {summary['patch_sets']} | "
                     f"{summary['cpu_h']:.2f} | {d_srcc:+.4f} | {d_spec:+.3f} | {worst[0]:+.3f} ({worst[1]}) | "
                     f"{'yes' if accepted else 'no'} | {(d_srcc + d_spec) / max(summary['cpu_h'], 1e-9):+.3f} |")
    print("\n" + "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
