"""Simulated degradations: the KADID-10k families the service scores, with a continuous strength.

Every distortion type takes a strength t in [0, 1]. The five KADID levels sit at
t = 0.2, 0.4, 0.6, 0.8, 1.0 (level / 5), t = 0 leaves the image untouched, and between
anchors the parameter is interpolated, so a type's effect grows monotonically with t.
The training target of a family is the strength of its distortion in the chain
(0 when the family is absent): pristine = 0, KADID level 5 = 1.

Parameters follow KADID-10k's generator as ported publicly (../shared/FINDINGS.md).
Where the port is ambiguous the choice made here is said next to the anchors.
Everything works on RGB uint8 [H, W, 3] arrays and returns the same; randomness
comes from the numpy Generator passed in, so a sample is a pure function of its seed.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageFilter

from iqa.contract import SCORE_NAMES

# The score families, lower-case, in the served order (noise, blur, compression).
FAMILIES = tuple(name.lower() for name in SCORE_NAMES)
LEVEL_STRENGTHS = (0.2, 0.4, 0.6, 0.8, 1.0)  # KADID levels 1..5
_ANCHOR_STRENGTHS = (0.0,) + LEVEL_STRENGTHS

Distort = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class DistortionType:
    kadid_id: int
    name: str
    family: str  # one of FAMILIES
    anchors: tuple[float, ...]  # parameter at t = 0, then at KADID levels 1..5
    apply: Distort  # (rgb, parameter, rng) -> rgb

    def parameter(self, strength: float) -> float:
        return float(np.interp(strength, _ANCHOR_STRENGTHS, self.anchors))

    def __call__(self, rgb: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        if strength == 0.0:
            return rgb
        return self.apply(rgb, self.parameter(strength), rng)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- blur

def _gaussian_blur(rgb: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    # Pillow's GaussianBlur takes the standard deviation as its "radius".
    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(radius=sigma)))


def convolve(rgb: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Per-channel 2-D convolution through the FFT, with mirrored borders (as imfilter 'symmetric')."""
    kh, kw = kernel.shape
    py, px = kh // 2, kw // 2
    x = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1), dtype=np.float32))
    x = torch.nn.functional.pad(x[None], (px, px, py, py), mode="reflect")[0]
    h, w = x.shape[1:]
    k = torch.zeros(h, w)
    k[:kh, :kw] = torch.from_numpy(kernel.astype(np.float32))
    k = torch.roll(k, shifts=(-py, -px), dims=(0, 1))  # kernel centre at the origin
    y = torch.fft.irfft2(torch.fft.rfft2(x) * torch.fft.rfft2(k), s=(h, w))
    return _to_uint8(y[:, py : h - py, px : w - px].numpy().transpose(1, 2, 0))


def _supersampled(size: int, inside: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """A kernel whose cells hold the fraction of an 8x8 sub-grid inside a shape (anti-aliased)."""
    sub = (np.arange(size * 8) + 0.5) / 8 - size / 2
    yy, xx = np.meshgrid(sub, sub, indexing="ij")
    mask = inside(yy, xx).astype(np.float64)
    kernel = mask.reshape(size, 8, size, 8).sum(axis=(1, 3))
    return kernel / kernel.sum()


def disk_kernel(radius: float) -> np.ndarray:
    size = 2 * int(np.ceil(radius)) + 1
    return _supersampled(size, lambda y, x: y**2 + x**2 <= max(radius, 0.5) ** 2)


def motion_kernel(length: float, angle: float) -> np.ndarray:
    """A line of `length` pixels through the centre at `angle` radians, one pixel thick."""
    size = 2 * int(np.ceil(length / 2)) + 1
    c, s = np.cos(angle), np.sin(angle)

    def inside(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        along, across = x * c + y * s, -x * s + y * c
        return (np.abs(along) <= max(length, 1.0) / 2) & (np.abs(across) <= 0.5)

    return _supersampled(size, inside)


def _lens_blur(rgb: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    return convolve(rgb, disk_kernel(radius))


def _motion_blur(rgb: np.ndarray, length: float, rng: np.random.Generator) -> np.ndarray:
    return convolve(rgb, motion_kernel(length, rng.uniform(0, np.pi)))


# ---------------------------------------------------------------- noise (variances on the [0, 1] scale)

def _white_noise(rgb: np.ndarray, var: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(np.sqrt(var) * 255)
    return _to_uint8(rgb + noise)


# Full-range BT.601, as JPEG uses.
_RGB_TO_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], np.float32)
_YCC_TO_RGB = np.linalg.inv(_RGB_TO_YCC).astype(np.float32)


def _colour_noise(rgb: np.ndarray, var: float, rng: np.random.Generator) -> np.ndarray:
    # KADID 12 adds white noise in YCbCr; the port does not say per component, so each of Y, Cb, Cr
    # gets the same variance here.
    ycc = rgb.astype(np.float32) @ _RGB_TO_YCC.T
    ycc += rng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(np.sqrt(var) * 255)
    return _to_uint8(ycc @ _YCC_TO_RGB.T)


def _impulse_noise(rgb: np.ndarray, density: float, rng: np.random.Generator) -> np.ndarray:
    # As MATLAB's imnoise 'salt & pepper' on an RGB array: each value independently.
    u = rng.random(rgb.shape, dtype=np.float32)
    out = rgb.copy()
    out[u < density / 2] = 0
    out[(u >= density / 2) & (u < density)] = 255
    return out


def _multiplicative_noise(rgb: np.ndarray, var: float, rng: np.random.Generator) -> np.ndarray:
    # As imnoise 'speckle': I + n*I with n uniform, zero mean, variance var.
    half_width = np.float32(np.sqrt(3 * var))
    n = rng.uniform(-1, 1, size=rgb.shape).astype(np.float32) * half_width
    return _to_uint8(rgb * (1 + n))


# ---------------------------------------------------------------- compression

def _encode_decode(rgb: np.ndarray, **save_args) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, **save_args)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def _jpeg2000(rgb: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    # OpenJPEG through Pillow, 9/7 irreversible wavelet, one quality layer at the compression ratio.
    return _encode_decode(rgb, format="JPEG2000", quality_mode="rates", quality_layers=[ratio], irreversible=True)


def _jpeg(rgb: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    return _encode_decode(rgb, format="JPEG", quality=int(round(quality)))  # libjpeg, 4:2:0


def pixelate_indices(extent: int, zoom: float) -> np.ndarray:
    """Source index of each output pixel after a nearest-neighbour resize to `zoom` and back."""
    small = max(1, int(zoom * extent))
    down = np.minimum(((np.arange(small) + 0.5) * extent / small).astype(int), extent - 1)
    up = np.minimum(((np.arange(extent) + 0.5) * small / extent).astype(int), small - 1)
    return down[up]


def _pixelate(rgb: np.ndarray, zoom: float, rng: np.random.Generator) -> np.ndarray:
    h, w = rgb.shape[:2]
    return rgb[pixelate_indices(h, zoom)[:, None], pixelate_indices(w, zoom)[None, :]]


# The KADID port's pixelate level p resizes to z = 0.95 - p ** 0.6 of the size; anchors are z.
_PIXELATE_LEVELS = (0.01, 0.05, 0.1, 0.2, 0.5)

TYPES: tuple[DistortionType, ...] = (
    DistortionType(1, "gaussian_blur", "blur", (0.0, 0.1, 0.5, 1.0, 2.0, 5.0), _gaussian_blur),
    DistortionType(2, "lens_blur", "blur", (0.0, 1.0, 2.0, 4.0, 6.0, 8.0), _lens_blur),
    DistortionType(3, "motion_blur", "blur", (0.0, 1.0, 2.0, 4.0, 6.0, 10.0), _motion_blur),
    # Compression ratio; between pristine and level 1 it falls from a visually lossless 4:1.
    DistortionType(9, "jpeg2000", "compression", (4.0, 16.0, 32.0, 45.0, 120.0, 400.0), _jpeg2000),
    DistortionType(10, "jpeg", "compression", (100.0, 43.0, 36.0, 24.0, 7.0, 4.0), _jpeg),
    DistortionType(11, "white_noise", "noise", (0.0, 0.001, 0.002, 0.003, 0.005, 0.01), _white_noise),
    DistortionType(12, "colour_noise", "noise", (0.0, 0.0001, 0.0005, 0.001, 0.002, 0.003), _colour_noise),
    DistortionType(13, "impulse_noise", "noise", (0.0, 0.001, 0.005, 0.01, 0.02, 0.03), _impulse_noise),
    DistortionType(14, "multiplicative_noise", "noise", (0.0, 0.001, 0.005, 0.01, 0.02, 0.05), _multiplicative_noise),
    DistortionType(21, "pixelate", "compression", (1.0,) + tuple(0.95 - p**0.6 for p in _PIXELATE_LEVELS), _pixelate),
)
BY_NAME = {t.name: t for t in TYPES}
# A camera and an upload pipeline degrade in this order.
CHAIN_ORDER = ("blur", "noise", "compression")
assert sorted(CHAIN_ORDER) == sorted(FAMILIES)


@dataclass(frozen=True)
class Recipe:
    """What to do to one pristine image: (type, strength) steps in chain order."""

    steps: tuple[tuple[str, float], ...]

    def targets(self) -> np.ndarray:
        """One target per score in FAMILIES order: the strength of that family's step, else 0."""
        out = np.zeros(len(FAMILIES), dtype=np.float32)
        for name, strength in self.steps:
            out[FAMILIES.index(BY_NAME[name].family)] = strength
        return out

    def apply(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        for name, strength in self.steps:
            rgb = BY_NAME[name](rgb, strength, rng)
        return rgb


# Training mix. JPEG2000 is drawn less often than the other compressions because OpenJPEG's encoder
# costs ~0.4 µs a pixel, 40x JPEG: it would starve the GPU at an equal share.
PRISTINE_SHARE = 0.12
FAMILY_COUNT_WEIGHTS = {1: 0.55, 2: 0.3, 3: 0.15}
TYPE_WEIGHTS = {
    "blur": {"gaussian_blur": 1.0, "lens_blur": 1.0, "motion_blur": 1.0},
    "noise": {"white_noise": 1.0, "colour_noise": 1.0, "impulse_noise": 1.0, "multiplicative_noise": 1.0},
    "compression": {"jpeg": 1.0, "jpeg2000": 0.6, "pixelate": 0.8},
}


def type_weights(overrides: dict[str, float] | None = None) -> dict[str, dict[str, float]]:
    """TYPE_WEIGHTS with some types' weights replaced, e.g. {"motion_blur": 2.0}."""
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(BY_NAME)
    if unknown:
        raise ValueError(f"unknown distortion type(s) {sorted(unknown)}: choose from {sorted(BY_NAME)}")
    if any(w < 0 for w in overrides.values()):
        raise ValueError(f"type weights must be >= 0, got {overrides}")
    weights = {family: {name: overrides.get(name, w) for name, w in kinds.items()} for family, kinds in TYPE_WEIGHTS.items()}
    for family, kinds in weights.items():
        if sum(kinds.values()) <= 0:
            raise ValueError(f"every {family} type has weight 0: the family could not be drawn")
    return weights


def random_recipe(rng: np.random.Generator, mix: dict[str, dict[str, float]] = TYPE_WEIGHTS) -> Recipe:
    """A training recipe: pristine, one family, or a chain of two or three (blur -> noise -> compression)."""
    if rng.random() < PRISTINE_SHARE:
        return Recipe(())
    counts, weights = zip(*FAMILY_COUNT_WEIGHTS.items())
    count = rng.choice(counts, p=np.array(weights) / sum(weights))
    families = set(rng.choice(CHAIN_ORDER, size=count, replace=False))
    steps = []
    for family in CHAIN_ORDER:
        if family in families:
            names, w = zip(*mix[family].items())
            name = str(rng.choice(names, p=np.array(w) / sum(w)))
            steps.append((name, float(rng.uniform(0.0, 1.0))))
    return Recipe(tuple(steps))
