#!/usr/bin/env bash
# NVIDIA's perf_analyzer against the served ensemble, ON the GPU machine (device tool), from the
# repository root (issue 13, item 6). Prepare here:
#   bash loadtest/gpu/prepare_carry.sh              # .gpu-carry: server, numpy 1.26, perf_analyzer, nvImageCodec
#   mv training/weights/iqa_resnet50.fp16.pt /tmp/  # the 64 MiB tree cannot hold it and the carry; git checkout
#                                                   # restores it (the export then uses a random init: same compute)
# then: run(command="bash loadtest/gpu/perf.sh", carry=[".gpu-carry"], timeout_s=590)
# Runs python -m loadtest.perf: perf_analyzer at concurrency $CONCURRENCY (1 16 64 128 256) on 512x384
# and 4000x3000 JPEGs ($SIZES), then the in-process stage ceilings on the same machine (network eager
# fp32, fp16 + channels_last, CUDA graph; preprocess on 1 core and on every core; nvJPEG and the
# batched region decode). perf.json, the printed table and the server's log land in $OUT.
# REGION_DECODE_DEVICE=cuda serves iqa_preprocess with its JPEG regions decoded on the GPU (model.py);
# PREPROCESS_INSTANCES overrides the committed count; PERF_ARGS adds loadtest.perf options.
# SETUP=0 (with PYTHON and PERF_ANALYZER) skips the GPU machine's set-up: tests/test_perf_kit.py runs
# this very script on a CPU at concurrency 1 and 2 for a few seconds.
set -uo pipefail
python=${PYTHON:-python3} carry=${CARRY:-.gpu-carry} setup=${SETUP:-1}
out=${OUT:-/tmp/iqa-gpu-out}; mkdir -p "$out"
if [ "$setup" = 1 ]; then
  # shellcheck source=loadtest/gpu/setup.sh
  source "$(dirname "$0")/setup.sh" || exit 2
  # python3 -m zipfile, not unzip, which a bare machine may lack (as prepare_carry.sh); zipfile drops the
  # executable bit, hence the chmod.
  python3 -m zipfile -e "$carry"/wheels/perf_analyzer-*.whl /tmp/perf-analyzer || exit 2
  chmod +x /tmp/perf-analyzer/perf_analyzer/bin/perf_analyzer
  export PERF_ANALYZER=${PERF_ANALYZER:-/tmp/perf-analyzer/perf_analyzer/bin/perf_analyzer}
  device=cuda
else
  export PYTHONPATH=$PWD:$PWD/client PYTHONUNBUFFERED=1
  device=$("$python" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")') || exit 2
fi
repo_configs=model_repository/iqa_preprocess/config.pbtxt
cp "$repo_configs" "$out/committed-preprocess-config.pbtxt"
trap 'cp "$out/committed-preprocess-config.pbtxt" "$repo_configs"' EXIT
if [ -n "${PREPROCESS_INSTANCES:-}" ]; then
  sed -i -E "s/count: *[0-9]+, kind: KIND_CPU/count: ${PREPROCESS_INSTANCES}, kind: KIND_CPU/" "$repo_configs"
fi
if [ -n "${REGION_DECODE_DEVICE:-}" ]; then
  printf '\nparameters: { key: "region_decode_device", value: { string_value: "%s" } }\n' "$REGION_DECODE_DEVICE" \
    >> "$repo_configs"
fi
# shellcheck disable=SC2086  # CONCURRENCY, SIZES and PERF_ARGS are lists of words
"$python" -m loadtest.perf --device "$device" --out "$out" --concurrency ${CONCURRENCY:-1 16 64 128 256} \
  --sizes ${SIZES:-512x384 4000x3000} ${PERF_ARGS:-} 2>&1 | grep -v -E '^[IWE][0-9]{4} ' | tee "$out/perf.txt"
status=${PIPESTATUS[0]}
cp .run/perf/tritonserver.log "$out/tritonserver.log" 2>/dev/null || true
echo "perf.sh: exit status $status"
exit "$status"
