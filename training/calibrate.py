"""Put every codec, resolution loss and the camera's noise on the KADID strength scale: equal damage.

    python -m training.calibrate                      # every type, 8 training photos at 512x384
    python -m training.calibrate --types avif h264 --photos 4

The rule (issue 21): a setting of another encoder is at KADID level L when its mean squared error against
the pristine picture, averaged over training photos, equals that of KADID's own type of the family at level
L (compression: JPEG at qualities 43, 36, 24, 7, 4, libjpeg 4:2:0; blur: Gaussian blur at sigma 0.1, 0.5,
1, 2, 5). Each encoder's setting is swept once per photo; the mean error curve is inverted at each level's
target by linear interpolation. Where the encoder's strongest setting does less damage than a level asks
(AVIF and VP9 at level 5), the remaining levels are spread evenly over its last steps, and the table says
so. The camera's noise gain is the ratio of KADID white noise's error at level 5 to the camera's at gain 1.

It prints the anchors to paste into training/degradations.py (strength 0's anchor is kept) and the damage
table docs/model.md shows. Training photos only: the evaluation's photos never take part.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from training import photos as photo_pool
from training import pipelines
from training.degradations import BY_NAME, LEVEL_STRENGTHS
from training.evaluate import kadid_picture

# type -> (KADID type of its family, settings swept from the mildest to the strongest)
SWEEPS: dict[str, tuple[str, tuple[float, ...]]] = {
    "avif": ("jpeg", (90, 80, 70, 60, 50, 45, 40, 35, 30, 25, 20, 15, 10, 5, 0)),
    "heic": ("jpeg", (90, 80, 70, 60, 50, 45, 40, 35, 30, 25, 20, 15, 10, 5, 0)),
    "h264": ("jpeg", (18, 22, 26, 28, 30, 32, 34, 36, 38, 40, 42, 44, 46, 48, 51)),
    "hevc": ("jpeg", (18, 22, 26, 28, 30, 32, 34, 36, 38, 40, 42, 44, 46, 48, 51)),
    "vp9": ("jpeg", (20, 30, 40, 45, 48, 51, 54, 56, 58, 60, 61, 62, 63)),
    "av1": ("jpeg", (20, 30, 36, 40, 44, 48, 51, 54, 56, 58, 60, 62, 63)),
    "resolution_loss": ("gaussian_blur", (0.98, 0.95, 0.9, 0.85, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.25, 0.2, 0.15, 0.1, 0.07)),
}


def mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(((a.astype(np.float64) - b) ** 2).mean())


def reference_errors(kind_name: str, pictures: list[np.ndarray]) -> np.ndarray:
    """Mean squared error of KADID's own reading of a type at levels 1-5, averaged over the pictures."""
    kind = BY_NAME[kind_name]
    return np.array([np.mean([mse(kind(p, s, np.random.default_rng(i)), p) for i, p in enumerate(pictures)])
                     for s in LEVEL_STRENGTHS])


def sweep(kind_name: str, settings: tuple[float, ...], pictures: list[np.ndarray]) -> np.ndarray:
    """Mean squared error of a type's first variant at each setting, averaged over the pictures."""
    apply = BY_NAME[kind_name].variants[0].apply
    return np.array([np.mean([mse(apply(p, s, np.random.default_rng(i)), p) for i, p in enumerate(pictures)])
                     for s in settings])


def invert(settings: tuple[float, ...], errors: np.ndarray, targets: np.ndarray) -> tuple[list[float], list[bool]]:
    """The setting whose error meets each target (interpolated along the sweep), and whether it was reached."""
    errors = np.maximum.accumulate(errors)  # a sweep that dips (encoder noise) is read as flat there
    anchors, reached = [], []
    for target in targets:
        if target <= errors[-1]:
            anchors.append(float(np.interp(target, errors, settings)))
            reached.append(True)
        else:
            anchors.append(float("nan"))
            reached.append(False)
    if not all(reached):
        first = reached.index(False)
        start = anchors[first - 1] if first else settings[0]
        # the levels out of reach share the encoder's last steps evenly, the last level at its strongest
        for k, level in enumerate(range(first, len(targets)), start=1):
            anchors[level] = start + (settings[-1] - start) * k / (len(targets) - first)
    return anchors, reached


def calibrate_camera_gain(pictures: list[np.ndarray]) -> float:
    """The camera's noise gain at which its raw noise's error at level 5 equals KADID white noise's."""
    target = reference_errors("white_noise", pictures)[-1]
    var = BY_NAME["camera_noise"].parameter(1.0)
    saved = pipelines.CAMERA_NOISE_GAIN
    try:
        pipelines.CAMERA_NOISE_GAIN = 1.0
        measured = np.mean([mse(pipelines.camera_noise(p, var, np.random.default_rng(i)), p)
                            for i, p in enumerate(pictures)])
    finally:
        pipelines.CAMERA_NOISE_GAIN = saved
    return float(target / measured)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=Path, default=photo_pool.CACHE / "pool")
    parser.add_argument("--photos", type=int, default=8, help="training photos to average over")
    parser.add_argument("--types", nargs="+", default=[*SWEEPS, "camera"], choices=[*SWEEPS, "camera"])
    args = parser.parse_args(argv)
    pool = photo_pool.photos(args.pool, "train")
    if not pool:
        parser.error(f"no training photos in {args.pool}: run `make photos`")
    step = max(1, len(pool) // args.photos)
    pictures = [kadid_picture(photo.path) for photo in pool[::step][: args.photos]]
    print(f"{len(pictures)} training photos at 512x384")
    references = {}
    for name in args.types:
        if name == "camera":
            print(f"CAMERA_NOISE_GAIN = {calibrate_camera_gain(pictures):.3f}")
            continue
        family_type, settings = SWEEPS[name]
        if family_type not in references:
            references[family_type] = reference_errors(family_type, pictures)
        targets = references[family_type]
        errors = sweep(name, settings, pictures)
        anchors, reached = invert(settings, errors, targets)
        strength0 = BY_NAME[name].anchors[0]
        rounded = [round(a, 3) for a in anchors]
        print(f"{name.upper()}_ANCHORS = {(strength0, *rounded)}")
        print(f"  {family_type} error at levels 1-5: {np.round(targets, 1).tolist()}")
        print(f"  {name} sweep {list(settings)}: {np.round(errors, 1).tolist()}")
        if not all(reached):
            print(f"  out of reach: levels {[i + 1 for i, r in enumerate(reached) if not r]} (spread over the last steps)")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
