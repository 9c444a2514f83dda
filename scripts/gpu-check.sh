#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU and the CUDA toolkit, build the pinned llama.cpp
# with CUDA for THIS GPU's architecture only, then compare llamasplit's plan with
# `llama-fit-params -fitp on`, with llama-server's real buffers and NVML's per-process memory after
# load (SmolLM2, Gemma-3 and synthetic models over several flag sets; -ts 1,1 and -sm tensor with
# two GPUs), and `llamasplit gpus` with nvidia-smi. Prints one table (benchmarks/gpu_check.py).
# Budget: under 10 minutes on 16 cores (the CUDA build of three targets for one arch is most of it).
#
# Usage: scripts/gpu-check.sh [--quick] [--no-server]
# Needs: nvidia-smi, nvcc (CUDA 12+), cmake, a C++ compiler, python3; network for the first run
# (the llama-cpp-python sdist and the fixture models from PyPI), none after.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$SECONDS
step() { echo "gpu-check [$((SECONDS - start)) s]: $*" >&2; }
need() { command -v "$1" >/dev/null || { echo "gpu-check: $1 not found: $2" >&2; exit 2; }; }
need nvidia-smi "this check needs an NVIDIA GPU and its driver"
need nvcc "install the CUDA toolkit (or put its bin/ on PATH)"
need cmake "install cmake (pip install cmake works)"
need python3 "install Python 3.10+"

# this GPU's architecture: compute_cap 8.6 -> 86 (the first GPU's; a mixed box builds for each)
archs=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | tr -d ' .' | sort -u | paste -sd ';' -)
[[ -n "$archs" ]] || { echo "gpu-check: nvidia-smi reports no GPU" >&2; exit 2; }
step "GPUs: $(nvidia-smi --query-gpu=name --format=csv,noheader | paste -sd ',' -); CUDA archs $archs"

if [[ ! -x .venv/bin/python ]]; then
  step "creating .venv (the package and its test dependencies; llama.cpp is built below, not by setup.sh)"
  python3 -m venv .venv
  .venv/bin/python -m pip install --quiet --progress-bar off "ninja==1.13.2" -e ".[test]"
fi
export PATH="$PWD/.venv/bin:$PATH"

# the pinned source (downloaded once), and the configure flags llamasplit's own build uses, with CUDA
src=$(.venv/bin/python -c "from llamasplit.llamacpp.binaries import fetch_source; print(fetch_source(lambda m: None))")
mapfile -t flags < <(LLAMASPLIT_CUDA=1 .venv/bin/python -c \
  "from llamasplit.llamacpp.binaries import cmake_args; print('\n'.join(cmake_args()))")
build="$HOME/.cache/llamasplit/llama.cpp-0.3.36/build-cuda-sm${archs//;/-}"
step "building llama.cpp with CUDA for sm_$archs in $build (log: $build.log)"
{
  cmake -S "$src" -B "$build" "${flags[@]}" -DCMAKE_CUDA_ARCHITECTURES="$archs"
  ninja -C "$build" -j "$(nproc)" llama-server llama-fit-params ggml-rpc-server llama-bench
} >"$build.log" 2>&1 || { tail -20 "$build.log" >&2; echo "gpu-check: the CUDA build failed; see $build.log" >&2; exit 1; }
export LLAMASPLIT_LLAMA_CPP_BIN="$build/bin"
export CUDA_DEVICE_ORDER=PCI_BUS_ID

step "fetching the fixture models"
.venv/bin/llamasplit fetch-models >/dev/null
step "comparing (llamasplit, llama-fit-params, llama-server, NVML, nvidia-smi)"
.venv/bin/python benchmarks/gpu_check.py "$@"
if [[ " $* " != *" --quick "* ]]; then
  step "measuring each GPU with llamasplit bench (llama-bench -dev CUDAn on the probe models)"
  .venv/bin/llamasplit bench --no-host
fi
step "done"
