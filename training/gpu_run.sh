#!/usr/bin/env bash
# The full training run, ON the GPU machine (device tool), from the repository root. Prepare here:
#   python -m training.photos --pack .train-carry/pack.tar
# then: run(command="bash training/gpu_run.sh 6.5", carry=[".train-carry"], timeout_s=560)
# Trains for $1 minutes (bf16, channels_last, 14 loader workers), then evaluates on the KADID-style
# set of the validation photos with the classical baselines. The fp16 weights come back in 15 MiB
# parts (the device returns files of at most 16 MiB): cat weights.fp16.pt.part-* > weights.fp16.pt
set -uo pipefail
minutes=${1:-6.5} workers=${WORKERS:-14} eval_photos=${EVAL_PHOTOS:-1000} batch=${BATCH:-128}
device=$(python3 -c "import torch; print(\"cuda\" if torch.cuda.is_available() else \"cpu\")")
out=${OUT:-/tmp/iqa-train-out}; mkdir -p "$out"
# DataLoader workers hand batches over in /dev/shm: make room for 14 workers x 4 batches in flight.
if [ "$(df --output=size -k /dev/shm | tail -1)" -lt 8000000 ]; then mount -o remount,size=16G /dev/shm || true; fi
pool=/tmp/iqa-pool; mkdir -p "$pool"; tar -C "$pool" -xf .train-carry/pack.tar
export PYTHONPATH=$PWD:$PWD/client PYTHONUNBUFFERED=1
log=/tmp/iqa-train.txt
{
  nvidia-smi -L; nproc; df -h /dev/shm
  python3 -c 'import torch, torchvision, numpy, PIL; from PIL import features
print("torch", torch.__version__, "torchvision", torchvision.__version__, "numpy", numpy.__version__, "pillow", PIL.__version__, "jpeg2000", features.check("jpg_2000"))'
  python3 -m training.train --pool "$pool" --run /tmp/iqa-run --minutes "$minutes" --batch "$batch" --views 2 \
    --workers "$workers" --validate-every 60 --checkpoint-every 100000 --weights-out /tmp/weights.fp16.pt
  python3 -m training.evaluate --pool "$pool" --weights /tmp/weights.fp16.pt --device "$device" --workers "$workers" --photos "$eval_photos" \
    --baselines --plot /tmp/iqa-run/eval.png --json /tmp/iqa-run/eval.json
} 2>&1 | tee "$log"
cp "$log" /tmp/iqa-run/train.txt
tar -C /tmp/iqa-run -czf "$out/results.tar.gz" train.txt log.jsonl eval.png eval.json
split -b 15M /tmp/weights.fp16.pt "$out/weights.fp16.pt.part-"
ls -la "$out"
