"""Decode only what is sampled: a JPEG's patches from the bands of rows they lie in.

A 4000x3000 phone photo is 12 Mpixels; the network sees 4 x 128 x 128 of them. libjpeg-turbo can
skip scanlines and crop columns while it decompresses (`jpeg_skip_scanlines`, `jpeg_crop_scanline`;
TensorFlow's `decode_and_crop_jpeg` is the precedent). This module asks it, through NVIDIA's
nvImageCodec (whose CPU backend bundles libjpeg-turbo 3.1; the same package decodes on the GPU with
nvJPEG), for the few bands of rows the patches lie in plus a margin, and cuts the patches from the
inside of those bands.

The patches are identical to `sample_patches(decode(data))` of iqa.preprocess, pixel for pixel:
- the patches sit where the full route puts them only when the picture has no uniform borders to
  trim (iqa.borders): the bands are decoded across the whole width and the top rows are decoded too
  (a strip of MARGIN + 1 rows, ~0.4 ms at 4000x3000), so that the stored picture's outermost row and
  its outermost columns at the bands' rows are at hand; when they do not prove that no pair of edges
  is uniform (frame_is_content), the full decode answers, and finds the content box;
- the same libjpeg-turbo arithmetic as Pillow's (islow IDCT, fancy upsampling, libjpeg's colour
  conversion, CMYK and YCCK included);
- chroma upsampling at a region's edges sees no neighbours, so every region carries MARGIN extra
  pixels on each side (one 16-pixel MCU, the largest) that are decoded and thrown away;
- EXIF orientation (Pillow's reading of it) is mapped onto the regions: each patch is cut from the
  stored picture and turned with the same transpose `ImageOps.exif_transpose` applies.
tests/test_jpeg_regions.py compares both routes on every kind of JPEG.

Whatever this route is not sure about returns None, and the caller decodes the whole picture as
before, with its errors: other formats, pictures smaller than a patch or whose patches cover most of
the frame, 12-bit, lossless and arithmetic-coded JPEGs, anything but one frame of sequential
(one scan) or progressive Huffman data ending in EOI. The last rule keeps truncated files failing:
a crop never reads the rows below its last band, so a file cut short there would otherwise score.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from iqa.borders import is_uniform
from iqa.contract import CHANNELS, MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, PATCH_SIZE
from iqa.decode_budget import DECODE_BUDGET

log = logging.getLogger(__name__)

# One MCU of the coarsest sampling (2x2 at 8 px): the reach of chroma upsampling across a crop edge.
MARGIN = 16
# Crop a sequential JPEG only when the regions are at most this share of the picture: on smaller pictures
# the bands cover most rows anyway and a full decode is as fast (BENCHMARKS.md, `python -m loadtest.decode_bench`).
# A progressive one is always cropped: every scan is read whatever the region, and its one region (from the
# top row down to the patches) still saves the rows below and Pillow's copies (4000x3000: ~190 ms vs ~330 ms
# for the full route, 1200x800: 14 vs 19 ms, 2-vCPU VM, loaded).
MAX_REGION_SHARE = 0.5

# Orientation tag -> (counter-clockwise quarter turns, then mirror axis or "transpose"): the array
# form of the Pillow transpose ImageOps.exif_transpose applies (2 FLIP_LEFT_RIGHT, 3 ROTATE_180,
# 4 FLIP_TOP_BOTTOM, 5 TRANSPOSE, 6 ROTATE_270, 7 TRANSVERSE, 8 ROTATE_90).
_TURNS: dict[int, tuple[int, int | str | None]] = {
    1: (0, None), 2: (0, 1), 3: (2, None), 4: (0, 0), 5: (0, "transpose"), 6: (3, None), 7: (2, "transpose"), 8: (1, None),
}
# Orientation -> where the upright pixel (x, y) lies in the stored W x H picture.
_STORED_XY: dict[int, Callable[[int, int, int, int], tuple[int, int]]] = {
    1: lambda x, y, w, h: (x, y),
    2: lambda x, y, w, h: (w - 1 - x, y),
    3: lambda x, y, w, h: (w - 1 - x, h - 1 - y),
    4: lambda x, y, w, h: (x, h - 1 - y),
    5: lambda x, y, w, h: (y, x),
    6: lambda x, y, w, h: (y, h - 1 - x),
    7: lambda x, y, w, h: (w - 1 - y, h - 1 - x),
    8: lambda x, y, w, h: (w - 1 - y, x),
}

_SEQUENTIAL = (0xC0, 0xC1)  # SOF0 baseline, SOF1 extended sequential: Huffman, 8-bit here
_PROGRESSIVE = 0xC2  # SOF2
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # C4 DHT, C8 reserved, CC DAC
# Segments a progressive file may carry between its scans: DHT, DQT, DRI, COM, APPn.
_BETWEEN_SCANS = frozenset({0xC4, 0xDB, 0xDD, 0xFE, *range(0xE0, 0xF0)})
_EOI, _SOS = 0xD9, 0xDA


@dataclass(frozen=True)
class Frame:
    """What the marker walk learned about a JPEG's first frame."""

    width: int
    height: int
    progressive: bool  # all coefficients are read before any row comes out: one region, not bands


def read_frame(data: bytes) -> Frame | None:
    """The first frame's size and kind if its scans are complete and of a kind this route decodes.

    Walks the marker segments from SOI to the first EOI. None for anything else: a missing EOI
    (truncated), 12-bit or non-Huffman frames, several scans of a sequential frame, markers that
    do not belong between scans.
    """
    size = len(data)
    if size < 4 or data[0] != 0xFF or data[1] != 0xD8:
        return None
    markers = None  # positions of marker-like bytes in entropy-coded data, found once
    frame, scans, pos = None, 0, 2
    while pos < size - 1:
        if data[pos] != 0xFF:
            return None
        while pos < size - 1 and data[pos + 1] == 0xFF:  # fill bytes
            pos += 1
        marker, pos = data[pos + 1], pos + 2
        if marker == _EOI:
            return frame if frame is not None and scans else None
        if pos + 2 > size:
            return None
        end = pos + int.from_bytes(data[pos : pos + 2], "big")
        if end > size or end < pos + 2:
            return None
        if marker in _SOF:
            if frame is not None or marker not in (*_SEQUENTIAL, _PROGRESSIVE) or end - pos < 8:
                return None
            if data[pos + 2] != 8:  # sample precision
                return None
            height, width = int.from_bytes(data[pos + 3 : pos + 5], "big"), int.from_bytes(data[pos + 5 : pos + 7], "big")
            frame = Frame(width, height, marker == _PROGRESSIVE)
        elif marker == _SOS:
            if frame is None or (scans and not frame.progressive):
                return None
            scans += 1
            if markers is None:
                markers = _entropy_markers(data, end)
            after = np.searchsorted(markers, end)
            if after == len(markers):
                return None  # the data ends inside this scan: truncated
            end = int(markers[after])
        elif scans and marker not in _BETWEEN_SCANS:
            return None
        pos = end
    return None


def _entropy_markers(data: bytes, start: int) -> np.ndarray:
    """Offsets of 0xFF bytes that start a marker from `start` on.

    In entropy-coded data 0xFF is followed by 0x00 (a stuffed byte), 0xD0-0xD7 (a restart marker)
    or another 0xFF (fill); anything else ends the scan. Vectorised: a 2 MB scan takes ~1 ms here.
    """
    tail = np.frombuffer(data, dtype=np.uint8, offset=start)
    ff = np.flatnonzero(tail[:-1] == 0xFF)
    following = tail[ff + 1]
    ends = (following != 0x00) & (following != 0xFF) & ((following < 0xD0) | (following > 0xD7))
    return ff[ends] + start


@dataclass(frozen=True)
class Plan:
    """Where a JPEG's patches lie in its stored pixels, and which regions to decode for them."""

    frame: Frame
    boxes: list[tuple[int, int]]  # (top, left) of each patch in the stored picture, in patch order
    regions: list[tuple[int, int, int, int]]  # (top, left, bottom, right) to decode
    orientation: int  # EXIF orientation as ImageOps.exif_transpose reads it (1 = as stored)
    mode: str = "RGB"  # Pillow's mode of the frame: RGB (YCbCr or RGB data), L (grey) or CMYK (CMYK and YCCK)

    @property
    def pixels(self) -> int:
        """Decoded pixels this plan holds at once (budget): a progressive frame keeps every
        coefficient (~2-3 bytes a pixel), so it is charged whole."""
        if self.frame.progressive:
            return self.frame.width * self.frame.height
        return sum((bottom - top) * (right - left) for top, left, bottom, right in self.regions)


def plan(data: bytes, patch_origins: Callable[[int, int], list[tuple[int, int]]]) -> Plan | None:
    """The regions around a JPEG's patches, or None when this JPEG must take the full decode.

    `patch_origins(height, width)` gives the (top, left) of each patch in the upright picture
    (iqa.preprocess.patch_origins). Never raises for bad input: the full decode names the problem.
    """
    if not 0 < len(data) <= MAX_IMAGE_BYTES or data[:2] != b"\xff\xd8":
        return None
    frame = read_frame(data)
    if frame is None or frame.width * frame.height > MAX_IMAGE_PIXELS:
        return None
    try:
        header = Image.open(io.BytesIO(data), formats=("JPEG",))
        if header.size != (frame.width, frame.height) or header.mode not in ("RGB", "L", "CMYK"):
            return None
        orientation = header.getexif().get(0x0112, 1)  # what ImageOps.exif_transpose reads
    except Exception as err:  # the full decode gives the verdict and the message
        log.debug("region plan fell back to a full decode: %s: %s", type(err).__name__, err)
        return None
    if type(orientation) is not int:
        return None  # whatever exif_transpose makes of it, the full decode does the same
    if orientation not in _TURNS:
        orientation = 1  # exif_transpose leaves other values alone
    width, height = frame.width, frame.height
    upright_w, upright_h = (height, width) if orientation >= 5 else (width, height)
    if min(upright_w, upright_h) < PATCH_SIZE:
        return None  # mirrored out to the patch size by sample_patches: not worth a crop
    stored_xy = _STORED_XY[orientation]
    boxes = []
    for top, left in patch_origins(upright_h, upright_w):
        corners = [stored_xy(x, y, width, height) for x, y in
                   ((left, top), (left + PATCH_SIZE - 1, top + PATCH_SIZE - 1))]
        boxes.append((min(y for _, y in corners), min(x for x, _ in corners)))
    regions = _regions(boxes, width, height, frame.progressive)
    area = sum((bottom - top) * (right - left) for top, left, bottom, right in regions)
    if not frame.progressive and area > MAX_REGION_SHARE * width * height:
        return None
    return Plan(frame, boxes, regions, orientation, header.mode)


def frame_is_content(plan: Plan, pixels: list, xp=np) -> bool:
    """Whether the decoded regions prove that iqa.borders trims nothing, so that the patches lie where
    plan() put them: the stored picture's outermost row is not uniform (so neither pair of edges it
    belongs to is trimmed) and neither are the outermost columns' pixels at the bands' rows (the other pair).

    A sample that is not uniform proves its whole line is not (borders.is_uniform); each region is full
    width and exact away from its crop edges, so the rows used are those MARGIN inside them.
    """
    height = plan.frame.height
    lefts, rights = [], []
    for (top, _, bottom, _), region in zip(plan.regions, pixels):
        if top == 0 and is_uniform(region[0]):
            return False
        inner = region[(MARGIN if top > 0 else 0) : region.shape[0] - (MARGIN if bottom < height else 0)]
        lefts.append(inner[:, 0])
        rights.append(inner[:, -1])
    return not is_uniform(xp.concatenate(lefts)) or not is_uniform(xp.concatenate(rights))


def cut(plan: Plan, pixels: list, xp=np):
    """The patches [K, 3, P, P] from the decoded regions ([h, w, 3] each, in plan.regions order), or None
    where the picture may have uniform borders (frame_is_content): then the full decode must place them.

    `xp` is the array library of `pixels`, numpy's API: numpy on the CPU, CuPy on a GPU; the
    orientation is applied with flips and quarter turns, as exif_transpose would.
    """
    if not frame_is_content(plan, pixels, xp):
        return None
    blocks = []
    for top, left in plan.boxes:
        which = next(i for i, (r_top, r_left, r_bottom, r_right) in enumerate(plan.regions)
                     if r_top <= top and top + PATCH_SIZE <= r_bottom and r_left <= left and left + PATCH_SIZE <= r_right)
        r_top, r_left = plan.regions[which][:2]
        block = pixels[which][top - r_top : top - r_top + PATCH_SIZE, left - r_left : left - r_left + PATCH_SIZE]
        blocks.append(_turn(block, plan.orientation, xp))
    return xp.ascontiguousarray(xp.stack(blocks).transpose(0, 3, 1, 2))  # [K, P, P, 3] -> [K, 3, P, P]


def _turn(block, orientation: int, xp):
    """Pillow's transpose for `orientation` (ImageOps.exif_transpose) on an [h, w, c] array."""
    quarter_turns, mirror = _TURNS[orientation]
    block = xp.rot90(block, quarter_turns) if quarter_turns else block
    return block.swapaxes(0, 1) if mirror == "transpose" else xp.flip(block, mirror) if mirror is not None else block


def sample_patches(data: bytes, patch_origins: Callable[[int, int], list[tuple[int, int]]]) -> np.ndarray | None:
    """Encoded JPEG bytes -> patches uint8 PATCH_SHAPE, decoding only the regions around them (CPU).

    Returns None when this JPEG must take the full decode (see plan()); never raises for bad input.
    """
    found = plan(data, patch_origins)
    if found is None or not available():
        return None
    try:
        with DECODE_BUDGET.hold(found.pixels):
            pixels = _decode_regions(data, found)
            return None if pixels is None else cut(found, pixels)
    except Exception as err:  # the full decode gives the verdict and the message
        log.debug("region decode fell back to a full decode: %s: %s", type(err).__name__, err)
        return None


def _regions(boxes, width: int, height: int, progressive: bool) -> list[tuple[int, int, int, int]]:
    """(top, left, bottom, right) regions to decode: the top rows and one band per row of patches, each
    across the whole width (frame_is_content reads their outermost pixels), or one box from the top.

    A sequential decode skips the rows between bands (their entropy data is still read, but not
    transformed; the columns outside the patches cost little: 24.0 vs 23.9 ms at 4000x3000 here) and
    stops after its last row (the top strip: ~0.4 ms); a progressive one reads every scan anyway, so
    one decode of the box from the top row down to the patches.
    """
    spans = sorted((top, top + PATCH_SIZE) for top, _ in boxes)
    groups: list[list[int]] = [[0, 1]] if progressive else []
    for top, bottom in spans:
        if groups and (progressive or top < groups[-1][1] + 2 * MARGIN):
            groups[-1][1] = max(groups[-1][1], bottom)
        else:
            groups.append([top, bottom])
    regions = [(max(top - MARGIN, 0), 0, min(bottom + MARGIN, height), width) for top, bottom in groups]
    if regions[0][0] > 0:
        regions.insert(0, (0, 0, min(1 + MARGIN, height), width))
    return regions


# --- the decoder: nvImageCodec's CPU backend (libjpeg-turbo), one per thread ---------------------

_local = threading.local()
_status: dict[str, object] = {}
_status_lock = threading.Lock()


def available() -> bool:
    """Whether nvImageCodec's CPU JPEG decoder loads here (else every JPEG takes the full decode)."""
    return _decoder() is not None


def region_streams(data: bytes, found: Plan) -> list | None:
    """nvImageCodec code streams of `found`'s regions (for a decoder on any backend), or None."""
    from nvidia import nvimgcodec

    stream = nvimgcodec.CodeStream(data)
    if (stream.width, stream.height) != (found.frame.width, found.frame.height):
        return None
    return [stream.get_sub_code_stream(region=nvimgcodec.Region(start=(top, left), end=(bottom, right)))
            for top, left, bottom, right in found.regions]


def decoded_as_expected(image, region: tuple[int, int, int, int]) -> bool:
    top, left, bottom, right = region
    return image is not None and tuple(image.shape) == (bottom - top, right - left, CHANNELS) and \
        str(image.dtype).endswith("uint8")


def _decode_regions(data: bytes, found: Plan) -> list[np.ndarray] | None:
    decoder, params = _decoder()
    streams = region_streams(data, found)
    if streams is None:
        return None
    images = decoder.decode(streams, params=params)
    if not all(decoded_as_expected(image, region) for image, region in zip(images, found.regions)):
        return None
    return [np.asarray(image) for image in images]


def _decoder():
    """This thread's (decoder, params), or None where nvImageCodec cannot decode on this machine."""
    state = getattr(_local, "decoder", False)
    if state is False:
        state = _local.decoder = _new_decoder()
    return state


def _new_decoder():
    with _status_lock:
        if _status.get("broken"):
            return None
        try:
            made = _make_decoder(None)
        except Exception as err:  # noqa: BLE001 - any failure here means: decode whole pictures
            _status["broken"] = True
            log.warning("JPEG region decode unavailable (%s: %s): every JPEG is decoded whole", type(err).__name__, err)
            return None
        if not _status.get("announced"):
            _status["announced"] = True
            log.info("JPEG region decode: nvImageCodec CPU backend (libjpeg-turbo)")
        return made


def batch_decoder(gpu: int | None):
    """(decoder, params) decoding on GPU `gpu` with nvImageCodec's GPU backends only (what they refuse
    comes back None, for the CPU route), or with libjpeg-turbo when None. Raises if they cannot load."""
    return _make_decoder(gpu)


# nvImageCodec's GPU backends, first choice first: the hardware JPEG decoder (A100, H100, H200: its
# JPEG engines, regions supported), then nvJPEG's CUDA decoder, then nvJPEG's hybrid (Huffman on the
# CPU, the rest on the GPU). No CPU_ONLY: a batch the GPU cannot decode must take the CPU route with
# the CPU route's budget and errors, not a silent CPU decode here (iqa.batch_decode.RegionDecoder).
GPU_BACKENDS = ("HW_GPU_ONLY", "GPU_ONLY", "HYBRID_CPU_GPU")


def _make_decoder(gpu: int | None):
    """An nvImageCodec decoder on GPU `gpu`, or on the CPU (one thread: the callers' threads are the
    parallelism) when None; and the parameters that keep libjpeg's colour handling."""
    # Without a GPU its extension loader complains ("failed to load nvJPEG") on every machine that
    # never wanted one: its log stays at error level and below, the loader's prints go to debug.
    # A GPU decoder is made in the open: there a missing nvJPEG is news.
    os.environ.setdefault("PYNVIMGCODEC_VERBOSITY", "0")
    with _stderr_to_debug_log() if gpu is None else contextlib.nullcontext():
        from nvidia import nvimgcodec

        kinds = nvimgcodec.BackendKind
        if gpu is None:
            decoder = nvimgcodec.Decoder(device_id=nvimgcodec.NVIMGCODEC_DEVICE_CPU_ONLY, max_num_cpu_threads=1,
                                         backends=[nvimgcodec.Backend(kinds.CPU_ONLY)])
        else:
            decoder = nvimgcodec.Decoder(device_id=gpu, backends=[nvimgcodec.Backend(getattr(kinds, kind))
                                                                  for kind in GPU_BACKENDS])
        params = nvimgcodec.DecodeParams(apply_exif_orientation=False, color_spec=nvimgcodec.ColorSpec.SRGB,
                                         allow_any_depth=False)
    return decoder, params


class _stderr_to_debug_log:
    """Capture what native code prints on fd 2 while nvImageCodec loads its extensions.

    Its extension loader prints "Failed to load nvjpeg library! Please install CUDA toolkit ..." on
    machines without a GPU, where no GPU library is wanted; the text goes to this module's debug log.
    """

    def __enter__(self):
        self._saved = os.dup(2)
        self._sink = tempfile.TemporaryFile()
        os.dup2(self._sink.fileno(), 2)

    def __exit__(self, *exc):
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._sink.seek(0)
        text = self._sink.read().decode(errors="replace").strip()
        self._sink.close()
        if text:
            log.debug("nvImageCodec at start-up: %s", text)
        return False


def scans_complete(data: bytes) -> bool:
    """Whether a JPEG that ends without EOI holds every scan its frame needs, up to its last one.

    True when the bytes run from SOI through one Huffman frame (sequential or progressive, 8-bit) and
    end inside the entropy-coded data of a scan, and the scans so far cover the whole frame: in a
    sequential frame every component is in a scan; in a progressive one every coefficient (0-63) of
    every component has reached full precision (a scan with Al = 0 over it). Whether that last scan is
    itself whole only the decoder can tell (iqa.preprocess._jpeg_without_end_marker asks it). False for
    anything else, a file cut between two scans of a progressive frame included.
    """
    size = len(data)
    if size < 4 or data[:2] != b"\xff\xd8":
        return False
    components: list[int] = []
    full: dict[int, set[int]] = {}  # component -> coefficients at full precision
    progressive, markers, pos = False, None, 2
    while pos < size - 1:
        if data[pos] != 0xFF:
            return False
        while pos < size - 1 and data[pos + 1] == 0xFF:  # fill bytes
            pos += 1
        marker, pos = data[pos + 1], pos + 2
        if marker == _EOI or pos + 2 > size:
            return False
        end = pos + int.from_bytes(data[pos : pos + 2], "big")
        if end > size or end < pos + 2:
            return False
        segment = data[pos + 2 : end]
        if marker in _SOF:
            if components or marker not in (*_SEQUENTIAL, _PROGRESSIVE) or len(segment) < 6 or segment[0] != 8:
                return False
            progressive = marker == _PROGRESSIVE
            components = [segment[6 + 3 * i] for i in range(segment[5]) if 8 + 3 * i < len(segment)]
            full = {component: set() for component in components}
        elif marker == _SOS:
            count = segment[0] if segment else 0
            if not components or len(segment) < 1 + 2 * count + 3:
                return False
            start, stop, approximation = segment[1 + 2 * count : 4 + 2 * count]
            if approximation & 0x0F == 0:  # Al = 0: these coefficients are now at full precision
                band = range(0, 64) if not progressive else range(start, min(stop, 63) + 1)
                for component in segment[1 : 1 + 2 * count : 2]:
                    full.get(component, set()).update(band)
            if markers is None:
                markers = _entropy_markers(data, end)
            after = np.searchsorted(markers, end)
            if after == len(markers):  # the data ends inside this scan
                return all(len(coefficients) == 64 for coefficients in full.values())
            end = int(markers[after])
        pos = end
    return False
