"""A bank of degraded pictures, generated once and trained on many times.

    python -m training.bank --out ~/.cache/iqa-degradation/bank --count 4000 --workers 2
    python -m training.train --bank ~/.cache/iqa-degradation/bank ...

Slow encoders (AVIF, HEIC, x265, VP9: 100-300 ms a picture at 512x384 on this VM) would cost a CPU
run as much as the network does if they ran at every step. The bank holds the degraded pictures of
training.train's own samples (DegradedPictures.degraded: the same photos, mix, tones, captions,
rendered pictures and borders), one lossless PNG each with its targets and recipe in the file's text
chunks; training then cuts fresh views from them (sub-windows, quarter turns, mirrors) each time a
picture comes round again. Generation is resumable: pictures already in the folder are kept.
The bank lives outside git (default under $IQA_DATA).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin
from torch.utils.data import Dataset

from training import photos as photo_pool

# One bank per generation seed: a bank made with another seed, mix or pool is another folder.
NAME = "{index:06d}.png"


def _write(path: Path, degraded: np.ndarray, targets: np.ndarray, recipe: str) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("targets", json.dumps([float(t) for t in targets]))
    info.add_text("recipe", recipe)
    tmp = path.with_suffix(".tmp")
    Image.fromarray(degraded).save(tmp, format="PNG", pnginfo=info, compress_level=1)
    tmp.replace(path)


_dataset = None


def _init(args_dict: dict) -> None:
    from training import train
    from training.evaluate import one_thread

    global _dataset
    one_thread()
    args = argparse.Namespace(**args_dict)
    _dataset = train.DegradedPictures(train.load_pictures(args.pool, "train"), args.seed, 1, args.count,
                                      train.parse_type_weights(args.type_weight), args.synthetic, args.border)


def _make(job: tuple[int, str]) -> float:
    index, out = job
    start = time.perf_counter()
    degraded, recipe, _ = _dataset.degraded(index)
    _write(Path(out) / NAME.format(index=index), degraded, recipe.targets(), repr(recipe))
    return time.perf_counter() - start


def generate(args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "settings.json").write_text(json.dumps(
        {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}, indent=1))
    todo = [(i, str(args.out)) for i in range(args.count) if not (args.out / NAME.format(index=i)).exists()]
    print(f"{args.count - len(todo)} pictures already in {args.out}, {len(todo)} to make", flush=True)
    settings = {k: v for k, v in vars(args).items()}
    start, done = time.perf_counter(), 0
    # spawned, not forked: see training.real_pipelines.build_set
    with get_context("spawn").Pool(args.workers, initializer=_init, initargs=(settings,)) as pool:
        for seconds in pool.imap_unordered(_make, todo, chunksize=4):
            done += 1
            if done % 100 == 0 or done == len(todo):
                print(f"{done}/{len(todo)} in {time.perf_counter() - start:.0f} s "
                      f"({len(todo) and (time.perf_counter() - start) / done:.2f} s a picture)", flush=True)


def recipe_types(recipe: str) -> list[str]:
    """The step types of a bank picture's recipe text (repr of training.degradations.Recipe), in chain order."""
    return re.findall(r"\('([a-z0-9_]+)', ", recipe)


def reweighting(types: list[str], weights: dict[str, dict[str, float]],
                generated: dict[str, dict[str, float]]) -> float:
    """How much more often a bank picture of these step types is drawn so that the bank, generated with the mix
    `generated`, is drawn as if made with `weights` (family -> type -> weight, training.degradations.type_weights):
    per step, the type's share of its family under `weights` over its share under `generated`. Pristine: 1."""
    factor = 1.0
    for name in types:
        family = next(f for f, kinds in generated.items() if name in kinds)
        new, old = weights[family], generated[family]
        if old[name] <= 0:
            raise ValueError(f"the bank holds {name} pictures its own mix gives weight 0")
        factor *= (new[name] / sum(new.values())) / (old[name] / sum(old.values()))
    return factor


class BankPictures(Dataset):
    """Sample i: patches uint8 [views, K, 3, P, P], targets float32 [views, 3] and anchored bool [views]
    (training.train.anchored) from bank picture i mod N, its views cut afresh from generator (seed, i): a picture
    coming round again gives other patches.

    `weights` (family -> type -> weight, as training.train's --type-weight makes them): the pictures are drawn
    at random, each with probability in proportion to `reweighting` against the mix the bank was made with
    (its settings.json), so a bank serves another mix without being made again; None: each in turn.
    """

    def __init__(self, folder: Path, seed: int, views: int, length: int,
                 weights: dict[str, dict[str, float]] | None = None) -> None:
        from training.degradations import type_weights

        self.files = sorted(Path(folder).glob("*.png"))
        if not self.files:
            raise ValueError(f"no bank pictures in {folder}: make them with python -m training.bank --out {folder}")
        self.seed, self.views, self.length = seed, views, length
        self.types = [recipe_types(_text(path)["recipe"]) for path in self.files]
        self.cumulative = None
        if weights is not None:
            settings = Path(folder) / "settings.json"
            made = json.loads(settings.read_text()).get("type_weight", []) if settings.exists() else []
            generated = type_weights({k: float(v) for k, _, v in (item.partition("=") for item in made)})
            self.cumulative = np.cumsum([reweighting(t, weights, generated) for t in self.types])

    def __len__(self) -> int:
        return self.length

    def picture(self, index: int) -> int:
        """The bank picture sample `index` is cut from."""
        if self.cumulative is None:
            return index % len(self.files)
        draw = np.random.default_rng([self.seed, 2, index]).random() * self.cumulative[-1]
        return int(np.searchsorted(self.cumulative, draw, "right"))

    def __getitem__(self, index: int):
        from training.train import anchored, cut_views

        which = self.picture(index)
        with Image.open(self.files[which]) as image:
            targets = np.array(json.loads(image.text["targets"]), dtype=np.float32)
            degraded = np.asarray(image.convert("RGB"))
        patches = cut_views(degraded, self.views, np.random.default_rng([self.seed, 1, index]))
        return (torch.from_numpy(patches), torch.from_numpy(np.repeat(targets[None], self.views, axis=0)),
                torch.full((self.views,), anchored(self.types[which])))


def _text(path: Path) -> dict[str, str]:
    """A bank picture's text chunks (targets, recipe), read without decoding its pixels (_write puts them
    before the image data, where Image.info holds them after the header is read)."""
    with Image.open(path) as image:
        return {key: value for key, value in image.info.items() if isinstance(value, str)}


def main(argv: list[str] | None = None) -> int:
    from training.train import BORDER_SHARE, SYNTHETIC_SHARE

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=photo_pool.CACHE / "bank", help="the bank's folder")
    parser.add_argument("--pool", type=Path, default=photo_pool.CACHE / "pool", help="photo pool (training.photos)")
    parser.add_argument("--count", type=int, default=4000, help="pictures in the bank")
    parser.add_argument("--seed", type=int, default=100, help="generation seed (not a training run's seed)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--synthetic", type=float, default=SYNTHETIC_SHARE)
    parser.add_argument("--border", type=float, default=BORDER_SHARE)
    parser.add_argument("--type-weight", action="append", default=[], metavar="TYPE=W",
                        help="a distortion type's weight within its family (as training.train's)")
    args = parser.parse_args(argv)
    generate(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
