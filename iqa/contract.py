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
    CELL_BOXES,
    CELL_SCORES,
    ENSEMBLE_MODEL,
    GRID,
    IMAGE_INPUT,
    IMAGE_SUFFIXES,
    IMAGE_SIZE,
    MAP_MODEL,
    MAP_OUTPUTS,
    MAX_CELLS,
    MAX_IMAGE_BYTES,
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
# MAX_IMAGE_BYTES (encoded size, 32 MiB) is part of the wire contract, above: the client refuses larger images
# before sending, the server with INVALID_ARGUMENT.
MAX_IMAGE_PIXELS = 64_000_000  # decoded width * height (decompression bombs)
MIN_IMAGE_SIDE = 32  # below this there is no texture to judge

# --- the degradation map (iqa_degradation_map): its own preprocessing, the same weights ------------
MAP_PREPROCESS_MODEL = "iqa_map_preprocess"
CELLS_NETWORK_MODEL = "iqa_resnet50_cells"  # a second export of the weights iqa_resnet50 serves
CELLS = "CELLS"  # map preprocess output, UINT8 CELLS_SHAPE; all-zero cells past the grid
CELLS_SHAPE = (MAX_CELLS, CHANNELS, PATCH_SIZE, PATCH_SIZE)
# The network reads the cell count from GRID (rows * columns) and runs only the real cells.
CELLS_NETWORK_INPUTS = (f"{CELLS}__0", f"{GRID}__1")
CELLS_NETWORK_OUTPUTS = (f"{CELL_SCORES}__0", *(f"{name}__{i}" for i, name in enumerate(SCORE_NAMES, start=1)))

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
# The largest request body: MAX_REQUEST_ROWS images of MAX_IMAGE_BYTES, each with the 4-byte length
# Triton's BYTES elements carry. Triton >= 2.59 refuses larger HTTP inputs with --http-max-input-size
# (the image's loopback HTTP); no Triton release limits gRPC (2 GiB), see iqa.serving.watchdog.confined.
MAX_REQUEST_BYTES = MAX_REQUEST_ROWS * (MAX_IMAGE_BYTES + 4)
NETWORK_MAX_BATCH = 32  # images per execution of iqa_resnet50 (GPU-sized; its own dynamic batching)

# --- Python-backend shared memory (/dev/shm) ---------------------------------------------------
# The Python backend passes every input and output tensor of a Python-backend model instance through
# that instance's own region in /dev/shm. A region starts at SHM_DEFAULT_BYTES and, when an
# allocation does not fit, grows (python_backend src/shm_manager.cc, GrowIfNeeded); it never shrinks.
# Growing is the path to avoid: under concurrent requests with MB payloads it has crashed whole
# servers (boost::interprocess::lock_exception, SIGSEGV; triton-inference-server/server#8882, open,
# and twice in loaded runs here). So every region starts large enough for the largest execution any
# model can have, and none ever grows. The largest executions, MAX_REQUEST_ROWS images each:
#   iqa_preprocess      in: encoded images, up to MAX_IMAGE_BYTES each; out: PATCH_BYTES each
#   iqa_map_preprocess  in: the same; out: CELLS_BYTES + MAP_INFO_BYTES each (the largest: 280 MiB)
#   the networks, where the local Python-based stand-in runs them (NVIDIA's libtorch backend has no
#   region): iqa_resnet50 NETWORK_MAX_BATCH x PATCH_BYTES (6.3 MB), iqa_resnet50_cells
#   MAX_REQUEST_ROWS x CELLS_BYTES (25 MB)
# plus room for the allocator's own bookkeeping and fragmentation. tmpfs files are sparse: a region
# costs memory only for the pages its tensors have touched, so a large start size costs nothing until
# large requests come. The image's server flags carry SHM_DEFAULT_BYTES / SHM_GROWTH_BYTES, and
# compose, the Kubernetes Deployment and docker/prove.sh size /dev/shm to SHM_LIMIT_BYTES, room for
# every preprocessing instance's region at once (tests/test_deploy.py checks they agree with this and
# with the configs; tests/test_production_repository.py sends the largest accepted requests to both
# ensembles at once and checks that no region grew).
PATCH_BYTES = PATCHES_PER_IMAGE * CHANNELS * PATCH_SIZE * PATCH_SIZE  # one image's patches, UINT8
CELLS_BYTES = MAX_CELLS * CHANNELS * PATCH_SIZE * PATCH_SIZE  # one image's cells, UINT8 CELLS_SHAPE
MAP_INFO_BYTES = 4 * (2 + MAX_CELLS * 4 + 2)  # GRID, CELL_BOXES, IMAGE_SIZE: INT32
LARGEST_EXECUTION_BYTES = MAX_REQUEST_ROWS * (MAX_IMAGE_BYTES + max(PATCH_BYTES, CELLS_BYTES + MAP_INFO_BYTES))
SHM_DEFAULT_BYTES = 320 * 1024 * 1024  # LARGEST_EXECUTION_BYTES (280.0 MiB) + 40 MiB for the allocator
SHM_GROWTH_BYTES = 16 * 1024 * 1024  # only if a region ever had to grow (none should)
# Production (GPU) instance counts: model_repository/*/config.pbtxt (tests/test_deploy.py checks).
PREPROCESS_INSTANCES = 4
MAP_PREPROCESS_INSTANCES = 2
# Every preprocessing region filled at once, and 64 MiB for the stubs' message queues; rounded up to a
# multiple of 256 MiB (a Kubernetes quantity): 2 GiB.
_SHM_NEEDED_BYTES = (PREPROCESS_INSTANCES + MAP_PREPROCESS_INSTANCES) * SHM_DEFAULT_BYTES + 64 * 1024 * 1024
SHM_LIMIT_BYTES = -(-_SHM_NEEDED_BYTES // (256 * 1024 * 1024)) * 256 * 1024 * 1024

# --- the pod's memory (docker/k8s/deployment.yaml, docker/compose.yaml, docker/prove.sh) -------------------
# Everything the server's container holds at its worst at once; tmpfs pages (/dev/shm) count against the
# limit like any other memory. The sum, per part (GiB = 2**30 bytes):
#   decoding: each preprocessing instance (PREPROCESS_INSTANCES + MAP_PREPROCESS_INSTANCES = 6) may hold one
#     picture of MAX_IMAGE_PIXELS (64 Mpixel) or DECODE_PIXEL_BUDGET of smaller ones (a picture larger than
#     the budget runs alone) at DECODE_PEAK_BYTES_PER_PIXEL (22: an RGBA picture composited over white; RGB
#     measured 13.8, tests/test_decode_budget.py): 64e6 x 22 B = 1.31 GiB each, 7.87 GiB for six;
#   the six stubs at rest (Python, numpy, Pillow, nvImageCodec): STUB_RESTING_BYTES each, 0.75 GiB
#     (measured 52-105 MiB RSS per preprocessing stub, 2-vCPU VM, tritonserver 2.51);
#   /dev/shm: SHM_LIMIT_BYTES, 2 GiB;
#   tritonserver with libtorch, CUDA and cuDNN host memory and both networks: SERVER_BYTES, 3 GiB, an
#     estimate (no GPU here to measure it; the CPU stand-in's network stubs take 0.9-1.4 GiB each);
# in all 13.6 GiB, rounded up to a whole GiB: 14 GiB. The map instances share the 4-patch decoders' limits
# (the same decode), so a smaller budget for them would not lower their peak: MAX_IMAGE_PIXELS does.
DECODE_PEAK_BYTES_PER_PIXEL = 22
STUB_RESTING_BYTES = 128 * 2**20
SERVER_BYTES = 3 * 2**30
DECODE_PEAK_BYTES = max(DECODE_PIXEL_BUDGET, MAX_IMAGE_PIXELS) * DECODE_PEAK_BYTES_PER_PIXEL  # per instance
_POD_NEEDED_BYTES = ((PREPROCESS_INSTANCES + MAP_PREPROCESS_INSTANCES) * (DECODE_PEAK_BYTES + STUB_RESTING_BYTES)
                     + SHM_LIMIT_BYTES + SERVER_BYTES)
POD_MEMORY_BYTES = -(-_POD_NEEDED_BYTES // 2**30) * 2**30
