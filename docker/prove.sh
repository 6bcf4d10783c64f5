#!/usr/bin/env bash
# Prove the image on a machine with Docker, the NVIDIA Container Toolkit and a GPU:
#
#   docker/prove.sh                 # from anywhere in the checkout; needs nothing on the host but Docker
#
# 1. builds docker/Dockerfile (and the small client image docker/Dockerfile.locust);
# 2. runs the server as docker/k8s runs it: one GPU, non-root, read-only root filesystem with
#    /tmp as tmpfs, 2048m /dev/shm;
# 3. waits for the image's HEALTHCHECK to report healthy (the watchdog's /ready on 8003: a real inference passed);
# 4. scores tests/data/sheep.jpg over gRPC from a second container on the server's network
#    (docker/prove_client.py): three outputs, FP32 [1, 1], in [0, 1]; iqa_resnet50 on the pytorch
#    backend (its libtriton_pytorch.so, read from the server's backend table) with a GPU instance;
#    the autoscaling metrics exported on 8002;
# 5. stops the server with SIGTERM and checks it drained and exited 0 within the grace period.
# Exits non-zero at the first failed step and prints the server log.
#
# Environment: IMAGE (default iqa-degradation:prove), GPUS (default 1), READY_TIMEOUT (s, default 600).
set -euo pipefail

cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-iqa-degradation:prove}
CLIENT_IMAGE=${CLIENT_IMAGE:-iqa-degradation-locust:prove}
GPUS=${GPUS:-1}
READY_TIMEOUT=${READY_TIMEOUT:-600}
NAME=iqa-prove-$$
SAMPLE=tests/data/sheep.jpg

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'FAILED: %s\n' "$*" >&2; exit 1; }

cleanup() {
    local rc=$?
    if docker inspect "$NAME" >/dev/null 2>&1; then
        if [ "$rc" -ne 0 ]; then
            step "server log (last 80 lines)"
            docker logs --tail 80 "$NAME" 2>&1 || true
        fi
        docker rm -f "$NAME" >/dev/null 2>&1 || true
    fi
    exit "$rc"
}
trap cleanup EXIT

step "build $IMAGE and $CLIENT_IMAGE"
docker build -f docker/Dockerfile -t "$IMAGE" .
docker build -f docker/Dockerfile.locust -t "$CLIENT_IMAGE" docker

step "run $NAME on $GPUS GPU(s), read-only, non-root"
docker run -d --name "$NAME" --gpus "$GPUS" --shm-size 2048m --memory 14g --read-only --tmpfs /tmp \
    --ulimit memlock=-1 --ulimit stack=67108864 --security-opt no-new-privileges:true "$IMAGE" >/dev/null
uid=$(docker exec "$NAME" id -u)
[ "$uid" = "10001" ] || fail "the server runs as uid $uid, not 10001"

step "wait for healthy (up to ${READY_TIMEOUT}s)"
deadline=$((SECONDS + READY_TIMEOUT))
while :; do
    state=$(docker inspect -f '{{.State.Status}} {{.State.Health.Status}}' "$NAME")
    case "$state" in
        "running healthy") break ;;
        running\ *) ;;
        *) fail "the server is $state before it became healthy" ;;
    esac
    [ "$SECONDS" -lt "$deadline" ] || fail "not healthy within ${READY_TIMEOUT}s (state: $state)"
    sleep 5
done
echo "healthy after $((SECONDS - deadline + READY_TIMEOUT))s"

step "iqa_resnet50 runs in NVIDIA's PyTorch backend (libtriton_pytorch.so), not a Python stand-in"
# Triton prints its backend table at start: the pytorch row names the library it loaded.
docker logs "$NAME" 2>&1 | grep -E '^\| pytorch +\| [^|]*/backends/pytorch/libtriton_pytorch\.so' \
    || fail "the server did not load backends/pytorch/libtriton_pytorch.so for backend pytorch"

step "score $SAMPLE over gRPC"
docker run --rm --network "container:$NAME" -v "$PWD:/src:ro" --entrypoint python "$CLIENT_IMAGE" \
    /src/docker/prove_client.py --url 127.0.0.1:8001 --metrics-url http://127.0.0.1:8002/metrics \
    --image "/src/$SAMPLE" --expect-libtorch-gpu

step "stop: SIGTERM, Triton drains (--exit-timeout-secs=30) and exits"
started=$SECONDS
docker stop -t 45 "$NAME" >/dev/null
code=$(docker inspect -f '{{.State.ExitCode}}' "$NAME")
[ "$code" = "0" ] || fail "the server exited with code $code on SIGTERM"
echo "stopped in $((SECONDS - started))s, exit code 0"

step "PROVED: $IMAGE serves the repository's models on the GPU"
