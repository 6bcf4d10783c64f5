#!/usr/bin/env bash
# Run here (a machine with PyPI), before a GPU session: writes .gpu-carry/ (git-ignored) with what
# the GPU machine lacks for loadtest/gpu/run.sh and perf.sh. That machine has Python 3.12, torch, grpcio,
# protobuf and Pillow, but numpy 2 (which silently breaks the Python-backend stub) and no Triton.
# Budget: the device tool carries 64 MiB, working tree included, so the 55 MB nvidia-pytriton wheel
# is cut down to the server, the Python backend, the 3.11/3.12 stubs and their libraries, xz-compressed.
set -euo pipefail
cd "$(dirname "$0")/../.."
carry=.gpu-carry
rm -rf "$carry" && mkdir -p "$carry/wheels"
download() {
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_35_x86_64 --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$1" "${@:2}"
}
download "$carry/wheels" numpy==1.26.4 tritonclient==2.73.0 python-rapidjson==1.25 nvidia-nvjpeg==13.0.4.44
# perf_analyzer (loadtest/gpu/perf.sh): its wheel needs glibc 2.38, which the GPU machine has.
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_38_x86_64 \
  -d "$carry/wheels" perf-analyzer==2.60.0
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
download "$work" nvidia-pytriton==0.7.0
python3 -m zipfile -e "$work"/nvidia_pytriton-*.whl "$work/x"
# zipfile drops the executable bits the server and the stubs need.
chmod +x "$work/x/pytriton/tritonserver/bin/tritonserver" "$work"/x/pytriton/tritonserver/python_backend_stubs/*/*
keep=(pytriton/tritonserver/bin pytriton/tritonserver/backends/python
      pytriton/tritonserver/python_backend_stubs/3.11 pytriton/tritonserver/python_backend_stubs/3.12)
for lib in "$work"/x/nvidia_pytriton.libs/*; do
  case "$lib" in */libpython3-*.13.*) ;; *) keep+=("nvidia_pytriton.libs/${lib##*/}") ;; esac
done
tar -C "$work/x" -cJf "$carry/tritonserver-min.tar.xz" "${keep[@]}"
# nvImageCodec (pyproject.toml's pin) for Python 3.12, cut to the JPEG decoders: libjpeg-turbo on the CPU
# and nvJPEG on the GPU (libnvjpeg.so.13 from the nvidia-nvjpeg wheel above, installed where the
# extension's RUNPATH looks). No nvidia/__init__.py: the machine's own nvidia.* packages share that namespace.
# CuPy (the GPU region decode's patch cutting) does not fit beside the rest: .gpu-carry-cupy, a run of its own.
rm -rf .gpu-carry-cupy && mkdir -p .gpu-carry-cupy
download .gpu-carry-cupy cupy-cuda13x==13.6.0 fastrlock==0.8.4
download "$work" nvidia-nvimgcodec-cu13==0.9.0.20
python3 -m zipfile -e "$work"/nvidia_nvimgcodec_cu13-*.whl "$work/n"
tar -C "$work/n" -cJf "$carry/nvimgcodec-min.tar.xz" nvidia/nvimgcodec/__init__.py \
  nvidia/nvimgcodec/libnvimgcodec.so.0 nvidia/nvimgcodec/nvimgcodec_impl.cpython-312-x86_64-linux-gnu.so \
  nvidia/nvimgcodec/extensions/libjpeg_turbo_ext.so.0.9.0 nvidia/nvimgcodec/extensions/libnvjpeg_ext.so.0.9.0
chmod -R u+w "$carry"
du -sh "$carry" "$carry"/* "$carry"/wheels/*
