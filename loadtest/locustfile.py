"""Production-like traffic for the iqa_degradation ensemble over gRPC.

    locust -f loadtest/locustfile.py --host 127.0.0.1:8001 --corpus loadtest/corpus

A user sends one image per request most of the time and sometimes a small batch, picked from
a corpus of real photos in mixed sizes and formats, as fast as answers come back. A response
counts as a success only if it carries the three scores, one per image, each in [0, 1].
"""

# grpc must be told about gevent before anything imports it: Locust users are greenlets.
from grpc.experimental import gevent as grpc_gevent

grpc_gevent.init_gevent()

import json  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
from locust import User, constant, events, task  # noqa: E402

from iqa_client.client import channel_arguments  # noqa: E402
from iqa_client.contract import ENSEMBLE_MODEL, IMAGE_INPUT, SCORE_NAMES  # noqa: E402

CORPUS_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument("--model", default=ENSEMBLE_MODEL, help="model to call")
    parser.add_argument("--corpus", default="loadtest/corpus", help="folder of images (loadtest/prepare_corpus.py)")
    parser.add_argument("--single-weight", type=int, default=4, help="relative share of one-image requests")
    parser.add_argument("--batch-weight", type=int, default=1, help="relative share of small-batch requests")
    parser.add_argument("--max-batch", type=int, default=4, help="largest small batch")
    parser.add_argument("--request-timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--max-requests", type=int, default=0, help="stop after this many requests (0: no bound)")
    parser.add_argument("--grpc-channel-options", type=_json_object, default={}, env_var="LOCUST_GRPC_CHANNEL_OPTIONS",
                        help='gRPC channel arguments as a JSON object, added to tritonclient\'s defaults, e.g. '
                             '\'{"grpc.lb_policy_name": "round_robin"}\' with --host dns:///<headless service>:8001')


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON: {err}") from None
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object of channel argument names to values")
    return value


class ScoreImages(User):
    wait_time = constant(0)  # closed loop: the next request leaves when the answer is back
    corpus: list[bytes] = []

    def on_start(self):
        options = self.environment.parsed_options
        if not ScoreImages.corpus:
            files = sorted(p for p in Path(options.corpus).glob("*") if p.suffix.lower() in CORPUS_SUFFIXES)
            if not files:
                raise RuntimeError(f"no images in {options.corpus}: run python -m loadtest.prepare_corpus")
            ScoreImages.corpus = [p.read_bytes() for p in files]
        self.client = grpcclient.InferenceServerClient(
            self.host.removeprefix("grpc://"),
            channel_args=channel_arguments(options.grpc_channel_options.items()))

    def on_stop(self):
        self.client.close()  # without it the Locust process hangs after "Shutting down"

    @task(4)
    def one_image(self):
        self.score([random.choice(self.corpus)])

    @task(1)
    def small_batch(self):
        options = self.environment.parsed_options
        self.score(random.sample(self.corpus, k=min(random.randint(2, options.max_batch), len(self.corpus))))

    def score(self, images: list[bytes]) -> None:
        options = self.environment.parsed_options
        tensor = grpcclient.InferInput(IMAGE_INPUT, [len(images), 1], "BYTES")
        tensor.set_data_from_numpy(np.array(images, dtype=np.object_).reshape(-1, 1))
        start, length, error = time.perf_counter(), 0, None
        try:
            result = self.client.infer(options.model, [tensor], client_timeout=options.request_timeout)
            scores = [result.as_numpy(name) for name in SCORE_NAMES]
            for name, values in zip(SCORE_NAMES, scores):
                if values is None or values.shape != (len(images), 1):
                    raise ValueError(f"{name}: expected shape ({len(images)}, 1), got "
                                     f"{None if values is None else values.shape}")
                if not ((values >= 0) & (values <= 1)).all():
                    raise ValueError(f"{name} outside [0, 1]: {values.ravel().tolist()}")
            length = sum(v.nbytes for v in scores)
        except Exception as err:  # every failure is reported to Locust, none stops the user
            error = err
        events.request.fire(request_type="grpc", name=f"{options.model} batch {len(images) if len(images) == 1 else '2+'}",
                            response_time=(time.perf_counter() - start) * 1000, response_length=length,
                            exception=error, context={"images": len(images)})
        limit = options.max_requests
        if limit and self.environment.stats.total.num_requests >= limit and self.environment.runner:
            self.environment.runner.quit()


@events.init.add_listener
def _weights(environment, **_):
    options = environment.parsed_options
    if options is not None:
        ScoreImages.tasks = [ScoreImages.one_image] * options.single_weight + [ScoreImages.small_batch] * options.batch_weight
