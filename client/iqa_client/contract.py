"""The wire contract of the `iqa_degradation` and `iqa_degradation_map` ensembles (../shared/DESIGN.md).

Defined here, in the lightest package, and re-exported by the server side
(iqa.contract) so that client and server cannot drift apart.
"""

ENSEMBLE_MODEL = "iqa_degradation"
IMAGE_INPUT = "IMAGE"  # BYTES, dims [1]: one encoded image per batch row
# The largest encoded image the server scores. The server refuses a larger one with INVALID_ARGUMENT,
# and this client refuses it before sending (BadImageError), its URL downloads stop at the same size:
# every byte sent lands in the shared memory the server sized for images up to this size (iqa/contract.py
# derives those sizes from it).
MAX_IMAGE_BYTES = 32 * 1024 * 1024

# The encoded formats the server decodes, as Pillow names them: HEIF covers the HEIC files iPhones
# save (decoded with pillow-heif), AVIF what browsers and the web serve. Anything else is refused
# with a message that lists these. Animations and page sets (GIF, APNG, WebP, TIFF, AVIF): the first
# frame; a HEIF collection: its primary image.
ACCEPTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF", "GIF", "HEIF", "AVIF")
# File name endings of those formats (any case): what `iqa score FOLDER` and the load test take from a
# folder. Files named one by one are sent whatever their name: the server decides by their content.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".apng", ".webp", ".bmp", ".tif", ".tiff", ".gif",
                  ".heic", ".heics", ".heif", ".heifs", ".hif", ".avif", ".avifs")

# Output names, in the seed ModelScope pipeline's order.
SCORE_NAMES = ("NOISE", "BLUR", "COMPRESSION")
MODELSCOPE_LABELS = ("噪声强度", "模糊程度", "压缩强度")
SCORE_RANGE = (0.0, 1.0)

# What the server answers (gRPC UNAVAILABLE, HTTP 503) when its queue policy refuses a request
# (model configs: default_queue_policy): it is at capacity, not broken.
OVERLOAD_MESSAGES = ("Exceeds maximum queue size", "Request timeout expired")

# --- the degradation map: `iqa_degradation_map`, same IMAGE input -----------------------------
# Per-region scores over the whole picture: cells of the network's patch size at native resolution.
MAP_MODEL = "iqa_degradation_map"
# At most this many cells per image: a picture of more than MAX_CELLS patch-size tiles is covered
# by a coarser grid of evenly spread cells (still at native resolution, with gaps between them),
# never by a downscaled copy, which would change what the scores measure. 64 cells cost the
# network 16 times the 4-patch score; every image's tensors then have one shape, so they batch.
MAX_CELLS = 64
CELL_SCORES = "CELL_SCORES"  # FP32 [MAX_CELLS, 3], SCORE_NAMES order, row-major cells; NaN past the grid
CELL_BOXES = "CELL_BOXES"  # INT32 [MAX_CELLS, 4]: left, top, right, bottom in image pixels; -1 past the grid
GRID = "GRID"  # INT32 [2]: rows, columns of the grid (cells = rows * columns <= MAX_CELLS)
IMAGE_SIZE = "IMAGE_SIZE"  # INT32 [2]: height, width of the upright picture the boxes refer to
# The map's whole-image scores keep the names of iqa_degradation's outputs (SCORE_NAMES).
MAP_OUTPUTS = (CELL_SCORES, CELL_BOXES, GRID, IMAGE_SIZE, *SCORE_NAMES)
