#!/usr/bin/env bash
# Run ON the GPU machine (device tool), from the repository root, after prepare_carry.sh here:
#   run(command="bash loadtest/gpu/run.sh", carry=[".gpu-carry"], timeout_s=540)
# Serves the repository with the real tritonserver (iqa_resnet50 KIND_GPU through the Python-backend
# TorchScript runner: the libtorch backend is NGC-only), then runs loadtest/bench.py on the GPU:
# (a) eager fp32 and fp16 in-process, (b) TorchScript, (c) the ensemble at rising concurrency,
# with the network served in fp16, and the CPU-side decode + sampling cost; then loadtest/first_batch.py
# (JIT settings at new batch sizes). Results go to $OUT.
set -euo pipefail
out=${OUT:-/tmp/iqa-gpu-out}; mkdir -p "$out"
# shellcheck source=loadtest/gpu/setup.sh
source "$(dirname "$0")/setup.sh"
# BENCH_ARGS narrows a run to fit the device time; PREPROCESS_INSTANCES overrides the committed count.
if [ -n "${PREPROCESS_INSTANCES:-}" ]; then
  sed -i -E "s/count: *[0-9]+, kind: KIND_CPU/count: ${PREPROCESS_INSTANCES}, kind: KIND_CPU/" model_repository/iqa_preprocess/config.pbtxt
fi
# shellcheck disable=SC2086  # BENCH_ARGS is a list of words
python3 -m loadtest.bench --device cuda --fp16 ${BENCH_ARGS:---batches 1 8 32 --concurrency 1 8 32 64 128 --seconds 15} \
  2>&1 | grep -v -E '^[IWE][0-9]{4} ' | tee "$out/bench.txt"
cp .run/bench-on/tritonserver.log "$out/tritonserver.log" 2>/dev/null || true
# The first call at each new batch size under the PyTorch backend's three JIT settings (the committed
# config disables optimised execution: docs/serving.md "Precision and first requests"); FIRST_BATCH=0 skips it.
if [ "${FIRST_BATCH:-1}" != 0 ]; then
  python3 -m loadtest.first_batch --device cuda --repeats 5 --rounds 2 2>&1 | grep -v -i warn | tee "$out/first_batch.txt"
fi
# MAP_BENCH_ARGS (e.g. "--large --concurrency 1 16 64 --seconds 10 --rounds 2"): also the degradation map
# against the 4-patch ensemble on the same photos (loadtest/map_bench.py; its stability part is CPU work
# and is measured off the GPU machine).
if [ -n "${MAP_BENCH_ARGS:-}" ]; then
  # shellcheck disable=SC2086  # MAP_BENCH_ARGS is a list of words
  python3 -m loadtest.map_bench --cost-only ${MAP_BENCH_ARGS} 2>&1 | grep -v -E '^[IWE][0-9]{4} ' | tee "$out/map_bench.txt"
  cp .run/map-bench/tritonserver.log "$out/map_tritonserver.log" 2>/dev/null || true
fi
