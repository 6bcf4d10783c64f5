"""A bound on the decoded pixels in flight in one process (one `iqa_preprocess` instance).

A 2 MB PNG can expand to 180 MB of pixels, and each instance decodes a dynamic batch in up to
8 threads: without a bound, a burst of large pictures can take more memory than the pod has.
Every decode holds its pixel count from DECODE_PIXEL_BUDGET (iqa/contract.py) while its pixels
exist; one that does not fit waits for others to finish. Waiting is the only outcome: no request
fails for want of budget, and a picture larger than the whole budget runs alone.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

from PIL import Image

from iqa.contract import DECODE_PIXEL_BUDGET

# Pillow stores pixels in blocks of 16 MiB by default. glibc serves blocks that size from the heap of
# the thread that asked (its dynamic mmap threshold climbs to 32 MiB after the first large free) and
# keeps them after they are freed, so each decode thread kept a whole picture's worth: 8 threads held
# 2.9 GiB after decoding 64-Mpixel PNGs, budget or not. Blocks above 32 MiB are always mmapped and go
# back to the system when freed (the same 8 threads then kept 0.3 GiB).
PILLOW_BLOCK_BYTES = 64 * 2**20
Image.core.set_block_size(PILLOW_BLOCK_BYTES)


class PixelBudget:
    """A counting bound on decoded pixels shared by the threads of one process.

    `hold(pixels)` blocks until `pixels` fit next to what other threads hold (or, if `pixels` is
    more than the whole budget, until nothing else is held), and releases them on exit.
    """

    def __init__(self, pixels: int):
        if pixels <= 0:
            raise ValueError(f"a pixel budget must be positive, got {pixels}")
        self.capacity = pixels
        self._held = 0
        self._peak = 0
        self._ready = threading.Condition()

    @contextmanager
    def hold(self, pixels: int):
        want = min(max(int(pixels), 0), self.capacity)
        with self._ready:
            self._ready.wait_for(lambda: self._held + want <= self.capacity)
            self._held += want
            self._peak = max(self._peak, self._held)
        try:
            yield
        finally:
            with self._ready:
                self._held -= want
                self._ready.notify_all()

    @property
    def held(self) -> int:
        """Pixels held right now."""
        return self._held

    @property
    def peak(self) -> int:
        """The most pixels held at once since this budget was made."""
        return self._peak


# One per process: each Triton instance of iqa_preprocess is its own stub process.
DECODE_BUDGET = PixelBudget(DECODE_PIXEL_BUDGET)
