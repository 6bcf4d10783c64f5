"""Degradations as real pipelines make them: the codecs pictures travel through, and cameras.

training.degradations registers these as distortion types and variants; this module only holds the
encoders and the camera model, each a function (rgb uint8 [H, W, 3], parameter, rng) -> rgb uint8
of the same size, like every distortion there.

Codecs, through the bindings the project already installs (../shared/FINDINGS.md, "Real encoders"):
- AVIF: Pillow's own encoder (libavif with libaom); quality 0-100;
- HEIC: pillow-heif (libheif with x265); quality 0-100;
- H.264, HEVC, VP9, AV1 frames: PyAV's libx264, libx265, libvpx-vp9 and libsvtav1, constant rate
  factor (CRF). A still becomes a short clip with a small pan (2 px a frame, as a slow camera pan
  or a shaking hand), encoded in yuv420p, and one frame is decoded back: the first (intra-coded,
  as a key frame) or the third (predicted from the others: what most frames of a video are).
Every codec's setting maps onto the 0-1 strength scale of the KADID JPEG levels by equal damage
(training.calibrate: mean squared error over training photos equal to JPEG's at each level), so
"compression 0.6" means about the damage of JPEG quality 24 whatever the codec.

Camera (sensor noise as a camera makes it): the picture back to linear light, a Bayer mosaic (RGGB),
signal-dependent noise (shot noise proportional to the signal plus read noise), demosaicing by one of
OpenCV's algorithms, the sRGB curve; and, as a phone goes on, a light denoise, a sharpening and a JPEG
at quality 88-96 (which training counts as pristine-level compression).
"""

from __future__ import annotations

import io
import os
from fractions import Fraction

import numpy as np
from PIL import Image

# SVT-AV1 prints its configuration on every encoder it opens unless told otherwise (it reads this once).
os.environ.setdefault("SVT_LOG", "0")

# ------------------------------------------------------------------ image codecs


def _roundtrip(rgb: np.ndarray, fmt: str, **params) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format=fmt, **params)
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        return np.asarray(image.convert("RGB"))


def avif(rgb: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    """AVIF through Pillow (libavif, AV1 intra); speed 6-9 (the encoder's default region), 4:2:0."""
    return _roundtrip(rgb, "AVIF", quality=int(round(quality)), speed=int(rng.integers(6, 10)))


def heic(rgb: np.ndarray, quality: float, rng: np.random.Generator) -> np.ndarray:
    """HEIC through pillow-heif (libheif, x265 intra), 4:2:0 as phones write it."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    return _roundtrip(rgb, "HEIF", quality=int(round(quality)))


# ------------------------------------------------------------------ video codecs

# PyAV encoder name -> options that keep its encoder fast and quiet. CRF is added per call.
VIDEO_ENCODERS = {
    "h264": ("libx264", {"preset": "veryfast"}),
    "hevc": ("libx265", {"preset": "veryfast", "x265-params": "log-level=none"}),
    "vp9": ("libvpx-vp9", {"b": "0", "deadline": "realtime", "cpu-used": "8", "row-mt": "1"}),
    "av1": ("libsvtav1", {"preset": "10"}),
}
PAN_PIXELS = 2  # horizontal motion per frame of the clip made from a still
CLIP_FRAMES = 3


def video_frame(rgb: np.ndarray, codec: str, crf: float, frame: int, rng: np.random.Generator | None = None) -> np.ndarray:
    """One frame of a short clip made from `rgb` and encoded by `codec` (VIDEO_ENCODERS) at `crf`, decoded.

    frame 0 is the intra-coded first frame, 1 and 2 are predicted ones. The clip pans PAN_PIXELS a frame
    (rolled, so no new content enters); the returned frame is rolled back onto the still. Odd sides are
    padded by one mirrored line for yuv420p and cut back.
    """
    import av

    name, options = VIDEO_ENCODERS[codec]
    height, width = rgb.shape[:2]
    padded = np.pad(rgb, ((0, height % 2), (0, width % 2), (0, 0)), mode="symmetric")
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="matroska") as container:
        stream = container.add_stream(name, rate=Fraction(25), options={**options, "crf": str(int(round(crf)))})
        stream.width, stream.height, stream.pix_fmt = padded.shape[1], padded.shape[0], "yuv420p"
        for index in range(CLIP_FRAMES):
            moved = np.roll(padded, index * PAN_PIXELS, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(moved, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    buffer.seek(0)
    with av.open(buffer) as container:
        decoded = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    if len(decoded) != CLIP_FRAMES:
        raise RuntimeError(f"{name} gave {len(decoded)} frames for {CLIP_FRAMES}")
    return np.ascontiguousarray(np.roll(decoded[frame], -frame * PAN_PIXELS, axis=1)[:height, :width])


def video_codec(codec: str, frame: int):
    def apply(rgb: np.ndarray, crf: float, rng: np.random.Generator) -> np.ndarray:
        return video_frame(rgb, codec, crf, frame, rng)

    apply.__name__ = f"{codec}_frame_{frame}"
    return apply


# ------------------------------------------------------------------ compression, then a resize


def then_downscaled(encode):
    """`encode` applied to the picture at 1/0.7-1/0.95 of its size, then a downscale back to its size with a
    common filter: what a web pipeline does to an uploaded file it shows smaller. The compression's blocks and
    ringing shrink with the picture (attenuated, not removed); the strength stays the encode's. The first
    upscale (Lanczos) and the downscale together leave a pristine picture nearly untouched."""

    def apply(rgb: np.ndarray, parameter: float, rng: np.random.Generator) -> np.ndarray:
        height, width = rgb.shape[:2]
        factor = rng.uniform(0.7, 0.95)
        larger = Image.fromarray(rgb).resize((round(width / factor), round(height / factor)), Image.Resampling.LANCZOS)
        out = encode(np.asarray(larger), parameter, rng)
        resample = (Image.Resampling.BILINEAR, Image.Resampling.BICUBIC, Image.Resampling.LANCZOS,
                    Image.Resampling.BOX)[int(rng.integers(4))]
        return np.asarray(Image.fromarray(out).resize((width, height), resample))

    apply.__name__ = f"{getattr(encode, '__name__', 'encode')}_then_downscaled"
    return apply


# ------------------------------------------------------------------ the camera


def srgb_to_linear(x: np.ndarray) -> np.ndarray:
    """sRGB values in [0, 1] -> linear light (IEC 61966-2-1)."""
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * x ** (1 / 2.4) - 0.055)


# OpenCV's demosaicing for an RGGB mosaic (R at row 0, column 0): it names a pattern by its second row's
# first two pixels, so RGGB is "BG" (../shared/FINDINGS.md). Bilinear, variable number of gradients, edge-aware.
_DEMOSAIC = ("COLOR_BayerBG2RGB", "COLOR_BayerBG2RGB_VNG", "COLOR_BayerBG2RGB_EA")
# Linear-light noise per unit of the KADID white-noise variance, so that level 5 does about the damage of
# KADID's white noise at level 5 (training.calibrate; tests/test_degradation_variants.py holds it within 2x).
CAMERA_NOISE_GAIN = 1.93


def camera_noise(rgb: np.ndarray, var: float, rng: np.random.Generator) -> np.ndarray:
    """A camera's noise for the KADID white-noise variance `var`: mosaic, shot + read noise, demosaic, sRGB."""
    import cv2

    height, width = rgb.shape[:2]
    padded = np.pad(rgb, ((0, height % 2), (0, width % 2), (0, 0)), mode="symmetric")
    linear = srgb_to_linear(padded.astype(np.float32) / 255)
    mosaic = np.empty(padded.shape[:2], np.float32)
    mosaic[0::2, 0::2] = linear[0::2, 0::2, 0]
    mosaic[0::2, 1::2] = linear[0::2, 1::2, 1]
    mosaic[1::2, 0::2] = linear[1::2, 0::2, 1]
    mosaic[1::2, 1::2] = linear[1::2, 1::2, 2]
    # Shot noise grows with the signal, read noise does not; their mix varies with the sensor and the ISO.
    read_share = rng.uniform(0.02, 0.3)
    variance = CAMERA_NOISE_GAIN * var * ((1 - read_share) * mosaic + read_share * 0.5)
    noisy = mosaic + rng.standard_normal(mosaic.shape, dtype=np.float32) * np.sqrt(variance)
    raw = np.clip(np.rint(noisy * 65535), 0, 65535).astype(np.uint16)
    code = getattr(cv2, _DEMOSAIC[int(rng.integers(len(_DEMOSAIC)))])
    if code != cv2.COLOR_BayerBG2RGB:  # VNG and EA take 8-bit input only
        raw = np.clip(np.rint(noisy * 255), 0, 255).astype(np.uint8)
        demosaiced = cv2.cvtColor(raw, code).astype(np.float32) / 255
    else:
        demosaiced = cv2.cvtColor(raw, code).astype(np.float32) / 65535
    return np.ascontiguousarray(np.clip(np.rint(linear_to_srgb(demosaiced) * 255), 0, 255).astype(np.uint8)[:height, :width])


def phone_camera_noise(rgb: np.ndarray, var: float, rng: np.random.Generator) -> np.ndarray:
    """camera_noise, then what a phone does next (phone_processing): its JPEG at quality 88-96 is so mild
    (KADID JPEG strength under 0.05) that training counts it as no compression."""
    return phone_processing(camera_noise(rgb, var, rng), rng)


def phone_processing(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """What a phone does after demosaicing: a light edge-preserving denoise, an unsharp mask, a JPEG q88-96."""
    import cv2

    out = cv2.bilateralFilter(rgb, d=5, sigmaColor=float(rng.uniform(8, 25)), sigmaSpace=float(rng.uniform(1, 3)))
    blurred = cv2.GaussianBlur(out, (0, 0), float(rng.uniform(0.8, 1.5)))
    amount = float(rng.uniform(0.2, 0.8))
    out = cv2.addWeighted(out, 1 + amount, blurred, -amount, 0)  # saturates to 0..255
    return _roundtrip(out, "JPEG", quality=int(rng.integers(88, 97)))
