"""One exception family: every failure the client reports is an IQAError."""

from __future__ import annotations


class IQAError(Exception):
    """Base of every error this client raises."""


class ServerUnreachableError(IQAError):
    """No Triton server answers at the URL (refused, DNS, TLS, or not live)."""


class ServerBusyError(IQAError):
    """The server refused the request because it is at capacity (its queue is full, or the request
    waited its queue's time limit): UNAVAILABLE after every retry. Try again later or elsewhere."""


class ModelError(IQAError):
    """The model is missing, not ready, or not the expected contract (checked at connect)."""


class BadImageError(IQAError):
    """This input cannot be scored: the server refused the image, or the client could not read it (a missing
    file, a failed or oversized download, an array that is no image). `index` and `source` say which input,
    `reason` why. score() raises it; score_many() returns it in the input's place."""

    def __init__(self, message: str, index: int | None = None, source: str | None = None) -> None:
        self.index, self.source, self.reason = index, source, message
        where = ", ".join(p for p in (f"item {index}" if index is not None else "", source or "") if p)
        super().__init__(f"bad image ({where}): {message}" if where else f"bad image: {message}")


class IQATimeoutError(IQAError, TimeoutError):
    """The call did not complete within its timeout."""


class ServerError(IQAError):
    """Any other failure the server reported (after retries where the status is transient)."""


class MissingExtraError(IQAError, ImportError):
    """An optional dependency of the client (one of its extras: `video`, `images`) is not installed; the
    message names the `pip install` that adds it. Raised before any work starts."""
