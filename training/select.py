"""Choose weights on evaluations training never touched: they must improve, and no kind may regress.

    python -m training.select training/runs/cpu/weights.fp16.pt            # against the committed weights
    python -m training.select A.pt B.pt --photos report --json out.json     # several candidates, other photos

Each candidate is scored in process (exactly the served model's patches and pooling) beside the baseline
on the same pictures, suite by suite:
- reference: the KADID types as training.kadid_reference makes them (code training never imports);
- real: real encoders and camera pipelines, training.real_pipelines (code training never imports);
- own: the KADID types as training.degradations makes them (training's own code: guarded, not a gain);
- grey: each photo's grey copy against its colour original, mean |difference| of each score (guarded).
Per kind: the seed model's metric (Spearman of the related score against the level, per photo, averaged)
and, for the real pipelines, specificity (the related score rises more than either other score).

The verdict (issue 21's rule): accepted when the independent suites improve, i.e. the mean SRCC over the
reference and real kinds and the real kinds' mean specificity do not fall (by more than 0.002) and at least
one of them rises (by more than 0.002), while no kind of any suite loses more than REGRESSION (0.01) SRCC and
no grey-copy difference grows by more than REGRESSION. Photos: the pool's validation split, cut in two
halves by position: `selection` (even positions) to choose checkpoints on, `report` (odd) to report the
chosen one on, or `all`. Scores of a weights file are cached by its hash (~/.cache/iqa-degradation/select).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training import photos as photo_pool
from training.evaluate import (
    FAMILIES, build_set, grey_copy, metrics, model_scorer, references_from_pool, score_set,
)

REGRESSION = 0.01  # the largest SRCC (or grey-copy difference) loss any kind may take
NOISE_FLOOR = 0.002  # changes of the means smaller than this are neither a gain nor a loss
SUITES = ("reference", "real", "own", "grey")
COMMITTED = Path("training/weights/iqa_resnet50.fp16.pt")


@dataclass
class Figures:
    """One weights file's figures on one photo set: per suite, per kind."""

    srcc: dict[str, dict[str, float]] = field(default_factory=dict)  # suite -> kind -> seed SRCC
    specificity: dict[str, dict[str, float]] = field(default_factory=dict)  # suite -> kind -> specificity
    grey: dict[str, float] = field(default_factory=dict)  # family -> mean |grey - colour|

    def independent_srcc(self) -> float:
        return float(np.mean([v for suite in ("reference", "real") for v in self.srcc.get(suite, {}).values()]))

    def real_specificity(self) -> float:
        return float(np.mean(list(self.specificity.get("real", {}).values())))


def photo_set(pool: Path, which: str, limit: int | None = None) -> tuple[list[np.ndarray], list[int]]:
    """The validation photos at KADID's size: `which` half (module docstring), the first `limit` of it."""
    references = references_from_pool(pool, "validation")
    positions = list({"all": range(len(references)), "selection": range(0, len(references), 2),
                      "report": range(1, len(references), 2)}[which])[:limit]
    return [references[i] for i in positions], positions


def weights_key(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


class Scorer:
    """Scores of one weights file on suite pictures, cached on disk by (weights, suite, photos, suite version)."""

    def __init__(self, weights: Path, cache: Path, device: str = "cpu") -> None:
        self.weights, self.cache, self.device = Path(weights), cache, device
        self.key, self._score_fn = weights_key(weights), None

    def __call__(self, suite_key: str, pictures: list[np.ndarray]) -> np.ndarray:
        path = self.cache / f"{self.key}-{suite_key}.npy"
        if path.exists():
            scores = np.load(path)
            if scores.shape == (len(pictures), len(FAMILIES)):
                return scores
        if self._score_fn is None:
            from iqa.network import build_model

            self._score_fn = model_scorer(build_model(str(self.weights)).to(self.device), self.device)
        scores = score_set(self._score_fn, pictures)
        self.cache.mkdir(parents=True, exist_ok=True)
        np.save(path, scores)
        return scores


def evaluate(scorers: dict[str, Scorer], references: list[np.ndarray], positions: list[int], suites=SUITES,
             workers: int = 2, real_cache: Path | None = None) -> dict[str, Figures]:
    """Figures of every scorer, suite by suite (one suite's pictures in memory at a time)."""
    figures = {name: Figures() for name in scorers}
    tag = "p" + "-".join(map(str, positions))
    tag = hashlib.sha256(tag.encode()).hexdigest()[:10]
    for suite in suites:
        if suite in ("reference", "own"):
            entries, pictures = build_set(references, workers, suite)
            for name, scorer in scorers.items():
                report = metrics(entries, scorer(f"kadid-{suite}-{tag}", pictures))
                figures[name].srcc[suite] = dict(report.type_srcc)
        elif suite == "real":
            from training import real_pipelines

            entries, pictures = real_pipelines.build_set(references, workers,
                                                         cache_dir=real_cache or real_pipelines.DEFAULT_CACHE)
            version = real_pipelines.CACHE_VERSION
            for name, scorer in scorers.items():
                report = real_pipelines.metrics(entries, scorer(f"real{version}-{tag}", pictures))
                kinds = list(report.level1_mean)
                figures[name].srcc[suite] = {k: report.seed_srcc[k] for k in kinds}
                figures[name].specificity[suite] = {k: report.specificity[k] for k in kinds}
        elif suite == "grey":
            pictures = list(references) + [grey_copy(r) for r in references]
            for name, scorer in scorers.items():
                scores = scorer(f"grey-{tag}", pictures)
                difference = np.abs(scores[len(references):] - scores[: len(references)])
                figures[name].grey = {f: float(difference[:, i].mean()) for i, f in enumerate(FAMILIES)}
        del pictures
    return figures


def verdict(base: Figures, candidate: Figures) -> tuple[bool, list[str]]:
    """Whether `candidate` may replace `base` (the module's rule), and why not."""
    reasons = []
    for suite, kinds in base.srcc.items():
        for kind, before in kinds.items():
            after = candidate.srcc[suite][kind]
            if after < before - REGRESSION:
                reasons.append(f"{suite} {kind}: SRCC {before:.3f} -> {after:.3f}")
    for family, before in base.grey.items():
        if candidate.grey[family] > before + REGRESSION:
            reasons.append(f"grey copy {family}: |difference| {before:.3f} -> {candidate.grey[family]:.3f}")
    gains = [candidate.independent_srcc() - base.independent_srcc()]
    if base.specificity.get("real"):
        gains.append(candidate.real_specificity() - base.real_specificity())
    if any(g < -NOISE_FLOOR for g in gains):
        reasons.append(f"independent means fell: {', '.join(f'{g:+.4f}' for g in gains)}")
    if not any(g > NOISE_FLOOR for g in gains):
        reasons.append(f"no gain on the independent suites: {', '.join(f'{g:+.4f}' for g in gains)}")
    return not reasons, reasons


def table(figures: dict[str, Figures]) -> str:
    """Markdown: one row per (suite, kind), one column per weights file (SRCC, and specificity for real kinds)."""
    names = list(figures)
    first = figures[names[0]]
    lines = ["| suite | kind | " + " | ".join(names) + " |", "|---|---|" + "---:|" * len(names)]
    for suite, kinds in first.srcc.items():
        for kind in kinds:
            cells = []
            for n in names:
                cell = f"{figures[n].srcc[suite][kind]:.3f}"
                if suite in figures[n].specificity:
                    cell += f" / {figures[n].specificity[suite][kind]:.2f}"
                cells.append(cell)
            lines.append(f"| {suite} | {kind} | " + " | ".join(cells) + " |")
    for family in first.grey:
        lines.append(f"| grey copy | mean abs. diff., {family} | " + " | ".join(f"{figures[n].grey[family]:.3f}" for n in names) + " |")
    lines.append("| independent | mean SRCC (reference + real) | " + " | ".join(f"{figures[n].independent_srcc():.4f}" for n in names) + " |")
    if first.specificity.get("real"):
        lines.append("| real | mean specificity | " + " | ".join(f"{figures[n].real_specificity():.3f}" for n in names) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("candidates", nargs="+", type=Path, help="fp16 weights files (a run's weights.fp16.pt)")
    parser.add_argument("--baseline", type=Path, default=COMMITTED)
    parser.add_argument("--photos", choices=("selection", "report", "all"), default="selection")
    parser.add_argument("--limit", type=int, help="only the first N photos of that half (a quick look)")
    parser.add_argument("--suites", default=",".join(SUITES), help=f"comma-separated, from {', '.join(SUITES)}")
    parser.add_argument("--pool", type=Path, default=photo_pool.CACHE / "pool")
    parser.add_argument("--cache", type=Path, default=photo_pool.CACHE / "select")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--json", type=Path, help="write the figures and verdicts here")
    args = parser.parse_args(argv)
    suites = [s for s in args.suites.split(",") if s]
    unknown = set(suites) - set(SUITES)
    if unknown:
        parser.error(f"unknown suite(s) {sorted(unknown)}: choose from {', '.join(SUITES)}")
    references, positions = photo_set(args.pool, args.photos, args.limit)
    scorers = {"baseline": Scorer(args.baseline, args.cache)}
    scorers.update({str(c): Scorer(c, args.cache) for c in args.candidates})
    figures = evaluate(scorers, references, positions, suites, args.workers)
    print(f"{len(references)} validation photos ({args.photos}); baseline {args.baseline}\n")
    print(table(figures))
    verdicts = {}
    for name in scorers:
        if name == "baseline":
            continue
        accepted, reasons = verdict(figures["baseline"], figures[name])
        verdicts[name] = {"accepted": accepted, "reasons": reasons}
        print(f"\n{name}: {'ACCEPTED' if accepted else 'not accepted'}" + "".join(f"\n  - {r}" for r in reasons))
    if args.json:
        args.json.write_text(json.dumps({"figures": {n: vars(f) for n, f in figures.items()}, "verdicts": verdicts},
                                        indent=1))
    return 0 if verdicts and all(v["accepted"] for v in verdicts.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
