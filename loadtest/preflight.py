"""What a load-test run settles before its first request: the server it measures and the images it sends.

Used by the locustfile (so that a plain `locust -f loadtest/locustfile.py` works) and by `make loadtest`
(loadtest/run.py). Light: the client library and Pillow, no server-side code.
"""

from __future__ import annotations

from pathlib import Path

from iqa_client import IQAClient, ServerUnreachableError
from iqa_client.contract import IMAGE_SUFFIXES
from loadtest.prepare_corpus import repository_photos, variants


def server_problem(url: str, model: str, timeout_s: float = 5.0) -> str | None:
    """None when a Triton server answers at `url` (gRPC host:port) and `model` is ready there,
    else what is wrong, in a sentence that names the URL."""
    with IQAClient(url, model=model, timeout=timeout_s, connect=False) as client:
        try:
            health = client.health()
        except ServerUnreachableError as err:
            return str(err)
    if not (health.live and health.ready):
        return f"the Triton server at {url} is not ready (live {health.live}, ready {health.ready})"
    if not health.model_ready:
        return f"the Triton server at {url} answers, but model '{model}' is not ready there"
    return None


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
