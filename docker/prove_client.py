"""Score one image through a running server over gRPC and check what a deployment promises.

    python docker/prove_client.py --url 127.0.0.1:8001 --metrics-url http://127.0.0.1:8002/metrics \
        --image tests/data/sheep.jpg [--expect-libtorch-gpu]

Run by docker/prove.sh inside a container that shares the server container's network, and by
tests/test_deploy.py against the local test server. Needs only tritonclient[grpc] and numpy (no
project import), so it runs in the Locust image too. Checks:
  - the server and the three models are ready;
  - the ensemble returns NOISE, BLUR and COMPRESSION for the image, each FP32 [1, 1], finite, in [0, 1];
  - with --expect-libtorch-gpu: iqa_resnet50 is served as committed in model_repository/: backend
    `pytorch`, platform `pytorch_libtorch`, KIND_GPU instances (the NGC image; without a GPU the local
    launcher serves KIND_CPU). Whether NVIDIA's libtorch library or the launcher's Python-based
    stand-in runs it is not visible over gRPC: prove.sh reads that from the server's log.
  - with --metrics-url: the metrics the HorizontalPodAutoscaler's rules read are exported.
Prints the scores as JSON; exits non-zero with the reason on the first failed check.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient

ENSEMBLE, PREPROCESS, NETWORK = "iqa_degradation", "iqa_preprocess", "iqa_resnet50"
OUTPUTS = ("NOISE", "BLUR", "COMPRESSION")
# What docker/k8s/prometheus-adapter-values.yaml builds the autoscaling metrics from.
AUTOSCALING_SERIES = ("nv_inference_queue_duration_us", "nv_inference_request_success")
GPU_SERIES = "nv_gpu_utilization"


class ProofFailed(RuntimeError):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise ProofFailed(message)


def prove(url: str, image: bytes, expect_libtorch_gpu: bool, metrics_url: str | None, timeout_s: float) -> dict:
    client = grpcclient.InferenceServerClient(url)
    check(client.is_server_live(), f"server at {url} is not live")
    check(client.is_server_ready(), f"server at {url} is not ready")
    for model in (PREPROCESS, NETWORK, ENSEMBLE):
        check(client.is_model_ready(model), f"model {model} is not ready")

    if expect_libtorch_gpu:
        config = client.get_model_config(NETWORK, as_json=True)["config"]
        # Which library runs it (NVIDIA's libtriton_pytorch.so, not a Python stand-in) only the server's
        # log tells: prove.sh checks it there.
        served_by = (config.get("backend"), config.get("platform"))
        check(served_by == ("pytorch", "pytorch_libtorch"),
              f"{NETWORK} is served by backend/platform {served_by}, not ('pytorch', 'pytorch_libtorch')")
        kinds = [group.get("kind") for group in config.get("instance_group", [])]
        check(kinds and all(kind == "KIND_GPU" for kind in kinds), f"{NETWORK} instance kinds are {kinds}, not KIND_GPU")

    tensor = grpcclient.InferInput("IMAGE", [1, 1], "BYTES")
    tensor.set_data_from_numpy(np.array([[image]], dtype=np.object_))
    result = client.infer(ENSEMBLE, [tensor], outputs=[grpcclient.InferRequestedOutput(n) for n in OUTPUTS],
                          client_timeout=timeout_s)
    scores = {}
    for name in OUTPUTS:
        value = result.as_numpy(name)
        check(value is not None, f"output {name} is missing from the response")
        check(value.dtype == np.float32 and value.shape == (1, 1),
              f"output {name} is {value.dtype} {list(value.shape)}, not FP32 [1, 1]")
        score = float(value[0, 0])
        check(math.isfinite(score) and 0.0 <= score <= 1.0, f"output {name} = {score} is not in [0, 1]")
        scores[name] = score

    if metrics_url:
        with urllib.request.urlopen(metrics_url, timeout=timeout_s) as response:
            text = response.read().decode()
        series = set(AUTOSCALING_SERIES) | ({GPU_SERIES} if expect_libtorch_gpu else set())
        missing = [s for s in sorted(series) if not any(line.startswith(s + "{") for line in text.splitlines())]
        check(not missing, f"{metrics_url} lacks {missing}")
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="127.0.0.1:8001", help="gRPC address")
    parser.add_argument("--image", required=True, help="an image file to score")
    parser.add_argument("--metrics-url", help="Prometheus endpoint to check, e.g. http://127.0.0.1:8002/metrics")
    parser.add_argument("--expect-libtorch-gpu", action="store_true",
                        help=f"require {NETWORK} on the libtorch backend with KIND_GPU instances (the NGC image)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds for the inference call")
    args = parser.parse_args(argv)
    with open(args.image, "rb") as f:
        image = f.read()
    try:
        scores = prove(args.url, image, args.expect_libtorch_gpu, args.metrics_url, args.timeout)
    except (ProofFailed, grpcclient.InferenceServerException, OSError) as err:
        print(f"FAILED: {err}", file=sys.stderr)
        return 1
    print(json.dumps(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
