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


# --- float pictures, APNG, JPEGs without their end marker, images sent as text (issue 25) ----------------


def test_float_pictures_map_0_to_black_and_1_to_white_and_clip_the_rest():
    grey = odd_images.float_grey()
    eight_bits = np.rint(grey * 255).astype(np.uint8)
    np.testing.assert_array_equal(decode(odd_images.float_tiff(grey)), np.repeat(eight_bits[:, :, None], 3, axis=2))
    # One pixel above white changes that pixel alone: the scale is fixed, never stretched to the range.
    outlier = decode(odd_images.float_tiff(odd_images.float_grey(at_0_0=1.02)))[:, :, 0]
    assert outlier[0, 0] == 255 and np.array_equal(outlier.ravel()[1:], eight_bits.ravel()[1:])
    # A 0..4 picture (HDR-like) is clipped at white, as a viewer shows it.
    bright = odd_images.float_grey(scale=4.0)
    np.testing.assert_array_equal(decode(odd_images.float_tiff(bright))[:, :, 1],
                                  np.rint(np.clip(bright, 0, 1) * 255).astype(np.uint8))
    below = decode(odd_images.float_tiff(odd_images.float_grey() - 0.5))[:, :, 2]
    assert below.min() == 0 and np.array_equal(below[below > 0], np.rint((grey - 0.5) * 255)[below > 0])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_float_pictures_holding_nan_or_infinity_are_refused_by_name(value):
    with pytest.raises(ImageError, match="float picture holds NaN or infinite values in 1 pixel: they are no light"):
        decode(odd_images.float_tiff(odd_images.float_grey(at_0_0=value)))


@pytest.mark.parametrize("default_image", [True, False])
def test_an_apng_gives_the_first_frame_an_apng_viewer_shows(default_image):
    """With default_image=True Pillow writes the default image outside the animation (no fcTL before its IDAT):
    viewers start at the next frame, and so does the service; otherwise the default image is frame one."""
    data, shown = odd_images.apng(default_image)
    assert Image.open(io.BytesIO(data)).info.get("default_image", False) is default_image  # as the file says
    np.testing.assert_array_equal(decode(data), np.asarray(shown))


@pytest.mark.parametrize("progressive", [False, True])
def test_a_jpeg_missing_only_its_end_marker_decodes_as_the_complete_file(progressive):
    whole = decode(encode(photo(), "JPEG", quality=90, progressive=progressive))
    for cut in (2, 1):  # the whole marker, or its second byte
        np.testing.assert_array_equal(decode(odd_images.jpeg_without_end_marker(progressive, cut)), whole)


@pytest.mark.parametrize("progressive", [False, True])
def test_a_jpeg_cut_inside_its_picture_data_is_refused_as_truncated(progressive):
    """What libjpeg (and Pillow's LOAD_TRUNCATED_IMAGES) would fill with grey rows or coarser detail."""
    data = encode(photo(), "JPEG", quality=90, progressive=progressive)
    for cut in (data[:-3], data[:-6], data[: len(data) * 3 // 4], data[: len(data) // 3]):
        with pytest.raises(ImageError, match="truncated"):
            decode(cut)
    if progressive:  # cut between two scans: the last scan present is whole, but later ones are missing
        from iqa.jpeg_regions import _entropy_markers

        last_scan = [int(m) for m in _entropy_markers(data, 2) if data[m + 1] == 0xDA][-1]
        with pytest.raises(ImageError, match="truncated"):
            decode(data[:last_scan])


def test_an_image_sent_as_base64_text_or_a_data_url_gets_a_hint_about_the_encoding():
    png, jpeg = encode(photo(), "PNG"), encode(photo(), "JPEG")
    for text, hint in ((odd_images.as_text(png), "base64 text of a PNG image, not the image: send the decoded bytes"),
                       (odd_images.as_text(jpeg), "base64 text of a JPEG image"),
                       (b"  \n" + odd_images.as_text(png, data_url=True), r"a data: URL \(text\)")):
        with pytest.raises(ImageError, match="not a recognised image: these bytes are " + hint):
            decode(text)
    with pytest.raises(ImageError) as plain_text:
        decode(b"name,score\nsheep,0.5\n" * 20)
    assert "base64" not in str(plain_text.value) and "data:" not in str(plain_text.value)
