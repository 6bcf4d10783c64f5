"""Bounded fuzzing of the decode path: random and mutated image bytes give patches or an ImageError.

Never another exception (the server would answer INTERNAL instead of a clear INVALID_ARGUMENT),
never a hang. Seeds are real encodings of a real photo in every accepted format, so mutations
reach deep into each decoder rather than failing at the magic number.
"""

import functools
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iqa.contract import PATCH_SHAPE
from iqa.preprocess import ImageError, preprocess
from tests.odd_images import encode, photo

SECONDS_PER_INPUT = 5.0
# Pillow warns about the corrupt tags it skips; the outcome is what is checked here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@functools.cache
def seeds() -> list[bytes]:
    small = photo().resize((96, 64))
    return [encode(small, "JPEG", quality=80), encode(small, "PNG"), encode(small, "WEBP", quality=80),
            encode(small, "BMP"), encode(small, "TIFF"), encode(small.convert("P"), "GIF"),
            encode(small, "TIFF", compression="tiff_lzw"), encode(small.convert("L"), "PNG")]


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(seeds())))
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(st.sampled_from(["flip", "set", "truncate", "insert", "delete"]))
        at = draw(st.integers(0, max(len(data) - 1, 0)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80]))
        elif kind == "truncate":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 16))]
    return bytes(data)


def check(data: bytes) -> None:
    start = time.monotonic()
    try:
        patches = preprocess(data)
    except ImageError as err:
        assert str(err)  # a message to show the caller
    else:
        assert patches.shape == PATCH_SHAPE and patches.dtype == np.uint8
    assert time.monotonic() - start < SECONDS_PER_INPUT, f"{len(data)} bytes took too long"


@settings(max_examples=2000, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_images_give_patches_or_an_image_error(data):
    check(data)


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.binary(max_size=4096))
def test_random_bytes_give_an_image_error(data):
    check(data)
