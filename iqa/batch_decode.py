"""A dynamic batch of images -> patches: JPEG regions decoded together on a device, the rest one by one.

The preprocess model hands its whole dynamic batch here. With a RegionDecoder on a GPU, every JPEG
that iqa.jpeg_regions can plan and the GPU should decode goes through one batched nvImageCodec decode
of the regions around its patches (the hardware JPEG decoder or nvJPEG), the patches are cut from
the decoded regions on the device (CuPy), and the batch's patches come to the host in one copy.
Every other payload, and every JPEG the device could not decode, takes iqa.preprocess.preprocess:
the same pixels for the same bytes and the same errors (the bad-input matrix of tests/odd_images.py),
request by request. What stays on the CPU route, and why:
- CMYK and YCCK JPEGs: nvJPEG's colour conversion of them is not libjpeg's (Pillow's);
- progressive JPEGs: every coefficient of the whole frame is held while decoding, so a batch of them
  is a batch of whole pictures; on the CPU route each holds its own share of the decode budget.

Status (issue 13, item 2; issue 22): tested on CPU, where RegionDecoder("cpu") runs the same code on
nvImageCodec's CPU backend with numpy standing in for CuPy. On a GPU: run loadtest/gpu/perf.sh, which
compares the patches' scores with the CPU route's (near-flat pictures included, loadtest.perf
region_decode_agreement) before the committed config turns it on.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable, Iterable

import numpy as np

from iqa import jpeg_regions
from iqa.decode_budget import DECODE_BUDGET
from iqa.preprocess import patch_origins, preprocess

log = logging.getLogger(__name__)

# What the device decodes (Pillow's modes): nvJPEG converts CMYK / YCCK its own way, unlike libjpeg.
DEVICE_MODES = ("RGB", "L")


class RegionDecoder:
    """Decodes the patch regions of a batch of JPEGs with nvImageCodec on `device` ("cpu" or "cuda[:N]")
    and cuts the patches there: a list of uint8 [K, 3, P, P] numpy arrays, None where the CPU route
    must answer.

    Raises RuntimeError at construction when `device` is a GPU that nvImageCodec cannot decode on
    (no driver, no nvJPEG where its extension looks, no CuPy): asking for the GPU and silently getting
    the CPU would make served and in-process GPU figures disagree.
    """

    def __init__(self, device: str = "cuda:0"):
        kind, _, index = device.partition(":")
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"region decode device must be cpu, cuda or cuda:N, not {device!r}")
        self.device = device
        self.gpu = int(index or 0) if kind == "cuda" else None
        self._check_decodes_on_device()
        if self.gpu is None:
            self.xp = np
        else:
            try:
                import cupy
            except ImportError as err:
                raise RuntimeError(f"the region decode on {device} cuts patches with CuPy, which is not installed "
                                   f"here ({err}): pip install cupy-cuda13x (pyproject.toml, extra 'gpu')") from None
            self.xp = cupy

    def _check_decodes_on_device(self) -> None:
        """Make the decoder and decode a small JPEG: on a GPU the result must lie in device memory."""
        from PIL import Image

        probe = io.BytesIO()
        Image.new("RGB", (64, 64), (90, 140, 200)).save(probe, "JPEG")
        image = None
        try:
            from nvidia import nvimgcodec

            self._decoder, self._params = jpeg_regions.batch_decoder(self.gpu)
            (image,) = self._decoder.decode([nvimgcodec.CodeStream(probe.getvalue())], params=self._params)
            why = "no backend decoded a baseline JPEG"
        except Exception as err:  # noqa: BLE001 - whatever it is, this device does not decode
            why = f"{type(err).__name__}: {err}"
        on_device = image is not None and str(image.buffer_kind).endswith("DEVICE")
        if image is None or (self.gpu is not None and not on_device):
            raise RuntimeError(
                f"nvImageCodec cannot decode JPEGs on {self.device} here ({why}); on a GPU it needs the driver "
                "(libcuda.so.1) and libnvjpeg.so.13 where its nvJPEG extension looks, site-packages/nvidia/cu13/lib "
                "(the nvidia-nvjpeg wheel, pyproject.toml)")

    def __call__(self, payloads: list[bytes]) -> list:
        xp = self.xp
        plans = [jpeg_regions.plan(data, patch_origins) for data in payloads]
        taken = [index for index, found in enumerate(plans) if found is not None
                 and found.mode in DEVICE_MODES and not found.frame.progressive]
        streams, owners = [], []
        for index in taken:
            if (regions := jpeg_regions.region_streams(payloads[index], plans[index])) is not None:
                streams += regions
                owners += [index] * len(regions)
        patches: list = [None] * len(payloads)
        if not streams:
            return patches
        # The decoded regions of the whole batch exist at once: they hold their pixels from the instance's
        # decode budget as the CPU route's decodes do (a batch larger than the budget runs alone).
        with DECODE_BUDGET.hold(sum(plans[index].pixels for index in set(owners))):
            images = self._decoder.decode(streams, params=self._params)
            decoded: dict[int, list] = {}
            for owner, image in zip(owners, images):
                decoded.setdefault(owner, []).append(image)
            cut: dict[int, object] = {}
            for index, regions in decoded.items():
                found = plans[index]
                if all(jpeg_regions.decoded_as_expected(image, region) for image, region in zip(regions, found.regions)):
                    patches_of = jpeg_regions.cut(found, [xp.asarray(image) for image in regions], xp)
                    if patches_of is not None:  # None: maybe bordered (iqa.borders), the CPU route places them
                        cut[index] = patches_of
            if cut:
                # One copy of the batch's patches to the host (one synchronisation), not one per image.
                stacked = xp.stack(list(cut.values()))
                host = stacked.get() if xp is not np else stacked
                for index, array in zip(cut, host):
                    patches[index] = array
        return patches


def preprocess_batch(payloads: list[bytes], region_decoder: RegionDecoder | None = None,
                     map_: Callable[[Callable, Iterable], Iterable] = map) -> list:
    """Each payload's patches (uint8 [K, 3, P, P], numpy) or the exception preprocess() raises for it.

    `map_` runs the one-by-one route (the preprocess model passes its thread pool's map).
    """
    outcomes: list = [None] * len(payloads)
    if region_decoder is not None:
        try:
            for index, patches in enumerate(region_decoder(payloads)):
                if patches is not None:
                    outcomes[index] = patches
        except Exception as err:  # a device failure must not fail the batch: the CPU route answers
            log.warning("batched region decode failed, the batch takes the CPU route: %s: %s", type(err).__name__, err)
            outcomes = [None] * len(payloads)
    rest = [i for i, outcome in enumerate(outcomes) if outcome is None]
    for index, outcome in zip(rest, map_(_try_preprocess, [payloads[i] for i in rest])):
        outcomes[index] = outcome
    return outcomes


def _try_preprocess(data: bytes):
    try:
        return preprocess(data)
    except Exception as err:  # reported per request by the caller; never fails the batch
        return err
