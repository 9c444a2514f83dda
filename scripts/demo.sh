#!/usr/bin/env bash
# The main job on a fresh machine: set up, fetch a real model, plan it for the local GPUs (with no
# GPU: a one-line notice and a simulated fleet), and run a short generation with llama.cpp.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh python
exec .venv/bin/llamasplit demo
