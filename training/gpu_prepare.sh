#!/usr/bin/env bash
# Prepares, HERE, what training/gpu_run.sh needs on the GPU machine, in the two calls the 64 MiB limit
# forces (docs/model.md, run 4): the codec types' wheels and the init weights do not fit one call.
#   bash training/gpu_prepare.sh [INIT_WEIGHTS]      # default: the committed weights
# Writes (all git-ignored):
#   .whl/         cp312 wheels of PyAV, pillow-heif and Pillow (the pins in pyproject.toml); WHEELS="" skips them
#   .gpu-part1/   the first 12 MiB part of the init weights and a few fonts (call 1)
#   .train-carry/ the photo pack (training.photos --pack) and the other parts (call 2)
# then prints the two device calls. The tracked committed weights travel with the working tree (50 MB):
# move them out for both calls (mv training/weights/iqa_resnet50.fp16.pt /tmp/) and bring them back after
# (git checkout training/weights/iqa_resnet50.fp16.pt). Call 2 must follow call 1 at once: the machine
# stays warm ~30 s, and a fresh one has neither the wheels nor the first part (call 2 then exits 9).
# PYTHON (.venv/bin/python) and POOL (a pool as it is; default: training.photos' own) may be set; tests/test_training.py runs it.
set -euo pipefail
init=${1:-training/weights/iqa_resnet50.fp16.pt}
python=${PYTHON:-.venv/bin/python}
wheels=${WHEELS-av==18.1.0 pillow-heif==1.8.1 pillow==13.0.0}
limit=$((64 * 1024 * 1024))
dest=${DEST:-.}  # the repository root (what the device carries); tests write elsewhere
[ -f "$init" ] || { echo "gpu_prepare.sh: no weights at $init" >&2; exit 2; }
rm -rf "$dest/.gpu-part1" "$dest/.train-carry"
mkdir -p "$dest/.whl" "$dest/.gpu-part1/fonts" "$dest/.train-carry"
if [ -n "$wheels" ]; then
  # shellcheck disable=SC2086  # the wheel list is split on spaces on purpose
  "$python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$dest/.whl" $wheels
fi
pool_args=()
if [ -n "${POOL:-}" ]; then pool_args=(--pool "$POOL" --no-debian); fi  # that pool as it is
"$python" -m training.photos "${pool_args[@]}" --pack "$dest/.train-carry/pack.tar"
split -b 12M "$init" "$dest/.train-carry/part-"
mv "$dest/.train-carry/part-aa" "$dest/.gpu-part1/"
for font in DejaVuSans.ttf DejaVuSans-Bold.ttf DejaVuSerif.ttf DejaVuSansMono.ttf DejaVuSerif-Italic.ttf; do
  if [ -f "/usr/share/fonts/truetype/dejavu/$font" ]; then cp "/usr/share/fonts/truetype/dejavu/$font" "$dest/.gpu-part1/fonts/"; fi
done
# What each call sends: the tracked files except the weights, plus what it carries.
tree=$(git ls-files -z | grep -zv '^training/weights/iqa_resnet50.fp16.pt$' | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
call1=$((tree + $(du -scb "$dest/.whl" "$dest/.gpu-part1" | tail -1 | cut -f1)))
call2=$((tree + $(du -scb "$dest/.train-carry" | tail -1 | cut -f1)))
echo "call 1 sends $((call1 / 1048576)) MiB, call 2 $((call2 / 1048576)) MiB (limit 64 MiB each)"
if [ "$call1" -gt "$limit" ] || [ "$call2" -gt "$limit" ]; then
  echo "gpu_prepare.sh: a call would exceed 64 MiB: carry fewer fonts or a smaller pack" >&2; exit 1
fi
cat <<'EOF'
call 1: run(carry=[".whl", ".gpu-part1"], timeout_s=240, command=
  "set -e; mkdir -p /tmp/carry; cp -r .gpu-part1/part-aa .gpu-part1/fonts /tmp/carry/; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; PYTHONPATH=/tmp/site:$PWD:$PWD/client python3 -c 'from training.degradations import BY_NAME, missing_libraries as m; print({n: m(n) for n in BY_NAME if m(n)})'")
call 2 (at once): run(carry=[".train-carry"], timeout_s=590, command=
  "test -f /tmp/carry/part-aa && test -d /tmp/site/av || { echo the machine is fresh: call 1 again; exit 9; }; cat /tmp/carry/part-aa .train-carry/part-a? > .train-carry/init.fp16.pt && rm .train-carry/part-a? && cp -r /tmp/carry/fonts .train-carry/ && export PYTHONPATH=/tmp/site && LR=5e-4 SEED=5 WORKERS=15 VIEWS=8 TRAIN_ARGS='--anchor 1 --type-weight motion_blur=2 --type-weight camera_shake=2 --type-weight lens_blur=1.5 --type-weight pixelate=1.5' bash training/gpu_run.sh 7.5")
EOF
