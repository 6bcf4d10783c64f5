"""KADID-style evaluation: the seed model's metric, and what it does not measure.

    python -m training.evaluate                                  # the committed weights, in-process
    python -m training.evaluate --weights run/weights.fp16.pt --plot scores.png
    python -m training.evaluate --server localhost:8001          # through the running ensemble
    python -m training.evaluate --baselines                      # plus the classical baselines
    python -m training.evaluate --implementations real --photos 8 --no-checks   # real encoders only

The set: each validation photo of the pool at KADID's size (512x384) and each of KADID's
ten blur, noise and compression types at its five levels, plus the pristine picture. Each type
comes from two implementations, and the figures are printed for both side by side:
- own: training.degradations' reading of KADID (the one the model was trained on);
- reference: training.kadid_reference, written independently from the KADID-10k paper with
  other building blocks, which training never imports: how the model fares on degradations
  made by code it never saw (`--implementations own` skips it, e.g. where OpenCV is missing).
A third set, real, is not KADID's: the same photos through real encoders (WebP, AVIF, HEIC, x264,
x265, SVT-AV1 frames, JPEG 4:4:4, JPEG then a resize) and camera pipelines (raw sensor noise, with
and without a phone's processing, luma noise, defocus, resolution loss, camera shake) at five levels
each, from training.real_pipelines (independent of the training degradations); its own table per kind
(`--real-cache` keeps the encoders' files between runs; `--implementations own,reference` skips it).
Figures (every one from `metrics`, which this command and the tests call):

- seed metric: group by (photo, distortion type); Pearson and Spearman of the related score
  against levels 1-5; averaged over groups (types 01-03 -> blur, 09/10/21 -> compression,
  11-14 -> noise), as ModelScope reports PLCC 0.9654 / SRCC 0.9963 on KADID-10k; also per type;
- global SRCC per family: the related score against the level over all photos and types of
  the family at once: are scores comparable across pictures?
- specificity: share of groups in which the related score rises more from level 1 to 5 than
  either other score;
- mean scores on the pristine pictures.

Then the checks that no KADID-style set covers (`checks`), each against its target (issue 12):
a grey copy of each pristine photo against the colour original (mean and max |difference| of
each score), a rendered text page (lossless) and its JPEG at quality 30, and flat pictures.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from training.degradations import BY_NAME, FAMILIES, LEVEL_STRENGTHS, TYPES, convolve, motion_kernel

KADID_SIZE = (512, 384)
LEVELS = (1, 2, 3, 4, 5)
IMPLEMENTATIONS = ("own", "reference")  # of the KADID types
REAL = "real"  # the third set: training.real_pipelines' real encoders and camera pipelines
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
    kind: object | None  # a distortion type with kadid_id, name and family; None: the pristine picture
    level: int  # 0 for pristine


def kadid_picture(path: Path) -> np.ndarray:
    """A photo scaled to cover 512x384 and centre-cropped to it, as KADID's references are."""
    image = Image.open(path).convert("RGB")
    scale = max(KADID_SIZE[0] / image.width, KADID_SIZE[1] / image.height)
    size = (max(KADID_SIZE[0], round(image.width * scale)), max(KADID_SIZE[1], round(image.height * scale)))
    image = image.resize(size, Image.Resampling.LANCZOS)
    left, top = (size[0] - KADID_SIZE[0]) // 2, (size[1] - KADID_SIZE[1]) // 2
    return np.asarray(image.crop((left, top, left + KADID_SIZE[0], top + KADID_SIZE[1])))


def implementation_types(implementation: str) -> tuple:
    """The ten KADID types of one implementation: "own" (training's) or "reference" (kept out of training)."""
    if implementation == "own":
        return TYPES
    if implementation == "reference":
        from training import kadid_reference  # only here: training must not see it, and it needs OpenCV

        return kadid_reference.TYPES
    raise ValueError(f"unknown implementation {implementation!r}: choose from {IMPLEMENTATIONS}")


def _distort(job: tuple[np.ndarray, int, str, str | None, int]) -> np.ndarray:
    picture, photo, implementation, name, level = job
    if name is None:
        return picture
    kind = {t.name: t for t in implementation_types(implementation)}[name]
    rng = np.random.default_rng([photo, kind.kadid_id, level])  # the motion angle, the noise
    if implementation == "own":
        return BY_NAME[name](picture, LEVEL_STRENGTHS[level - 1], rng)  # its KADID variant, the default
    return kind(picture, level, rng)


def one_thread(_worker_id: int = 0) -> None:
    """In a worker (a Pool's or a DataLoader's): one torch thread, one core per worker.

    A forked child (a DataLoader's) must not enter the OpenMP pool its parent started (it hangs), and
    torch's FFT blurs run in every worker.
    """
    import torch

    torch.set_num_threads(1)


def build_set(references: Sequence[np.ndarray], workers: int = 1,
              implementation: str = "own") -> tuple[list[Entry], list[np.ndarray]]:
    """Every reference pristine, and under every type of the implementation at every level. Deterministic."""
    entries, jobs = [], []
    for photo, picture in enumerate(references):
        entries.append(Entry(photo, None, 0))
        jobs.append((picture, photo, implementation, None, 0))
        for kind in implementation_types(implementation):
            for level in LEVELS:
                entries.append(Entry(photo, kind, level))
                jobs.append((picture, photo, implementation, kind.name, level))
    if workers > 1:
        # spawned, not forked: see training.real_pipelines.build_set
        with get_context("spawn").Pool(workers, initializer=one_thread) as pool:
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
    type_plcc: dict[str, float] = field(default_factory=dict)  # the seed PLCC of each distortion type
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
    for name in dict.fromkeys(g[4] for g in per_group):  # the types present, in the set's order
        report.type_srcc[name] = float(np.mean([g[2] for g in per_group if g[4] == name]))
        report.type_plcc[name] = float(np.mean([g[1] for g in per_group if g[4] == name]))
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
# Issue 12's targets, on the reference implementation (and not to fall on the own one):
# (lower bound, upper bound); None where the figure has no bound.
TARGETS = {
    "seed SRCC": (0.995, None), "seed PLCC": (0.97, None), "worst type SRCC": (0.98, None),
    "worst type PLCC": (0.90, None), "global SRCC": (0.90, None), "specificity": (0.97, None),
    "pristine mean": (None, 0.10),
}


def _target(key: str) -> str:
    low, high = TARGETS.get(key, (None, None))
    return f">= {low}" if low is not None else f"<= {high}" if high is not None else ""


def table(reports: dict[str, Report]) -> str:
    """A markdown table: one column per scorer (and implementation), then the target."""
    names = list(reports)
    lines = ["| figure | " + " | ".join(names) + " | target |", "|---|" + "---:|" * len(names) + "---|"]

    def row(label: str, getter, target: str = "", on_the_score_scale: bool = False) -> None:
        cells = []
        for n in names:
            # Classical measures have no [0, 1] scale: their pristine mean means nothing.
            value = None if on_the_score_scale and n.startswith("classical") else getter(reports[n])
            cells.append("n/a" if value is None else f"{value:.4f}")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {target} |")

    for family in ("all",) + FAMILIES:
        row(f"seed metric SRCC, {family}", lambda r, f=family: r.seed_srcc[f], _target("seed SRCC") if family == "all" else "")
        row(f"seed metric PLCC, {family}", lambda r, f=family: r.seed_plcc[f], _target("seed PLCC") if family == "all" else "")
    kinds = list(dict.fromkeys(k for r in reports.values() for k in r.type_srcc))
    for kind in kinds:
        row(f"seed metric SRCC, {kind}", lambda r, k=kind: r.type_srcc.get(k))
        row(f"seed metric PLCC, {kind}", lambda r, k=kind: r.type_plcc.get(k))
    row("worst type SRCC", lambda r: min(r.type_srcc.values()), _target("worst type SRCC"))
    row("worst type PLCC", lambda r: min(r.type_plcc.values()), _target("worst type PLCC"))
    for family in FAMILIES:
        row(f"global SRCC, {family}", lambda r, f=family: r.global_srcc[f], _target("global SRCC"))
    for family in ("all",) + FAMILIES:
        row(f"specificity, {family}", lambda r, f=family: r.specificity[f], _target("specificity") if family == "all" else "")
    for family in FAMILIES:
        row(f"mean on pristine, {family}", lambda r, f=family: r.pristine_mean[f], _target("pristine mean"), True)
    return "\n".join(lines)


# ------------------------------------------------------------------ checks beyond the KADID-style set
TEXT = ("Image quality assessment services receive screenshots, slides, scanned documents and charts "
        "as often as photographs. This page is rendered without loss: every score should read clean. "
        "Saved as JPEG at quality 30, ringing appears around every letter and the compression score "
        "should rise. The quick brown fox jumps over the lazy dog 0123456789. ")


def text_page(size: tuple[int, int] = (1024, 768)) -> np.ndarray:
    """A clean screenshot-like page of black text on white, RGB uint8 [H, W, 3] (Pillow's default font).

    Kept apart from training.synthetic's pages: its own layout, text and font, so it is a held-out check.
    """
    from PIL import ImageDraw, ImageFont

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=15)
    words, line, y = (TEXT * 12).split(), "", 24
    for word in words:
        candidate = f"{line} {word}".strip()
        if draw.textlength(candidate, font=font) > size[0] - 64:
            draw.text((32, y), line, fill="black", font=font)
            line, y = word, y + 21
            if y > size[1] - 40:
                break
        else:
            line = candidate
    return np.asarray(image)


def jpeg(picture: np.ndarray, quality: int) -> np.ndarray:
    import io

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="JPEG", quality=quality)
    return np.asarray(Image.open(buffer).convert("RGB"))


def grey_copy(picture: np.ndarray) -> np.ndarray:
    """What a black-and-white conversion gives: Pillow's "L" (ITU-R 601-2 luma), back to three channels."""
    return np.asarray(Image.fromarray(picture).convert("L").convert("RGB"))


@dataclass
class Check:
    figure: str
    value: float
    target: str  # e.g. "<= 0.02"
    passed: bool


def checks(score_fn: ScoreFn, references: Sequence[np.ndarray]) -> list[Check]:
    """Grey copies against their colour originals, a rendered text page and its JPEG q30, flat pictures.

    Targets from issue 12: grey vs colour, each score, mean |difference| <= 0.02 and max <= 0.08; the clean text
    page <= 0.10 on each score, its JPEG q30 >= 0.30 on compression; a flat picture holds no evidence and
    scores 0 on each (iqa.network.DegradationNet.pool's rule).
    """
    out = []
    colour = score_set(score_fn, list(references))
    grey = score_set(score_fn, [grey_copy(r) for r in references])
    difference = np.abs(grey - colour)
    for index, family in enumerate(FAMILIES):
        mean, worst = float(difference[:, index].mean()), float(difference[:, index].max())
        out.append(Check(f"grey copy vs colour, {family}: mean abs. difference", mean, "<= 0.02", mean <= 0.02))
        out.append(Check(f"grey copy vs colour, {family}: max abs. difference", worst, "<= 0.08", worst <= 0.08))
    page = text_page()
    clean, compressed = score_set(score_fn, [page, jpeg(page, 30)])
    for index, family in enumerate(FAMILIES):
        out.append(Check(f"clean text page (PNG), {family}", float(clean[index]), "<= 0.10", clean[index] <= 0.10))
    c = FAMILIES.index("compression")
    out.append(Check("text page as JPEG q30, compression", float(compressed[c]), ">= 0.30", compressed[c] >= 0.30))
    flat = score_set(score_fn, [np.full((768, 1024, 3), 128, np.uint8), np.full((384, 512, 3), (30, 90, 200), np.uint8)])
    for index, family in enumerate(FAMILIES):
        worst = float(flat[:, index].max())
        out.append(Check(f"flat pictures (grey, blue), {family}", worst, "== 0", worst == 0.0))
    return out


def checks_table(results: dict[str, list[Check]]) -> str:
    names = list(results)
    lines = ["| check | " + " | ".join(names) + " | target |", "|---|" + "---:|" * len(names) + "---|"]
    for i, first in enumerate(results[names[0]]):
        cells = [f"{results[n][i].value:.4f} {'✓' if results[n][i].passed else '✗'}" for n in names]
        lines.append(f"| {first.figure} | " + " | ".join(cells) + f" | {first.target} |")
    return "\n".join(lines)


def plot(entries: Sequence[Entry], scores: np.ndarray, path: Path, title: str = "") -> None:
    """One panel per distortion type: each score's mean (and 10-90 % band) over photos against the level."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 5, figsize=(18, 7), sharey=True)
    pristine = np.array([scores[i] for i, e in enumerate(entries) if e.kind is None])
    kinds = list({e.kind.name: e.kind for e in entries if e.kind is not None}.values())
    for ax, kind in zip(axes.flat, kinds):
        for index, family in enumerate(FAMILIES):
            per_level = [pristine[:, index]] + [
                np.array([scores[i, index] for i, e in enumerate(entries)
                          if e.kind is not None and e.kind.name == kind.name and e.level == level])
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
    parser.add_argument("--implementations", default=",".join(IMPLEMENTATIONS + (REAL,)),
                        help="which sets to evaluate, comma-separated: the implementations of the KADID types "
                        f"({', '.join(IMPLEMENTATIONS)}) and {REAL} (training.real_pipelines: real encoders and "
                        f"camera pipelines) (default: {','.join(IMPLEMENTATIONS + (REAL,))})")
    parser.add_argument("--real-cache", type=Path, default=None, metavar="DIR",
                        help="where the real set keeps its encoded files (default: real_pipelines.DEFAULT_CACHE, "
                        "~/.cache/iqa-degradation/real-pipelines); 'none': encode every time")
    parser.add_argument("--real-kinds", help="only these kinds of the real set, comma-separated")
    parser.add_argument("--no-checks", action="store_true", help="skip the grey, text page and flat checks")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=2, help="processes that build the set")
    parser.add_argument("--plot", type=Path, help="write the score-against-level PNG here (one per implementation)")
    parser.add_argument("--json", type=Path, help="write every figure as JSON here")
    parser.add_argument("--motion-angles", action="store_true",
                        help="also print the blur score of motion blur by angle (6 and 10 px, the photos' mean)")
    args = parser.parse_args(argv)
    implementations = [i.strip() for i in args.implementations.split(",") if i.strip()]
    real = REAL in implementations
    implementations = [i for i in implementations if i != REAL]
    for implementation in implementations:
        implementation_types(implementation)  # an unknown name fails before any work
    if real:
        try:
            from training import real_pipelines  # only here: it needs PyAV, pillow-heif and OpenCV
        except ImportError as err:
            print(f"evaluate: the {REAL} set needs PyAV, pillow-heif and OpenCV (the test extra: pip install -e "
                  f"'.[test]'): {err}; --implementations {','.join(IMPLEMENTATIONS)} skips it", file=sys.stderr)
            return 2
        real_kinds = [k.strip() for k in args.real_kinds.split(",")] if args.real_kinds else None
        for kind in real_kinds or ():
            if kind not in real_pipelines.BY_NAME:
                parser.error(f"unknown real kind {kind!r}: choose from {', '.join(real_pipelines.BY_NAME)}")
        real_cache = (None if str(args.real_cache).lower() == "none" else args.real_cache) \
            if args.real_cache is not None else real_pipelines.DEFAULT_CACHE

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
    reports = {}
    for implementation in implementations:
        entries, pictures = build_set(references, args.workers, implementation)
        scores = score_set(score_fn, pictures)
        reports[f"{name}, {implementation}"] = metrics(entries, scores)
        if args.baselines:
            reports[f"classical, {implementation}"] = metrics(entries, score_set(classical_scorer, pictures))
        if args.plot:
            path = args.plot if implementation == "own" else args.plot.with_stem(f"{args.plot.stem}-{implementation}")
            plot(entries, scores, path, title=f"{name} ({args.weights if not args.server else args.server}), "
                                              f"{implementation} implementation")
            print(f"plot: {path}")
        del pictures  # one implementation's set in memory at a time
    reports = dict(sorted(reports.items(), key=lambda item: item[0].startswith("classical")))
    if implementations:
        print(f"KADID-style set: {len(references)} {args.split} photos x {len(TYPES)} types x {len(LEVELS)} levels"
              f" + pristine, implementations: {', '.join(implementations)}\n")
        print(table(reports))
    real_reports = {}
    if real:
        import time

        start, counts = time.perf_counter(), {}
        scorers = {name: score_fn, **({"classical": classical_scorer} if args.baselines else {})}
        real_reports, real_entries, real_scores = real_pipelines.evaluate(
            scorers, references, args.workers, real_cache, real_kinds, counts=counts)
        seconds = time.perf_counter() - start
        kinds = real_kinds or list(real_pipelines.BY_NAME)
        print(f"\nreal encoders and camera pipelines (training/real_pipelines.py): {len(references)} {args.split}"
              f" photos x {len(kinds)} kinds x {len(LEVELS)} levels + pristine, built and scored in {seconds:.0f} s"
              f" (cache {real_cache}: {counts['cached']} files read, {counts['encoded']} encoded)\n")
        print(real_pipelines.table(real_reports[name]))
        print(f"\nthe compression score per encoder setting ({name}, mean over the photos):\n"
              + real_pipelines.levels_table(real_entries, real_scores[name]))
        print()
        print(real_pipelines.summary(real_reports))
    results = {}
    if not args.no_checks:
        results = {name: checks(score_fn, references)}
        print(f"\nchecks beyond the KADID-style set ({len(references)} {args.split} photos):\n{checks_table(results)}")
    if args.motion_angles:
        print(f"\nblur score, mean over {len(references)} photos:\n{motion_angles(score_fn, references)}")
    if args.json:
        args.json.write_text(json.dumps({"reports": {n: r.as_dict() for n, r in reports.items()},
                                         "real": {n: r.as_dict() for n, r in real_reports.items()},
                                         "checks": {n: [vars(c) for c in cs] for n, cs in results.items()}},
                                        indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
