"""The constants that tie the stages of the data path together.

bytes -> decode -> sample patches -> network -> scores

Every stage (the preprocess model, the export, training, evaluation, the
client) imports these instead of repeating them. This module imports nothing
heavy so that a client can use it without torch.
"""

# --- the public wire contract: scores (order = network output channels) and names ---
# Lives in the client package, which has no torch, and is re-exported here.
from iqa_client.contract import (  # noqa: F401  (re-exported)
    ACCEPTED_FORMATS,
    ENSEMBLE_MODEL,
    IMAGE_INPUT,
    IMAGE_SUFFIXES,
    MODELSCOPE_LABELS,
    OVERLOAD_MESSAGES,
    SCORE_NAMES,
    SCORE_RANGE,
)

# --- Triton names inside the ensemble --------------------------------------------
PREPROCESS_MODEL = "iqa_preprocess"
NETWORK_MODEL = "iqa_resnet50"

PATCHES = "PATCHES"  # preprocess output, UINT8 [PATCHES_PER_IMAGE, 3, PATCH_SIZE, PATCH_SIZE]
# The libtorch backend binds tensors by position: "<name>__<index>".
NETWORK_INPUT = "PATCHES__0"
NETWORK_OUTPUTS = tuple(f"{name}__{i}" for i, name in enumerate(SCORE_NAMES))

# --- patch geometry -----------------------------------------------------------
# Degradations live at the pixel level (noise grain, 8x8 JPEG blocks, edge
# width), so patches are cut at native resolution, never from a downscaled
# picture. A fixed number of fixed-size patches gives every image the same
# tensor shape, so requests from different images batch together.
PATCH_SIZE = 128
PATCH_GRID = (2, 2)  # rows x columns of patch positions spread over the image
PATCHES_PER_IMAGE = PATCH_GRID[0] * PATCH_GRID[1]
CHANNELS = 3
PATCH_SHAPE = (PATCHES_PER_IMAGE, CHANNELS, PATCH_SIZE, PATCH_SIZE)
PATCH_DTYPE = "uint8"  # values 0..255; the network scales them to [0, 1] itself

# --- input guards ---------------------------------------------------------------
MAX_IMAGE_BYTES = 32 * 1024 * 1024  # encoded size
MAX_IMAGE_PIXELS = 64_000_000  # decoded width * height (decompression bombs)
MIN_IMAGE_SIDE = 32  # below this there is no texture to judge

# --- decode memory ------------------------------------------------------------------
# Decoded pixels in flight at once in one iqa_preprocess instance (iqa/decode_budget.py): one
# picture of the largest size, or many smaller ones; a decode that does not fit waits, never fails.
# A full decode holds ~14 bytes a pixel at its peak for RGB (Pillow's 4-byte image, its RGB copy,
# the numpy array and the bytes it is built from; ~22 for RGBA, composited over white), so an
# instance's decoding stays near 0.9-1.4 GiB (tests/test_decode_budget.py measures its stub).
DECODE_PIXEL_BUDGET = MAX_IMAGE_PIXELS

# --- batch sizes --------------------------------------------------------------------
# Rows (encoded images) per request of the ensemble, and per execution of iqa_preprocess: a dynamic
# batch of preprocess holds at most this many images, whatever requests they came in. It bounds the
# encoded bytes one execution holds in shared memory (below); the network batches its own way.
MAX_REQUEST_ROWS = 8
NETWORK_MAX_BATCH = 32  # images per execution of iqa_resnet50 (GPU-sized; its own dynamic batching)

# --- Python-backend shared memory (/dev/shm) ---------------------------------------------------
# The Python backend passes every input and output tensor of a Python-backend model instance through
# that instance's own region in /dev/shm. A region starts at SHM_DEFAULT_BYTES and, when an
# allocation does not fit, grows by SHM_GROWTH_BYTES * (needed // SHM_GROWTH_BYTES + 1)
# (python_backend src/shm_manager.cc, GrowIfNeeded); it never shrinks. So a region ends at most at
# what its largest execution held at once, plus one growth step of rounding, plus what it started with:
#   preprocess, largest execution: MAX_REQUEST_ROWS x MAX_IMAGE_BYTES of encoded input
#                                 + MAX_REQUEST_ROWS x PATCH_BYTES of output patches
#   network (the local Python-backend runner only; NGC's libtorch backend has no region):
#                                 NETWORK_MAX_BATCH x PATCH_BYTES in, 3 x 4 bytes per image out
#                                 (6.3 MB: within SHM_DEFAULT_BYTES, it never grows)
# The image's server flags carry SHM_DEFAULT_BYTES / SHM_GROWTH_BYTES, and compose, the Kubernetes
# Deployment and docker/prove.sh size /dev/shm to SHM_LIMIT_BYTES for PREPROCESS_INSTANCES decoders (tests/test_deploy.py checks they agree with this;
# tests/test_server.py sends the largest accepted request and measures the region it leaves).
PATCH_BYTES = PATCHES_PER_IMAGE * CHANNELS * PATCH_SIZE * PATCH_SIZE  # one image's patches, UINT8
SHM_DEFAULT_BYTES = 16 * 1024 * 1024  # a full network batch of patches (6.3 MB) never grows a region
SHM_GROWTH_BYTES = 16 * 1024 * 1024
PREPROCESS_INSTANCES = 4  # model_repository/iqa_preprocess/config.pbtxt, production (GPU) count


def shm_region_bound_bytes(rows: int = MAX_REQUEST_ROWS, image_bytes: int = MAX_IMAGE_BYTES) -> int:
    """Upper bound of one preprocess instance's /dev/shm region (bytes) after executions of `rows` images
    of `image_bytes` each: start size + the largest execution's tensors + one growth step of rounding."""
    return SHM_DEFAULT_BYTES + rows * (image_bytes + PATCH_BYTES) + SHM_GROWTH_BYTES


# The preprocess regions, the network runner's region where it exists, and 64 MiB for the stubs'
# message queues and allocator overhead; rounded up to whole GiB / 4 (a Kubernetes quantity).
_SHM_NEEDED_BYTES = PREPROCESS_INSTANCES * shm_region_bound_bytes() + SHM_DEFAULT_BYTES + 64 * 1024 * 1024
SHM_LIMIT_BYTES = -(-_SHM_NEEDED_BYTES // (256 * 1024 * 1024)) * 256 * 1024 * 1024
