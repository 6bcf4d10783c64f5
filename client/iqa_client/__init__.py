"""Thin gRPC client for the iqa_degradation Triton ensemble: noise, blur and compression in [0, 1]."""

from iqa_client.client import AsyncIQAClient, Health, IQAClient, RetryPolicy
from iqa_client.errors import (
    BadImageError,
    IQAError,
    IQATimeoutError,
    ModelError,
    ServerBusyError,
    ServerError,
    ServerUnreachableError,
)
from iqa_client.result import Scores

__all__ = [
    "AsyncIQAClient", "BadImageError", "Health", "IQAClient", "IQAError", "IQATimeoutError", "ModelError",
    "RetryPolicy", "Scores", "ServerBusyError", "ServerError", "ServerUnreachableError",
]
