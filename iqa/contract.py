"""The constants that tie the stages of the data path together.

bytes -> decode -> sample patches -> network -> scores

Every stage (the preprocess model, the export, training, evaluation, the
client) imports these instead of repeating them. This module imports nothing
heavy so that a client can use it without torch.
"""

# --- the public wire contract: scores (order = network output channels) and names ---
# Lives in the client package, which has no torch, and is re-exported here.
from iqa_client.contract import (  # noqa: F401  (re-exported)
    CELL_BOXES,
    CELL_SCORES,
    ENSEMBLE_MODEL,
    GRID,
    IMAGE_INPUT,
    IMAGE_SIZE,
    MAP_MODEL,
    MAP_OUTPUTS,
    MAX_CELLS,
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

# --- the degradation map (iqa_degradation_map): its own preprocessing, the same weights ------------
MAP_PREPROCESS_MODEL = "iqa_map_preprocess"
CELLS_NETWORK_MODEL = "iqa_resnet50_cells"  # a second export of the weights iqa_resnet50 serves
CELLS = "CELLS"  # map preprocess output, UINT8 CELLS_SHAPE; all-zero cells past the grid
CELLS_SHAPE = (MAX_CELLS, CHANNELS, PATCH_SIZE, PATCH_SIZE)
# The network reads the cell count from GRID (rows * columns) and runs only the real cells.
CELLS_NETWORK_INPUTS = (f"{CELLS}__0", f"{GRID}__1")
CELLS_NETWORK_OUTPUTS = (f"{CELL_SCORES}__0", *(f"{name}__{i}" for i, name in enumerate(SCORE_NAMES, start=1)))
