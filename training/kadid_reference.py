"""A second, independent implementation of the ten KADID-10k types the service scores: for evaluation only.

Training never imports this module (tests/test_kadid_reference.py checks it); only training.evaluate
does. It is written from the KADID-10k paper's description of each distortion (Lin, Hosu and Saupe,
"KADID-10k: A Large-scale Artificially Distorted IQA Database", QoMEX 2019, table of distortion types)
with other building blocks than training.degradations wherever a choice exists, so that a model
which only learnt the training simulator's quirks shows it here:

| id | type | here | training.degradations (its KADID reading) |
|----|------|------|------|
| 01 | Gaussian blur, sigma 0.1/0.5/1/2/5 | scipy.ndimage.gaussian_filter, kernel cut at 2 sigma, replicated border (as MATLAB's imgaussfilt) | Pillow's box-filter approximation |
| 02 | lens blur, radius 1/2/4/6/8 | hard-edged binary disk (skimage.morphology.disk), scipy.ndimage.convolve | anti-aliased disk through the FFT |
| 03 | motion blur, length 1/2/4/6/10 | a horizontal line with fractional end weights, rotated by OpenCV's bilinear warpAffine to an angle uniform in [0, 360), cv2.filter2D | a supersampled line at an angle in [0, 180) |
| 09 | JPEG 2000, ratio 16/32/45/120/400 | OpenJPEG through Pillow with other coding settings: 32x32 code blocks, 5 resolutions, RPCL order | 64x64 code blocks, 6 resolutions, LRCP |
| 10 | JPEG, quality 43/36/24/7/4 | OpenCV's encoder and decoder (its own libjpeg-turbo build) | Pillow's |
| 11 | white noise, variance 0.001 ... 0.01 | skimage.util.random_noise('gaussian') | numpy normal |
| 12 | white noise in colour components, variance 0.0001 ... 0.003 | the noise in studio-range BT.601 YCbCr (skimage.color, Y in 16..235) | full-range YCbCr |
| 13 | impulse noise, density 0.001 ... 0.03 | skimage.util.random_noise('s&p') | numpy uniform draws |
| 14 | multiplicative noise, variance 0.001 ... 0.05 | skimage.util.random_noise('speckle'): Gaussian | uniform |
| 21 | pixelate, level 0.01 ... 0.5 | area-average down to z = 0.95 - level ** 0.6 of the size (OpenCV INTER_AREA), nearest back up (pixel grid from the corner) | nearest both ways, centred grid |

The level parameters are those of KADID's generator as ported publicly (../shared/FINDINGS.md), the same
that training's anchors use at t = level / 5: both implementations claim to be KADID.
Every function takes and returns RGB uint8 [H, W, 3]; level 0 returns the picture unchanged.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import color, morphology, util

LEVELS = (1, 2, 3, 4, 5)


@dataclass(frozen=True)
class ReferenceType:
    kadid_id: int
    name: str  # the same names as training.degradations.TYPES, so tables line up
    family: str  # "noise", "blur" or "compression"
    levels: tuple[float, ...]  # the parameter at KADID levels 1..5
    apply: Callable[[np.ndarray, float, np.random.Generator], np.ndarray]
    colourless: bool  # a grey picture stays grey

    def __call__(self, rgb: np.ndarray, level: int, rng: np.random.Generator) -> np.ndarray:
        """rgb uint8 [H, W, 3], level 0..5 (0: untouched) -> uint8 [H, W, 3]. ValueError on another level."""
        if level not in (0,) + LEVELS:
            raise ValueError(f"level must be one of 0..5, got {level}")
        if level == 0:
            return rgb
        return self.apply(rgb, self.levels[level - 1], rng)


def _uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _per_channel(rgb: np.ndarray, filter_fn) -> np.ndarray:
    planes = [filter_fn(rgb[..., c].astype(np.float64)) for c in range(3)]
    return _uint8(np.stack(planes, axis=-1))


# ---------------------------------------------------------------- blur
def _gaussian_blur(rgb, sigma, rng):
    return _per_channel(rgb, lambda p: ndimage.gaussian_filter(p, sigma, mode="nearest", truncate=2.0))


def _lens_blur(rgb, radius, rng):
    disk = morphology.disk(int(round(radius))).astype(np.float64)
    disk /= disk.sum()
    return _per_channel(rgb, lambda p: ndimage.convolve(p, disk, mode="nearest"))


def motion_line(length: float, degrees: float) -> np.ndarray:
    """A line kernel of `length` pixels at `degrees`: drawn horizontally, then rotated bilinearly."""
    size = 2 * int(np.ceil(length / 2)) + 3
    kernel = np.zeros((size, size), np.float32)
    centre = size // 2
    half = max(length, 1.0) / 2
    xs = np.arange(size) - centre
    # Each column's share of the segment [-half, half]: the end pixels get what is left of them.
    kernel[centre] = np.clip(np.minimum(xs + 0.5, half) - np.maximum(xs - 0.5, -half), 0, 1)
    rotation = cv2.getRotationMatrix2D((float(centre), float(centre)), degrees, 1.0)
    kernel = cv2.warpAffine(kernel, rotation, (size, size), flags=cv2.INTER_LINEAR)
    return kernel / kernel.sum()


def _motion_blur(rgb, length, rng):
    kernel = motion_line(length, float(rng.uniform(0.0, 360.0)))
    return cv2.filter2D(rgb, -1, kernel, borderType=cv2.BORDER_REFLECT)


# ---------------------------------------------------------------- noise (variances on the [0, 1] scale)
def _seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**31))


def _white_noise(rgb, var, rng):
    return _uint8(util.random_noise(rgb, mode="gaussian", var=var, rng=_seed(rng)) * 255)


def _colour_noise(rgb, var, rng):
    ycbcr = color.rgb2ycbcr(rgb)  # studio range: Y 16..235, Cb/Cr 16..240
    ycbcr += np.random.default_rng(_seed(rng)).normal(0.0, np.sqrt(var) * 255, ycbcr.shape)
    return _uint8(color.ycbcr2rgb(ycbcr) * 255)


def _impulse_noise(rgb, density, rng):
    return _uint8(util.random_noise(rgb, mode="s&p", amount=density, rng=_seed(rng)) * 255)


def _multiplicative_noise(rgb, var, rng):
    return _uint8(util.random_noise(rgb, mode="speckle", var=var, rng=_seed(rng)) * 255)


# ---------------------------------------------------------------- compression
def _jpeg2000(rgb, ratio, rng):
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="JPEG2000", quality_mode="rates", quality_layers=[ratio],
                              irreversible=True, codeblock_size=(32, 32), num_resolutions=5, progression="RPCL")
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def _jpeg(rgb, quality, rng):
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("OpenCV could not encode the picture as JPEG")
    return cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _pixelate(rgb, level, rng):
    height, width = rgb.shape[:2]
    zoom = 0.95 - level**0.6
    small = cv2.resize(rgb, (max(1, round(width * zoom)), max(1, round(height * zoom))), interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_NEAREST)


TYPES: tuple[ReferenceType, ...] = (
    ReferenceType(1, "gaussian_blur", "blur", (0.1, 0.5, 1.0, 2.0, 5.0), _gaussian_blur, True),
    ReferenceType(2, "lens_blur", "blur", (1.0, 2.0, 4.0, 6.0, 8.0), _lens_blur, True),
    ReferenceType(3, "motion_blur", "blur", (1.0, 2.0, 4.0, 6.0, 10.0), _motion_blur, True),
    ReferenceType(9, "jpeg2000", "compression", (16.0, 32.0, 45.0, 120.0, 400.0), _jpeg2000, True),
    ReferenceType(10, "jpeg", "compression", (43.0, 36.0, 24.0, 7.0, 4.0), _jpeg, True),
    ReferenceType(11, "white_noise", "noise", (0.001, 0.002, 0.003, 0.005, 0.01), _white_noise, False),
    ReferenceType(12, "colour_noise", "noise", (0.0001, 0.0005, 0.001, 0.002, 0.003), _colour_noise, False),
    ReferenceType(13, "impulse_noise", "noise", (0.001, 0.005, 0.01, 0.02, 0.03), _impulse_noise, False),
    ReferenceType(14, "multiplicative_noise", "noise", (0.001, 0.005, 0.01, 0.02, 0.05), _multiplicative_noise, False),
    ReferenceType(21, "pixelate", "compression", (0.01, 0.05, 0.1, 0.2, 0.5), _pixelate, True),
)
BY_NAME = {t.name: t for t in TYPES}
