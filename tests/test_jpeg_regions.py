"""Decoding only the regions around the patches gives the patches of a full decode, on every kind of JPEG.

Each file is built here from a real photo with added grain (so every 8x8 block carries detail and
chroma upsampling has something to get wrong at a crop edge), then both routes run:
iqa.jpeg_regions.sample_patches (the crop) and sample_patches(decode(...)) (Pillow, the whole picture).
"""

import functools
import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from iqa import jpeg_regions
from iqa.preprocess import ImageError, decode, patch_origins, preprocess, sample_patches
from tests.odd_images import encode, photo

ORIENTATION = 0x0112


@functools.cache
def grainy(width: int, height: int) -> Image.Image:
    rgb = np.asarray(photo().resize((width, height), Image.Resampling.BICUBIC), dtype=np.int16)
    grain = np.random.default_rng(width * height).normal(0, 4, rgb.shape).astype(np.int16)
    return Image.fromarray(np.clip(rgb + grain, 0, 255).astype(np.uint8))


def jpeg(image: Image.Image, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=params.pop("format", "JPEG"), quality=params.pop("quality", 90), **params)
    return buffer.getvalue()


def with_orientation(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    return jpeg(grainy(1000, 700), exif=exif.tobytes())


def with_xmp_orientation(orientation: int) -> bytes:
    """No EXIF, an XMP tiff:Orientation: Pillow's getexif() reads it there too."""
    xmp = ('<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
           f'<rdf:Description xmlns:tiff="http://ns.adobe.com/tiff/1.0/" tiff:Orientation="{orientation}"/>'
           "</rdf:RDF></x:xmpmeta>").encode()
    return jpeg(grainy(1000, 700), xmp=xmp)


def ycck() -> bytes:
    """A CMYK JPEG relabelled YCCK: the Adobe marker's transform flag set to 2 (libjpeg converts it)."""
    data = bytearray(jpeg(grainy(900, 700).convert("CMYK")))
    adobe = data.find(b"\xff\xeeAdobe"[:2])
    assert data[adobe + 4 : adobe + 9] == b"Adobe" and data[adobe + 15] == 0
    data[adobe + 15] = 2
    return bytes(data)


def mpo() -> bytes:
    first, second = grainy(1000, 750), grainy(1000, 750).transpose(Image.Transpose.ROTATE_180)
    return jpeg(first, format="MPO", save_all=True, append_images=[second])


KINDS = {
    "baseline_420": lambda: jpeg(grainy(1200, 800), subsampling="4:2:0"),
    "baseline_422": lambda: jpeg(grainy(1200, 800), subsampling="4:2:2"),
    "baseline_444": lambda: jpeg(grainy(1200, 800), subsampling="4:4:4"),
    "quality_100_optimized": lambda: jpeg(grainy(1200, 800), quality=100, optimize=True),
    "progressive_420": lambda: jpeg(grainy(1200, 800), progressive=True),
    "progressive_444": lambda: jpeg(grainy(1200, 800), progressive=True, subsampling="4:4:4"),
    "greyscale": lambda: jpeg(grainy(1200, 800).convert("L")),
    "greyscale_progressive": lambda: jpeg(grainy(1200, 800).convert("L"), progressive=True),
    "cmyk": lambda: jpeg(grainy(900, 700).convert("CMYK")),
    "ycck": ycck,
    "restart_markers": lambda: jpeg(grainy(1200, 800), restart_marker_blocks=5),
    "restart_markers_progressive": lambda: jpeg(grainy(1200, 800), restart_marker_rows=1, progressive=True),
    "odd_size_1013x771_420": lambda: jpeg(grainy(1013, 771)),
    "odd_size_771x1013_422": lambda: jpeg(grainy(771, 1013), subsampling="4:2:2"),
    "odd_size_1021x769_progressive": lambda: jpeg(grainy(1021, 769), progressive=True),
    "mpo_two_frames": mpo,
    "trailing_bytes_after_eoi": lambda: jpeg(grainy(1200, 800)) + b"\x00trailer" * 100,
    "tall_strip_400x3000": lambda: jpeg(grainy(400, 3000)),
    **{f"exif_orientation_{o}": functools.partial(with_orientation, o) for o in range(1, 9)},
    "xmp_orientation_8": functools.partial(with_xmp_orientation, 8),
}


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_cropped_decode_gives_the_patches_of_a_full_decode(kind):
    data = KINDS[kind]()
    cropped = jpeg_regions.sample_patches(data, patch_origins)
    assert cropped is not None, f"{kind} took the full decode: this test would compare a route with itself"
    np.testing.assert_array_equal(cropped, sample_patches(decode(data)))
    np.testing.assert_array_equal(preprocess(data), cropped)


def test_exif_orientation_turns_the_patches_like_a_full_decode():
    # The stored pixels differ per orientation; the upright pictures agree (orientation 6 stores a
    # quarter turn that the tag undoes), so the patches of both files must be the same.
    upright = grainy(1000, 700)
    exif = Image.Exif()
    exif[ORIENTATION] = 6
    stored = jpeg(upright.transpose(Image.Transpose.ROTATE_90), exif=exif.tobytes(), subsampling="4:4:4", quality=100)
    reference = sample_patches(decode(stored))
    np.testing.assert_array_equal(jpeg_regions.sample_patches(stored, patch_origins), reference)
    assert decode(stored).shape == (700, 1000, 3)


def test_the_crop_decodes_a_fraction_of_the_picture():
    frame = jpeg_regions.read_frame(KINDS["baseline_420"]())
    boxes = patch_origins(frame.height, frame.width)
    regions = jpeg_regions._regions(boxes, frame.width, frame.height, progressive=False)
    # the top rows (the outermost row, for iqa.borders) and one band per row of patches, each across the width
    assert len(regions) == 3 and regions[0][:3] == (0, 0, 1 + jpeg_regions.MARGIN)
    assert all(left == 0 and right == frame.width for _, left, _, right in regions)
    area = sum((b - t) * (r - l) for t, l, b, r in regions)
    assert area < jpeg_regions.MAX_REGION_SHARE * frame.width * frame.height


@pytest.mark.parametrize("kind", ["small_photo", "png", "truncated", "twelve_bits_claimed", "arithmetic_claimed"])
def test_what_cannot_be_cropped_takes_the_full_decode(kind):
    data = {
        "small_photo": lambda: jpeg(grainy(512, 384)),  # the bands would cover most of it
        "png": lambda: encode(grainy(1200, 800), "PNG"),
        "truncated": lambda: (lambda d: d[: len(d) * 9 // 10])(jpeg(grainy(1200, 800))),
        "twelve_bits_claimed": lambda: _patch_sof(jpeg(grainy(1200, 800)), precision=12),
        "arithmetic_claimed": lambda: _patch_sof(jpeg(grainy(1200, 800)), marker=0xC9),
    }[kind]()
    assert jpeg_regions.sample_patches(data, patch_origins) is None


def _patch_sof(data: bytes, precision: int | None = None, marker: int | None = None) -> bytes:
    data = bytearray(data)
    sof = data.find(b"\xff\xc0")
    if precision is not None:
        data[sof + 4] = precision
    if marker is not None:
        data[sof + 1] = marker
    return bytes(data)


def test_a_large_jpeg_cut_short_below_its_patches_still_gets_the_truncated_error():
    data = jpeg(grainy(1200, 800))
    cut = data[: len(data) * 95 // 100]  # every patch row is still in the file
    with pytest.raises(ImageError, match="truncated"):
        preprocess(cut)


@functools.cache
def _fuzz_seeds() -> list[bytes]:
    return [KINDS["baseline_420"](), KINDS["progressive_420"](), KINDS["restart_markers"](), with_orientation(6)]


@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_mutated_large_jpegs_get_the_same_answer_from_both_routes(draw):
    data = bytearray(draw.draw(st.sampled_from(_fuzz_seeds())))
    for _ in range(draw.draw(st.integers(1, 4))):
        if not data:
            break
        at = draw.draw(st.integers(0, len(data) - 1))
        kind = draw.draw(st.sampled_from(["flip", "set", "truncate", "delete"]))
        if kind == "flip":
            data[at] ^= 1 << draw.draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw.draw(st.sampled_from([0x00, 0xFF, 0xD9, 0xDA]))
        elif kind == "truncate":
            del data[at:]
        else:
            del data[at : at + draw.draw(st.integers(1, 16))]
    data = bytes(data)
    cropped = jpeg_regions.sample_patches(data, patch_origins)
    if cropped is None:
        return  # the full decode answers, as before
    try:
        full = sample_patches(decode(data))
    except ImageError as err:
        pytest.fail(f"the crop scored a file the full decode refuses: {err}")
    np.testing.assert_array_equal(cropped, full)
