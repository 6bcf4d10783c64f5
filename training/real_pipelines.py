"""Real encoders and camera pipelines: an evaluation set that training never touched.

    python -m training.evaluate --implementations own,reference,real   # beside the KADID-style tables
    python -m training.real_pipelines video --server localhost:8001     # iqa video on a CRF ladder

Each held-out photo (512x384) goes through seventeen kinds of real-world damage at five increasing
levels. The pictures come from the encoders and libraries people's pictures meet (libwebp, libaom,
x265, x264, SVT-AV1, libjpeg-turbo, OpenCV's demosaicing and denoising), driven by this module's own
code and settings, never by training's: this module imports nothing from training.degradations,
training.synthetic or training.train, and those never import it (tests/test_real_pipelines.py checks).

| kind | family | setting, levels 1 -> 5 | what happens |
|---|---|---|---|
| webp | compression | quality 75, 50, 30, 15, 5 | libwebp through Pillow (lossy, 4:2:0) |
| avif | compression | quality 60, 45, 32, 20, 8 | libaom through Pillow, speed 6, 4:2:0 |
| heic | compression | quality 50, 38, 27, 16, 5 | x265 through pillow-heif (libheif), 4:2:0 |
| h264_intra, h264_inter | compression | CRF 26, 32, 37, 42, 47 | libx264 (PyAV), preset medium: a 6-frame clip of the photo panning 0.75 px right and 0.5 px down a frame; its first (I) frame and its fifth (P or B; the picture moved 3 px right, 2 down) |
| hevc_intra, hevc_inter | compression | CRF 28, 34, 39, 44, 49 | libx265 (PyAV), preset medium, the same clip |
| av1_intra, av1_inter | compression | CRF 45, 51, 56, 60, 63 | SVT-AV1 (PyAV), preset 8, the same clip (63 is its largest CRF) |
| jpeg_444 | compression | quality 40, 28, 18, 10, 5 | libjpeg-turbo through OpenCV, no chroma subsampling |
| jpeg_resized | compression | quality 60, 45, 30, 18, 8 | a web pipeline: JPEG (OpenCV, 4:2:0), decoded, downscaled to 3/4 (384x288) by Pillow's Lanczos or OpenCV's area filter (drawn per photo) |
| raw_noise | noise | electrons at white 3000, 1000, 400, 180, 80 | a camera's raw path in linear light: the scene at twice the picture's resolution, inverse colour matrix and white balance, RGGB Bayer mosaic, Poisson shot noise + Gaussian read noise (3, 3, 2.5, 2.5, 2 electrons), OpenCV edge-aware demosaicing, white balance, colour matrix, downscaled 2x (area), sRGB gamma |
| raw_noise_phone | noise | the same | then what a phone does: non-local-means denoising (OpenCV; luma at half the expected noise, chroma at twice), unsharp masking, JPEG quality 90 |
| luma_noise | noise | sigma 4, 7, 10, 14, 20 (8-bit) | Gaussian noise on Y' only (BT.601): the same value added to R, G and B |
| defocus | blur | disc radius 1, 2, 3, 4.5, 6.5 px | an out-of-focus lens in linear light: a disc with a slightly brighter rim (spherical aberration), anti-aliased |
| resolution_loss | blur | factor 1.5, 2, 2.5, 3.25, 4 | downscaled by OpenCV's area filter, upscaled back by bicubic or bilinear (drawn per photo) |
| camera_shake | blur | path length 3, 5, 8, 12, 17 px | a hand-held exposure in linear light: a random path whose heading turns smoothly (turn rate with inertia), at a drifting speed, with rare jerks (this module's generator, shake_trajectory); one shape per photo, scaled to each level |

The levels were chosen from the encoders' and lenses' common operating range (mild -> starved or
strongly degraded; decreasing PSNR level by level on every test photo), never from the model's scores.
Every kind maps to its related score: the codecs to compression, the sensor and luma noise to noise,
the lens, resolution and shake to blur. The figures (`metrics`): the seed metric per (photo, kind)
group (SRCC and PLCC of the related score against the level, as training.evaluate), its mean per kind,
family and over all kinds; specificity (the share of groups where the related score rises more from
level 1 to 5 than either other score); each score's mean at levels 1 and 5.

Encoding is the slow part (AVIF, HEIC and the x265 / SVT-AV1 clips cost 100-300 ms each at 512x384 on
one core): with `cache_dir`, every encoder's output file (and the phone pipeline's JPEG) is kept on disk,
keyed by a digest of its exact input pixels, the encoder's settings, the libraries' versions and
CACHE_VERSION, so a changed picture, setting or library encodes anew; a second build decodes the files and
redoes only the cheap steps (the raw captures are most of what is left: ~3 s of CPU a photo).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import tempfile
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from iqa.contract import SCORE_NAMES

FAMILIES = tuple(name.lower() for name in SCORE_NAMES)  # noise, blur, compression: the network's order
LEVELS = (1, 2, 3, 4, 5)
SEED = 21  # issue 21: every random draw of the set derives from it, the photo, the kind and the level
# Bump when a change outside the encoders' inputs and settings alters what they write (e.g. the container).
CACHE_VERSION = 1
DEFAULT_CACHE = Path(os.environ.get("IQA_DATA", Path.home() / ".cache" / "iqa-degradation")) / "real-pipelines"


# ------------------------------------------------------------------ the disk cache of encoded files
def library_versions() -> str:
    """The encoders' versions: a new build of any of them writes other bytes, so it keys the cache."""
    import av
    import cv2
    import PIL
    import pillow_heif

    return f"pillow {PIL.__version__}, pillow-heif {pillow_heif.__version__}, av {av.__version__}, cv2 {cv2.__version__}"


class FileCache:
    """Encoded files on disk, keyed by everything that decides their bytes; None: no cache (encode each time).

    Files live in `<root>/v<CACHE_VERSION>/<key[:2]>/<key>`; writes are atomic (a temporary file renamed),
    so pool workers and concurrent runs can share a folder.
    """

    def __init__(self, root: Path | str | None) -> None:
        self.root = None if root is None else Path(root) / f"v{CACHE_VERSION}"
        self._versions = library_versions()
        self.hits = self.misses = 0

    def key(self, step: str, settings: str, inputs: Sequence[np.ndarray]) -> str:
        digest = hashlib.sha256(f"{CACHE_VERSION}|{self._versions}|{step}|{settings}".encode())
        for array in inputs:
            digest.update(f"{array.shape}{array.dtype}".encode())
            digest.update(np.ascontiguousarray(array).data)
        return digest.hexdigest()

    def get(self, step: str, settings: str, inputs: Sequence[np.ndarray], encode: Callable[[], bytes]) -> bytes:
        """The file `encode()` writes for these inputs and settings: from disk if there, else encoded and kept."""
        if self.root is None:
            self.misses += 1
            return encode()
        key = self.key(step, settings, inputs)
        path = self.root / key[:2] / f"{key}.{step}"
        if path.exists():
            self.hits += 1
            return path.read_bytes()
        self.misses += 1
        data = encode()
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as temporary:
            temporary.write(data)
        os.replace(temporary.name, path)
        return data


# ------------------------------------------------------------------ colour
def srgb_to_linear(rgb: np.ndarray) -> np.ndarray:
    """uint8 sRGB -> float32 linear light in [0, 1] (IEC 61966-2-1)."""
    v = rgb.astype(np.float32) / 255
    return np.where(v <= 0.04045, v / 12.92, ((v + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """float linear light (clipped to [0, 1]) -> uint8 sRGB (IEC 61966-2-1)."""
    v = np.clip(linear, 0.0, 1.0)
    v = np.where(v <= 0.0031308, v * 12.92, 1.055 * np.power(v, 1 / 2.4) - 0.055)
    return np.clip(np.rint(v * 255), 0, 255).astype(np.uint8)


def _decode_still(data: bytes) -> np.ndarray:
    import pillow_heif

    pillow_heif.register_heif_opener()
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# ------------------------------------------------------------------ still-image codecs
def _pillow_encoder(fmt: str, **options) -> Callable[[np.ndarray], bytes]:
    def encode(rgb: np.ndarray) -> bytes:
        if fmt == "HEIF":
            import pillow_heif

            pillow_heif.register_heif_opener()
        buffer = io.BytesIO()
        Image.fromarray(rgb).save(buffer, format=fmt, **options)
        return buffer.getvalue()

    return encode


def _still_codec(fmt: str, **fixed):
    def apply(rgb: np.ndarray, quality: float, photo_rng, rng, cache: FileCache) -> np.ndarray:
        options = dict(fixed, quality=int(quality))
        data = cache.get(fmt.lower(), repr(sorted(options.items())), [rgb], lambda: _pillow_encoder(fmt, **options)(rgb))
        return _decode_still(data)

    return apply


def _opencv_jpeg(rgb: np.ndarray, quality: int, sampling: str) -> np.ndarray:
    import cv2

    factor = {"444": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444, "420": cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420}[sampling]
    ok, data = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, int(quality),
                                                     cv2.IMWRITE_JPEG_SAMPLING_FACTOR, factor])
    if not ok:
        raise RuntimeError("OpenCV could not encode the picture as JPEG")
    return np.ascontiguousarray(cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1])


def _jpeg_444(rgb, quality, photo_rng, rng, cache):
    return _opencv_jpeg(rgb, quality, "444")


WEB_SCALE = 0.75  # e.g. a 512-px upload shown 384 px wide
WEB_FILTERS = ("pillow-lanczos", "opencv-area")


def _downscale(rgb: np.ndarray, how: str) -> np.ndarray:
    import cv2

    size = (round(rgb.shape[1] * WEB_SCALE), round(rgb.shape[0] * WEB_SCALE))
    if how == "pillow-lanczos":
        return np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def _web_filter(photo_rng: np.random.Generator) -> str:
    return WEB_FILTERS[int(photo_rng.integers(len(WEB_FILTERS)))]


def _jpeg_resized(rgb, quality, photo_rng, rng, cache):
    return _downscale(_opencv_jpeg(rgb, quality, "420"), _web_filter(photo_rng))


def _jpeg_resized_reference(rgb, photo_rng):
    return _downscale(rgb, _web_filter(photo_rng))


# ------------------------------------------------------------------ video codecs
CLIP_FRAMES = 6
INTER_FRAME = 4  # the frame the inter kinds take: P or B in every codec's default structure here
PAN = (0.75, 0.5)  # px a frame, right and down: sub-pixel motion the encoder has to estimate
CLIP_RATE = 25
VIDEO_CODECS = {
    # name: (PyAV encoder, its options); one thread each so a build's workers share the cores evenly
    # and the bitstream does not depend on the machine.
    "h264": ("libx264", {"preset": "medium", "threads": "1"}),
    "hevc": ("libx265", {"preset": "medium", "x265-params": "pools=none:frame-threads=1:log-level=error"}),
    "av1": ("libsvtav1", {"preset": "8", "svtav1-params": "lp=1"}),
}


def shift(rgb: np.ndarray, dx: float, dy: float) -> np.ndarray:
    """The picture moved by (dx, dy) px, Lanczos-interpolated, mirrored at the borders; exact for whole pixels."""
    import cv2

    if float(dx).is_integer() and float(dy).is_integer():
        padded = np.pad(rgb, ((abs(int(dy)),) * 2, (abs(int(dx)),) * 2, (0, 0)), mode="reflect")
        top, left = abs(int(dy)) - int(dy), abs(int(dx)) - int(dx)
        return padded[top : top + rgb.shape[0], left : left + rgb.shape[1]]
    matrix = np.float32([[1, 0, dx], [0, 1, dy]])
    return cv2.warpAffine(rgb, matrix, (rgb.shape[1], rgb.shape[0]), flags=cv2.INTER_LANCZOS4,
                          borderMode=cv2.BORDER_REFLECT_101)


def clip_frames(rgb: np.ndarray) -> list[np.ndarray]:
    """The still as a short clip with a slow pan: frame k is the picture moved by k * PAN (frame 0 is the picture)."""
    return [shift(rgb, k * PAN[0], k * PAN[1]) for k in range(CLIP_FRAMES)]


def encode_clip(frames: Sequence[np.ndarray], encoder: str, crf: float, options: dict | None = None,
                rate: int = CLIP_RATE, container_format: str = "mp4") -> bytes:
    """RGB uint8 frames [H, W, 3] (H, W even) -> a file (MP4 by default) of one yuv420p stream at this CRF."""
    import av

    os.environ.setdefault("SVT_LOG", "1")  # SVT-AV1 prints its whole configuration otherwise
    height, width = frames[0].shape[:2]
    if height % 2 or width % 2:
        raise ValueError(f"a 4:2:0 video needs even sides, got {width}x{height}")
    buffer = io.BytesIO()
    with av.open(buffer, "w", format=container_format) as container:
        stream = container.add_stream(encoder, rate=rate, options={"crf": f"{crf:g}", **(options or {})})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def decode_clip(data: bytes) -> list[tuple[str, np.ndarray]]:
    """A clip's frames in display order: (picture type "I", "P" or "B", RGB uint8 [H, W, 3])."""
    import av

    with av.open(io.BytesIO(data)) as container:
        return [(av.video.frame.PictureType(frame.pict_type).name, frame.to_ndarray(format="rgb24"))
                for frame in container.decode(video=0)]


def _video(codec: str) -> Callable:
    encoder, options = VIDEO_CODECS[codec]

    def apply(rgb, crf, photo_rng, rng, cache) -> dict[str, np.ndarray]:
        frames = clip_frames(rgb)
        data = cache.get(codec, f"{encoder} crf {crf:g} {sorted(options.items())} {CLIP_RATE} fps",
                         frames, lambda: encode_clip(frames, encoder, crf, options))
        decoded = decode_clip(data)
        return {f"{codec}_intra": decoded[0][1], f"{codec}_inter": decoded[INTER_FRAME][1]}

    return apply


def _inter_reference(rgb, photo_rng):
    return shift(rgb, INTER_FRAME * PAN[0], INTER_FRAME * PAN[1])


# ------------------------------------------------------------------ camera: raw sensor noise
# A typical camera's colour matrix (camera RGB -> linear sRGB, rows sum to 1: white stays white) and
# daylight white-balance gains: both amplify and mix the sensor's per-channel noise, as in a real camera.
COLOUR_MATRIX = np.array([[1.70, -0.55, -0.15], [-0.25, 1.55, -0.30], [0.05, -0.55, 1.50]], np.float32)
WHITE_BALANCE = np.array([2.0, 1.0, 1.6], np.float32)  # R, G, B gains
ELECTRONS_AT_WHITE = (3000.0, 1000.0, 400.0, 180.0, 80.0)  # levels 1..5: ever less light, ever more gain
# Read noise in electrons at each of those: it falls as the analogue gain rises, less than the signal does.
READ_NOISE = dict(zip(ELECTRONS_AT_WHITE, (3.0, 3.0, 2.5, 2.5, 2.0)))


def mosaic_rggb(camera_rgb: np.ndarray) -> np.ndarray:
    """[H, W, 3] -> the Bayer RGGB mosaic [H, W] (R at row 0, column 0)."""
    raw = np.empty(camera_rgb.shape[:2], camera_rgb.dtype)
    raw[0::2, 0::2] = camera_rgb[0::2, 0::2, 0]
    raw[0::2, 1::2] = camera_rgb[0::2, 1::2, 1]
    raw[1::2, 0::2] = camera_rgb[1::2, 0::2, 1]
    raw[1::2, 1::2] = camera_rgb[1::2, 1::2, 2]
    return raw


def demosaic_rggb(raw: np.ndarray) -> np.ndarray:
    """An RGGB mosaic in [0, 1] -> RGB float32 [H, W, 3], OpenCV's edge-aware demosaicing at 16 bits.

    OpenCV names Bayer patterns by the second row's first two pixels: RGGB is its "BayerBG".
    """
    import cv2

    raw16 = np.clip(np.rint(raw * 65535), 0, 65535).astype(np.uint16)
    return cv2.demosaicing(raw16, cv2.COLOR_BayerBG2RGB_EA).astype(np.float32) / 65535


SENSOR_SCALE = 2  # the sensor's linear resolution over the picture's


def raw_capture(rgb: np.ndarray, electrons_at_white: float, read_noise: float, rng: np.random.Generator) -> np.ndarray:
    """What a sensor records of this scene and a camera makes of it: RGB uint8 [H, W, 3] (H, W even).

    The scene is the picture in linear light, enlarged SENSOR_SCALE times (Lanczos: a lens that resolves
    less than the sensor, as a phone's 12-48 MP sensor does for the pictures people share; mosaicking the
    sharp picture itself would alias, 22-30 dB of demosaicing damage on the test photos before any noise)
    and taken back to camera RGB (inverse colour matrix, inverse white balance). Each photosite of an RGGB
    mosaic collects Poisson-distributed electrons (a full-white site `electrons_at_white` on average) plus
    Gaussian read noise of `read_noise` electrons; then the camera demosaics (OpenCV, edge-aware),
    white-balances, applies its colour matrix, downscales to the picture's size (area) and the sRGB curve.
    """
    import cv2

    height, width = rgb.shape[:2]
    scene = cv2.resize(srgb_to_linear(rgb), (width * SENSOR_SCALE, height * SENSOR_SCALE), interpolation=cv2.INTER_LANCZOS4)
    camera = np.clip(scene, 0.0, None) @ np.linalg.inv(COLOUR_MATRIX).T / WHITE_BALANCE
    raw = mosaic_rggb(np.clip(camera, 0.0, 1.0))
    electrons = rng.poisson(raw * electrons_at_white) + read_noise * rng.standard_normal(raw.shape, np.float32)
    linear = demosaic_rggb(np.clip(electrons / electrons_at_white, 0.0, 1.0)) * WHITE_BALANCE @ COLOUR_MATRIX.T
    return linear_to_srgb(cv2.resize(linear, (width, height), interpolation=cv2.INTER_AREA))


def expected_noise_sigma(electrons_at_white: float, read_noise: float, grey: float = 0.5) -> float:
    """The 8-bit standard deviation of the green channel's noise at an sRGB grey level (0..1), before
    demosaicing and colour matrix: what a phone's denoiser is tuned to at this gain."""
    linear = float(srgb_to_linear(np.array([grey * 255]))[0])
    sigma_linear = np.sqrt(linear * electrons_at_white + read_noise**2) / electrons_at_white
    slope = 1.055 / 2.4 * linear ** (1 / 2.4 - 1)  # d sRGB / d linear
    return float(sigma_linear * slope * 255)


def _raw_noise(rgb, electrons, photo_rng, rng, cache):
    return raw_capture(rgb, electrons, READ_NOISE[electrons], rng)


PHONE_DENOISE = 0.5  # the denoiser's luma strength relative to the expected noise: phones leave some grain
PHONE_CHROMA_DENOISE = 2.0  # ... and its chroma strength: colour blotches are what phones remove hardest
PHONE_JPEG_QUALITY = 90


def phone_processing(rgb: np.ndarray, noise_sigma: float) -> bytes:
    """A phone's processing after demosaicing: non-local means denoising tuned to the expected noise
    (filter strengths PHONE_DENOISE and PHONE_CHROMA_DENOISE times `noise_sigma`, 8-bit units, on OpenCV's
    luma and chroma planes; 5x5 patches, 11x11 search), unsharp masking (Gaussian sigma 1 px, amount 0.6),
    JPEG q90 4:2:0 -> the JPEG file's bytes."""
    import cv2

    denoised = cv2.fastNlMeansDenoisingColored(rgb, None, PHONE_DENOISE * noise_sigma,
                                               PHONE_CHROMA_DENOISE * noise_sigma, 5, 11)
    smooth = cv2.GaussianBlur(denoised, (0, 0), 1.0)
    sharpened = cv2.addWeighted(denoised, 1.6, smooth, -0.6, 0)
    ok, data = cv2.imencode(".jpg", sharpened[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, PHONE_JPEG_QUALITY])
    if not ok:
        raise RuntimeError("OpenCV could not encode the picture as JPEG")
    return data.tobytes()


def _raw_noise_phone(rgb, electrons, photo_rng, rng, cache):
    read = READ_NOISE[electrons]
    captured = raw_capture(rgb, electrons, read, rng)
    sigma = expected_noise_sigma(electrons, read)
    data = cache.get("phone.jpg", f"denoise {PHONE_DENOISE} {PHONE_CHROMA_DENOISE} sigma {sigma:.6f} "
                     f"q{PHONE_JPEG_QUALITY}", [captured],
                     lambda: phone_processing(captured, sigma))
    return _decode_still(data)


def _luma_noise(rgb, sigma, photo_rng, rng, cache):
    # In BT.601 Y'CbCr a change of Y' alone moves R', G' and B' by the same amount.
    noise = rng.normal(0.0, sigma, rgb.shape[:2])[..., None]
    return np.clip(np.rint(rgb + noise), 0, 255).astype(np.uint8)


# ------------------------------------------------------------------ blur
def _in_linear_light(rgb: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    import cv2

    return linear_to_srgb(cv2.filter2D(srgb_to_linear(rgb), -1, kernel.astype(np.float32),
                                       borderType=cv2.BORDER_REFLECT_101))


def defocus_kernel(radius: float, rim: float = 0.4, sub: int = 9) -> np.ndarray:
    """An out-of-focus point: a disc of `radius` px, each pixel weighted by the share of it the disc
    covers (sub x sub samples), brighter towards the rim by (1 - rim/2) + rim * (r / radius)^2
    (lenses over-corrected for spherical aberration), summing to 1. float64 [2n+1, 2n+1]."""
    half = int(np.ceil(radius)) + 1
    samples = (np.arange((2 * half + 1) * sub) + 0.5) / sub - half - 0.5
    y, x = np.meshgrid(samples, samples, indexing="ij")
    r2 = (x * x + y * y) / radius**2
    weight = np.where(r2 <= 1.0, (1 - rim / 2) + rim * r2, 0.0)
    kernel = weight.reshape(2 * half + 1, sub, 2 * half + 1, sub).sum(axis=(1, 3))
    return kernel / kernel.sum()


def _defocus(rgb, radius, photo_rng, rng, cache):
    return _in_linear_light(rgb, defocus_kernel(radius))


UPSCALE_FILTERS = ("bicubic", "bilinear")


def _resolution_loss(rgb, factor, photo_rng, rng, cache):
    import cv2

    height, width = rgb.shape[:2]
    small = cv2.resize(rgb, (max(1, round(width / factor)), max(1, round(height / factor))), interpolation=cv2.INTER_AREA)
    up = UPSCALE_FILTERS[int(photo_rng.integers(len(UPSCALE_FILTERS)))]
    return cv2.resize(small, (width, height), interpolation={"bicubic": cv2.INTER_CUBIC, "bilinear": cv2.INTER_LINEAR}[up])


def shake_trajectory(rng: np.random.Generator, steps: int = 200) -> np.ndarray:
    """A hand-held camera's path during one exposure, float64 [steps, 2] (x, y), unit path length, centred.

    The image point moves at a speed that drifts (slow-downs leave brighter dots in the kernel, as in real
    shake) along a heading that turns smoothly (the turn rate has inertia: 90 % kept a step), with a rare
    jerk (1 % of steps) that turns it sharply.
    """
    heading, turn, speed = rng.uniform(0.0, 2 * np.pi), 0.0, 1.0
    path = np.zeros((steps, 2))
    for step in range(1, steps):
        turn = 0.9 * turn + rng.normal(0.0, 0.03)
        if rng.random() < 0.01:
            turn += rng.normal(0.0, 0.8)
        heading += turn
        speed = float(np.clip(0.9 * speed + 0.1 * rng.lognormal(0.0, 0.8), 0.05, 4.0))
        path[step] = path[step - 1] + speed * np.array([np.cos(heading), np.sin(heading)])
    length = np.linalg.norm(np.diff(path, axis=0), axis=1).sum()
    return (path - path.mean(axis=0)) / length


def shake_kernel(trajectory: np.ndarray, length: float) -> np.ndarray:
    """The blur kernel of a trajectory scaled to `length` px of path: equal exposure per time step, each
    position splatted bilinearly onto the pixel grid; float64 [2n+1, 2n+1], sums to 1."""
    points = trajectory * length
    half = int(np.ceil(np.abs(points).max())) + 1
    kernel = np.zeros((2 * half + 1, 2 * half + 1))
    x, y = points[:, 0] + half, points[:, 1] + half
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    fx, fy = x - x0, y - y0
    for dy, wy in ((0, 1 - fy), (1, fy)):
        for dx, wx in ((0, 1 - fx), (1, fx)):
            np.add.at(kernel, (y0 + dy, x0 + dx), wy * wx)
    return kernel / kernel.sum()


def _camera_shake(rgb, length, photo_rng, rng, cache):
    return _in_linear_light(rgb, shake_kernel(shake_trajectory(photo_rng), length))


# ------------------------------------------------------------------ the kinds
@dataclass(frozen=True)
class Kind:
    """One kind of real-world damage: its related score (`family`), the setting at levels 1..5."""

    name: str
    family: str  # "noise", "blur" or "compression": the score it should raise
    setting: str  # what the level values are
    levels: tuple[float, ...]
    summary: str
    pipeline: str  # the function that makes it; the video kinds share one clip per level
    reference: Callable[[np.ndarray, np.random.Generator], np.ndarray] | None = field(default=None, compare=False)


# pipeline name -> apply(rgb, level value, photo_rng, level_rng, cache) -> picture, or {kind name: picture}
_PIPELINES: dict[str, Callable] = {
    "webp": _still_codec("WEBP", method=4),
    "avif": _still_codec("AVIF", speed=6, max_threads=1, subsampling="4:2:0"),
    "heic": _still_codec("HEIF", chroma=420),
    "h264": _video("h264"),
    "hevc": _video("hevc"),
    "av1": _video("av1"),
    "jpeg_444": _jpeg_444,
    "jpeg_resized": _jpeg_resized,
    "raw_noise": _raw_noise,
    "raw_noise_phone": _raw_noise_phone,
    "luma_noise": _luma_noise,
    "defocus": _defocus,
    "resolution_loss": _resolution_loss,
    "camera_shake": _camera_shake,
}

KINDS: tuple[Kind, ...] = (
    Kind("webp", "compression", "libwebp quality", (75, 50, 30, 15, 5), "Pillow, method 4", "webp"),
    Kind("avif", "compression", "libaom quality", (60, 45, 32, 20, 8), "Pillow, speed 6, 4:2:0", "avif"),
    Kind("heic", "compression", "x265 quality", (50, 38, 27, 16, 5), "pillow-heif (libheif), 4:2:0", "heic"),
    Kind("h264_intra", "compression", "x264 CRF", (26, 32, 37, 42, 47), "PyAV, preset medium, I frame", "h264"),
    Kind("h264_inter", "compression", "x264 CRF", (26, 32, 37, 42, 47), "PyAV, preset medium, P/B frame", "h264",
         _inter_reference),
    Kind("hevc_intra", "compression", "x265 CRF", (28, 34, 39, 44, 49), "PyAV, preset medium, I frame", "hevc"),
    Kind("hevc_inter", "compression", "x265 CRF", (28, 34, 39, 44, 49), "PyAV, preset medium, P/B frame", "hevc",
         _inter_reference),
    Kind("av1_intra", "compression", "SVT-AV1 CRF", (45, 51, 56, 60, 63), "PyAV, preset 8, key frame", "av1"),
    Kind("av1_inter", "compression", "SVT-AV1 CRF", (45, 51, 56, 60, 63), "PyAV, preset 8, inter frame", "av1",
         _inter_reference),
    Kind("jpeg_444", "compression", "JPEG quality", (40, 28, 18, 10, 5), "OpenCV (libjpeg-turbo), 4:4:4", "jpeg_444"),
    Kind("jpeg_resized", "compression", "JPEG quality", (60, 45, 30, 18, 8),
         "OpenCV JPEG 4:2:0, then downscaled to 3/4", "jpeg_resized", _jpeg_resized_reference),
    Kind("raw_noise", "noise", "electrons at white", ELECTRONS_AT_WHITE, "RGGB shot + read noise, demosaiced", "raw_noise"),
    Kind("raw_noise_phone", "noise", "electrons at white", ELECTRONS_AT_WHITE,
         "the same, then NLM denoise, sharpen, JPEG q90", "raw_noise_phone"),
    Kind("luma_noise", "noise", "sigma (8-bit)", (4, 7, 10, 14, 20), "Gaussian on Y' only", "luma_noise"),
    Kind("defocus", "blur", "disc radius (px)", (1, 2, 3, 4.5, 6.5), "linear light, brighter rim", "defocus"),
    Kind("resolution_loss", "blur", "downscale factor", (1.5, 2, 2.5, 3.25, 4),
         "area down, bicubic or bilinear up", "resolution_loss"),
    Kind("camera_shake", "blur", "path length (px)", (3, 5, 8, 12, 17), "own trajectories, linear light",
         "camera_shake"),
)
BY_NAME = {k.name: k for k in KINDS}


def _photo_rng(photo: int, pipeline: str) -> np.random.Generator:
    """Draws that hold for a photo at every level (a filter, a shake's shape), so levels differ in strength only."""
    return np.random.default_rng([SEED, photo, list(_PIPELINES).index(pipeline)])


def _level_rng(photo: int, pipeline: str, level: int) -> np.random.Generator:
    return np.random.default_rng([SEED, photo, list(_PIPELINES).index(pipeline), level])


def _kind(kind: str | Kind) -> Kind:
    if isinstance(kind, Kind):
        return kind
    if kind not in BY_NAME:
        raise ValueError(f"unknown kind {kind!r}: choose from {', '.join(BY_NAME)}")
    return BY_NAME[kind]


def _check_picture(rgb: np.ndarray) -> None:
    if not (isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3):
        raise ValueError(f"a picture must be RGB uint8 [H, W, 3], got {getattr(rgb, 'dtype', type(rgb))} "
                         f"{getattr(rgb, 'shape', '')}")
    if rgb.shape[0] % 2 or rgb.shape[1] % 2 or min(rgb.shape[:2]) < 64:
        raise ValueError(f"a picture needs even sides of at least 64 px (Bayer mosaic, 4:2:0 video), "
                         f"got {rgb.shape[1]}x{rgb.shape[0]}")


def _run_pipeline(rgb: np.ndarray, pipeline: str, level: int, photo: int, cache: FileCache) -> dict[str, np.ndarray]:
    value = next(k.levels[level - 1] for k in KINDS if k.pipeline == pipeline)
    out = _PIPELINES[pipeline](rgb, value, _photo_rng(photo, pipeline), _level_rng(photo, pipeline, level), cache)
    return out if isinstance(out, dict) else {pipeline: out}


def degrade(rgb: np.ndarray, kind: str | Kind, level: int, photo: int = 0,
            cache_dir: Path | str | None = None) -> np.ndarray:
    """One picture under one kind at one level: RGB uint8 [H, W, 3] (even sides >= 64) -> RGB uint8.

    Level 0 returns the picture. `photo` seeds the random draws (with the kind and the level): the same
    arguments give the same picture. jpeg_resized returns a picture 3/4 the size. ValueError for an unknown
    kind, a level outside 0..5 or a picture of another form.
    """
    kind = _kind(kind)
    if level not in (0,) + LEVELS:
        raise ValueError(f"level must be one of 0..5, got {level}")
    _check_picture(rgb)
    if level == 0:
        return rgb
    return _run_pipeline(rgb, kind.pipeline, level, photo, FileCache(cache_dir))[kind.name]


def reference(rgb: np.ndarray, kind: str | Kind, photo: int = 0) -> np.ndarray:
    """The undamaged picture a kind's output lines up with (same size and position): the picture itself,
    except for jpeg_resized (the pristine picture downscaled by the same filter) and the inter frames (the
    picture moved as the clip's frame is)."""
    kind = _kind(kind)
    return rgb if kind.reference is None else kind.reference(rgb, _photo_rng(photo, kind.pipeline))


# ------------------------------------------------------------------ the set
@dataclass(frozen=True)
class Entry:
    photo: int
    kind: Kind | None  # None: the pristine picture
    level: int  # 0 for pristine


def _pipeline_job(job: tuple) -> tuple[dict[str, np.ndarray], int, int]:
    rgb, pipeline, level, photo, cache_dir = job
    cache = FileCache(cache_dir)
    return _run_pipeline(rgb, pipeline, level, photo, cache), cache.hits, cache.misses


def build_set(references: Sequence[np.ndarray], workers: int = 1, cache_dir: Path | str | None = None,
              kinds: Sequence[str] | None = None, counts: dict | None = None,
              first_photo: int = 0) -> tuple[list[Entry], list[np.ndarray]]:
    """Every reference pristine, then under every kind (or those named) at every level: (entries, pictures).

    references: RGB uint8 [H, W, 3] pictures, even sides (the pool's validation photos at 512x384:
    training.evaluate.references_from_pool). Photo i (numbered from `first_photo`) draws its noise, filters
    and shake from i, so the first N photos of a longer list give the same pictures. workers > 1: a process
    pool. cache_dir: keep the encoders' files there (see FileCache); `counts`, if given, receives {"cached": files read, "encoded": files encoded}.
    Deterministic. ValueError for an unknown kind or a picture of another form.
    """
    chosen = [_kind(k) for k in kinds] if kinds else list(KINDS)
    for rgb in references:
        _check_picture(rgb)
    pipelines = list(dict.fromkeys(k.pipeline for k in chosen))
    jobs = [(rgb, pipeline, level, photo, cache_dir)
            for photo, rgb in enumerate(references, first_photo) for pipeline in pipelines for level in LEVELS]
    if workers > 1:
        # Spawned, not forked: a child forked from a parent that already runs threads (OpenCV's pool, torch's,
        # gRPC's in a test session) can wait for ever on a lock held at the fork (a CI run hung here, in
        # test_a_pool_of_workers_makes_the_same_pictures). The encoders run on one thread each (VIDEO_CODECS).
        # ... and each worker starts with one thread in OpenCV, OpenBLAS and OpenMP (their pools are sized when
        # the libraries load, from these variables): two workers' pools on two cores also hung at a futex.
        single = {"OPENCV_FOR_THREADS_NUM": "1", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
        saved = {k: os.environ.get(k) for k in single}
        os.environ.update(single)
        try:
            with get_context("spawn").Pool(workers) as pool:
                results = pool.map(_pipeline_job, jobs, chunksize=1)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k)
                else:
                    os.environ[k] = v
    else:
        results = [_pipeline_job(job) for job in jobs]
    made = {(job[3], job[2], name): picture for job, (out, _, _) in zip(jobs, results) for name, picture in out.items()}
    entries, pictures = [], []
    for photo, rgb in enumerate(references, first_photo):
        entries.append(Entry(photo, None, 0))
        pictures.append(rgb)
        for kind in chosen:
            for level in LEVELS:
                entries.append(Entry(photo, kind, level))
                pictures.append(made[photo, level, kind.name])
    if counts is not None:
        counts.update(cached=sum(r[1] for r in results), encoded=sum(r[2] for r in results))
    return entries, pictures


ScoreFn = Callable[[Sequence[np.ndarray]], np.ndarray]  # RGB uint8 pictures -> float [N, 3], FAMILIES order


def evaluate(scorers: dict[str, ScoreFn], references: Sequence[np.ndarray], workers: int = 1,
             cache_dir: Path | str | None = None, kinds: Sequence[str] | None = None, chunk: int = 8,
             counts: dict | None = None) -> tuple[dict[str, Report], list[Entry], dict[str, np.ndarray]]:
    """Build the set `chunk` photos at a time (memory: one chunk's pictures, ~50 MB a photo) and score
    each chunk with every scorer (e.g. {"ours": training.evaluate.model_scorer(model)}); returns
    ({name: Report}, entries, {name: scores float [N, 3]}), the entries those of build_set on all the
    references. ValueError if a scorer returns another shape."""
    entries: list[Entry] = []
    scores: dict[str, list[np.ndarray]] = {name: [] for name in scorers}
    totals = {"cached": 0, "encoded": 0}
    for start in range(0, len(references), chunk):
        part: dict = {}
        chunk_entries, pictures = build_set(references[start : start + chunk], workers, cache_dir, kinds, part, start)
        for name, score_fn in scorers.items():
            chunk_scores = np.asarray(score_fn(pictures), dtype=np.float64)
            if chunk_scores.shape != (len(pictures), len(FAMILIES)):
                raise ValueError(f"scorer {name!r} returned shape {chunk_scores.shape}, "
                                 f"expected {(len(pictures), len(FAMILIES))}")
            scores[name].append(chunk_scores)
        entries += chunk_entries
        totals = {k: totals[k] + part[k] for k in totals}
        del pictures
    if counts is not None:
        counts.update(totals)
    joined = {name: np.concatenate(parts) for name, parts in scores.items()}
    return {name: metrics(entries, s) for name, s in joined.items()}, entries, joined


# ------------------------------------------------------------------ metrics
@dataclass
class Report:
    """The figures of one scorer on the set. Keys: kind names, families and "all" (the mean over kinds)."""

    photos: int = 0
    seed_srcc: dict[str, float] = field(default_factory=dict)  # per kind, family and "all"
    seed_plcc: dict[str, float] = field(default_factory=dict)
    specificity: dict[str, float] = field(default_factory=dict)
    level1_mean: dict[str, dict[str, float]] = field(default_factory=dict)  # kind -> score -> mean at level 1
    level5_mean: dict[str, dict[str, float]] = field(default_factory=dict)
    pristine_mean: dict[str, float] = field(default_factory=dict)  # score -> mean on the pristine pictures

    def rise(self, kind: str, score: str) -> float:
        """A score's mean rise from level 1 to level 5 of a kind."""
        return self.level5_mean[kind][score] - self.level1_mean[kind][score]

    def as_dict(self) -> dict:
        return {k: v for k, v in vars(self).items()}


def metrics(entries: Sequence[Entry], scores: np.ndarray) -> Report:
    """entries from build_set, scores float [N, 3] in FAMILIES order (noise, blur, compression) -> Report.

    Per (photo, kind): Pearson and Spearman of the related score against levels 1..5 (training.evaluate's
    statistics, the seed model's metric) and whether the related score rises more from level 1 to 5 than
    each other score; then means per kind, per family (over its kinds' groups) and over all groups.
    """
    from training.evaluate import pearson, spearman  # only the statistics: the pictures are made above

    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != (len(entries), len(FAMILIES)):
        raise ValueError(f"scores have shape {scores.shape}, expected {(len(entries), len(FAMILIES))}")
    report = Report(photos=len({e.photo for e in entries}))
    groups: dict[tuple[int, str], list[int]] = {}
    for i, e in enumerate(entries):
        if e.kind is not None:
            groups.setdefault((e.photo, e.kind.name), []).append(i)
    per_group = []  # (kind, family, srcc, plcc, specific)
    for (photo, name), rows in groups.items():
        rows = sorted(rows, key=lambda i: entries[i].level)
        family = FAMILIES.index(entries[rows[0]].kind.family)
        levels = np.array([entries[i].level for i in rows], dtype=np.float64)
        related = scores[rows, family]
        rise = scores[rows[-1]] - scores[rows[0]]
        specific = all(rise[family] > rise[other] for other in range(len(FAMILIES)) if other != family)
        per_group.append((name, FAMILIES[family], spearman(related, levels), pearson(related, levels), specific))
    kinds = list(dict.fromkeys(g[0] for g in per_group))
    families = [f for f in FAMILIES if any(g[1] == f for g in per_group)]
    for key, chosen in ([(k, [g for g in per_group if g[0] == k]) for k in kinds]
                        + [(f, [g for g in per_group if g[1] == f]) for f in families] + [("all", per_group)]):
        report.seed_srcc[key] = float(np.mean([g[2] for g in chosen]))
        report.seed_plcc[key] = float(np.mean([g[3] for g in chosen]))
        report.specificity[key] = float(np.mean([g[4] for g in chosen]))
    for name in kinds:
        for level, target in ((1, report.level1_mean), (5, report.level5_mean)):
            rows = [i for i, e in enumerate(entries) if e.kind is not None and e.kind.name == name and e.level == level]
            target[name] = {f: float(scores[rows, index].mean()) for index, f in enumerate(FAMILIES)}
    pristine = [i for i, e in enumerate(entries) if e.kind is None]
    if pristine:
        report.pristine_mean = {f: float(scores[pristine, index].mean()) for index, f in enumerate(FAMILIES)}
    return report


# Issue 21's targets on this set: mean SRCC and specificity over all kinds; per codec SRCC and specificity;
# the compression score's rise under raw sensor noise.
TARGETS = {"all SRCC": 0.95, "all specificity": 0.95, "codec SRCC": 0.95, "codec specificity": 0.90,
           "raw noise compression rise": 0.10}


def levels_table(entries: Sequence[Entry], scores: np.ndarray, family: str = "compression") -> str:
    """What a score means per encoder: for each kind of `family`, its setting at each level and the mean of
    the related score over the photos there (pristine first). A markdown table.

    entries, scores: as metrics() takes them."""
    scores = np.asarray(scores, dtype=np.float64)
    column = FAMILIES.index(family)
    pristine = float(np.mean([scores[i, column] for i, e in enumerate(entries) if e.kind is None]))
    lines = [f"| kind | setting | pristine | " + " | ".join(f"L{level}" for level in LEVELS) + " |",
             "|---|---|---:|" + "---:|" * len(LEVELS)]
    for kind in KINDS:
        if kind.family != family or not any(e.kind is kind for e in entries):
            continue
        means = [np.mean([scores[i, column] for i, e in enumerate(entries) if e.kind is kind and e.level == level])
                 for level in LEVELS]
        settings = " / ".join(f"{v:g}" for v in kind.levels)
        lines.append(f"| {kind.name} | {kind.setting} {settings} | {pristine:.2f} | "
                     + " | ".join(f"{m:.2f}" for m in means) + " |")
    return "\n".join(lines)


def table(report: Report) -> str:
    """A markdown table, one row per kind: setting, related score at levels 1 and 5, SRCC, PLCC,
    specificity and the other two scores' rise; then the means per family and over all kinds."""
    lines = ["| kind | setting, L1 -> L5 | related score, L1 -> L5 | SRCC | PLCC | specificity | other scores' rise |",
             "|---|---|---|---:|---:|---:|---|"]
    for name in report.level1_mean:
        kind = BY_NAME[name]
        others = ", ".join(f"{f} {report.rise(name, f):+.2f}" for f in FAMILIES if f != kind.family)
        lines.append(f"| {name} | {kind.setting} {kind.levels[0]:g} -> {kind.levels[-1]:g} | {kind.family} "
                     f"{report.level1_mean[name][kind.family]:.2f} -> {report.level5_mean[name][kind.family]:.2f} | "
                     f"{report.seed_srcc[name]:.3f} | {report.seed_plcc[name]:.3f} | {report.specificity[name]:.2f} | "
                     f"{others} |")
    for key in [f for f in FAMILIES if f in report.seed_srcc] + ["all"]:
        label = "all kinds" if key == "all" else f"{key} kinds"
        lines.append(f"| **{label}** | | | {report.seed_srcc[key]:.3f} | {report.seed_plcc[key]:.3f} | "
                     f"{report.specificity[key]:.2f} | |")
    return "\n".join(lines)


def summary(reports: dict[str, Report]) -> str:
    """A markdown table with one column per scorer: the all-kinds and per-family figures, the worst kind,
    the raw-noise compression rise, each against issue 21's target."""
    names = list(reports)
    lines = ["| figure | " + " | ".join(names) + " | target |", "|---|" + "---:|" * len(names) + "---|"]

    def row(label: str, getter, target: str = "") -> None:
        lines.append(f"| {label} | " + " | ".join(f"{getter(reports[n]):.4f}" for n in names) + f" | {target} |")

    row("seed metric SRCC, all kinds", lambda r: r.seed_srcc["all"], f">= {TARGETS['all SRCC']}")
    row("seed metric PLCC, all kinds", lambda r: r.seed_plcc["all"])
    row("specificity, all kinds", lambda r: r.specificity["all"], f">= {TARGETS['all specificity']}")
    first = reports[names[0]]
    for family in [f for f in FAMILIES if f in first.seed_srcc]:
        row(f"seed metric SRCC, {family} kinds", lambda r, f=family: r.seed_srcc[f])
        row(f"specificity, {family} kinds", lambda r, f=family: r.specificity[f])
    kinds = list(first.level1_mean)
    row("worst kind SRCC", lambda r: min(r.seed_srcc[k] for k in kinds))
    row("worst kind specificity", lambda r: min(r.specificity[k] for k in kinds))
    if "raw_noise" in kinds:
        row("raw_noise: compression rise", lambda r: r.rise("raw_noise", "compression"),
            f"<= {TARGETS['raw noise compression rise']}")
    return "\n".join(lines)


# ------------------------------------------------------------------ video: iqa video on a CRF ladder
VIDEO_LADDER = {"libx264": (18, 26, 34, 42, 50), "libx265": (20, 28, 36, 44, 51)}
VIDEO_OPTIONS = {"libx264": {"preset": "medium"}, "libx265": {"preset": "medium", "x265-params": "log-level=error"},
                 "libsvtav1": {"preset": "8"}, "libvpx-vp9": {"b:v": "0", "deadline": "good", "cpu-used": "4"}}


def video_frames(pictures: Sequence[np.ndarray], seconds_each: float = 1.0, rate: int = 10) -> list[np.ndarray]:
    """A clip from stills: each picture for `seconds_each`, panning slowly (1.25 px right, 0.5 px down a frame)."""
    frames = []
    for rgb in pictures:
        _check_picture(rgb)
        frames += [shift(rgb, 1.25 * k, 0.5 * k) for k in range(round(seconds_each * rate))]
    return frames


@dataclass(frozen=True)
class VideoRow:
    encoder: str
    crf: float
    size_bytes: int
    frames_scored: int
    frames_failed: int
    noise: float  # each score's mean over the sampled frames
    blur: float
    compression: float


def video_ladder(url: str, pictures: Sequence[np.ndarray], ladders: dict[str, Sequence[float]] | None = None,
                 frames: int = 8, rate: int = 10, folder: Path | str | None = None,
                 timeout: float = 120.0) -> list[VideoRow]:
    """One clip made from `pictures` (video_frames), encoded at every CRF of each encoder's ladder (default
    VIDEO_LADDER: x264 and x265) into an MP4 file and scored through the server at `url` (gRPC) by the
    client's video path (IQAClient.score_video: `frames` frames sampled uniformly, each sent as PNG), as
    `iqa video clip.mp4 --frames N` does. One row per (encoder, CRF), in ladder order. The clips are
    written into `folder` (a temporary one by default). Raises iqa_client.IQAError if the server cannot
    be reached or the clip cannot be read.
    """
    from iqa_client import IQAClient

    ladders = VIDEO_LADDER if ladders is None else ladders
    clip = video_frames(pictures, rate=rate)
    rows = []
    with tempfile.TemporaryDirectory() as temporary, IQAClient(url, timeout=timeout) as client:
        folder = Path(folder or temporary)
        for encoder, crfs in ladders.items():
            for crf in crfs:
                path = folder / f"clip-{encoder}-crf{crf:g}.mp4"
                path.write_bytes(encode_clip(clip, encoder, crf, VIDEO_OPTIONS.get(encoder), rate=rate))
                report = client.score_video(path, frames=frames)
                mean = report.mean
                rows.append(VideoRow(encoder, crf, path.stat().st_size, len(report.frames) - report.frames_failed,
                                     report.frames_failed, *(getattr(mean, f) if mean else float("nan") for f in FAMILIES)))
    return rows


def video_table(rows: Sequence[VideoRow]) -> str:
    lines = ["| encoder | CRF | size (kB) | frames | noise | blur | compression |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r.encoder} | {r.crf:g} | {r.size_bytes / 1000:.1f} | {r.frames_scored} | {r.noise:.3f} | "
                     f"{r.blur:.3f} | {r.compression:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from training import photos

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    video = commands.add_parser("video", help="score a clip of validation photos at a CRF ladder through a server")
    video.add_argument("--server", default="localhost:8001", help="the running server's gRPC address")
    video.add_argument("--pool", type=Path, default=photos.CACHE / "pool")
    video.add_argument("--photos", type=int, default=3, help="validation photos in the clip, one second each")
    video.add_argument("--frames", type=int, default=8, help="frames sampled from each clip")
    video.add_argument("--encoders", default="libx264,libx265",
                       help=f"comma-separated, from {', '.join(VIDEO_OPTIONS)} (CRF ladder: --crfs)")
    video.add_argument("--crfs", help="comma-separated CRFs for every encoder (default: each encoder's ladder)")
    video.add_argument("--keep", type=Path, help="write the clips into this folder")
    build = commands.add_parser("build", help="fill the cache of encoded files for the validation photos")
    build.add_argument("--pool", type=Path, default=photos.CACHE / "pool")
    build.add_argument("--photos", type=int)
    build.add_argument("--workers", type=int, default=2)
    build.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    args = parser.parse_args(argv)
    if args.command == "video":
        encoders = [e.strip() for e in args.encoders.split(",") if e.strip()]
        unknown = [e for e in encoders if e not in VIDEO_OPTIONS]
        if unknown:
            parser.error(f"unknown encoder {unknown[0]!r}: choose from {', '.join(VIDEO_OPTIONS)}")
        crfs = [float(c) for c in args.crfs.split(",")] if args.crfs else None

    from training.evaluate import references_from_pool

    try:
        references = references_from_pool(args.pool, "validation", args.photos)
    except FileNotFoundError as err:
        print(f"real_pipelines: {err}", file=sys.stderr)
        return 2
    if args.command == "build":
        import time

        start = time.perf_counter()
        pictures, counts = 0, {"cached": 0, "encoded": 0}
        for first in range(0, len(references), 8):  # 8 photos' pictures in memory at a time
            part: dict = {}
            pictures += len(build_set(references[first : first + 8], args.workers, args.cache, counts=part,
                                      first_photo=first)[1])
            counts = {k: counts[k] + part[k] for k in counts}
        print(f"{pictures} pictures of {len(references)} photos in {time.perf_counter() - start:.0f} s; "
              f"cache {args.cache}: {counts['cached']} files read, {counts['encoded']} encoded")
        return 0
    ladders = {e: crfs or VIDEO_LADDER.get(e) or (20, 30, 40, 50, 60) for e in encoders}
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    rows = video_ladder(args.server, references, ladders, frames=args.frames, folder=args.keep)
    print(f"a {len(references)}-second clip of validation photos (512x384, 10 fps, slow pan), "
          f"{args.frames} frames sampled, through {args.server}:\n{video_table(rows)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
