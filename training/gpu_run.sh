#!/usr/bin/env bash
# The full training run, ON the GPU machine (device tool), from the repository root. Prepare here:
#   python -m training.photos --pack .train-carry/pack.tar
#   xz -T0 -c training/weights/iqa_resnet50.fp16.pt > .train-carry/init.fp16.pt.xz   # to warm-restart from it
#   mv training/weights/iqa_resnet50.fp16.pt /tmp/   # the 64 MiB tree cannot hold it twice; git checkout restores it
# then: run(command="bash training/gpu_run.sh 8", carry=[".train-carry"], timeout_s=590)
# Trains for $1 minutes (bf16, channels_last, $WORKERS loader workers, $VIEWS patch sets per degraded
# picture), from .train-carry/init.fp16.pt.xz when it is there (a warm restart at $LR), else from
# scratch. TRAIN_ARGS adds training.train options, e.g. "--type-weight motion_blur=2". EVALUATE=1
# then evaluates on the KADID-style set of the validation photos (`make evaluate` does the same on
# any machine). The fp16 weights come back in 15 MiB parts (the device returns files of at most
# 16 MiB): cat weights.fp16.pt.part-* > weights.fp16.pt
set -uo pipefail
minutes=${1:-8} workers=${WORKERS:-14} batch=${BATCH:-96} views=${VIEWS:-4} seed=${SEED:-1}
evaluate=${EVALUATE:-0} eval_photos=${EVAL_PHOTOS:-1000}
device=$(python3 -c "import torch; print(\"cuda\" if torch.cuda.is_available() else \"cpu\")")
out=${OUT:-/tmp/iqa-train-out}; mkdir -p "$out"
# DataLoader workers hand batches over in /dev/shm: make room for the workers' batches in flight.
if [ "$(df --output=size -k /dev/shm | tail -1)" -lt 8000000 ]; then mount -o remount,size=16G /dev/shm || true; fi
rm -rf /tmp/weights.fp16.pt /tmp/iqa-run
pool=/tmp/iqa-pool; mkdir -p "$pool"; tar -C "$pool" -xf .train-carry/pack.tar
init=()
if [ -f .train-carry/init.fp16.pt.xz ]; then
  python3 -c 'import lzma, shutil; shutil.copyfileobj(lzma.open(".train-carry/init.fp16.pt.xz"), open("/tmp/init.fp16.pt", "wb"))'
  init=(--init /tmp/init.fp16.pt --lr "${LR:-1e-3}" --warmup 0.05)
fi
export PYTHONPATH=$PWD:$PWD/client PYTHONUNBUFFERED=1
log=/tmp/iqa-train.txt
mkdir -p /tmp/iqa-run
{
  nvidia-smi -L; nproc; df -h /dev/shm
  python3 -c 'import torch, torchvision, numpy, PIL; from PIL import features
print("torch", torch.__version__, "torchvision", torchvision.__version__, "numpy", numpy.__version__, "pillow", PIL.__version__, "jpeg2000", features.check("jpg_2000"))'
  python3 -m training.train --pool "$pool" --run /tmp/iqa-run --minutes "$minutes" --batch "$batch" --views "$views" \
    --seed "$seed" "${init[@]}" --workers "$workers" --validate-every 60 --checkpoint-every 100000 --weights-out /tmp/weights.fp16.pt \
    ${TRAIN_ARGS:-}
  if [ "$evaluate" = 1 ]; then
    python3 -m training.evaluate --pool "$pool" --weights /tmp/weights.fp16.pt --device "$device" --workers "$workers" \
      --photos "$eval_photos" --baselines --plot /tmp/iqa-run/eval.png --json /tmp/iqa-run/eval.json
  fi
} 2>&1 | tee "$log"
cp "$log" /tmp/iqa-run/train.txt
(cd /tmp/iqa-run && tar -czf "$out/results.tar.gz" train.txt log.jsonl $(ls eval.png eval.json 2>/dev/null))
[ -f /tmp/weights.fp16.pt ] && split -b 15M /tmp/weights.fp16.pt "$out/weights.fp16.pt.part-"
ls -la "$out"
