"""IQAClient and its asyncio twin AsyncIQAClient: one vocabulary, over Triton's gRPC API.

    with IQAClient("127.0.0.1:8001") as client:
        client.score("photo.jpg")                      # Scores(noise=…, blur=…, compression=…)
        client.score("https://example.org/x.jpg")      # downloaded with httpx, then scored
        client.score_many(paths, concurrency=8)        # [Scores | IQAError, …] in input order
        client.score_video("clip.mp4", frames=32)      # VideoReport
        client.score_map("photo.jpg")                  # DegradationMap: per-cell and pooled scores
        for time_s, outcome in client.iter_score_frames(video.sample_frames("clip.mp4", fps=2)):
            ...                                        # each frame as it is scored (rows written as they come)

Every call has a timeout (the client's default or the call's own). Transient statuses
(UNAVAILABLE, RESOURCE_EXHAUSTED, and CANCELLED by a server shutting down) are retried with jittered exponential backoff inside that
timeout, and so is NOT_FOUND "has no available versions", which a server answers while it unloads
or reloads the model (graceful shutdown, recovery); nothing else is retried (a bad image stays bad).
Between tries a lost connection is waited for, up to the deadline (a server restarting under the
client). Failures are IQAError subclasses: an input that cannot be read (a missing file, a URL that
fails) is a BadImageError like an image the server refuses, from score() as from score_many().
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import random
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from iqa_client import degradation_map
from iqa_client.channel import ChannelOptions, channel_arguments, diagnose, grpc_target
from iqa_client.contract import (
    CELL_BOXES, CELL_SCORES, ENSEMBLE_MODEL, GRID, IMAGE_INPUT, IMAGE_SIZE, MAP_MODEL, MAP_OUTPUTS,
    MAX_IMAGE_BYTES, OVERLOAD_MESSAGES, SCORE_NAMES,
)
from iqa_client.degradation_map import DegradationMap
from iqa_client.errors import (
    BadImageError,
    IQAError,
    IQATimeoutError,
    ModelError,
    ServerBusyError,
    ServerError,
    ServerUnreachableError,
)
from iqa_client.images import ImageLike, describe, to_bytes
from iqa_client.result import Scores

DEFAULT_URL = os.environ.get("IQA_URL", "127.0.0.1:8001")
# CANCELLED comes from the server too: a gRPC server that shuts down cancels the calls it has not
# started (seen once per few hundred at Triton's SIGTERM, tests/test_shutdown.py). Scoring is
# idempotent, so they are retried like UNAVAILABLE; this client never cancels a call itself.
TRANSIENT = ("StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED", "StatusCode.CANCELLED")
UNREACHABLE = "StatusCode.UNAVAILABLE"  # retried until the deadline (RetryPolicy)
# The model is being unloaded or reloaded: a moment later this server (or another) serves it again.
RELOADING = ("StatusCode.NOT_FOUND", "has no available versions")
Outcome = Scores | IQAError
MapOutcome = DegradationMap | IQAError
Progress = Callable[[int, int | None], None]  # (done, total or None)
# Failures that are about the server, not the item: once one comes back, the rest of a run would fail too.
SERVER_GONE = (ServerUnreachableError, ModelError)


@dataclass(frozen=True)
class RetryPolicy:
    """Retries for transient gRPC statuses only, always within the call's timeout.

    attempts: tries in all, the first included, for the statuses of a server that answers (overloaded,
    shutting down, reloading its model). Before each retry the client pauses (jittered exponential
    backoff). UNAVAILABLE, a server that cannot be reached (down or restarting), is retried until the
    call's deadline whatever `attempts` says: the channel tries to reconnect at least once a second
    (channel.channel_arguments), so a call made while the server restarts succeeds as soon as it is back
    within the timeout, and fails with ServerUnreachableError at the deadline if it is not. No thread waits
    on the channel: a client closed mid-call (Ctrl-C) leaves nothing behind.
    """

    attempts: int = 4
    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0

    def backoff(self, attempt: int) -> float:
        # "Full jitter": spreads retries of many clients hitting one overloaded server.
        return random.uniform(0, min(self.max_backoff_s, self.initial_backoff_s * 2**attempt))


@dataclass(frozen=True)
class Health:
    live: bool
    ready: bool
    model_ready: bool
    server_version: str
    model: str


# --- what both clients share: request, response, errors ------------------------------------


def _check_size(data: bytes, index, source) -> None:
    """Refuse, before sending, an image the server would refuse for its size (BadImageError)."""
    if len(data) > MAX_IMAGE_BYTES:
        raise BadImageError(f"image is {len(data)} bytes, more than the server's limit of {MAX_IMAGE_BYTES} bytes "
                            f"({MAX_IMAGE_BYTES // 2**20} MiB); not sent", index=index, source=source)


def _inputs(data: bytes) -> list[grpcclient.InferInput]:
    tensor = grpcclient.InferInput(IMAGE_INPUT, [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[data]], dtype=np.object_))
    return [tensor]


_OUTPUTS = [grpcclient.InferRequestedOutput(name) for name in SCORE_NAMES]
_MAP_OUTPUTS = [grpcclient.InferRequestedOutput(name) for name in MAP_OUTPUTS]
_MAP_TYPES = {CELL_SCORES: "FP32", CELL_BOXES: "INT32", GRID: "INT32", IMAGE_SIZE: "INT32",
              **{name: "FP32" for name in SCORE_NAMES}}


def _output(result, name: str, url: str, model: str) -> np.ndarray:
    """The named output of a successful answer; ServerError if the answer lacks it or it is empty.

    Seen from the pytriton wheel's Triton 2.51 under load after a client cancelled an inference (the suite
    run on two pytest-xdist workers, BENCHMARKS.md "The test suite's time"): a response with no outputs,
    shortly before the server crashed; tritonclient's as_numpy then returns None."""
    value = result.as_numpy(name)
    if value is None or value.size == 0:
        raise ServerError(f"model '{model}' at {url} answered without its {name} output")
    return value


def _scores(result, url: str, model: str) -> Scores:
    noise, blur, compression = (float(_output(result, name, url, model).reshape(-1)[0]) for name in SCORE_NAMES)
    return Scores(noise=noise, blur=blur, compression=compression)


def _map(result, url: str, model: str, data: bytes, index, source) -> DegradationMap:
    outputs = {name: _output(result, name, url, model)[0] for name in MAP_OUTPUTS}
    try:
        return degradation_map.from_outputs(outputs, source or "", data)
    except ValueError as err:
        raise ServerError(f"model '{model}' at {url} answered a map that breaks its contract: {err}") from None


def _error(err: InferenceServerException, url: str, model: str, index=None, source=None) -> IQAError:
    status, message = str(err.status()), err.message() or str(err)
    if status == "StatusCode.INVALID_ARGUMENT":
        reason = re.sub(r"^in ensemble '[^']*', ", "", message).removeprefix("bad image: ")
        return BadImageError(reason, index=index, source=source)
    if status == "StatusCode.DEADLINE_EXCEEDED":
        return IQATimeoutError(f"no answer from {url} within the timeout ({message})")
    if status == "StatusCode.UNAVAILABLE" and any(m in message for m in OVERLOAD_MESSAGES):
        return ServerBusyError(f"Triton at {url} is at capacity and refused the request: {message}")
    if status == "StatusCode.UNAVAILABLE":
        return ServerUnreachableError(f"Triton at {url} is unreachable: {message}")
    if status == "StatusCode.NOT_FOUND" or "unknown model" in message:
        return ModelError(f"model '{model}' is not served at {url}: {message}")
    return ServerError(f"{status}: {message}")


def _check_contract(metadata: dict, model: str, url: str, kind: str = ENSEMBLE_MODEL) -> None:
    """Refuse to talk to a model whose inputs/outputs are not the contract of `kind` (iqa_degradation or
    iqa_degradation_map)."""
    inputs = {t["name"]: t["datatype"] for t in metadata.get("inputs", [])}
    outputs = {t["name"]: t["datatype"] for t in metadata.get("outputs", [])}
    expected_outputs = _MAP_TYPES if kind == MAP_MODEL else {name: "FP32" for name in SCORE_NAMES}
    if inputs != {IMAGE_INPUT: "BYTES"} or outputs != expected_outputs:
        raise ModelError(
            f"model '{model}' at {url} is not an {kind} model: inputs {inputs}, outputs {outputs}; "
            f"expected inputs {{'{IMAGE_INPUT}': 'BYTES'}}, outputs {expected_outputs}")


def _read(image: ImageLike, index: int | None, timeout: float) -> bytes:
    """The bytes to send for one input; one that cannot be read is a BadImageError naming it (index, source)."""
    try:
        return to_bytes(image, timeout=timeout)
    except BadImageError as err:
        raise BadImageError(err.reason, index=index, source=err.source or describe(image)) from None
    except (OSError, TypeError, ValueError) as err:
        raise BadImageError(f"cannot read it: {err}", index=index, source=describe(image)) from None


def _unreachable(url: str, err: InferenceServerException, hint: str | None) -> ServerUnreachableError:
    # The hint says more than gRPC's words for the same failure ("Socket closed", "Tls handshake failed ... OK").
    # A plaintext server asked for TLS does answer, just not in TLS.
    lead = "no TLS server answers" if hint and "plaintext gRPC, not TLS" in hint else "no Triton server answers"
    return ServerUnreachableError(f"{lead} at {url}: {hint or err.message() or err}")


def _frame_total(frames, progress: Progress | None) -> Progress | None:
    """Progress in frames of a sampler that knows its count (video.FrameSampler.count)."""
    total = getattr(frames, "count", None)
    return (lambda done, _total: progress(done, total)) if progress else None


def _retry_pause(retry: RetryPolicy, err: InferenceServerException, attempt: int, deadline: _Deadline) -> float | None:
    """Seconds to wait before the next attempt, or None when this failure is final."""
    pause = retry.backoff(attempt)
    status, message = str(err.status()), err.message() or ""
    transient = status in TRANSIENT or (status == RELOADING[0] and RELOADING[1] in message)
    if not transient:
        return None
    # An overloaded server also answers UNAVAILABLE, but it answers: `attempts` bounds those retries.
    overloaded = any(m in message for m in OVERLOAD_MESSAGES)
    if status == UNREACHABLE and not overloaded:  # until the deadline: the caller fails once its pause spent the rest
        return min(pause, max(deadline.left(), 0.0))
    if attempt + 1 >= retry.attempts or pause >= deadline.left():
        return None
    return pause


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds, self.end = seconds, time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()


# --- the synchronous client ---------------------------------------------------------------


class IQAClient:
    """Scores images with the `iqa_degradation` ensemble on a Triton server over gRPC.

    url: "host:port" of Triton's gRPC endpoint. timeout: default seconds per call, retries
    included. ssl/root_certificates/private_key/certificate_chain: TLS (PEM file paths).
    headers: gRPC metadata sent with every call (auth tokens, routing). channel_options: gRPC channel
    arguments added to tritonclient's defaults (channel_arguments(): load-balancing policy, keepalive, ...).
    connect: check at once that the server is live and serves the expected model (else
    ServerUnreachableError / ModelError). map_model: the `iqa_degradation_map` ensemble that score_map
    uses (checked on its first call).
    """

    def __init__(self, url: str = DEFAULT_URL, *, model: str = ENSEMBLE_MODEL, timeout: float = 30.0,
                 retry: RetryPolicy = RetryPolicy(), ssl: bool = False, root_certificates: str | None = None,
                 private_key: str | None = None, certificate_chain: str | None = None,
                 headers: dict[str, str] | None = None, channel_options: ChannelOptions | None = None,
                 connect: bool = True, map_model: str = MAP_MODEL) -> None:
        url, ssl = grpc_target(url, ssl)
        self.url, self.model, self.timeout, self.retry, self._ssl = url, model, timeout, retry, ssl
        self.map_model, self._map_checked = map_model, False
        self.headers = dict(headers or {})
        self._grpc = grpcclient.InferenceServerClient(url, ssl=ssl, root_certificates=root_certificates,
                                                      private_key=private_key, certificate_chain=certificate_chain,
                                                      channel_args=channel_arguments(channel_options))
        if connect:
            self.connect()

    def connect(self, timeout: float | None = None, *, map: bool = False) -> None:
        """Check that the server is live and that the model is ready and is the expected contract.

        map: check the degradation-map model (`map_model`, the iqa_degradation_map contract) instead of
        `model`, for a caller that only maps. Raises ServerUnreachableError if nobody answers,
        ModelError if the model is not served, not ready or not of its contract.
        """
        seconds = timeout or self.timeout
        model, kind = (self.map_model, MAP_MODEL) if map else (self.model, ENSEMBLE_MODEL)
        try:
            live = self._grpc.is_server_live(headers=self.headers, client_timeout=seconds)
        except InferenceServerException as err:
            raise _unreachable(self.url, err, diagnose(self.url, self._ssl)) from None
        if not live:
            raise ServerUnreachableError(f"Triton at {self.url} is not live")
        try:
            metadata = self._grpc.get_model_metadata(model, headers=self.headers, as_json=True,
                                                     client_timeout=seconds)
            ready = self._grpc.is_model_ready(model, headers=self.headers, client_timeout=seconds)
        except InferenceServerException as err:
            raise _error(err, self.url, model) from None
        _check_contract(metadata, model, self.url, kind=kind)
        if not ready:
            raise ModelError(f"model '{model}' at {self.url} is not ready")
        if map:
            self._map_checked = True

    def health(self, timeout: float | None = None) -> Health:
        """Liveness, readiness and the model's readiness; raises ServerUnreachableError if nobody answers."""
        seconds = timeout or self.timeout
        try:
            live = self._grpc.is_server_live(headers=self.headers, client_timeout=seconds)
            ready = self._grpc.is_server_ready(headers=self.headers, client_timeout=seconds)
            model_ready = self._grpc.is_model_ready(self.model, headers=self.headers, client_timeout=seconds)
            version = self._grpc.get_server_metadata(headers=self.headers, as_json=True,
                                                     client_timeout=seconds).get("version", "")
        except InferenceServerException as err:
            raise _unreachable(self.url, err, diagnose(self.url, self._ssl)) from None
        return Health(live, ready, model_ready, version, self.model)

    def score(self, image: ImageLike, *, timeout: float | None = None) -> Scores:
        """Scores for one image: a path, an http(s) URL, bytes, an open binary file, a PIL image or an HxWx3
        uint8 RGB array. A URL is downloaded first (within the timeout, at most MAX_IMAGE_BYTES).

        Raises BadImageError when the input cannot be read (missing file, failed download) or the server
        refuses the image, else the other IQAErrors (unreachable, timeout, ...)."""
        data = _read(image, None, timeout or self.timeout)
        return self._score(data, timeout, index=None, source=describe(image))

    def score_many(self, images: Iterable[ImageLike], *, concurrency: int = 8, timeout: float | None = None,
                   progress: Progress | None = None) -> list[Outcome]:
        """Scores for many images, in input order; a failed item is its IQAError, the others are scored."""
        return list(self.iter_score_many(images, concurrency=concurrency, timeout=timeout, progress=progress))

    def iter_score_many(self, images: Iterable[ImageLike], *, concurrency: int = 8, timeout: float | None = None,
                        progress: Progress | None = None) -> Iterator[Outcome]:
        """Like score_many, yielding in input order; reads `images` lazily, so memory stays bounded."""
        return self._iter_many(self._score, images, concurrency, timeout, progress)

    def score_map(self, image: ImageLike, *, timeout: float | None = None) -> DegradationMap:
        """The degradation map of one image (path, bytes, PIL image or HxWx3 uint8 RGB array): each cell's
        box and scores and the pooled whole-image scores (DegradationMap; `.plot(path)` draws it). Takes what
        score() takes and raises as it does."""
        data = _read(image, None, timeout or self.timeout)
        return self._score_map(data, timeout, index=None, source=describe(image))

    def score_map_many(self, images: Iterable[ImageLike], *, concurrency: int = 4, timeout: float | None = None,
                       progress: Progress | None = None) -> list[MapOutcome]:
        """Maps for many images, in input order; a failed item is its IQAError, the others are mapped."""
        return list(self.iter_score_map_many(images, concurrency=concurrency, timeout=timeout, progress=progress))

    def iter_score_map_many(self, images: Iterable[ImageLike], *, concurrency: int = 4, timeout: float | None = None,
                            progress: Progress | None = None) -> Iterator[MapOutcome]:
        """Like score_map_many, yielding in input order; reads `images` lazily (each map keeps its image's
        bytes for plotting, so prefer this to score_map_many for long runs)."""
        return self._iter_many(self._score_map, images, concurrency, timeout, progress)

    def _iter_many(self, score, images: Iterable[ImageLike], concurrency: int, timeout: float | None,
                   progress: Progress | None) -> Iterator:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        total = len(images) if hasattr(images, "__len__") else None
        done = 0
        pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="iqa")
        window: deque = deque()
        try:
            for index, image in enumerate(images):
                window.append(pool.submit(self._item, score, index, image, timeout))
                while len(window) >= 2 * concurrency or (window and window[0].done()):
                    done += 1
                    outcome = window.popleft().result()
                    if progress:  # before the yield: a caller that stops after the last item has seen it counted
                        progress(done, total)
                    yield outcome
            while window:
                done += 1
                outcome = window.popleft().result()
                if progress:
                    progress(done, total)
                yield outcome
        finally:
            # Closed early (the caller stopped, Ctrl-C, the server went away): what has not started never
            # will, and the caller does not wait for the requests in flight (they end within their timeout,
            # or at once when the client is closed).
            pool.shutdown(wait=False, cancel_futures=True)

    def score_video(self, path: str | os.PathLike, *, fps: float | None = None, frames: int | None = None,
                    percentile: float = 95.0, concurrency: int = 8, timeout: float | None = None,
                    progress: Progress | None = None):
        """Score frames sampled from a video (N uniform `frames`, or `fps` per second) -> VideoReport.

        A frame the server refuses is a failed frame of the report; a server that stops answering mid-video
        raises ServerUnreachableError (or ModelError) instead of a report of the part scored before."""
        from iqa_client import video

        sampled = video.sample_frames(path, fps=fps, frames=frames)
        times, outcomes = [], []
        with contextlib.closing(self.iter_score_frames(sampled, concurrency=concurrency, timeout=timeout,
                                                       progress=progress)) as scored:
            for time_s, outcome in scored:
                if isinstance(outcome, SERVER_GONE):
                    raise outcome
                times.append(time_s)
                outcomes.append(outcome)
        return video.report(path, sampled.duration_s, times, outcomes, percentile, sampled.start_s)

    def iter_score_frames(self, frames: Iterable[tuple[float, np.ndarray]], *, concurrency: int = 8,
                          timeout: float | None = None, progress: Progress | None = None
                          ) -> Iterator[tuple[float, Outcome]]:
        """(time in seconds, Scores or the frame's IQAError) for each (time in seconds, RGB uint8 [H, W, 3])
        frame, e.g. of video.sample_frames(path, fps=2), in order, as each is scored: for writing a video's
        rows as they come. Reads the frames lazily (at most 2 x concurrency held)."""
        times: deque[float] = deque()

        def pixels():
            for time_s, frame in frames:
                times.append(time_s)
                yield frame

        with contextlib.closing(self.iter_score_many(pixels(), concurrency=concurrency, timeout=timeout,
                                                     progress=_frame_total(frames, progress))) as outcomes:
            for outcome in outcomes:
                yield times.popleft(), outcome

    def _item(self, score, index: int, image: ImageLike, timeout: float | None):
        try:
            data = _read(image, index, timeout or self.timeout)
            return score(data, timeout, index=index, source=describe(image))
        except IQAError as err:
            return err

    def _score(self, data: bytes, timeout: float | None, *, index, source) -> Scores:
        result = self._infer(self.model, _OUTPUTS, data, timeout, index=index, source=source)
        return _scores(result, self.url, self.model)

    def _score_map(self, data: bytes, timeout: float | None, *, index, source) -> DegradationMap:
        if not self._map_checked:
            try:
                metadata = self._grpc.get_model_metadata(self.map_model, headers=self.headers, as_json=True,
                                                         client_timeout=timeout or self.timeout)
            except InferenceServerException as err:
                raise _error(err, self.url, self.map_model) from None
            _check_contract(metadata, self.map_model, self.url, kind=MAP_MODEL)
            self._map_checked = True
        result = self._infer(self.map_model, _MAP_OUTPUTS, data, timeout, index=index, source=source)
        return _map(result, self.url, self.map_model, data, index, source)

    def _infer(self, model: str, outputs, data: bytes, timeout: float | None, *, index, source):
        _check_size(data, index, source)
        deadline = _Deadline(timeout or self.timeout)
        for attempt in itertools.count():
            try:
                return self._grpc.infer(model, _inputs(data), outputs=outputs, headers=self.headers,
                                        client_timeout=max(deadline.left(), 0.001))
            except InferenceServerException as err:
                pause = _retry_pause(self.retry, err, attempt, deadline)
                if pause is None:
                    raise _error(err, self.url, model, index, source) from None
                time.sleep(pause)
                if deadline.left() <= 0:  # unreachable until the deadline
                    raise _error(err, self.url, model, index, source) from None

    def close(self) -> None:
        self._grpc.close()

    def __enter__(self) -> IQAClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


# --- the asyncio twin ----------------------------------------------------------------------


class AsyncIQAClient:
    """The asyncio twin of IQAClient: same arguments, same results, `await` on each call.

    Call `await client.connect()` (or use `async with`) to check the server and model first.

    Event loops: the client may be built anywhere, inside a running loop or not. gRPC's asyncio channels
    belong to the loop they are made in, so the client opens its channel in the loop of its first call,
    and a call from another loop (a second `asyncio.run`, a loop in another thread) gets a channel of
    its own in that loop. `close()` closes the channel of the loop that calls it and lets go of those
    whose loops have ended; a closed client opens a new channel on its next call.
    """

    def __init__(self, url: str = DEFAULT_URL, *, model: str = ENSEMBLE_MODEL, timeout: float = 30.0,
                 retry: RetryPolicy = RetryPolicy(), ssl: bool = False, root_certificates: str | None = None,
                 private_key: str | None = None, certificate_chain: str | None = None,
                 headers: dict[str, str] | None = None, channel_options: ChannelOptions | None = None,
                 map_model: str = MAP_MODEL) -> None:
        url, ssl = grpc_target(url, ssl)
        self.url, self.model, self.timeout, self.retry, self._ssl = url, model, timeout, retry, ssl
        self.map_model, self._map_checked = map_model, False
        self.headers = dict(headers or {})
        for pem in (root_certificates, private_key, certificate_chain):
            if pem is not None:
                Path(pem).read_bytes()  # a missing file fails here, as it does for IQAClient, not at first use
        self._settings = dict(url=url, ssl=ssl, root_certificates=root_certificates, private_key=private_key,
                              certificate_chain=certificate_chain, channel_args=channel_arguments(channel_options))
        self._channels: dict[asyncio.AbstractEventLoop, grpcaio.InferenceServerClient] = {}

    @property
    def _grpc(self) -> grpcaio.InferenceServerClient:
        """tritonclient's asyncio client for the running loop, made on its first use there."""
        loop = asyncio.get_running_loop()
        client = self._channels.get(loop)
        if client is None:
            for ended in [other for other in self._channels if other.is_closed()]:
                # Its channel cannot be awaited any more; grpc closes it when it is collected.
                del self._channels[ended]
            client = self._channels[loop] = grpcaio.InferenceServerClient(**self._settings)
        return client

    async def connect(self, timeout: float | None = None, *, map: bool = False) -> None:
        """Check that the server is live and that the model is ready and is the expected contract.

        map: check the degradation-map model (`map_model`, the iqa_degradation_map contract) instead of
        `model`, for a caller that only maps. Raises ServerUnreachableError if nobody answers,
        ModelError if the model is not served, not ready or not of its contract.
        """
        seconds = timeout or self.timeout
        model, kind = (self.map_model, MAP_MODEL) if map else (self.model, ENSEMBLE_MODEL)
        try:
            live = await self._grpc.is_server_live(headers=self.headers, client_timeout=seconds)
        except InferenceServerException as err:
            raise _unreachable(self.url, err, await asyncio.to_thread(diagnose, self.url, self._ssl)) from None
        if not live:
            raise ServerUnreachableError(f"Triton at {self.url} is not live")
        try:
            metadata = await self._grpc.get_model_metadata(model, headers=self.headers, as_json=True,
                                                           client_timeout=seconds)
            ready = await self._grpc.is_model_ready(model, headers=self.headers, client_timeout=seconds)
        except InferenceServerException as err:
            raise _error(err, self.url, model) from None
        _check_contract(metadata, model, self.url, kind=kind)
        if not ready:
            raise ModelError(f"model '{model}' at {self.url} is not ready")
        if map:
            self._map_checked = True

    async def health(self, timeout: float | None = None) -> Health:
        """Liveness, readiness and the model's readiness; raises ServerUnreachableError if nobody answers."""
        seconds = timeout or self.timeout
        try:
            live = await self._grpc.is_server_live(headers=self.headers, client_timeout=seconds)
            ready = await self._grpc.is_server_ready(headers=self.headers, client_timeout=seconds)
            model_ready = await self._grpc.is_model_ready(self.model, headers=self.headers, client_timeout=seconds)
            metadata = await self._grpc.get_server_metadata(headers=self.headers, as_json=True,
                                                            client_timeout=seconds)
        except InferenceServerException as err:
            raise _unreachable(self.url, err, await asyncio.to_thread(diagnose, self.url, self._ssl)) from None
        return Health(live, ready, model_ready, metadata.get("version", ""), self.model)

    async def score(self, image: ImageLike, *, timeout: float | None = None) -> Scores:
        """Scores for one image: what IQAClient.score takes, raising what it raises."""
        data = await asyncio.to_thread(_read, image, None, timeout or self.timeout)  # files, downloads, PNG: off the loop
        return await self._score(data, timeout, index=None, source=describe(image))

    async def score_many(self, images: Iterable[ImageLike], *, concurrency: int = 8,
                         timeout: float | None = None, progress: Progress | None = None) -> list[Outcome]:
        """Scores for many images, in input order; a failed item is its IQAError, the others are scored."""
        return [outcome async for outcome in self.iter_score_many(images, concurrency=concurrency,
                                                                   timeout=timeout, progress=progress)]

    def iter_score_many(self, images: Iterable[ImageLike], *, concurrency: int = 8,
                        timeout: float | None = None, progress: Progress | None = None) -> AsyncIterator[Outcome]:
        """Like score_many, yielding in input order with at most `concurrency` requests in flight."""
        return self._iter_many(self._score, images, concurrency, timeout, progress)

    async def score_map(self, image: ImageLike, *, timeout: float | None = None) -> DegradationMap:
        """The degradation map of one image (path, bytes, PIL image or HxWx3 uint8 RGB array): each cell's
        box and scores and the pooled whole-image scores (DegradationMap; `.plot(path)` draws it)."""
        data = await asyncio.to_thread(_read, image, None, timeout or self.timeout)
        return await self._score_map(data, timeout, index=None, source=describe(image))

    async def score_map_many(self, images: Iterable[ImageLike], *, concurrency: int = 4,
                             timeout: float | None = None, progress: Progress | None = None) -> list[MapOutcome]:
        """Maps for many images, in input order; a failed item is its IQAError, the others are mapped."""
        return [outcome async for outcome in self.iter_score_map_many(images, concurrency=concurrency,
                                                                       timeout=timeout, progress=progress)]

    def iter_score_map_many(self, images: Iterable[ImageLike], *, concurrency: int = 4,
                            timeout: float | None = None, progress: Progress | None = None
                            ) -> AsyncIterator[MapOutcome]:
        """Like score_map_many, yielding in input order with at most `concurrency` requests in flight."""
        return self._iter_many(self._score_map, images, concurrency, timeout, progress)

    async def _iter_many(self, score, images: Iterable[ImageLike], concurrency: int, timeout: float | None,
                         progress: Progress | None) -> AsyncIterator:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        total = len(images) if hasattr(images, "__len__") else None
        done = 0
        window: deque[asyncio.Task] = deque()
        try:
            for index, image in enumerate(images):
                window.append(asyncio.ensure_future(self._item(score, index, image, timeout)))
                if len(window) >= concurrency:
                    done += 1
                    outcome = await window.popleft()
                    if progress:  # before the yield: a caller that stops after the last item has seen it counted
                        progress(done, total)
                    yield outcome
            while window:
                done += 1
                outcome = await window.popleft()
                if progress:
                    progress(done, total)
                yield outcome
        finally:
            for task in window:
                task.cancel()

    async def score_video(self, path: str | os.PathLike, *, fps: float | None = None, frames: int | None = None,
                          percentile: float = 95.0, concurrency: int = 8, timeout: float | None = None,
                          progress: Progress | None = None):
        """Score frames sampled from a video (N uniform `frames`, or `fps` per second) -> VideoReport; raises
        as IQAClient.score_video does when the server stops answering mid-video."""
        from iqa_client import video

        sampled = video.sample_frames(path, fps=fps, frames=frames)
        times, outcomes = [], []
        scored = self.iter_score_frames(sampled, concurrency=concurrency, timeout=timeout, progress=progress)
        try:
            async for time_s, outcome in scored:
                if isinstance(outcome, SERVER_GONE):
                    raise outcome
                times.append(time_s)
                outcomes.append(outcome)
        finally:
            await scored.aclose()
        return video.report(path, sampled.duration_s, times, outcomes, percentile, sampled.start_s)

    async def iter_score_frames(self, frames: Iterable[tuple[float, np.ndarray]], *, concurrency: int = 8,
                                timeout: float | None = None, progress: Progress | None = None
                                ) -> AsyncIterator[tuple[float, Outcome]]:
        """(time in seconds, Scores or the frame's IQAError) per (time, RGB uint8 [H, W, 3]) frame, in order,
        as each is scored (IQAClient.iter_score_frames)."""
        times: deque[float] = deque()

        def pixels():
            for time_s, frame in frames:
                times.append(time_s)
                yield frame

        outcomes = self._iter_many(self._score, pixels(), concurrency, timeout, _frame_total(frames, progress))
        try:
            async for outcome in outcomes:
                yield times.popleft(), outcome
        finally:
            await outcomes.aclose()

    async def _item(self, score, index: int, image: ImageLike, timeout: float | None):
        try:
            # files, downloads and PNG-encoding a frame are blocking or CPU work: off the event loop
            data = await asyncio.to_thread(_read, image, index, timeout or self.timeout)
            return await score(data, timeout, index=index, source=describe(image))
        except IQAError as err:
            return err

    async def _score(self, data: bytes, timeout: float | None, *, index, source) -> Scores:
        result = await self._infer(self.model, _OUTPUTS, data, timeout, index=index, source=source)
        return _scores(result, self.url, self.model)

    async def _score_map(self, data: bytes, timeout: float | None, *, index, source) -> DegradationMap:
        if not self._map_checked:
            try:
                metadata = await self._grpc.get_model_metadata(self.map_model, headers=self.headers, as_json=True,
                                                               client_timeout=timeout or self.timeout)
            except InferenceServerException as err:
                raise _error(err, self.url, self.map_model) from None
            _check_contract(metadata, self.map_model, self.url, kind=MAP_MODEL)
            self._map_checked = True
        result = await self._infer(self.map_model, _MAP_OUTPUTS, data, timeout, index=index, source=source)
        return _map(result, self.url, self.map_model, data, index, source)

    async def _infer(self, model: str, outputs, data: bytes, timeout: float | None, *, index, source):
        _check_size(data, index, source)
        deadline = _Deadline(timeout or self.timeout)
        for attempt in itertools.count():
            try:
                return await self._grpc.infer(model, _inputs(data), outputs=outputs, headers=self.headers,
                                              client_timeout=max(deadline.left(), 0.001))
            except InferenceServerException as err:
                pause = _retry_pause(self.retry, err, attempt, deadline)
                if pause is None:
                    raise _error(err, self.url, model, index, source) from None
                await asyncio.sleep(pause)
                if deadline.left() <= 0:  # unreachable until the deadline
                    raise _error(err, self.url, model, index, source) from None

    async def close(self) -> None:
        """Close the channel of the running loop (and let go of those of loops that have ended)."""
        client = self._channels.pop(asyncio.get_running_loop(), None)
        for ended in [other for other in self._channels if other.is_closed()]:
            del self._channels[ended]
        if client is not None:
            await client.close()

    async def __aenter__(self) -> AsyncIQAClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()
