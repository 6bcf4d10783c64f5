# Sourced by loadtest/gpu/run.sh and perf.sh ON the GPU machine: unpacks .gpu-carry (prepare_carry.sh)
# into /tmp/iqa-site, points the stub's interpreter at it, and exports model.pt.
out=${out:-${OUT:-/tmp/iqa-gpu-out}}; mkdir -p "$out"
site=/tmp/iqa-site; mkdir -p "$site"
carry=${carry:-.gpu-carry}
tar -C "$site" -xJf "$carry/tritonserver-min.tar.xz"
python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$carry"/wheels/{numpy,tritonclient,python_rapidjson}-*.whl
if [ -f "$carry/nvimgcodec-min.tar.xz" ]; then
  tar -C "$site" -xJf "$carry/nvimgcodec-min.tar.xz"
  # nvImageCodec's nvJPEG extension dlopens libnvjpeg.so.13 through its RUNPATH, whose only site-packages
  # entry for it is $ORIGIN/../../cu13/lib = nvidia/cu13/lib (tests/test_batch_decode.py reads it): the
  # pinned nvidia-nvjpeg wheel's layout. Elsewhere it is never found, the GPU decoders never register,
  # and RegionDecoder("cuda") refuses to start.
  if compgen -G "$carry/wheels/nvidia_nvjpeg-*.whl" > /dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$carry"/wheels/nvidia_nvjpeg-*.whl
  fi
fi
# CuPy cuts the decoded regions on the GPU (iqa/batch_decode.py): 55 MB, carried in a run of its own
# (.gpu-carry-cupy, prepare_carry.sh) while the machine stays up.
if compgen -G ".gpu-carry-cupy/cupy_cuda13x-*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" .gpu-carry-cupy/{cupy_cuda13x,fastrlock}-*.whl
fi
# The stub embeds the first python3 on PATH and ignores PYTHONPATH: a .pth in that interpreter's
# site-packages puts numpy 1.26 (numpy 2 empties stub outputs), tritonclient and this repository first.
# This machine is thrown away after the session, so changing its interpreter is fine.
purelib=$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "import sys; sys.path[:0] = ['$site', '$PWD', '$PWD/client']" > "$purelib/000-iqa-gpu.pth"
python3 -c 'import numpy, torch; assert numpy.__version__ == "1.26.4", numpy.__version__; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'
export IQA_TRITONSERVER=$site/pytriton/tritonserver/bin/tritonserver PYTHONUNBUFFERED=1
nvidia-smi -L | tee "$out/gpu.txt"
python3 -m conversion.export 2>&1 | tail -3
