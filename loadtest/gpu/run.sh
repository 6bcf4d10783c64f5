#!/usr/bin/env bash
# Run ON the GPU machine (device tool), from the repository root, after prepare_carry.sh here:
#   run(command="bash loadtest/gpu/run.sh", carry=[".gpu-carry"], timeout_s=540)
# Serves the repository with the real tritonserver (iqa_resnet50 KIND_GPU through the Python-backend
# TorchScript runner: the libtorch backend is NGC-only), then runs loadtest/bench.py on the GPU:
# (a) eager fp32 and fp16 in-process, (b) TorchScript, (c) the ensemble at rising concurrency,
# with the network served in fp16, and the CPU-side decode + sampling cost. Results go to $OUT.
set -euo pipefail
out=${OUT:-/tmp/iqa-gpu-out}; mkdir -p "$out"
site=/tmp/iqa-site; mkdir -p "$site"
tar -C "$site" -xJf .gpu-carry/tritonserver-min.tar.xz
python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .gpu-carry/wheels/*.whl
# The stub embeds the first python3 on PATH and ignores PYTHONPATH: a .pth in that interpreter's
# site-packages puts numpy 1.26 (numpy 2 empties stub outputs), tritonclient and this repository first.
# This machine is thrown away after the session, so changing its interpreter is fine.
purelib=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "import sys; sys.path[:0] = ['$site', '$PWD', '$PWD/client']" > "$purelib/000-iqa-gpu.pth"
python3 -c 'import numpy, torch; assert numpy.__version__ == "1.26.4", numpy.__version__; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
export IQA_TRITONSERVER=$site/pytriton/tritonserver/bin/tritonserver PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$out/gpu.txt"
python3 -m conversion.export 2>&1 | tail -3
# BENCH_ARGS narrows a run to fit the device time; PREPROCESS_INSTANCES overrides the committed count.
if [ -n "${PREPROCESS_INSTANCES:-}" ]; then
  sed -i -E "s/count: *[0-9]+, kind: KIND_CPU/count: ${PREPROCESS_INSTANCES}, kind: KIND_CPU/" model_repository/iqa_preprocess/config.pbtxt
fi
# shellcheck disable=SC2086  # BENCH_ARGS is a list of words
python3 -m loadtest.bench --device cuda --fp16 ${BENCH_ARGS:---batches 1 8 32 --concurrency 1 8 32 64 128 --seconds 15} \
  2>&1 | grep -v -E '^[IWE][0-9]{4} ' | tee "$out/bench.txt"
cp .run/bench-on/tritonserver.log "$out/tritonserver.log" 2>/dev/null || true
# MAP_BENCH_ARGS (e.g. "--large --concurrency 1 16 64 --seconds 10 --rounds 2"): also the degradation map
# against the 4-patch ensemble on the same photos (loadtest/map_bench.py; its stability part is CPU work
# and is measured off the GPU machine).
if [ -n "${MAP_BENCH_ARGS:-}" ]; then
  # shellcheck disable=SC2086  # MAP_BENCH_ARGS is a list of words
  python3 -m loadtest.map_bench --cost-only ${MAP_BENCH_ARGS} 2>&1 | grep -v -E '^[IWE][0-9]{4} ' | tee "$out/map_bench.txt"
  cp .run/map-bench/tritonserver.log "$out/map_tritonserver.log" 2>/dev/null || true
fi
