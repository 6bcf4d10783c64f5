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

Each type comes in several implementations ("variants"): real pictures are degraded by
cameras, editors and upload pipelines that follow no single one, and a model trained on one
learns its quirks (issue 12: a KADID implementation written elsewhere scored SRCC 0.88 on
motion blur and pixelation). The first variant of each type is this module's KADID reading,
the one evaluation's "own" set uses; training draws among all of them. Every variant takes
the same KADID parameter and is calibrated to it, so level 5 means about the same damage in
each (tests/test_degradation_variants.py compares their mean squared change at level 5).
WebP is a further compression type (not in KADID); training.kadid_reference is a separate,
held-out implementation that nothing here imports.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image, ImageFilter

from iqa.contract import SCORE_NAMES
from training import pipelines

# The score families, lower-case, in the served order (noise, blur, compression).
FAMILIES = tuple(name.lower() for name in SCORE_NAMES)
LEVEL_STRENGTHS = (0.2, 0.4, 0.6, 0.8, 1.0)  # KADID levels 1..5
_ANCHOR_STRENGTHS = (0.0,) + LEVEL_STRENGTHS

Distort = Callable[[np.ndarray, float, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Variant:
    """One implementation of a distortion type."""

    name: str
    apply: Distort  # (rgb, parameter, rng) -> rgb
    colourless: bool  # a grey picture stays grey


@dataclass(frozen=True)
class DistortionType:
    kadid_id: int | None  # None: not a KADID type (WebP)
    name: str
    family: str  # one of FAMILIES
    anchors: tuple[float, ...]  # parameter at t = 0, then at KADID levels 1..5
    variants: tuple[Variant, ...]  # the first: the KADID reading, used by evaluation
    # KADID levels at which the parameter does the damage of the family's KADID type (training.calibrate);
    # above it the encoder's last steps stand in for levels its strongest setting does not reach.
    calibrated_levels: int = 5

    def parameter(self, strength: float) -> float:
        return float(np.interp(strength, _ANCHOR_STRENGTHS, self.anchors))

    def variant(self, name: str | None) -> Variant:
        if name is None:
            return self.variants[0]
        for variant in self.variants:
            if variant.name == name:
                return variant
        raise ValueError(f"{self.name} has no variant {name!r}: choose from {[v.name for v in self.variants]}")

    def __call__(self, rgb: np.ndarray, strength: float, rng: np.random.Generator,
                 variant: str | None = None) -> np.ndarray:
        """rgb uint8 [H, W, 3], strength in [0, 1] -> uint8 [H, W, 3]; variant None: the KADID reading.

        Raises ValueError for a strength outside [0, 1] or an unknown variant.
        """
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        chosen = self.variant(variant)
        if strength == 0.0:
            return rgb
        return chosen.apply(rgb, self.parameter(strength), rng)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------- blur

def _gaussian_blur(rgb: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    # Pillow's GaussianBlur takes the standard deviation as its "radius" (and approximates it by boxes).
    return np.asarray(Image.fromarray(rgb).filter(ImageFilter.GaussianBlur(radius=sigma)))


def gaussian_kernel(sigma: float) -> np.ndarray:
    """The sampled 2-D Gaussian, cut at 3 sigma, summing to 1."""
    radius = max(1, int(np.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g = np.exp(-0.5 * (x / max(sigma, 1e-3)) ** 2)
    kernel = np.outer(g, g)
    return kernel / kernel.sum()


def _sampled_gaussian_blur(rgb: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return convolve(rgb, gaussian_kernel(sigma))


def _linear_light_gaussian_blur(rgb: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    # As optics blur: in linear light (sRGB decoded by its 2.2 power law), then encoded again.
    linear = (rgb.astype(np.float32) / 255) ** 2.2
    blurred = convolve_float(linear, gaussian_kernel(sigma))
    return _to_uint8(np.clip(blurred, 0, 1) ** (1 / 2.2) * 255)


def convolve_float(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Per-channel 2-D convolution through the FFT, with mirrored borders (as imfilter 'symmetric'): float [H, W, C]."""
    if image.shape[2] > 1 and (image == image[..., :1]).all():
        # A grey picture: one channel's result for all (batched FFTs may round channels differently: colour).
        return np.repeat(convolve_float(image[..., :1], kernel), image.shape[2], axis=2)
    kh, kw = kernel.shape
    py, px = kh // 2, kw // 2
    x = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))
    x = torch.nn.functional.pad(x[None], (px, px, py, py), mode="reflect")[0]
    h, w = x.shape[1:]
    k = torch.zeros(h, w)
    k[:kh, :kw] = torch.from_numpy(kernel.astype(np.float32))
    k = torch.roll(k, shifts=(-py, -px), dims=(0, 1))  # kernel centre at the origin
    y = torch.fft.irfft2(torch.fft.rfft2(x) * torch.fft.rfft2(k), s=(h, w))
    return y[:, py : h - py, px : w - px].numpy().transpose(1, 2, 0)


def convolve(rgb: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Per-channel 2-D convolution of uint8 RGB with mirrored borders -> uint8 RGB."""
    return _to_uint8(convolve_float(rgb, kernel))


def _supersampled(size: int, inside: Callable[[np.ndarray, np.ndarray], np.ndarray], sub: int = 8) -> np.ndarray:
    """A kernel whose cells hold the fraction of a sub x sub grid inside a shape (anti-aliased when sub > 1)."""
    offsets = (np.arange(size * sub) + 0.5) / sub - size / 2
    yy, xx = np.meshgrid(offsets, offsets, indexing="ij")
    mask = inside(yy, xx).astype(np.float64)
    kernel = mask.reshape(size, sub, size, sub).sum(axis=(1, 3))
    if kernel.sum() == 0:  # a shape thinner than the grid: a single tap
        kernel[size // 2, size // 2] = 1.0
    return kernel / kernel.sum()


def disk_kernel(radius: float, sub: int = 8) -> np.ndarray:
    size = 2 * int(np.ceil(radius)) + 1
    return _supersampled(size, lambda y, x: y**2 + x**2 <= max(radius, 0.5) ** 2, sub)


def motion_kernel(length: float, angle: float, sub: int = 8) -> np.ndarray:
    """A line of `length` pixels through the centre at `angle` radians, one pixel thick."""
    size = 2 * int(np.ceil(length / 2)) + 1
    c, s = np.cos(angle), np.sin(angle)

    def inside(y: np.ndarray, x: np.ndarray) -> np.ndarray:
        along, across = x * c + y * s, -x * s + y * c
        return (np.abs(along) <= max(length, 1.0) / 2) & (np.abs(across) <= 0.5)

    return _supersampled(size, inside, sub)


def shake_kernel(length: float, rng: np.random.Generator) -> np.ndarray:
    """A camera-shake trajectory: a smooth random curve of `length` pixels, drawn with bilinear splats."""
    steps = max(8, int(np.ceil(length * 4)))
    turn = np.cumsum(rng.normal(0.0, 0.35, steps))  # the heading drifts: a curve, not a line
    heading = rng.uniform(0, 2 * np.pi) + turn - turn.mean()
    path = np.cumsum(np.stack([np.sin(heading), np.cos(heading)], axis=1), axis=0) * (max(length, 1.0) / steps)
    return path_kernel(path)


def path_kernel(path: np.ndarray) -> np.ndarray:
    """A blur kernel from a path of (y, x) points in pixels (float [N, 2]): the path centred in the smallest odd
    square holding it, each point drawn as a bilinear splat, normalised to sum 1 (float64 [S, S])."""
    path = path - (path.max(axis=0) + path.min(axis=0)) / 2  # centred
    size = 2 * int(np.ceil(np.abs(path).max() + 1)) + 1
    kernel = np.zeros((size, size))
    y, x = (path + size // 2).T
    y0, x0 = np.floor(y).astype(int), np.floor(x).astype(int)
    fy, fx = y - y0, x - x0
    for dy, dx, w in ((0, 0, (1 - fy) * (1 - fx)), (0, 1, (1 - fy) * fx), (1, 0, fy * (1 - fx)), (1, 1, fy * fx)):
        np.add.at(kernel, (np.clip(y0 + dy, 0, size - 1), np.clip(x0 + dx, 0, size - 1)), w)
    return kernel / kernel.sum()


def _lens_blur(rgb: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    return convolve(rgb, disk_kernel(radius))


def _hard_lens_blur(rgb: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    return convolve(rgb, disk_kernel(radius, sub=1))  # cells whose centre is inside: hard edges


def _soft_lens_blur(rgb: np.ndarray, radius: float, rng: np.random.Generator) -> np.ndarray:
    # A disk whose rim fades (a real lens' aperture is not a perfect stop): the disk through a small Gaussian.
    disk = disk_kernel(radius * 0.9)
    pad = max(1, int(np.ceil(radius * 0.3)))
    disk = np.pad(disk, pad)
    soft = torch.nn.functional.conv2d(torch.from_numpy(disk)[None, None],
                                      torch.from_numpy(gaussian_kernel(max(radius * 0.15, 0.3)))[None, None],
                                      padding="same")[0, 0].numpy()
    return convolve(rgb, soft / soft.sum())


def _motion_blur(rgb: np.ndarray, length: float, rng: np.random.Generator) -> np.ndarray:
    return convolve(rgb, motion_kernel(length, rng.uniform(0, np.pi)))


def aliased_line_kernel(length: float, angle: float) -> np.ndarray:
    """A line of round(`length`) pixels at `angle` radians, drawn without anti-aliasing: one cell per pixel step."""
    count = max(1, int(round(length)))
    size = 2 * int(np.ceil(length / 2)) + 3
    # Bresenham's way: one step along the major axis per cell, so the line has `count` cells at any angle.
    t = (np.arange(count) - (count - 1) / 2) / max(abs(np.cos(angle)), abs(np.sin(angle)))
    rows = np.floor(t * np.sin(angle) + 0.5).astype(int) + size // 2
    cols = np.floor(t * np.cos(angle) + 0.5).astype(int) + size // 2
    kernel = np.zeros((size, size))
    kernel[rows, cols] = 1.0
    return kernel / kernel.sum()


def _aliased_motion_blur(rgb: np.ndarray, length: float, rng: np.random.Generator) -> np.ndarray:
    return convolve(rgb, aliased_line_kernel(length, rng.uniform(0, 2 * np.pi)))


def _shake_blur(rgb: np.ndarray, length: float, rng: np.random.Generator) -> np.ndarray:
    return convolve(rgb, shake_kernel(length, rng))


def trajectory_kernel(length: float, rng: np.random.Generator, steps: int = 96) -> np.ndarray:
    """A hand's shake during the exposure: a trajectory with inertia and sudden jerks, scaled to `length` pixels.

    After Boracchi and Foi's model (IEEE TIP 2012, "Modeling the performance of image restoration from motion
    blur"): the velocity takes a random step each instant, is pulled back towards the start (the hand holds
    the camera), and now and then turns sharply (a jerk); the kernel is the time the sensor spends at each
    position, drawn with bilinear splats. `length` is the diagonal of the path's bounding box, so that a
    straight path is a line of that length (motion_kernel's).
    """
    anxiety, jerk_rate = rng.uniform(0.05, 0.5), rng.uniform(0.0, 0.1)
    velocity = np.exp(1j * rng.uniform(0, 2 * np.pi))
    position = np.zeros(steps, np.complex128)
    for t in range(1, steps):
        if rng.random() < jerk_rate:
            velocity = velocity * np.exp(1j * rng.uniform(np.pi / 2, 3 * np.pi / 2))
        velocity = velocity + anxiety * (rng.standard_normal() + 1j * rng.standard_normal()) - 0.02 * position[t - 1]
        velocity = velocity / max(abs(velocity), 1e-9)
        position[t] = position[t - 1] + velocity
    path = np.stack([position.imag, position.real], axis=1)
    extent = np.hypot(*(path.max(axis=0) - path.min(axis=0)))  # the bounding box's diagonal, as a line's length
    return path_kernel(path * (max(length, 1.0) / max(extent, 1e-9)))


def _trajectory_blur(rgb: np.ndarray, length: float, rng: np.random.Generator) -> np.ndarray:
    return convolve(rgb, trajectory_kernel(length, rng))


_RESAMPLERS = {"box": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR,
               "bicubic": Image.Resampling.BICUBIC, "lanczos": Image.Resampling.LANCZOS}


def _resolution_loss(rgb: np.ndarray, zoom: float, rng: np.random.Generator) -> np.ndarray:
    """Down to `zoom` of the size with an anti-aliasing filter and back up, as a small camera, a thumbnail shown
    large, or a video stream at a lower resolution than the screen."""
    h, w = rgb.shape[:2]
    down = _RESAMPLERS[("box", "bilinear", "bicubic", "lanczos")[int(rng.integers(4))]]
    up = _RESAMPLERS[("bilinear", "bicubic", "lanczos")[int(rng.integers(3))]]
    small = Image.fromarray(rgb).resize((max(1, round(w * zoom)), max(1, round(h * zoom))), down)
    return np.asarray(small.resize((w, h), up))


def _aliased_resolution_loss(rgb: np.ndarray, zoom: float, rng: np.random.Generator) -> np.ndarray:
    """The same through OpenCV's bilinear resize both ways, which does not filter when it shrinks (aliasing)."""
    import cv2

    h, w = rgb.shape[:2]
    small = cv2.resize(rgb, (max(1, round(w * zoom)), max(1, round(h * zoom))), interpolation=cv2.INTER_LINEAR)
    return cv2.resize(small, (w, h), interpolation=(cv2.INTER_LINEAR, cv2.INTER_CUBIC)[int(rng.integers(2))])


# ---------------------------------------------------------------- noise (variances on the [0, 1] scale)

def _white_noise(rgb: np.ndarray, var: float, rng: np.random.Generator) -> np.ndarray:
    noise = rng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(np.sqrt(var) * 255)
    return _to_uint8(rgb + noise)


def _mono_white_noise(rgb: np.ndarray, var: float, rng: np.random.Generator) -> np.ndarray:
    # Luminance grain: one draw per pixel for all three channels (as a monochrome sensor's).
    noise = rng.standard_normal(rgb.shape[:2], dtype=np.float32)[..., None] * np.float32(np.sqrt(var) * 255)
    return _to_uint8(rgb + noise)


def _poisson_gaussian_noise(rgb: np.ndarray, var: float, rng: np.random.Generator) -> np.ndarray:
    # A camera's noise: shot noise (variance proportional to the signal) plus read noise, in proportions
    # (1.6 x + 0.2) that average to `var` over values uniform in [0, 1].
    x = rgb.astype(np.float32) / 255
    sigma = np.sqrt(var * (1.6 * x + 0.2)) * 255
    return _to_uint8(rgb + rng.standard_normal(rgb.shape, dtype=np.float32) * sigma)


# Full-range BT.601, as JPEG uses, and full-range BT.709.
_RGB_TO_YCC = np.array([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], np.float32)
_YCC_TO_RGB = np.linalg.inv(_RGB_TO_YCC).astype(np.float32)
_RGB_TO_YCC709 = np.array([[0.2126, 0.7152, 0.0722], [-0.114572, -0.385428, 0.5], [0.5, -0.454153, -0.045847]], np.float32)
_YCC709_TO_RGB = np.linalg.inv(_RGB_TO_YCC709).astype(np.float32)


def _noise_in(rgb: np.ndarray, forward: np.ndarray, inverse: np.ndarray, sigmas: np.ndarray,
              rng: np.random.Generator) -> np.ndarray:
    ycc = rgb.astype(np.float32) @ forward.T
    ycc += rng.standard_normal(rgb.shape, dtype=np.float32) * sigmas.astype(np.float32)
    return _to_uint8(ycc @ inverse.T)


def _colour_noise(rgb: np.ndarray, var: float, rng: np.random.Generator) -> np.ndarray:
    # KADID 12 adds white noise in YCbCr; the port does not say per component, so each of Y, Cb, Cr
    # gets the same variance here.
    return _noise_in(rgb, _RGB_TO_YCC, _YCC_TO_RGB, np.full(3, np.sqrt(var) * 255), rng)


def _chroma_heavy_colour_noise(rgb: np.ndarray, var: float, rng: np.random.Generator) -> np.ndarray:
    # BT.709 YCbCr, chroma noisier than luma (as a phone's denoiser leaves it).
    return _noise_in(rgb, _RGB_TO_YCC709, _YCC709_TO_RGB, np.sqrt(var * np.array([0.5, 1.4, 1.4])) * 255, rng)


def _chroma_only_colour_noise(rgb: np.ndarray, var: float, rng: np.random.Generator) -> np.ndarray:
    return _noise_in(rgb, _RGB_TO_YCC, _YCC_TO_RGB, np.sqrt(var * np.array([0.0, 1.6, 1.6])) * 255, rng)


def _impulse_noise(rgb: np.ndarray, density: float, rng: np.random.Generator) -> np.ndarray:
    # As MATLAB's imnoise 'salt & pepper' on an RGB array: each value independently.
    u = rng.random(rgb.shape, dtype=np.float32)
    out = rgb.copy()
    out[u < density / 2] = 0
    out[(u >= density / 2) & (u < density)] = 255
    return out


def _pixel_impulse_noise(rgb: np.ndarray, density: float, rng: np.random.Generator) -> np.ndarray:
    # Dead and hot pixels: the whole pixel black or white.
    u = rng.random(rgb.shape[:2], dtype=np.float32)
    out = rgb.copy()
    out[u < density / 2] = 0
    out[(u >= density / 2) & (u < density)] = 255
    return out


def _random_valued_impulse_noise(rgb: np.ndarray, density: float, rng: np.random.Generator) -> np.ndarray:
    # Impulses of any value (a bit error, not a stuck pixel): a uniform value moves a pixel less than
    # black or white on average, so twice the density for about the same damage.
    hit = rng.random(rgb.shape, dtype=np.float32) < min(1.0, 2 * density)
    out = rgb.copy()
    out[hit] = rng.integers(0, 256, int(hit.sum()), dtype=np.uint8)
    return out


def _multiplicative_noise(rgb: np.ndarray, var: float, rng: np.random.Generator) -> np.ndarray:
    # As imnoise 'speckle': I + n*I with n uniform, zero mean, variance var.
    half_width = np.float32(np.sqrt(3 * var))
    n = rng.uniform(-1, 1, size=rgb.shape).astype(np.float32) * half_width
    return _to_uint8(rgb * (1 + n))


def _gaussian_multiplicative_noise(rgb: np.ndarray, var: float, rng: np.random.Generator) -> np.ndarray:
    return _to_uint8(rgb * (1 + rng.standard_normal(rgb.shape, dtype=np.float32) * np.float32(np.sqrt(var))))


def _mono_multiplicative_noise(rgb: np.ndarray, var: float, rng: np.random.Generator) -> np.ndarray:
    gain = 1 + rng.standard_normal(rgb.shape[:2], dtype=np.float32)[..., None] * np.float32(np.sqrt(var))
    return _to_uint8(rgb * gain)


# ---------------------------------------------------------------- compression

def _encode_decode(rgb: np.ndarray, **save_args) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, **save_args)
    return np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))


def _jpeg2000(rgb: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    # OpenJPEG through Pillow, 9/7 irreversible wavelet, one quality layer at the compression ratio.
    return _encode_decode(rgb, format="JPEG2000", quality_mode="rates", quality_layers=[ratio], irreversible=True)


def _reversible_jpeg2000(rgb: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    # The 5/3 integer wavelet, cut at the same rate.
    return _encode_decode(rgb, format="JPEG2000", quality_mode="rates", quality_layers=[ratio], irreversible=False)


def _small_block_jpeg2000(rgb: np.ndarray, ratio: float, rng: np.random.Generator) -> np.ndarray:
    return _encode_decode(rgb, format="JPEG2000", quality_mode="rates", quality_layers=[ratio], irreversible=True,
                          codeblock_size=(16, 16))


def _jpeg(rgb: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    return _encode_decode(rgb, format="JPEG", quality=int(round(quality)))  # libjpeg, 4:2:0


def _jpeg_444(rgb: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    return _encode_decode(rgb, format="JPEG", quality=int(round(quality)), subsampling=0)


def _jpeg_422(rgb: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    return _encode_decode(rgb, format="JPEG", quality=int(round(quality)), subsampling=1)


# The example tables of the JPEG standard (ITU-T T.81, Annex K), row by row.
_LUMA_TABLE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
    14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], np.float64)
_CHROMA_TABLE = np.array([17, 18, 24, 47] + [99] * 4 + [18, 21, 26, 66] + [99] * 4 + [24, 26, 56] + [99] * 5
                         + [47, 66] + [99] * 6 + [99] * 32, np.float64)


def quantisation_tables(quality: float, flatness: float) -> list[list[int]]:
    """The Annex K tables scaled as libjpeg scales them for `quality`, then pulled towards their geometric
    mean by `flatness` (0: libjpeg's own tables; 1: one step for every frequency), as other encoders'
    tables differ from libjpeg's in shape as well as in scale."""
    q = min(max(quality, 1.0), 100.0)
    scale = 5000 / q if q < 50 else 200 - 2 * q
    tables = []
    for base in (_LUMA_TABLE, _CHROMA_TABLE):
        table = np.clip(np.floor((base * scale + 50) / 100), 1, 255)
        table = np.exp((1 - flatness) * np.log(table) + flatness * np.log(table).mean())
        tables.append([int(v) for v in np.clip(np.rint(table), 1, 255)])
    return tables


def _jpeg_other_tables(rgb: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    return _encode_decode(rgb, format="JPEG", qtables=quantisation_tables(quality, rng.uniform(0.2, 0.6)),
                          subsampling=int(rng.integers(3)))


def _double_jpeg(rgb: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    # A picture saved by a camera or editor (quality 70-96, never below the final one), then recompressed by
    # an upload pipeline. The first quality's lower bound is capped at 96 so that the draw is never empty:
    # near strength 0 the final quality rounds to 97-100 (rng.integers(97, 96) raised ValueError).
    first_quality = int(rng.integers(min(max(round(quality), 70), 96), 97))
    first = _encode_decode(rgb, format="JPEG", quality=first_quality, subsampling=int(rng.integers(3)))
    return _encode_decode(first, format="JPEG", quality=int(round(quality)))


def _webp(rgb: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    return _encode_decode(rgb, format="WEBP", quality=float(quality), method=int(rng.integers(2, 5)))


def pixelate_indices(extent: int, zoom: float, offset: float = 0.5) -> np.ndarray:
    """Source index of each output pixel after a nearest-neighbour resize to `zoom` and back.

    offset 0.5 samples each block at its centre; another offset shifts the block grid's phase.
    """
    small = max(1, int(zoom * extent))
    down = np.minimum(((np.arange(small) + offset) * extent / small).astype(int), extent - 1)
    up = np.minimum(((np.arange(extent) + offset) * small / extent).astype(int), small - 1)
    return down[up]


def _pixelate(rgb: np.ndarray, zoom: float, rng: np.random.Generator) -> np.ndarray:
    h, w = rgb.shape[:2]
    return rgb[pixelate_indices(h, zoom)[:, None], pixelate_indices(w, zoom)[None, :]]


def _offset_pixelate(rgb: np.ndarray, zoom: float, rng: np.random.Generator) -> np.ndarray:
    h, w = rgb.shape[:2]
    oy, ox = rng.uniform(0, 1, 2)
    return rgb[pixelate_indices(h, zoom, oy)[:, None], pixelate_indices(w, zoom, ox)[None, :]]


def _resampled_pixelate(rgb: np.ndarray, zoom: float, rng: np.random.Generator) -> np.ndarray:
    # Down with an averaging filter (box, bilinear or Lanczos, as editors do), back up with nearest neighbours.
    h, w = rgb.shape[:2]
    small = (max(1, round(w * zoom)), max(1, round(h * zoom)))
    down_filter = (Image.Resampling.BOX, Image.Resampling.BILINEAR, Image.Resampling.LANCZOS)[int(rng.integers(3))]
    image = Image.fromarray(rgb).resize(small, down_filter)
    return np.asarray(image.resize((w, h), Image.Resampling.NEAREST))


# The KADID port's pixelate level p resizes to z = 0.95 - p ** 0.6 of the size; anchors are z.
_PIXELATE_LEVELS = (0.01, 0.05, 0.1, 0.2, 0.5)

TYPES: tuple[DistortionType, ...] = (
    DistortionType(1, "gaussian_blur", "blur", (0.0, 0.1, 0.5, 1.0, 2.0, 5.0), (
        Variant("pillow", _gaussian_blur, True), Variant("sampled_kernel", _sampled_gaussian_blur, True),
        Variant("linear_light", _linear_light_gaussian_blur, True))),
    DistortionType(2, "lens_blur", "blur", (0.0, 1.0, 2.0, 4.0, 6.0, 8.0), (
        Variant("antialiased_disk", _lens_blur, True), Variant("hard_disk", _hard_lens_blur, True),
        Variant("soft_disk", _soft_lens_blur, True))),
    DistortionType(3, "motion_blur", "blur", (0.0, 1.0, 2.0, 4.0, 6.0, 10.0), (
        Variant("antialiased_line", _motion_blur, True), Variant("aliased_line", _aliased_motion_blur, True),
        Variant("shake", _shake_blur, True))),
    # Compression ratio; between pristine and level 1 it falls from a visually lossless 4:1.
    DistortionType(9, "jpeg2000", "compression", (4.0, 16.0, 32.0, 45.0, 120.0, 400.0), (
        Variant("irreversible", _jpeg2000, True), Variant("reversible", _reversible_jpeg2000, True),
        Variant("small_blocks", _small_block_jpeg2000, True))),
    DistortionType(10, "jpeg", "compression", (100.0, 43.0, 36.0, 24.0, 7.0, 4.0), (
        Variant("libjpeg_420", _jpeg, True), Variant("libjpeg_444", _jpeg_444, True),
        Variant("libjpeg_422", _jpeg_422, True), Variant("other_tables", _jpeg_other_tables, True),
        Variant("double", _double_jpeg, True), Variant("then_downscaled", pipelines.then_downscaled(_jpeg), True))),
    DistortionType(11, "white_noise", "noise", (0.0, 0.001, 0.002, 0.003, 0.005, 0.01), (
        Variant("rgb", _white_noise, False), Variant("mono", _mono_white_noise, True),
        Variant("poisson_gaussian", _poisson_gaussian_noise, False))),
    DistortionType(12, "colour_noise", "noise", (0.0, 0.0001, 0.0005, 0.001, 0.002, 0.003), (
        Variant("ycbcr601", _colour_noise, False), Variant("ycbcr709_chroma_heavy", _chroma_heavy_colour_noise, False),
        Variant("chroma_only", _chroma_only_colour_noise, False))),
    DistortionType(13, "impulse_noise", "noise", (0.0, 0.001, 0.005, 0.01, 0.02, 0.03), (
        Variant("per_value", _impulse_noise, False), Variant("per_pixel", _pixel_impulse_noise, True),
        Variant("random_valued", _random_valued_impulse_noise, False))),
    DistortionType(14, "multiplicative_noise", "noise", (0.0, 0.001, 0.005, 0.01, 0.02, 0.05), (
        Variant("uniform", _multiplicative_noise, False), Variant("gaussian", _gaussian_multiplicative_noise, False),
        Variant("mono", _mono_multiplicative_noise, True))),
    DistortionType(21, "pixelate", "compression", (1.0,) + tuple(0.95 - p**0.6 for p in _PIXELATE_LEVELS), (
        Variant("nearest_centred", _pixelate, True), Variant("nearest_offset", _offset_pixelate, True),
        Variant("resampled", _resampled_pixelate, True))),
)
# Calibrated anchors (parameter at strength 0, then KADID levels 1-5): `python -m training.calibrate` (8 training
# photos, 2-vCPU VM, 2026-12-03); mean squared error of JPEG at levels 1-5 there: 44, 50, 67, 193, 355.
AVIF_ANCHORS = (95.0, 44.6, 42.4, 35.3, 5.5, 0.0)  # level 5 out of reach (quality 0: 206 vs JPEG's 355)
HEIC_ANCHORS = (95.0, 31.9, 30.1, 24.5, 7.0, 0.0)  # level 5 out of reach (quality 0: 274)
H264_ANCHORS = (10.0, 26.6, 27.6, 30.2, 40.0, 51.0)  # CRF; level 5 out of reach (CRF 51: 333)
HEVC_ANCHORS = (10.0, 30.7, 31.7, 34.3, 43.8, 51.0)  # CRF; level 5 out of reach (CRF 51: 324)
VP9_ANCHORS = (10.0, 52.9, 54.6, 58.4, 60.7, 63.0)  # CRF; levels 4-5 out of reach (CRF 63: 106)
AV1_ANCHORS = (10.0, 54.6, 56.2, 59.0, 61.0, 63.0)  # CRF; levels 4-5 out of reach (CRF 63: 144)
# Zoom; the mildest resolution loss (0.98) already does the damage of Gaussian blur at level 2 (sigma 0.5).
RESOLUTION_LOSS_ANCHORS = (1.0, 0.98, 0.974, 0.507, 0.241, 0.095)


# Not KADID types: the codecs pictures travel through today and resolution loss. Each codec's setting at KADID's
# levels 1-5 does the mean squared damage JPEG does at that level over training photos (512x384), found by
# `python -m training.calibrate` (its table is in docs/model.md); where the encoder's strongest setting
# does less (WebP and AVIF at level 5), the last levels are its last steps. The anchor at strength 0 is a
# visually lossless setting, interpolated towards level 1.
def _codec(name: str, anchors: tuple[float, ...], calibrated_levels: int, *variants: Variant) -> DistortionType:
    return DistortionType(None, name, "compression", anchors, variants, calibrated_levels)


def _video(name: str, anchors: tuple[float, ...], calibrated_levels: int) -> DistortionType:
    # A video's frames are mostly predicted ones; the key frame is the other kind. Both at the same CRF.
    return _codec(name, anchors, calibrated_levels, Variant("intra", pipelines.video_codec(name, 0), True),
                  Variant("inter", pipelines.video_codec(name, 2), True))


EXTRA_TYPES: tuple[DistortionType, ...] = (
    # Quality at KADID's levels 1-3 matches JPEG's mean squared damage there (3 photos, 512x384: 35 ~ q43,
    # 30 ~ q36, 18 ~ q24); WebP's worst quality, 0, does about half the damage of JPEG q4, so levels 4-5 are
    # libwebp's last steps. libwebp's limited-range YUV leaves grey off by a level here and there (colourless False).
    _codec("webp", (100.0, 35.0, 30.0, 18.0, 2.0, 0.0), 3, Variant("libwebp", _webp, False),
           Variant("then_downscaled", pipelines.then_downscaled(_webp), False)),
    _codec("avif", AVIF_ANCHORS, 4, Variant("libavif", pipelines.avif, True),
           Variant("then_downscaled", pipelines.then_downscaled(pipelines.avif), True)),
    _codec("heic", HEIC_ANCHORS, 4, Variant("x265", pipelines.heic, True)),
    _video("h264", H264_ANCHORS, 4),
    _video("hevc", HEVC_ANCHORS, 4),
    _video("vp9", VP9_ANCHORS, 3),
    _video("av1", AV1_ANCHORS, 3),
    # Down-scale factor; at each KADID level the mean squared change of Gaussian blur at that level's sigma.
    DistortionType(None, "resolution_loss", "blur", RESOLUTION_LOSS_ANCHORS, (
        Variant("filtered", _resolution_loss, True), Variant("opencv_bilinear", _aliased_resolution_loss, True))),
    # A hand's shake: the length of KADID's motion blur, as the diagonal of a random trajectory.
    DistortionType(None, "camera_shake", "blur", (0.0, 1.0, 2.0, 4.0, 6.0, 10.0), (
        Variant("trajectory", _trajectory_blur, True),)),
    # A camera's sensor noise at KADID's white-noise variances (pipelines.CAMERA_NOISE_GAIN calibrates it).
    DistortionType(None, "camera_noise", "noise", (0.0, 0.001, 0.002, 0.003, 0.005, 0.01), (
        Variant("raw", pipelines.camera_noise, False), Variant("phone", pipelines.phone_camera_noise, False))),
)
BY_NAME = {t.name: t for t in TYPES + EXTRA_TYPES}
# A camera and an upload pipeline degrade in this order.
CHAIN_ORDER = ("blur", "noise", "compression")
assert sorted(CHAIN_ORDER) == sorted(FAMILIES)


def grey(rgb: np.ndarray) -> np.ndarray:
    """A black-and-white copy (ITU-R 601-2 luma, as Pillow's "L"), still RGB uint8 [H, W, 3]."""
    return np.asarray(Image.fromarray(rgb).convert("L").convert("RGB"))


def desaturate(rgb: np.ndarray, saturation: float) -> np.ndarray:
    """Colour pulled towards grey: saturation 1 leaves the picture, 0 makes it grey."""
    return _to_uint8(grey(rgb) + saturation * (rgb.astype(np.float32) - grey(rgb)))


TONES = ("colour", "grey_before", "grey_after", "desaturated")


@dataclass(frozen=True)
class Recipe:
    """What to do to one pristine image: steps in chain order, each (type, strength) or (type, strength, variant),
    and its tone: kept in colour, made grey before the chain (a black-and-white picture, then degraded),
    grey after it (a black-and-white camera or conversion at the end), or desaturated to `saturation` first."""

    steps: tuple[tuple, ...]
    tone: str = "colour"
    saturation: float = 1.0

    def targets(self) -> np.ndarray:
        """One target per score in FAMILIES order: the strength of that family's step, else 0."""
        out = np.zeros(len(FAMILIES), dtype=np.float32)
        for name, strength, *_ in self.steps:
            out[FAMILIES.index(BY_NAME[name].family)] = strength
        return out

    def apply(self, rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.tone == "grey_before":
            rgb = grey(rgb)
        elif self.tone == "desaturated":
            rgb = desaturate(rgb, self.saturation)
        for name, strength, *variant in self.steps:
            rgb = BY_NAME[name](rgb, strength, rng, *variant)
        return grey(rgb) if self.tone == "grey_after" else rgb


# Training mix. JPEG2000 is drawn less often than the other compressions because OpenJPEG's encoder
# costs ~0.4 µs a pixel, 40x JPEG: it would starve the GPU at an equal share.
PRISTINE_SHARE = 0.12
FAMILY_COUNT_WEIGHTS = {1: 0.55, 2: 0.3, 3: 0.15}
TYPE_WEIGHTS = {
    "blur": {"gaussian_blur": 1.0, "lens_blur": 1.0, "motion_blur": 1.0, "resolution_loss": 0.8, "camera_shake": 0.6},
    "noise": {"white_noise": 1.0, "colour_noise": 1.0, "impulse_noise": 1.0, "multiplicative_noise": 1.0,
              "camera_noise": 1.0},
    # The codecs that carry most pictures today (HEIC from phones, WebP and AVIF on the web, video frames)
    # weigh as much together as the KADID types of the family.
    "compression": {"jpeg": 1.0, "jpeg2000": 0.4, "pixelate": 0.6, "webp": 0.6, "avif": 0.8, "heic": 0.8,
                    "h264": 1.0, "hevc": 0.8, "vp9": 0.4, "av1": 0.6},
}
# The KADID reading keeps this share of its type's draws (so the figures measured on it hold); the other
# variants share the rest equally.
KADID_VARIANT_SHARE = 0.4
# Tones (Recipe): black-and-white and washed-out pictures are common (scans, documents, B&W photography).
TONE_WEIGHTS = {"colour": 0.77, "grey_before": 0.1, "grey_after": 0.05, "desaturated": 0.08}


# What a type's encoders need beyond numpy, torch and Pillow's core: a machine without them (the GPU machine
# carries only torch and Pillow) trains on the other types instead of dying at the first draw of one.
REQUIRES = {"avif": ("PIL:avif",), "heic": ("pillow_heif",), "h264": ("av",), "hevc": ("av",), "vp9": ("av",),
            "av1": ("av",), "camera_noise": ("cv2",), "resolution_loss": ("cv2",)}


def missing_libraries(name: str) -> list[str]:
    """The libraries type `name` needs that this machine lacks (REQUIRES; "PIL:x" is a Pillow feature)."""
    import importlib.util

    from PIL import features

    missing = []
    for need in REQUIRES.get(name, ()):
        present = features.check(need[4:]) if need.startswith("PIL:") else importlib.util.find_spec(need) is not None
        if not present:
            missing.append(need)
    return missing


def type_weights(overrides: dict[str, float] | None = None) -> dict[str, dict[str, float]]:
    """TYPE_WEIGHTS with some types' weights replaced, e.g. {"motion_blur": 2.0}; a type whose libraries this
    machine lacks (missing_libraries) gets weight 0, and a warning says so."""
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(BY_NAME)
    if unknown:
        raise ValueError(f"unknown distortion type(s) {sorted(unknown)}: choose from {sorted(BY_NAME)}")
    if any(w < 0 for w in overrides.values()):
        raise ValueError(f"type weights must be >= 0, got {overrides}")
    unusable = {name: missing for name in BY_NAME if (missing := missing_libraries(name))}
    if unusable:
        warnings.warn("left out of the training mix, their libraries are missing here: "
                      + ", ".join(f"{name} ({', '.join(missing)})" for name, missing in unusable.items()), stacklevel=2)
        overrides.update(dict.fromkeys(unusable, 0.0))
    weights = {family: {name: overrides.get(name, w) for name, w in kinds.items()} for family, kinds in TYPE_WEIGHTS.items()}
    for family, kinds in weights.items():
        if sum(kinds.values()) <= 0:
            raise ValueError(f"every {family} type has weight 0: the family could not be drawn")
    return weights


def variant_weights(kind: DistortionType) -> np.ndarray:
    if len(kind.variants) == 1:
        return np.ones(1)
    rest = (1 - KADID_VARIANT_SHARE) / (len(kind.variants) - 1)
    return np.array([KADID_VARIANT_SHARE] + [rest] * (len(kind.variants) - 1))


def random_recipe(rng: np.random.Generator, mix: dict[str, dict[str, float]] = TYPE_WEIGHTS) -> Recipe:
    """A training recipe: pristine, one family, or a chain of two or three (blur -> noise -> compression),
    each step of a random variant, in a random tone (TONE_WEIGHTS)."""
    tones, tone_weights = zip(*TONE_WEIGHTS.items())
    tone = str(rng.choice(tones, p=np.array(tone_weights) / sum(tone_weights)))
    saturation = float(rng.uniform(0.0, 0.6)) if tone == "desaturated" else 1.0
    if rng.random() < PRISTINE_SHARE:
        return Recipe((), tone, saturation)
    counts, weights = zip(*FAMILY_COUNT_WEIGHTS.items())
    count = rng.choice(counts, p=np.array(weights) / sum(weights))
    families = set(rng.choice(CHAIN_ORDER, size=count, replace=False))
    steps = []
    for family in CHAIN_ORDER:
        if family in families:
            names, w = zip(*mix[family].items())
            name = str(rng.choice(names, p=np.array(w) / sum(w)))
            kind = BY_NAME[name]
            variant = kind.variants[int(rng.choice(len(kind.variants), p=variant_weights(kind)))].name
            steps.append((name, float(rng.uniform(0.0, 1.0)), variant))
    return Recipe(tuple(steps), tone, saturation)
