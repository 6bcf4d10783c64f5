"""The wire contract of the `iqa_degradation` ensemble (../shared/DESIGN.md).

Defined here, in the lightest package, and re-exported by the server side
(iqa.contract) so that client and server cannot drift apart.
"""

ENSEMBLE_MODEL = "iqa_degradation"
IMAGE_INPUT = "IMAGE"  # BYTES, dims [1]: one encoded image per batch row

# Output names, in the seed ModelScope pipeline's order.
SCORE_NAMES = ("NOISE", "BLUR", "COMPRESSION")
MODELSCOPE_LABELS = ("噪声强度", "模糊程度", "压缩强度")
SCORE_RANGE = (0.0, 1.0)

# What the server answers (gRPC UNAVAILABLE, HTTP 503) when its queue policy refuses a request
# (model configs: default_queue_policy): it is at capacity, not broken.
OVERLOAD_MESSAGES = ("Exceeds maximum queue size", "Request timeout expired")
