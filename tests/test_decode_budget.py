"""The decoded pixels in flight in one preprocess instance stay within DECODE_PIXEL_BUDGET: excess waits.

In-process: the PixelBudget's rules. Through the real server: a request of several maximum-size
PNGs keeps the iqa_preprocess stub's peak memory under the budget plus a stated overhead.
"""

from __future__ import annotations

import struct
import threading
import time
import zlib

import numpy as np
from iqa.contract import DECODE_PIXEL_BUDGET, MAX_IMAGE_PIXELS, PREPROCESS_MODEL, SCORE_NAMES
from iqa.decode_budget import PixelBudget
from iqa.serving.watchdog import python_stubs
from tests.conftest import image_tensor

# What one full decode holds at its peak, per pixel of an RGB PNG: Pillow's 4-byte image, its RGB
# copy, the numpy array and the bytes it is built from (measured in-process with VmHWM: 13.8).
PEAK_BYTES_PER_PIXEL = 14
# Beyond the decoded pixels: the request's encoded PNGs, the patches, allocator slack.
OVERHEAD_BYTES = 256 * 2**20
SIDE = 8000  # 8000 x 8000 = 64 Mpixels, the largest picture accepted
IMAGES = 6


def test_holds_up_to_the_capacity_at_once_and_the_rest_waits():
    budget = PixelBudget(100)
    inside, most = 0, 0
    lock = threading.Lock()

    def decode(pixels):
        nonlocal inside, most
        with budget.hold(pixels):
            with lock:
                inside += pixels
                most = max(most, inside)
            time.sleep(0.02)
            with lock:
                inside -= pixels

    threads = [threading.Thread(target=decode, args=(40,)) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert not any(t.is_alive() for t in threads), "a decode waited forever"
    assert most == 80 and budget.peak == 80 and budget.held == 0  # two of 40 fit in 100, a third waits


def test_a_picture_larger_than_the_budget_runs_alone_instead_of_failing():
    budget = PixelBudget(100)
    running, finish = threading.Event(), threading.Event()

    def big_decode():
        with budget.hold(500):
            running.set()
            finish.wait(5)

    with budget.hold(30):
        thread = threading.Thread(target=big_decode)
        thread.start()
        assert not running.wait(0.1), "it must wait for the other decode to finish"
    assert running.wait(5), "it must run once it is alone"
    assert budget.held == 100
    finish.set()
    thread.join(5)
    assert budget.held == 0


def test_the_budget_admits_one_picture_of_the_largest_size():
    assert DECODE_PIXEL_BUDGET >= MAX_IMAGE_PIXELS


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def largest_png(shade: int) -> bytes:
    """A valid SIDE x SIDE RGB PNG of a repeating ramp (~1.7 MB that decodes to 192 MB)."""
    row = b"\x00" + bytes((i + shade) % 256 for i in range(SIDE * 3))
    compressor = zlib.compressobj(1)
    body = b"".join(compressor.compress(row * 500) for _ in range(SIDE // 500)) + compressor.flush()
    header = struct.pack(">IIBBBBB", SIDE, SIDE, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def _memory(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(field)


def test_many_maximum_size_images_keep_the_stub_under_the_budget(triton, photos):
    import tritonclient.grpc as grpcclient

    (stub,) = python_stubs(triton.process.pid)[PREPROCESS_MODEL]  # the launcher runs one on CPU
    images = [largest_png(shade) for shade in range(IMAGES)]
    with grpcclient.InferenceServerClient(triton.grpc_url) as client:
        client.infer("iqa_degradation", [image_tensor([photos["sheep"]])], client_timeout=120)  # warm
        with open(f"/proc/{stub}/clear_refs", "w") as refs:
            refs.write("5")  # restart the stub's peak-RSS count (VmHWM) from now
        before = _memory(stub, "VmRSS")
        started = time.monotonic()
        result = client.infer("iqa_degradation", [image_tensor(images)], client_timeout=600)
        seconds = time.monotonic() - started
    peak = _memory(stub, "VmHWM") - before
    for name in SCORE_NAMES:
        scores = result.as_numpy(name)
        assert scores.shape == (IMAGES, 1) and np.all((scores >= 0) & (scores <= 1))
    bound = DECODE_PIXEL_BUDGET * PEAK_BYTES_PER_PIXEL + OVERHEAD_BYTES
    print(f"{IMAGES} images of {SIDE}x{SIDE} in one request: {seconds:.1f} s, stub peak "
          f"{peak / 2**20:.0f} MiB above its resting {before / 2**20:.0f} MiB (bound {bound / 2**20:.0f} MiB)")
    assert peak <= bound, f"stub peaked {peak / 2**20:.0f} MiB above rest, over the {bound / 2**20:.0f} MiB bound"
