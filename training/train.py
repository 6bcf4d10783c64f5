"""Train the degradation network from scratch on simulated degradations of pristine photos.

    python -m training.train --device cpu --steps 200 --batch 8          # check the pipeline on CPU
    python -m training.train --minutes 7 --batch 96 --views 4 --workers 14    # the GPU run (training/gpu_run.sh)
    python -m training.train --resume training/runs/default              # continue a run
    python -m training.train --init training/weights/iqa_resnet50.fp16.pt --lr 1e-3 --seed 1   # a warm restart
    python -m training.train --device cpu --init training/weights/iqa_resnet50.fp16.pt --bank BANK \
        --bn frozen --ema 0.998 --lr 3e-5 --batch 8 --views 4 --workers 1     # the safe CPU warm restart (docs/model.md)

One sample is one virtual picture: a random crop (256-512 px a side) of a pool photo at a
random scale, degraded by a random recipe (training.degradations), then cut into patches
exactly as the server cuts them (iqa.preprocess.sample_patches). The loss is binary cross
entropy between each family's target and the network's patch-pooled logit: the same
pooling the served model does. `--views 4` cuts three more patch sets from sub-windows of the
same degraded picture, each turned by a random multiple of 90 degrees and maybe mirrored: a
patch set then costs the CPU a quarter of a degraded picture, which keeps a GPU fed.

Samples are a pure function of (seed, sample index), so a resumed run sees the same data a
straight run would. `--bank DIR` trains on degraded pictures generated once by training.bank (slow
encoders such as AVIF, HEIC and x265 cost 100-300 ms a picture: paid once, not at every step).
For warm restarts on a CPU: `--bn frozen` keeps the batch-norm statistics the network was trained
with (a CPU batch of 8 pictures is too small and too correlated to re-estimate them), `--ema` keeps
an exponential moving average of the weights, which is what gets saved, and `--freeze-through`
trains only the stages above the one named. The run directory gets checkpoint.pt, log.jsonl (loss, throughput, the
share of time the accelerator waited for data, validation figures) and the fp16 weights.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from iqa.network import DegradationNet, build_model
from iqa.preprocess import sample_patches
from training import photos as photo_pool
from training import synthetic
from training.bank import BankPictures
from training.degradations import FAMILIES, Recipe, random_recipe, type_weights
from training.evaluate import one_thread, spearman

# ------------------------------------------------------------------ settings
SYNTHETIC_SHARE = 0.15  # samples whose pristine picture is rendered (text, UI, chart, graphic), not a photo
CAPTION_SHARE = 0.05  # samples whose photo gets a caption drawn over it
BORDER_SHARE = 0.03  # samples framed by uniform borders before they are degraded (iqa.borders finds the content)
# The trunk's stages in order (DegradationNet.trunk: conv1, bn1, relu, maxpool, layer1..layer4), for --freeze-through.
FREEZABLE = ("none", "stem", "layer1", "layer2", "layer3")
_STAGE_END = {"none": 0, "stem": 4, "layer1": 5, "layer2": 6, "layer3": 7}  # trunk modules [0, end) are frozen
# --anchor's types: those the committed weights already read right on code training never touched (the KADID
# types, the blur kinds: `training.select` on the committed weights, docs/model.md). A sample whose recipe has
# only these (or none: pristine) is anchored to the starting weights' scores; codecs and camera noise, which a
# warm restart is run to change, learn from their targets alone.
ANCHOR_TYPES = frozenset({
    "gaussian_blur", "lens_blur", "motion_blur", "resolution_loss", "camera_shake",
    "white_noise", "colour_noise", "impulse_noise", "multiplicative_noise", "jpeg", "jpeg2000", "pixelate"})
parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
parser.add_argument("--pool", type=Path, default=photo_pool.CACHE / "pool", help="photo pool (training.photos)")
parser.add_argument("--run", type=Path, default=Path("training/runs/default"), help="run directory")
parser.add_argument("--resume", type=Path, help="continue the run in this directory")
parser.add_argument("--init", type=Path, help="start from these weights (an earlier run's fp16 weights) with a fresh "
                    "optimizer and LR schedule: a warm restart")
parser.add_argument("--steps", type=int, default=20000, help="optimizer steps (the run ends at steps or minutes)")
parser.add_argument("--minutes", type=float, default=0.0, help="wall-clock budget; the LR schedule follows it")
parser.add_argument("--cpu-minutes", type=float, default=0.0,
                    help="budget in CPU time of this process (fair between runs on a shared machine); the LR "
                    "schedule follows it")
parser.add_argument("--batch", type=int, default=128, help="degraded pictures per step (x views x 4 patches)")
parser.add_argument("--views", type=int, default=1, help="patch sets cut from each degraded picture")
parser.add_argument("--lr", type=float, default=2e-3)
parser.add_argument("--weight-decay", type=float, default=0.05)
parser.add_argument("--warmup", type=float, default=0.03, help="share of the run spent warming the LR up")
parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--validate-every", type=float, default=60.0, help="seconds between validations")
parser.add_argument("--validation-pictures", type=int, default=512)
parser.add_argument("--checkpoint-every", type=float, default=120.0, help="seconds between checkpoints")
parser.add_argument("--weights-out", type=Path, help="also write the fp16 weights here")
parser.add_argument("--synthetic", type=float, default=SYNTHETIC_SHARE,
                    help="share of samples whose pristine picture is rendered (text pages, UIs, charts, graphics); "
                    "0: photos only, as the committed weights were trained")
parser.add_argument("--loader-benchmark", type=int, metavar="N",
                    help="only time the data: N samples of this mix and of photos alone, on one core, then exit")
parser.add_argument("--bank", type=Path, help="train on this bank of degraded pictures (python -m training.bank)")
parser.add_argument("--bn", choices=("train", "frozen"), default="train",
                    help="batch norm: 'train' updates its statistics (from scratch, big batches), 'frozen' keeps them")
parser.add_argument("--ema", type=float, default=0.0, metavar="DECAY",
                    help="keep an exponential moving average of the weights with this decay per step and save it "
                    "(0: off)")
parser.add_argument("--freeze-through", choices=FREEZABLE, default="none",
                    help="keep the trunk's stages up to this one as they are (faster steps, less to forget)")
parser.add_argument("--border", type=float, default=BORDER_SHARE,
                    help="share of samples drawn inside uniform borders (letterbox, pillarbox, canvas)")
parser.add_argument("--type-weight", action="append", default=[], metavar="TYPE=W",
                    help="a distortion type's weight within its family, in place of training.degradations."
                    "TYPE_WEIGHTS (1 for most types), e.g. motion_blur=2 (repeatable; validation keeps the default mix); "
                    "with --bank, the bank's pictures are drawn again in these proportions (BankPictures)")
parser.add_argument("--anchor", type=float, default=0.0, metavar="W",
                    help="learning without forgetting: on samples whose every step is of an ANCHOR_TYPES type, add W "
                    "times the cross entropy against the --init weights' own scores (0: off)")
parser.add_argument("--teacher", type=Path, default=None, metavar="WEIGHTS",
                    help="with --anchor: keep these weights' scores instead of --init's, e.g. a repair run that starts "
                    "from a GPU run's weights (codecs learnt) and anchors the kinds it lost to the committed ones")


# ------------------------------------------------------------------ data
SCALES = (0.5, 0.65, 0.8)  # applied to pool photos (<= 768 px): washes out a carried pack's JPEG q95
VIRTUAL_SIDES = (256, 512)
JPEG2000_MAX_SIDE = 320  # OpenJPEG's encoder is slow: its pictures are kept small


def load_pictures(pool: Path, split: str) -> list[np.ndarray]:
    """Each photo of the split at each of SCALES that leaves both sides >= 256, as uint8 arrays."""
    out = []
    for photo in photo_pool.photos(pool, split):
        image = Image.open(photo.path).convert("RGB")
        for scale in SCALES:
            size = (round(image.width * scale), round(image.height * scale))
            if min(size) >= VIRTUAL_SIDES[0]:
                out.append(np.asarray(image.resize(size, Image.Resampling.LANCZOS)))
    if not out:
        raise ValueError(f"no {split} photos of at least {VIRTUAL_SIDES[0]} px in {pool}")
    return out


def framed(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`crop` inside uniform borders on opposite sides (or all four): a letterbox, a pillarbox, a canvas, in
    black, white, grey or any colour. The degradation then runs over the whole frame, as an encoder does."""
    h, w = crop.shape[:2]
    colour = [(0, 0, 0), (255, 255, 255), tuple(int(v) for v in rng.integers(0, 256, 3)),
              (int(rng.integers(0, 256)),) * 3][int(rng.integers(4))]
    sides = ("letterbox", "pillarbox", "canvas")[int(rng.integers(3))]
    pad_y = int(rng.integers(8, h // 2 + 1)) if sides != "pillarbox" else 0
    pad_x = int(rng.integers(8, w // 2 + 1)) if sides != "letterbox" else 0
    out = np.empty((h + 2 * pad_y, w + 2 * pad_x, 3), np.uint8)
    out[:] = colour
    out[pad_y : pad_y + h, pad_x : pad_x + w] = crop
    return out


def cut_views(degraded: np.ndarray, views: int, rng: np.random.Generator) -> np.ndarray:
    """Patch sets uint8 [views, K, 3, P, P] of one degraded picture: its own, then sub-windows (at least
    VIRTUAL_SIDES[0] a side where the picture allows), each turned by a random multiple of 90 degrees and
    maybe mirrored."""
    groups = [sample_patches(degraded)]
    h, w = degraded.shape[:2]
    for _ in range(views - 1):
        sh, sw = (int(rng.integers(min(VIRTUAL_SIDES[0], s), s + 1)) for s in (h, w))
        st, sl = int(rng.integers(h - sh + 1)), int(rng.integers(w - sw + 1))
        window = np.rot90(degraded[st : st + sh, sl : sl + sw], k=int(rng.integers(4)))
        groups.append(sample_patches(window[::-1] if rng.random() < 0.5 else window))
    return np.stack(groups)


class DegradedPictures(Dataset):
    """Sample i: patches uint8 [views, K, 3, P, P] and targets float32 [views, 3], from seed (seed, i).

    The pristine picture is a crop of a pool photo (drawn in proportion to photo_pool.content_weight, so
    dark, low-contrast and smooth photos are not rare), maybe with a caption drawn over it (CAPTION_SHARE),
    or, for a share `synthetic` of the samples, a non-photographic picture rendered by training.synthetic;
    a share `border` of them is framed by uniform borders (framed()) before it is degraded.
    """

    def __init__(self, pictures: list[np.ndarray], seed: int, views: int, length: int,
                 weights: dict[str, dict[str, float]] | None = None, synthetic: float = SYNTHETIC_SHARE,
                 border: float = 0.0) -> None:
        self.pictures, self.seed, self.views, self.length = pictures, seed, views, length
        self.weights = weights or type_weights()
        self.synthetic, self.border = synthetic, border
        self.cumulative = np.cumsum([photo_pool.content_weight(p) for p in pictures])

    def __len__(self) -> int:
        return self.length

    def degraded(self, index: int) -> tuple[np.ndarray, Recipe, np.random.Generator]:
        """Sample `index`'s degraded picture (uint8 [H, W, 3]), its recipe (recipe.targets(): float32 [3]) and its
        generator, which has drawn everything up to the degradation (the views draw from it next)."""
        rng = np.random.default_rng([self.seed, index])
        recipe = random_recipe(rng, self.weights)
        cap = JPEG2000_MAX_SIDE if any(step[0] == "jpeg2000" for step in recipe.steps) else VIRTUAL_SIDES[1]
        source = rng.random()
        if source < self.synthetic:
            h, w = (int(rng.integers(VIRTUAL_SIDES[0], cap + 1)) for _ in range(2))
            crop = synthetic.render(rng, w, h)
        else:
            picture = self.pictures[int(np.searchsorted(self.cumulative, rng.random() * self.cumulative[-1], "right"))]
            height, width = picture.shape[:2]
            h = int(rng.integers(VIRTUAL_SIDES[0], min(cap, height) + 1))
            w = int(rng.integers(VIRTUAL_SIDES[0], min(cap, width) + 1))
            top, left = int(rng.integers(height - h + 1)), int(rng.integers(width - w + 1))
            crop = picture[top : top + h, left : left + w]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            if source < self.synthetic + CAPTION_SHARE:
                crop = synthetic.caption(np.ascontiguousarray(crop), rng)
        if self.border and rng.random() < self.border:
            crop = framed(np.ascontiguousarray(crop), rng)
        return recipe.apply(np.ascontiguousarray(crop), rng), recipe, rng

    def __getitem__(self, index: int):
        """(patches uint8 [views, K, 3, P, P], targets float32 [views, 3], anchored bool [views]: the recipe's
        types are all ANCHOR_TYPES)."""
        degraded, recipe, rng = self.degraded(index)
        patches = cut_views(degraded, self.views, rng)
        return (torch.from_numpy(patches), torch.from_numpy(np.repeat(recipe.targets()[None], self.views, axis=0)),
                torch.full((self.views,), anchored(step[0] for step in recipe.steps)))


def anchored(types) -> bool:
    """Whether a recipe of these step types is anchored (--anchor): every one is in ANCHOR_TYPES."""
    return all(name in ANCHOR_TYPES for name in types)


def loader(dataset: Dataset, batch: int, workers: int, start: int = 0, drop_last: bool = True) -> DataLoader:
    return DataLoader(
        dataset, batch_size=batch, sampler=range(start, len(dataset)), num_workers=workers,
        pin_memory=torch.cuda.is_available(), worker_init_fn=one_thread, drop_last=drop_last,
        persistent_workers=False, prefetch_factor=4 if workers else None,
    )


# ------------------------------------------------------------------ model and loss
def pooled_logits(model: DegradationNet, patches: torch.Tensor) -> torch.Tensor:
    """uint8 [B, K, 3, P, P] -> [B, 3] logits pooled over each picture's patches, as the served model pools."""
    flat = patches.flatten(0, 1).contiguous(memory_format=torch.channels_last)
    return model.pool(model.patch_logits(flat).unflatten(0, patches.shape[:2]).float(), model.patch_evidence(patches))


def pooled_logits_and_teacher(model: DegradationNet, teacher: DegradationNet, patches: torch.Tensor,
                              frozen_end: int, shared_stages: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """pooled_logits of `model` and, without gradients, of `teacher` (each [B, 3]) for uint8 patches
    [B, K, 3, P, P]. The trunk's first `frozen_end` modules are frozen in `model` (freeze(), in eval mode); when
    the teacher is the starting weights (`shared_stages`) they are the teacher's own, so their features are
    computed once and go on through each network's rest. A teacher from other weights (--teacher) runs whole."""
    flat = patches.flatten(0, 1).contiguous(memory_format=torch.channels_last)
    evidence = model.patch_evidence(patches)

    def rest(network: DegradationNet, features: torch.Tensor) -> torch.Tensor:
        features = network.trunk[frozen_end:](features)
        logits = torch.cat([head(features).mean(dim=(2, 3)) for head in network.heads], dim=1)
        return network.pool(logits.unflatten(0, patches.shape[:2]).float(), evidence)

    with torch.no_grad():
        shared = model.trunk[:frozen_end](flat * model.scale - model.shift)
        teacher_logits = rest(teacher, shared) if shared_stages else pooled_logits(teacher, patches)
    return rest(model, shared), teacher_logits


def loss_fn(logits: torch.Tensor, targets: torch.Tensor, rows: torch.Tensor | None = None) -> torch.Tensor:
    """Binary cross entropy over the pictures that hold evidence; a flat one (logit -inf, a fixed score) teaches nothing.
    logits, targets (in [0, 1]): float [B, 3]; rows: bool [B], the pictures counted (None: all); 0-dim mean."""
    keep = torch.isfinite(logits)
    if rows is not None:
        keep = keep & rows[:, None]
    per_score = torch.nn.functional.binary_cross_entropy_with_logits(
        torch.where(keep, logits, torch.zeros_like(logits)), targets, reduction="none")
    return (per_score * keep).sum() / keep.sum().clamp_min(1)


def anchor_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Learning without forgetting (Li & Hoiem, ECCV 2016): cross entropy of the network's pooled logits [B, 3]
    against the teacher's scores sigmoid(teacher_logits) [B, 3] (the starting weights', or --teacher's), on the
    anchored pictures `rows` (bool [B]) that hold evidence; 0 when none is anchored."""
    soft = torch.sigmoid(torch.where(torch.isfinite(teacher_logits), teacher_logits, torch.zeros_like(teacher_logits)))
    return loss_fn(torch.where(torch.isfinite(teacher_logits), logits, torch.full_like(logits, -torch.inf)), soft, rows)


def set_training_mode(model: DegradationNet, bn: str = "train", freeze_through: str = "none") -> None:
    """model.train(), except batch norm when `bn` is "frozen" and the frozen stages, which stay in eval mode
    (their running statistics are what the network was trained with)."""
    model.train()
    for index, module in enumerate(model.trunk):
        if index < _STAGE_END[freeze_through]:
            module.eval()
    if bn == "frozen":
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()


def freeze(model: DegradationNet, freeze_through: str) -> None:
    """Stop the gradients of the trunk's stages up to `freeze_through` (FREEZABLE): no backward pass through them."""
    for index, module in enumerate(model.trunk):
        for parameter in module.parameters():
            parameter.requires_grad_(index >= _STAGE_END[freeze_through])


@torch.no_grad()
def validate(model: DegradationNet, batches: list, device: str, autocast) -> dict:
    """Loss, MAE and SRCC per family on the validation batches, in eval mode (the caller restores its own mode)."""
    model.eval()
    scores, targets, losses = [], [], []
    for patches, target, _ in batches:
        patches, target = patches.flatten(0, 1), target.flatten(0, 1)  # [B, views, ...] -> [B * views, ...]
        with autocast:
            logits = pooled_logits(model, patches.to(device, non_blocking=True))
        losses.append(loss_fn(logits, target.to(device)).item())
        scores.append(torch.sigmoid(logits).float().cpu().numpy())
        targets.append(target.numpy())
    scores, targets = np.concatenate(scores), np.concatenate(targets)
    out = {"val_loss": float(np.mean(losses))}
    for i, family in enumerate(FAMILIES):
        out[f"val_mae_{family}"] = float(np.abs(scores[:, i] - targets[:, i]).mean())
        out[f"val_srcc_{family}"] = spearman(scores[:, i], targets[:, i])
    return out


def save_weights_fp16(model: DegradationNet, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v) for k, v in model.state_dict().items()}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def parse_type_weights(items: list[str]) -> dict[str, dict[str, float]]:
    """["motion_blur=2", ...] -> the training mix; a malformed item stops the script with a usage error."""
    overrides = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            overrides[name] = float(value)
        except ValueError:
            parser.error(f"--type-weight {item!r}: expected TYPE=WEIGHT, e.g. motion_blur=2")
    try:
        return type_weights(overrides)
    except ValueError as error:
        parser.error(f"--type-weight: {error}")


def loader_benchmark(args: argparse.Namespace, weights: dict[str, dict[str, float]]) -> None:
    """Milliseconds per degraded picture on one core (what a DataLoader worker spends), for the mix asked
    for and for the same mix on photos alone, interleaved so that both see the same machine load."""
    one_thread()
    pictures = load_pictures(args.pool, "train")
    sets = {f"--synthetic {args.synthetic}": DegradedPictures(pictures, args.seed, args.views, args.loader_benchmark,
                                                               weights, args.synthetic),
            "--synthetic 0": DegradedPictures(pictures, args.seed, args.views, args.loader_benchmark, weights, 0.0)}
    spent = dict.fromkeys(sets, 0.0)
    for index in range(args.loader_benchmark):
        for name, dataset in sets.items():
            start = time.perf_counter()
            dataset[index]
            spent[name] += time.perf_counter() - start
    for name, seconds in spent.items():
        print(f"{name}: {1000 * seconds / args.loader_benchmark:.1f} ms per degraded picture ({args.views} views), "
              f"{args.loader_benchmark} samples")


def main(argv: list[str] | None = None) -> int:
    args = parser.parse_args(argv)
    if args.teacher and not args.anchor:
        parser.error("--teacher needs --anchor: the teacher's scores are what anchored samples keep")
    if args.loader_benchmark:
        loader_benchmark(args, parse_type_weights(args.type_weight))
        return 0
    run = args.resume or args.run
    run.mkdir(parents=True, exist_ok=True)
    checkpoint_path = run / "checkpoint.pt"
    checkpoint = torch.load(checkpoint_path, map_location="cpu", weights_only=False) if args.resume else None
    if checkpoint:  # the run's own settings win, except where it runs now
        saved = checkpoint["args"]
        for key in ("pool", "run", "resume", "device", "workers", "weights_out"):
            saved[key] = getattr(args, key)
        args = argparse.Namespace(**{**vars(parser.parse_args([])), **saved})  # a setting newer than the run: its default

    weights = parse_type_weights(args.type_weight)

    torch.manual_seed(args.seed)
    device = args.device
    cuda = device.startswith("cuda")
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)

    model = DegradationNet()
    if args.init and not checkpoint:
        model.load_state_dict(build_model(str(args.init)).state_dict())
        print(f"starting from {args.init}", flush=True)
    model = model.to(device).to(memory_format=torch.channels_last)
    freeze(model, args.freeze_through)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and p.requires_grad]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 and p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr, betas=(0.9, 0.99), fused=cuda,
    )
    # The weights validated and saved: an exponential moving average of the trained ones (--ema), or those.
    ema = torch.optim.swa_utils.AveragedModel(
        model, multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(args.ema), use_buffers=True) if args.ema else None
    kept = ema.module if ema is not None else model
    step, elapsed_before, cpu_before = 0, 0.0, 0.0
    if checkpoint:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        if ema is not None:
            ema.load_state_dict(checkpoint["ema"])
        step, elapsed_before, cpu_before = checkpoint["step"], checkpoint["elapsed"], checkpoint.get("cpu_s", 0.0)

    # --anchor: the starting weights, fixed, whose scores the anchored samples keep (anchor_loss).
    teacher = None
    if args.anchor:
        if not args.init:
            parser.error("--anchor needs --init: the weights whose scores anchored samples keep")
        teacher = build_model(str(args.teacher or args.init)).float().to(device).to(memory_format=torch.channels_last).eval()
        teacher.requires_grad_(False)

    t0 = time.perf_counter()
    length = args.steps * args.batch
    if args.bank:
        train_set = BankPictures(args.bank, args.seed, args.views, length,
                                 weights if args.type_weight else None)
        print(f"bank {args.bank}: {len(train_set.files)} degraded pictures", flush=True)
    else:
        train_set = DegradedPictures(load_pictures(args.pool, "train"), args.seed, args.views, length, weights,
                                     args.synthetic, args.border)
    val_set = DegradedPictures(load_pictures(args.pool, "validation"), args.seed + 1, 1, args.validation_pictures)
    val_batches = list(loader(val_set, min(args.batch, 64), args.workers, drop_last=False))  # every picture, however few
    print(f"{len(val_set.pictures)} validation pictures, validation set built in {time.perf_counter() - t0:.1f} s; "
          f"device {device}", flush=True)

    log = (run / "log.jsonl").open("a")

    def record(entry: dict) -> None:
        log.write(json.dumps(entry) + "\n")
        log.flush()

    def save_checkpoint() -> None:
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                 "elapsed": elapsed(), "cpu_s": cpu_seconds(),
                 "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
        if ema is not None:
            state["ema"] = ema.state_dict()
        torch.save(state, checkpoint_path.with_suffix(".tmp"))
        checkpoint_path.with_suffix(".tmp").replace(checkpoint_path)

    start, cpu_start = time.perf_counter(), time.process_time()

    def elapsed() -> float:
        return elapsed_before + time.perf_counter() - start

    def cpu_seconds() -> float:
        """CPU time of this process (the network's work; a bank's loader adds little), over the whole run."""
        return cpu_before + time.process_time() - cpu_start

    def progress() -> float:
        by_time = elapsed() / (args.minutes * 60) if args.minutes else 0.0
        by_cpu = cpu_seconds() / (args.cpu_minutes * 60) if args.cpu_minutes else 0.0
        return max(step / args.steps, by_time, by_cpu)

    def learning_rate(p: float) -> float:
        warm = min(1.0, p / args.warmup) if args.warmup else 1.0
        return args.lr * warm * 0.5 * (1 + math.cos(math.pi * min(p, 1.0)))

    set_training_mode(model, args.bn, args.freeze_through)
    last_validation = last_checkpoint = last_print = time.perf_counter()
    window = {"loss": 0.0, "n": 0, "wait": 0.0, "pictures": 0, "t": time.perf_counter()}
    wait_start = time.perf_counter()
    for patches, targets, anchor_rows in loader(train_set, args.batch, args.workers, start=step * args.batch):
        window["wait"] += time.perf_counter() - wait_start
        p = progress()
        if p >= 1.0:
            break
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(p)
        patches = patches.to(device, non_blocking=True).flatten(0, 1)  # [B * views, K, 3, P, P]
        targets = targets.to(device, non_blocking=True).flatten(0, 1)
        with autocast:
            if teacher is None:
                loss = loss_fn(pooled_logits(model, patches), targets)
            else:
                logits, teacher_logits = pooled_logits_and_teacher(model, teacher, patches,
                                                                   _STAGE_END[args.freeze_through],
                                                                   shared_stages=args.teacher is None)
                anchor_rows = anchor_rows.to(device).flatten(0, 1)
                loss = loss_fn(logits, targets) + args.anchor * anchor_loss(logits, teacher_logits, anchor_rows)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if ema is not None:
            ema.update_parameters(model)
        step += 1
        window["loss"] += loss.detach()
        window["n"] += 1
        window["pictures"] += patches.shape[0]

        now = time.perf_counter()
        if now - last_print >= 10 or step == 1:
            if cuda:
                torch.cuda.synchronize()
            span = time.perf_counter() - window["t"]
            entry = {"step": step, "elapsed_s": round(elapsed(), 1), "cpu_s": round(cpu_seconds(), 1), "progress": round(p, 4),
                     "lr": learning_rate(p), "loss": float(window["loss"]) / window["n"],
                     "patch_sets_per_s": window["pictures"] / span, "data_wait_share": window["wait"] / span}
            record(entry)
            print(f"\rstep {step} {100 * p:5.1f}% loss {entry['loss']:.4f} {entry['patch_sets_per_s']:.0f} pictures/s "
                  f"data wait {100 * entry['data_wait_share']:.0f}%", end="\n" if not sys.stdout.isatty() else "", flush=True)
            window = {"loss": 0.0, "n": 0, "wait": 0.0, "pictures": 0, "t": time.perf_counter()}
            last_print = now
        if now - last_validation >= args.validate_every:
            entry = {"step": step, "elapsed_s": round(elapsed(), 1), **validate(kept, val_batches, device, autocast)}
            set_training_mode(model, args.bn, args.freeze_through)
            record(entry)
            print(f"\nvalidation {json.dumps(entry)}", flush=True)
            last_validation = time.perf_counter()
        if now - last_checkpoint >= args.checkpoint_every:
            save_checkpoint()
            save_weights_fp16(kept, run / "weights.fp16.pt")  # a candidate for training.select at any time
            last_checkpoint = time.perf_counter()
        wait_start = time.perf_counter()

    entry = {"step": step, "elapsed_s": round(elapsed(), 1), "cpu_s": round(cpu_seconds(), 1), "final": True,
             **validate(kept, val_batches, device, autocast)}
    record(entry)
    print(f"\nfinal {json.dumps(entry)}", flush=True)
    save_checkpoint()
    save_weights_fp16(kept, run / "weights.fp16.pt")
    if args.weights_out:
        save_weights_fp16(kept, args.weights_out)
    print(f"weights: {run / 'weights.fp16.pt'}" + (f" and {args.weights_out}" if args.weights_out else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
