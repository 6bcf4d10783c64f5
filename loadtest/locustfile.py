"""Production-like traffic for the iqa_degradation ensemble over gRPC.

    locust -f loadtest/locustfile.py --headless -u 4 -t 30s --host 127.0.0.1:8001

A user sends one image per request most of the time and sometimes a small batch, picked from
a corpus of real photos in mixed sizes and formats, as fast as answers come back. A response
counts as a success only if it carries the three scores, one per image, each in [0, 1]; a
failure is recorded with its gRPC status and message.

Runs as it is: the images come from --corpus (loadtest/corpus, written by `make loadtest` or
loadtest/prepare_corpus.py), else from the repository's test photos, and the first log line says
which. Before any user starts, the server at --host must answer with the model ready; if not, the
run ends at once saying so (exit status 3) and sends nothing. `make loadtest` (loadtest/run.py)
runs this file and summarises the run.
"""

# grpc must be told about gevent before anything imports it: Locust users are greenlets.
from grpc.experimental import gevent as grpc_gevent

grpc_gevent.init_gevent()

import json  # noqa: E402
import logging  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
from locust import User, constant, events, task  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from iqa_client.channel import channel_arguments  # noqa: E402
from iqa_client.contract import ENSEMBLE_MODEL, IMAGE_INPUT, SCORE_NAMES  # noqa: E402
from loadtest.preflight import GrpcClient, load_corpus, server_problem  # noqa: E402

EXIT_SERVER_UNUSABLE = 3  # as the `iqa` command line's
log = logging.getLogger("loadtest")


@events.init_command_line_parser.add_listener
def _options(parser):
    parser.add_argument("--model", default=ENSEMBLE_MODEL, help="model to call")
    parser.add_argument("--corpus", default=str(Path(__file__).parent / "corpus"),
                        help="folder of images (loadtest/prepare_corpus.py); when it holds none, the test photos")
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


class ScoreFailure(Exception):
    """What went wrong with one request, as Locust's failure table shows it: the message alone."""

    def __repr__(self) -> str:
        return str(self)


class ScoreImages(User):
    wait_time = constant(0)  # closed loop: the next request leaves when the answer is back
    corpus: list[bytes] = []

    def on_start(self):
        options = self.environment.parsed_options
        self.client = GrpcClient(self.host.removeprefix("grpc://"),
                                 channel_args=channel_arguments(options.grpc_channel_options.items()))

    def on_stop(self):
        client = getattr(self, "client", None)  # None if stopped before on_start ended
        if client is not None:
            client.close()  # without it the Locust process hangs after "Shutting down"

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
                    raise ScoreFailure(f"{name}: expected shape ({len(images)}, 1), got "
                                       f"{None if values is None else values.shape}")
                if not ((values >= 0) & (values <= 1)).all():
                    raise ScoreFailure(f"{name} outside [0, 1]: {values.ravel().tolist()}")
            length = sum(v.nbytes for v in scores)
        except InferenceServerException as err:  # its repr is empty: keep the status and message
            error = ScoreFailure(f"{err.status()}: {err.message()}")
        except Exception as err:  # every failure is reported to Locust, none stops the user
            error = err if isinstance(err, ScoreFailure) else ScoreFailure(f"{type(err).__name__}: {err}")
        events.request.fire(request_type="grpc", name=f"{options.model} batch {len(images) if len(images) == 1 else '2+'}",
                            response_time=(time.perf_counter() - start) * 1000, response_length=length,
                            exception=error, context={"images": len(images)})
        limit = options.max_requests
        if limit and self.environment.stats.total.num_requests >= limit and self.environment.runner:
            self.environment.runner.quit()


@events.init.add_listener
def _prepare(environment, **_):
    options = environment.parsed_options
    if options is None:  # imported by something other than Locust's command line
        return
    ScoreImages.corpus, origin = load_corpus(Path(options.corpus))
    log.info("corpus: %s", origin)
    ScoreImages.tasks = [ScoreImages.one_image] * options.single_weight + [ScoreImages.small_batch] * options.batch_weight
    if not environment.stop_timeout:  # no --stop-timeout: at the end, let the requests in flight finish and
        environment.stop_timeout = options.request_timeout  # count, rather than kill users inside a gRPC call
    if environment.host:  # in the web UI the host may come later; the requests then tell
        problem = server_problem(environment.host.removeprefix("grpc://"), options.model)
        if problem:
            log.error("%s: ending the run before any request", problem)
            raise SystemExit(EXIT_SERVER_UNUSABLE)
