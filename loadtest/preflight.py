"""What a load-test run settles before its first request: the server it measures and the images it sends.

Used by the locustfile (so that a plain `locust -f loadtest/locustfile.py` works) and by `make loadtest`
(loadtest/run.py). Light: tritonclient and Pillow, no server-side code.
"""

from __future__ import annotations

from pathlib import Path

import tritonclient.grpc as grpcclient
from tritonclient.utils import InferenceServerException

from iqa_client.contract import IMAGE_SUFFIXES
from loadtest.prepare_corpus import repository_photos, variants


class GrpcClient(grpcclient.InferenceServerClient):
    """tritonclient's gRPC client, closed at most once.

    tritonclient closes again in __del__. Under gevent (Locust) every close of a gRPC channel also
    decrements grpc's count of gevent channels, so a second close throws that count off, and the
    process then hangs closing a channel at its end (seen: stuck in grpc's channel close from
    InferenceServerClient.__del__ while garbage-collecting, after "Shutting down").
    """

    _closed = False

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            super().close()


def server_problem(url: str, model: str, timeout_s: float = 5.0) -> str | None:
    """None when a Triton server answers at `url` (gRPC host:port) and `model` is ready there,
    else what is wrong, in a sentence that names the URL.

    tritonclient's synchronous gRPC client, as the Locust users use it: the locustfile runs under
    gevent, and IQAClient would bring grpc's asyncio layer in beside it.
    """
    client = GrpcClient(url)
    try:
        try:
            live = client.is_server_live(client_timeout=timeout_s)
        except InferenceServerException as err:
            return f"no Triton server answers at {url}: {err.message()}"
        if not live:
            return f"the Triton server at {url} is not live"
        try:
            ready = client.is_model_ready(model, client_timeout=timeout_s)
        except InferenceServerException as err:
            return f"the Triton server at {url} answers, but model '{model}' cannot be asked: {err.message()}"
        return None if ready else f"the Triton server at {url} answers, but model '{model}' is not ready there"
    finally:
        client.close()


def load_corpus(folder: Path) -> tuple[list[bytes], str]:
    """(the encoded images to send, where they come from, for the run's first log line).

    The images in `folder` (loadtest/prepare_corpus.py writes them), else, when it holds none, the
    repository's test photos in the corpus's sizes and formats, encoded in memory: a plain Locust run
    needs no preparation step and writes nothing (the repository may be mounted read-only).
    """
    files = sorted(p for p in folder.glob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else []
    if files:
        images = [p.read_bytes() for p in files]
        return images, f"{len(images)} images from {folder}"
    images = [data for photo in repository_photos() for _, data in variants(photo)]
    return images, (f"{folder} holds no images: sending {len(images)} made in memory from the repository's "
                    f"{len(repository_photos())} test photos, in the corpus's sizes and formats (for more photos: "
                    ".venv/bin/python -m loadtest.prepare_corpus --debian)")
