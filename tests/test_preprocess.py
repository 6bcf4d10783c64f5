"""Decoding and patch sampling in-process (the same code the iqa_preprocess model runs)."""

import io
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image

from iqa.contract import (
    ACCEPTED_FORMATS,
    IMAGE_SUFFIXES,
    MAX_IMAGE_BYTES,
    MAX_IMAGE_PIXELS,
    PATCH_GRID,
    PATCH_SHAPE,
    PATCH_SIZE,
)
from iqa.preprocess import ImageError, decode, preprocess, sample_patches
from tests import odd_images
from tests.odd_images import CASES, encode, photo


@pytest.mark.parametrize("case", sorted(CASES))
def test_each_odd_input_gets_patches_or_a_named_error(case):
    make, error = CASES[case]
    if error is None:
        patches = preprocess(make())
        assert patches.shape == PATCH_SHAPE and patches.dtype == np.uint8
    else:
        with pytest.raises(ImageError, match=error):
            preprocess(make())


def test_exif_orientation_is_applied():
    upright, rotated = odd_images.exif_rotated_png()
    assert decode(rotated).shape == decode(upright).shape
    np.testing.assert_array_equal(decode(rotated), decode(upright))


def test_transparency_is_composited_over_white():
    rgb = decode(odd_images.png_with_alpha())
    assert (rgb[:, 0] == 255).all()  # alpha 0 in the first column
    np.testing.assert_allclose(rgb[:, -1], np.asarray(photo())[:, -1], atol=1)  # alpha 255 in the last


def test_16bit_grey_keeps_its_top_8_bits():
    expected = np.asarray(photo().convert("L"))
    np.testing.assert_array_equal(decode(odd_images.png_16bit())[:, :, 0], expected)


def test_cmyk_jpeg_comes_back_as_the_rgb_picture():
    rgb = decode(encode(photo().convert("CMYK"), "JPEG", quality=95)).astype(float)
    assert np.abs(rgb - np.asarray(photo(), dtype=float)).mean() < 8


def test_animated_gif_uses_its_first_frame():
    first = encode(photo().convert("P"), "GIF")
    np.testing.assert_array_equal(decode(odd_images.animated_gif()), decode(first))


def test_patches_are_native_resolution_crops_spread_over_the_frame():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(2000, 3000, 3), dtype=np.uint8)
    patches = sample_patches(rgb)
    rows, cols = PATCH_GRID
    for index, patch in enumerate(patches):
        row, col = divmod(index, cols)
        top = round((row + 0.5) * 2000 / rows - PATCH_SIZE / 2)
        left = round((col + 0.5) * 3000 / cols - PATCH_SIZE / 2)
        np.testing.assert_array_equal(patch, rgb[top : top + PATCH_SIZE, left : left + PATCH_SIZE].transpose(2, 0, 1))


def test_small_images_are_mirrored_out_to_the_patch_size():
    rgb = np.asarray(photo())[:50, :60]
    patches = sample_patches(rgb)
    assert patches.shape == PATCH_SHAPE
    # the original pixels sit in the middle of every patch, untouched
    top, left = (PATCH_SIZE - 50) // 2, (PATCH_SIZE - 60) // 2
    np.testing.assert_array_equal(patches[0][:, top : top + 50, left : left + 60], rgb.transpose(2, 0, 1))


def test_oversized_payload_is_refused_before_decoding():
    with pytest.raises(ImageError, match=f"limit of {MAX_IMAGE_BYTES} bytes"):
        decode(b"\xff\xd8" + bytes(MAX_IMAGE_BYTES))


def test_formats_outside_the_contract_are_refused():
    with pytest.raises(ImageError, match="not a recognised image"):
        decode(encode(photo(), "PPM"))



@pytest.mark.parametrize("case", ["heic", "avif", "heic_10bit", "heic_12bit", "avif_10bit"])
def test_heic_and_avif_decode_to_the_picture_in_8_bits(case):
    rgb = decode(CASES[case][0]())
    assert rgb.dtype == np.uint8 and abs(rgb.shape[0] - photo().height) <= 1 and rgb.shape[1] == photo().width
    assert np.abs(rgb.astype(float) - np.asarray(photo(), dtype=float)[: rgb.shape[0]]).mean() < 4


def test_a_heif_collection_gives_its_primary_image_not_its_first():
    data, primary = odd_images.heif_collection()
    rgb = decode(data)
    assert rgb.shape == np.asarray(primary).shape
    assert np.abs(rgb.astype(float) - np.asarray(primary, dtype=float)).mean() < 4


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_heic_and_avif_orientation_is_applied(fmt):
    """A picture stored turned, with the EXIF orientation that undoes it: HEIF writes it as the container's
    rotation (libheif turns it back), AVIF's Pillow plugin as the EXIF tag (exif_transpose does)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    stored = photo().transpose(Image.Transpose.ROTATE_90)
    rgb = decode(encode(stored, fmt, quality=90, exif=exif.tobytes()))
    assert rgb.shape == np.asarray(photo()).shape
    assert np.abs(rgb.astype(float) - np.asarray(photo(), dtype=float)).mean() < 4


@pytest.mark.parametrize("case", ["heic_with_alpha", "avif_with_alpha"])
def test_heic_and_avif_transparency_is_composited_over_white(case):
    rgb = decode(CASES[case][0]())
    assert (rgb[:, 0] >= 250).all()  # alpha 0 in the first column: white, up to the codec's error
    assert np.abs(rgb[:, -1].astype(float) - np.asarray(photo(), dtype=float)[:, -1]).mean() < 6


@pytest.mark.parametrize("fmt", ["HEIF", "AVIF"])
def test_a_heic_or_avif_declaring_too_many_pixels_is_refused_before_decoding(fmt):
    # The declared size is a header field; decoding would fail on the lie, so refusal proves the order.
    data = odd_images.declaring_size(encode(odd_images.even_photo(), fmt), 10000, 10000)
    with pytest.raises(ImageError) as caught:
        decode(data)
    assert "decompression bomb" in str(caught.value) and "100000000 pixels" in str(caught.value)


@pytest.mark.parametrize("side", [9000, 20000])  # above our limit; above twice Pillow's, which it refuses itself
def test_a_decompression_bomb_is_refused_naming_the_services_limit(side):
    png = io.BytesIO()
    Image.new("RGB", (64, 64)).save(png, "PNG")
    data = png.getvalue()
    ihdr = data.index(b"IHDR")  # the declared size, then the chunk's CRC, which Pillow checks
    header = b"IHDR" + struct.pack(">II", side, side) + data[ihdr + 12 : ihdr + 17]
    data = data[: ihdr] + header + struct.pack(">I", zlib.crc32(header)) + data[ihdr + 21 :]
    with pytest.raises(ImageError) as caught:
        decode(data)
    assert f"image is {side * side} pixels, more than the limit of {MAX_IMAGE_PIXELS}" in str(caught.value)


def test_accepted_formats_and_folder_suffixes_agree_with_pillow():
    registered = Image.registered_extensions()
    assert set(IMAGE_SUFFIXES) == {ext for ext, fmt in registered.items() if fmt in ACCEPTED_FORMATS}


def test_without_pillow_heif_heic_is_refused_and_everything_else_decodes(tmp_path):
    """Training imports this module on the GPU machine, which lacks pillow-heif: it must import and decode
    the other formats there, and refuse HEIC with a named error instead of crashing."""
    files = {case: tmp_path / case for case in ("heic", "avif", "webp", "tiff", "png_with_alpha")}
    for case, path in files.items():
        path.write_bytes(CASES[case][0]())
    code = ("import sys; sys.modules['pillow_heif'] = None\n"
            "from pathlib import Path\n"
            "from iqa.preprocess import ImageError, decode\n"
            f"for path in {[str(p) for c, p in files.items() if c != 'heic']!r}: decode(Path(path).read_bytes())\n"
            f"try: decode(Path({str(files['heic'])!r}).read_bytes())\n"
            "except ImageError as err: print(err)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "pillow-heif is not installed: HEIC/HEIF images are refused here" in done.stderr
    assert done.stdout.startswith("not a recognised image: accepted formats are"), done.stdout
