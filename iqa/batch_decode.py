"""A dynamic batch of images -> patches: JPEG regions decoded together on a device, the rest one by one.

The preprocess model hands its whole dynamic batch here. With a RegionDecoder on a GPU, every JPEG
that iqa.jpeg_regions can plan goes through one batched nvImageCodec decode of the regions around
its patches (nvJPEG on the GPU; its libjpeg-turbo CPU backend for what the GPU refuses) and the
patches are cut from the decoded regions on the device. Every other payload, and every JPEG the
device could not decode, takes iqa.preprocess.preprocess: the same pixels for the same bytes and
the same errors (the bad-input matrix of tests/odd_images.py), request by request.

Status (issue 13, item 2): tested on CPU, where RegionDecoder("cpu") runs the same code on
nvImageCodec's CPU backend with torch tensors on the CPU. On a GPU: run loadtest/gpu/perf.sh, and
check that served scores agree with the CPU path within 0.01 (nvJPEG's IDCT and upsampling are not
libjpeg-turbo's, so the patches differ slightly) before turning it on in the committed config.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

from iqa import jpeg_regions
from iqa.preprocess import patch_origins, preprocess

log = logging.getLogger(__name__)


class RegionDecoder:
    """Decodes the patch regions of a batch of JPEGs with nvImageCodec on `device` ("cpu" or "cuda:N")
    and cuts the patches there: a list of uint8 [K, 3, P, P] torch tensors on `device`, None where the
    CPU route must answer."""

    def __init__(self, device: str = "cuda:0"):
        import torch

        self.device = torch.device(device)
        self._decoder, self._params = jpeg_regions.batch_decoder(self.device)

    def __call__(self, payloads: list[bytes]) -> list:
        import torch

        plans = [jpeg_regions.plan(data, patch_origins) for data in payloads]
        streams, owners = [], []
        for index, (data, found) in enumerate(zip(payloads, plans)):
            if found is not None and (regions := jpeg_regions.region_streams(data, found)) is not None:
                streams += regions
                owners += [index] * len(regions)
        images = self._decoder.decode(streams, params=self._params) if streams else []
        decoded: dict[int, list] = {}
        for owner, image in zip(owners, images):
            decoded.setdefault(owner, []).append(image)
        patches: list = [None] * len(payloads)
        for index, regions in decoded.items():
            found = plans[index]
            if all(jpeg_regions.decoded_as_expected(image, region) for image, region in zip(regions, found.regions)):
                tensors = [_as_tensor(image, torch) for image in regions]
                patches[index] = jpeg_regions.cut(found, tensors, torch)
        return patches


def _as_tensor(image, torch):
    """An nvImageCodec image as a torch tensor where it lies: DLPack on the GPU, numpy on the host."""
    if str(image.buffer_kind).endswith("DEVICE"):
        return torch.from_dlpack(image)
    import numpy as np

    return torch.from_numpy(np.asarray(image))


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
                    outcomes[index] = patches.cpu().numpy()
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

