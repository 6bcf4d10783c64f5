"""KADID-style evaluation: the seed model's metric, and what it does not measure.

    python -m training.evaluate                                  # the committed weights, in-process
    python -m training.evaluate --weights run/weights.fp16.pt --plot scores.png
    python -m training.evaluate --server localhost:8001          # through the running ensemble
    python -m training.evaluate --baselines                      # plus the classical baselines

The set: each validation photo of the pool at KADID's size (512x384) and each of KADID's
ten blur, noise and compression types at its five levels, plus the pristine picture.
Figures (every one from `metrics`, which this command and the tests call):

- seed metric: group by (photo, distortion type); Pearson and Spearman of the related score
  against levels 1-5; averaged over groups (types 01-03 -> blur, 09/10/21 -> compression,
  11-14 -> noise), as ModelScope reports PLCC 0.9654 / SRCC 0.9963 on KADID-10k;
- global SRCC per family: the related score against the level over all photos and types of
  the family at once: are scores comparable across pictures?
- specificity: share of groups in which the related score rises more from level 1 to 5 than
  either other score;
- mean scores on the pristine pictures.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from multiprocessing import Pool
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from training.degradations import BY_NAME, FAMILIES, LEVEL_STRENGTHS, TYPES, DistortionType, convolve, motion_kernel

KADID_SIZE = (512, 384)
LEVELS = (1, 2, 3, 4, 5)
# score_fn: pictures (RGB uint8 [H, W, 3]) -> scores [N, 3] in FAMILIES order
ScoreFn = Callable[[Sequence[np.ndarray]], np.ndarray]


# ------------------------------------------------------------------ statistics
def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties get their average rank (as scipy.stats.rankdata)."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x))
    sorted_x = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_x)) + 1]
    ends = np.r_[starts[1:], len(x)]
    for s, e in zip(starts, ends):
        ranks[order[s:e]] = (s + e + 1) / 2
    return ranks


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Pearson correlation; 0 when either side is constant (a constant score carries no ranking)."""
    x, y = np.asarray(x, np.float64) - np.mean(x), np.asarray(y, np.float64) - np.mean(y)
    denominator = np.sqrt((x * x).sum() * (y * y).sum())
    return float((x * y).sum() / denominator) if denominator > 0 else 0.0


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return pearson(rankdata(x), rankdata(y))


# ------------------------------------------------------------------ the set
@dataclass(frozen=True)
class Entry:
    photo: int
    kind: DistortionType | None  # None: the pristine picture
    level: int  # 0 for pristine


def kadid_picture(path: Path) -> np.ndarray:
    """A photo scaled to cover 512x384 and centre-cropped to it, as KADID's references are."""
    image = Image.open(path).convert("RGB")
    scale = max(KADID_SIZE[0] / image.width, KADID_SIZE[1] / image.height)
    size = (max(KADID_SIZE[0], round(image.width * scale)), max(KADID_SIZE[1], round(image.height * scale)))
    image = image.resize(size, Image.Resampling.LANCZOS)
    left, top = (size[0] - KADID_SIZE[0]) // 2, (size[1] - KADID_SIZE[1]) // 2
    return np.asarray(image.crop((left, top, left + KADID_SIZE[0], top + KADID_SIZE[1])))


def _distort(job: tuple[np.ndarray, int, str | None, int]) -> np.ndarray:
    picture, photo, name, level = job
    if name is None:
        return picture
    kind = BY_NAME[name]
    rng = np.random.default_rng([photo, kind.kadid_id, level])  # the motion angle, the noise
    return kind(picture, LEVEL_STRENGTHS[level - 1], rng)


def one_thread(_worker_id: int = 0) -> None:
    """In a forked worker (a Pool's or a DataLoader's): one torch thread, one core per worker.

    A forked child must not enter the OpenMP pool its parent started (it hangs), and torch's FFT
    blurs run in every worker.
    """
    import torch

    torch.set_num_threads(1)


def build_set(references: Sequence[np.ndarray], workers: int = 1) -> tuple[list[Entry], list[np.ndarray]]:
    """Every reference pristine, and under every type at every level. Deterministic."""
    entries, jobs = [], []
    for photo, picture in enumerate(references):
        entries.append(Entry(photo, None, 0))
        jobs.append((picture, photo, None, 0))
        for kind in TYPES:
            for level in LEVELS:
                entries.append(Entry(photo, kind, level))
                jobs.append((picture, photo, kind.name, level))
    if workers > 1:
        with Pool(workers, initializer=one_thread) as pool:
            pictures = pool.map(_distort, jobs, chunksize=4)
    else:
        pictures = [_distort(job) for job in jobs]
    return entries, pictures


# ------------------------------------------------------------------ metrics
@dataclass
class Report:
    seed_plcc: dict[str, float] = field(default_factory=dict)  # per family and "all"
    seed_srcc: dict[str, float] = field(default_factory=dict)
    type_srcc: dict[str, float] = field(default_factory=dict)  # the seed SRCC of each distortion type
    global_srcc: dict[str, float] = field(default_factory=dict)
    specificity: dict[str, float] = field(default_factory=dict)
    pristine_mean: dict[str, float] = field(default_factory=dict)
    photos: int = 0

    def as_dict(self) -> dict:
        return {k: v for k, v in vars(self).items()}


def metrics(entries: Sequence[Entry], scores: np.ndarray) -> Report:
    scores = np.asarray(scores, dtype=np.float64)
    report = Report(photos=len({e.photo for e in entries}))
    groups: dict[tuple[int, int], list[int]] = {}
    for i, e in enumerate(entries):
        if e.kind is not None:
            groups.setdefault((e.photo, e.kind.kadid_id), []).append(i)
    per_group = []  # (family, plcc, srcc, specific, type)
    for (photo, kadid_id), rows in groups.items():
        rows = sorted(rows, key=lambda i: entries[i].level)
        family = FAMILIES.index(entries[rows[0]].kind.family)
        levels = np.array([entries[i].level for i in rows], dtype=np.float64)
        related = scores[rows, family]
        rise = scores[rows[-1]] - scores[rows[0]]
        specific = all(rise[family] > rise[other] for other in range(len(FAMILIES)) if other != family)
        per_group.append((FAMILIES[family], pearson(related, levels), spearman(related, levels), specific,
                          entries[rows[0]].kind.name))
    for family in FAMILIES + ("all",):
        chosen = [g for g in per_group if family in ("all", g[0])]
        report.seed_plcc[family] = float(np.mean([g[1] for g in chosen]))
        report.seed_srcc[family] = float(np.mean([g[2] for g in chosen]))
        report.specificity[family] = float(np.mean([g[3] for g in chosen]))
    for kind in TYPES:
        report.type_srcc[kind.name] = float(np.mean([g[2] for g in per_group if g[4] == kind.name]))
    for index, family in enumerate(FAMILIES):
        rows = [i for i, e in enumerate(entries) if e.kind is not None and e.kind.family == family]
        report.global_srcc[family] = spearman(scores[rows, index], [entries[i].level for i in rows])
        pristine = [i for i, e in enumerate(entries) if e.kind is None]
        report.pristine_mean[family] = float(scores[pristine, index].mean())
    return report


def score_set(score_fn: ScoreFn, pictures: Sequence[np.ndarray]) -> np.ndarray:
    """Score every picture of the set; refuses a scorer that does not give three scores per picture."""
    scores = np.asarray(score_fn(pictures), dtype=np.float64)
    if scores.shape != (len(pictures), len(FAMILIES)):
        raise ValueError(f"score_fn returned shape {scores.shape}, expected {(len(pictures), len(FAMILIES))}")
    return scores


# ------------------------------------------------------------------ scorers
def model_scorer(model, device: str = "cpu", batch: int = 32) -> ScoreFn:
    """The network in-process, on exactly the patches the server cuts."""
    import torch

    from iqa.preprocess import sample_patches

    def score(pictures: Sequence[np.ndarray]) -> np.ndarray:
        out = []
        with torch.inference_mode():
            for start in range(0, len(pictures), batch):
                patches = np.stack([sample_patches(p) for p in pictures[start : start + batch]])
                noise, blur, compression = model(torch.from_numpy(patches).to(device))
                out.append(torch.cat([noise, blur, compression], dim=1).float().cpu().numpy())
        return np.concatenate(out)

    return score


def server_scorer(url: str, concurrency: int = 8) -> ScoreFn:
    """The running iqa_degradation ensemble, over gRPC, through the client library (lossless PNG)."""
    from iqa_client import IQAClient

    def score(pictures: Sequence[np.ndarray]) -> np.ndarray:
        with IQAClient(url) as client:
            results = list(client.score_many(pictures, concurrency=concurrency))
        return np.array([[r.noise, r.blur, r.compression] for r in results])

    return score


def _grey(picture: np.ndarray) -> np.ndarray:
    return picture.astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def classical_scores(picture: np.ndarray) -> np.ndarray:
    """No-reference classics, higher = more degraded, in FAMILIES order (noise, blur, compression).

    noise: the wavelet noise-sigma estimate (median absolute finest diagonal Haar coefficient / 0.6745);
    blur: minus the log variance of the Laplacian; compression: 8x8 blockiness, the mean step across
    block borders over the mean step inside blocks.
    """
    g = _grey(picture)
    h, w = (g.shape[0] // 2) * 2, (g.shape[1] // 2) * 2
    q = g[:h, :w]
    diagonal = (q[0::2, 0::2] - q[0::2, 1::2] - q[1::2, 0::2] + q[1::2, 1::2]) / 2
    noise = np.median(np.abs(diagonal)) / 0.6745
    laplacian = g[1:-1, :-2] + g[1:-1, 2:] + g[:-2, 1:-1] + g[2:, 1:-1] - 4 * g[1:-1, 1:-1]
    blur = -np.log(laplacian.var() + 1e-6)
    steps_x, steps_y = np.abs(np.diff(g, axis=1)), np.abs(np.diff(g, axis=0))
    border_x, border_y = (np.arange(steps_x.shape[1]) % 8 == 7), (np.arange(steps_y.shape[0]) % 8 == 7)
    across = steps_x[:, border_x].mean() + steps_y[border_y].mean()
    inside = steps_x[:, ~border_x].mean() + steps_y[~border_y].mean()
    return np.array([noise, blur, across / (inside + 1e-6)])


def classical_scorer(pictures: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack([classical_scores(p) for p in pictures])


def motion_angles(score_fn: ScoreFn, references: Sequence[np.ndarray], lengths=(6.0, 10.0),
                  angles=(0.0, 22.5, 45.0, 67.5, 90.0, 135.0)) -> str:
    """The mean blur score of motion blur by length and angle: is the score blind to the direction?"""
    lines = ["| motion blur | " + " | ".join(f"{a:g}°" for a in angles) + " |", "|---|" + "---:|" * len(angles)]
    blur = FAMILIES.index("blur")
    for length in lengths:
        pictures = [convolve(r, motion_kernel(length, np.deg2rad(a))) for r in references for a in angles]
        means = score_set(score_fn, pictures)[:, blur].reshape(len(references), len(angles)).mean(axis=0)
        lines.append(f"| {length:g} px | " + " | ".join(f"{m:.3f}" for m in means) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------ reporting
def table(reports: dict[str, Report]) -> str:
    """A markdown table: one column per scorer."""
    names = list(reports)
    lines = ["| figure | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]

    def row(label: str, getter) -> None:
        cells = []
        for n in names:
            value = getter(reports[n])
            cells.append("n/a" if value is None else f"{value:.4f}")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    for family in ("all",) + FAMILIES:
        row(f"seed metric SRCC, {family}", lambda r, f=family: r.seed_srcc[f])
        row(f"seed metric PLCC, {family}", lambda r, f=family: r.seed_plcc[f])
    for kind in TYPES:
        row(f"seed metric SRCC, {kind.name}", lambda r, k=kind.name: r.type_srcc[k])
    for family in FAMILIES:
        row(f"global SRCC, {family}", lambda r, f=family: r.global_srcc[f])
    for family in ("all",) + FAMILIES:
        row(f"specificity, {family}", lambda r, f=family: r.specificity[f])
    for family in FAMILIES:
        # Classical measures have no [0, 1] scale: their pristine mean means nothing.
        row(f"mean on pristine, {family}", lambda r, f=family: r.pristine_mean[f] if r is not reports.get("classical") else None)
    return "\n".join(lines)


def plot(entries: Sequence[Entry], scores: np.ndarray, path: Path, title: str = "") -> None:
    """One panel per distortion type: each score's mean (and 10-90 % band) over photos against the level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 5, figsize=(18, 7), sharey=True)
    pristine = np.array([scores[i] for i, e in enumerate(entries) if e.kind is None])
    for ax, kind in zip(axes.flat, TYPES):
        for index, family in enumerate(FAMILIES):
            per_level = [pristine[:, index]] + [
                np.array([scores[i, index] for i, e in enumerate(entries) if e.kind is kind and e.level == level])
                for level in LEVELS
            ]
            x = np.arange(6)
            ax.plot(x, [v.mean() for v in per_level], marker="o", label=family,
                    linewidth=3 if family == kind.family else 1)
            ax.fill_between(x, [np.percentile(v, 10) for v in per_level], [np.percentile(v, 90) for v in per_level], alpha=0.15)
        ax.set_title(f"{kind.kadid_id:02d} {kind.name} ({kind.family})")
        ax.set_xticks(range(6), ["0"] + [str(level) for level in LEVELS])
        ax.set_xlabel("level (0 = pristine)")
    axes[0, 0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def references_from_pool(pool: Path, split: str = "validation", limit: int | None = None) -> list[np.ndarray]:
    from training import photos

    return [kadid_picture(p.path) for p in photos.photos(pool, split)[:limit]]


def main(argv: list[str] | None = None) -> int:
    from training import photos

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=Path, default=photos.CACHE / "pool")
    parser.add_argument("--photos", type=int, help="use only the first N photos of the split")
    parser.add_argument("--split", choices=("validation", "train"), default="validation",
                        help="the held-out photos, or the training photos (to see how much the model overfits)")
    parser.add_argument("--weights", default="training/weights/iqa_resnet50.fp16.pt")
    parser.add_argument("--server", help="score through the running ensemble at this gRPC address instead")
    parser.add_argument("--baselines", action="store_true", help="add the classical no-reference baselines")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2, help="processes that build the set")
    parser.add_argument("--plot", type=Path, help="write the score-against-level PNG here")
    parser.add_argument("--json", type=Path, help="write every figure as JSON here")
    parser.add_argument("--motion-angles", action="store_true",
                        help="also print the blur score of motion blur by angle (6 and 10 px, the photos' mean)")
    args = parser.parse_args(argv)

    try:
        references = references_from_pool(args.pool, args.split, args.photos)
    except FileNotFoundError as err:  # no pool yet: say what builds it, not a traceback
        print(f"evaluate: {err}", file=sys.stderr)
        return 2
    if args.server:
        name, score_fn = f"served ({args.server})", server_scorer(args.server)
    else:
        from iqa.network import build_model

        model = build_model(args.weights).to(args.device)
        name, score_fn = "ours", model_scorer(model, args.device)
    entries, pictures = build_set(references, args.workers)
    scores = score_set(score_fn, pictures)
    report = metrics(entries, scores)
    reports = {name: report}
    if args.baselines:
        reports["classical"] = metrics(entries, score_set(classical_scorer, pictures))
    print(f"KADID-style set: {report.photos} {args.split} photos x {len(TYPES)} types x {len(LEVELS)} levels + pristine\n")
    print(table(reports))
    if args.plot:
        plot(entries, scores, args.plot, title=f"{name}: {args.weights if not args.server else args.server}")
        print(f"\nplot: {args.plot}")
    if args.motion_angles:
        print(f"\nblur score, mean over {len(references)} photos:\n{motion_angles(score_fn, references)}")
    if args.json:
        args.json.write_text(json.dumps({n: r.as_dict() for n, r in reports.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
