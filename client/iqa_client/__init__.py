"""Thin gRPC client for the iqa_degradation Triton ensembles: noise, blur and compression in [0, 1],
for a whole image or, with score_map, for every region of it.

The names below are imported on first use, so `iqa_client.contract` (the wire contract the
server side shares) imports without tritonclient installed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "AsyncIQAClient": "iqa_client.client",
    "Health": "iqa_client.client",
    "IQAClient": "iqa_client.client",
    "RetryPolicy": "iqa_client.client",
    "DegradationMap": "iqa_client.degradation_map",
    "MapCell": "iqa_client.degradation_map",
    "BadImageError": "iqa_client.errors",
    "IQAError": "iqa_client.errors",
    "IQATimeoutError": "iqa_client.errors",
    "MissingExtraError": "iqa_client.errors",
    "ModelError": "iqa_client.errors",
    "ServerBusyError": "iqa_client.errors",
    "ServerError": "iqa_client.errors",
    "ServerUnreachableError": "iqa_client.errors",
    "Scores": "iqa_client.result",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'iqa_client' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)


if TYPE_CHECKING:
    from iqa_client.client import AsyncIQAClient, Health, IQAClient, RetryPolicy  # noqa: F401
    from iqa_client.degradation_map import DegradationMap, MapCell  # noqa: F401
    from iqa_client.errors import (  # noqa: F401
        BadImageError, IQAError, IQATimeoutError, MissingExtraError, ModelError, ServerBusyError, ServerError,
        ServerUnreachableError,
    )
    from iqa_client.result import Scores  # noqa: F401
