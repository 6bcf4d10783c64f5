#!/usr/bin/env bash
# The full training run, ON the GPU machine (device tool), from the repository root. Prepare here:
#   python -m training.photos --pack .train-carry/pack.tar
#   xz -T0 -c training/weights/iqa_resnet50.fp16.pt > .train-carry/init.fp16.pt.xz   # to warm-restart from it
#     (or an uncompressed .train-carry/init.fp16.pt, e.g. joined there from parts carried in two calls)
#   mv training/weights/iqa_resnet50.fp16.pt /tmp/   # the 64 MiB tree cannot hold it twice; git checkout restores it
#   mkdir -p .train-carry/fonts && cp /usr/share/fonts/truetype/dejavu/*.ttf .train-carry/fonts/   # ~6 MB, optional:
#     training.synthetic renders its text pages in every font it finds ($IQA_FONTS), else in Pillow's own one only
# then: run(command="bash training/gpu_run.sh 8", carry=[".train-carry"], timeout_s=590)
# The mix's codec types need PyAV, pillow-heif and Pillow 13 there (else they leave the mix with a warning);
# wheels and weights do not fit one 64 MiB call: `bash training/gpu_prepare.sh` readies two calls and prints
# them (the wheels installed with pip --target and a part of the weights first, the rest joined at once after).
# Trains for $1 minutes (bf16, channels_last, $WORKERS loader workers, $VIEWS patch sets per degraded
# picture), from $CARRY/init.fp16.pt.xz when it is there (a warm restart at $LR), else from
# scratch. TRAIN_ARGS adds training.train options, e.g. "--type-weight motion_blur=2". EVALUATE=1
# then evaluates on the KADID-style set of the validation photos (`make evaluate` does the same on
# any machine): training's own KADID implementation, and training.kadid_reference's where OpenCV,
# scikit-image and scipy import (they are not on the GPU machine unless carried: run it here after). The fp16 weights come back in 15 MiB parts (the device returns files of at most
# 16 MiB): cat weights.fp16.pt.part-* > weights.fp16.pt
# CARRY (.train-carry), WORK (/tmp: scratch space, emptied of this script's own files first), OUT and
# PYTHON (python3) let tests/test_training.py run this very script on a CPU at toy scale.
# Exits with training's (or the evaluation's) status, after returning whatever was written.
set -uo pipefail
minutes=${1:-8} workers=${WORKERS:-14} batch=${BATCH:-96} views=${VIEWS:-4} seed=${SEED:-1}
evaluate=${EVALUATE:-0} eval_photos=${EVAL_PHOTOS:-1000}
carry=${CARRY:-.train-carry} work=${WORK:-/tmp} python=${PYTHON:-python3}
out=${OUT:-$work/iqa-train-out}; mkdir -p "$out"
pool=$work/iqa-pool run=$work/iqa-run weights=$work/weights.fp16.pt log=$work/iqa-train.txt
if [ ! -f "$carry/pack.tar" ]; then echo "gpu_run.sh: no $carry/pack.tar (training.photos --pack)" >&2; exit 2; fi
device=$("$python" -c "import torch; print(\"cuda\" if torch.cuda.is_available() else \"cpu\")") || exit 2
# DataLoader workers hand batches over in /dev/shm: make room for the workers' batches in flight.
if [ "$device" = cuda ] && [ "$(df --output=size -k /dev/shm | tail -1)" -lt 8000000 ]; then
  mount -o remount,size=16G /dev/shm || true
fi
rm -rf "$weights" "$run" "$pool" "$work/init.fp16.pt"
mkdir -p "$pool" "$run"; tar -C "$pool" -xf "$carry/pack.tar" || exit 2
init=()
if [ -f "$carry/init.fp16.pt.xz" ]; then
  "$python" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
    "$carry/init.fp16.pt.xz" "$work/init.fp16.pt" || exit 2
elif [ -f "$carry/init.fp16.pt" ]; then  # uncompressed (e.g. joined from parts carried in two calls)
  cp "$carry/init.fp16.pt" "$work/init.fp16.pt" || exit 2
fi
if [ -f "$work/init.fp16.pt" ]; then init=(--init "$work/init.fp16.pt" --lr "${LR:-1e-3}" --warmup 0.05); fi
# An existing PYTHONPATH stays behind the repository: carried wheels installed with pip --target (PyAV,
# pillow-heif, Pillow with AVIF: the codec types of the mix) are found there.
export PYTHONPATH=$PWD:$PWD/client${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
if [ -d "$carry/fonts" ]; then IQA_FONTS=$(cd "$carry/fonts" && pwd); export IQA_FONTS; fi
implementations=own
if "$python" -c "import cv2, skimage, scipy" 2>/dev/null; then implementations=own,reference; fi
status=0
{
  nvidia-smi -L 2>/dev/null; nproc; df -h /dev/shm
  "$python" -c 'import torch, torchvision, numpy, PIL; from PIL import features
print("torch", torch.__version__, "torchvision", torchvision.__version__, "numpy", numpy.__version__, "pillow", PIL.__version__, "jpeg2000", features.check("jpg_2000"))'
  # TRAIN_ARGS is split on spaces on purpose: it holds several options.
  # shellcheck disable=SC2086
  "$python" -m training.train --pool "$pool" --run "$run" --minutes "$minutes" --batch "$batch" --views "$views" \
    --seed "$seed" "${init[@]}" --workers "$workers" --validate-every 60 --checkpoint-every 100000 --weights-out "$weights" \
    ${TRAIN_ARGS:-} || exit
  if [ "$evaluate" = 1 ]; then
    "$python" -m training.evaluate --pool "$pool" --weights "$weights" --device "$device" --workers "$workers" \
      --photos "$eval_photos" --implementations "$implementations" --baselines --plot "$run/eval.png" --json "$run/eval.json" || exit
  fi
} 2>&1 | tee "$log" || status=${PIPESTATUS[0]}
cp "$log" "$run/train.txt"
# shellcheck disable=SC2046  # the optional files, word-split on purpose
(cd "$run" && tar -czf "$out/results.tar.gz" train.txt $(ls log.jsonl eval.png eval.json 2>/dev/null))
[ -f "$weights" ] && split -b 15M "$weights" "$out/weights.fp16.pt.part-"
ls -la "$out"
echo "gpu_run.sh: exit status $status"
exit "$status"
