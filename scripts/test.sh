#!/usr/bin/env bash
# Install what the tests need and run the whole suite: fast unit tests and the real llama.cpp tests.
# Extra arguments go to pytest (e.g. scripts/test.sh -m "not llamacpp" for the fast tier only).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh python,test
exec .venv/bin/python -m pytest "$@"
