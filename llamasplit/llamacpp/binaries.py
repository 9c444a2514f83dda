"""The llama.cpp binaries, built from the same source as the pinned llama-cpp-python.

The version we pin is the ``vendor/llama.cpp`` tree inside the ``llama-cpp-python`` sdist, so the
binaries (llama-server, ggml-rpc-server, llama-fit-params, ...) and the Python bindings are one
llama.cpp. ``build()`` fetches that sdist from PyPI, configures it with CMake and Ninja
(``-DGGML_RPC=ON``, CUDA when ``nvcc`` is present) and caches the result by version outside the
repo. ``find_binary()`` is the one way the rest of the code finds a binary.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path

from llamasplit.cache import cache_dir
from llamasplit.errors import LaunchError

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
"""The pinned llama-cpp-python; its vendored llama.cpp is commit 0c1e570 (2026-10-01)."""

TARGETS = ("ggml-rpc-server", "llama-server", "llama-cli", "llama-completion", "llama-fit-params", "llama-quantize")
ENV_BIN = "LLAMASPLIT_LLAMA_CPP_BIN"

_BUILD_HINT = "build them once with `llamasplit build-llama-cpp` (about 5 minutes on 2 cores), or point LLAMASPLIT_LLAMA_CPP_BIN at a folder that has them"


def home(env: Mapping[str, str] | None = None) -> Path:
    """Where this llama.cpp version is unpacked and built."""
    return cache_dir(env) / f"llama.cpp-{LLAMA_CPP_PYTHON_VERSION}"


def source_dir(env: Mapping[str, str] | None = None) -> Path:
    return home(env) / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}" / "vendor" / "llama.cpp"


def bin_dir(env: Mapping[str, str] | None = None) -> Path:
    return home(env) / "build" / "bin"


def find_binary(name: str, env: Mapping[str, str] | None = None) -> Path:
    """``$LLAMASPLIT_LLAMA_CPP_BIN/name``, else the cached build, else ``PATH``."""
    env = os.environ if env is None else env
    candidates = []
    if env.get(ENV_BIN):
        candidates.append(Path(env[ENV_BIN]).expanduser() / name)
    candidates.append(bin_dir(env) / name)
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    on_path = shutil.which(name, path=env.get("PATH"))
    if on_path:
        return Path(on_path)
    raise LaunchError(f"llama.cpp binary {name} not found", remedy=_BUILD_HINT)


def is_built(env: Mapping[str, str] | None = None) -> bool:
    stamp = home(env) / "build" / ".llamasplit-targets"
    return stamp.is_file() and stamp.read_text().split() == list(TARGETS) and all(
        (bin_dir(env) / t).is_file() for t in TARGETS
    )


def fetch_source(progress: Callable[[str], None], env: Mapping[str, str] | None = None) -> Path:
    """Download and unpack the pinned llama-cpp-python sdist (once)."""
    src = source_dir(env)
    if (src / "CMakeLists.txt").is_file():
        return src
    root = home(env)
    root.mkdir(parents=True, exist_ok=True)
    progress(f"llamasplit: downloading llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} source from PyPI")
    with tempfile.TemporaryDirectory(dir=root, prefix=".sdist-") as tmp:
        argv = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
            "--dest", tmp, f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}",
        ]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=1800)
        archives = list(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        if not archives:
            last = next((ln for ln in reversed(proc.stderr.splitlines()) if ln.strip()), "no output")
            raise LaunchError(
                f"could not download the llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} source: {last.strip()}",
                remedy="check the network or pip's index settings",
            )
        progress("llamasplit: unpacking the llama.cpp source")
        unpack = Path(tmp) / "unpacked"
        with tarfile.open(archives[0]) as tar:
            tar.extractall(unpack, filter="data")
        (unpack / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}").replace(root / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}")
    return src


def cmake_args(env: Mapping[str, str] | None = None) -> list[str]:
    """The configure flags: RPC on, no network features, CUDA when nvcc is present."""
    env = os.environ if env is None else env
    args = [
        "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DGGML_RPC=ON", "-DLLAMA_CURL=OFF",
        "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
        "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DBUILD_SHARED_LIBS=OFF",
        "-DGGML_NATIVE=ON",
    ]
    args.append("-DGGML_CUDA=ON" if want_cuda(env) else "-DGGML_CUDA=OFF")
    return args


def want_cuda(env: Mapping[str, str] | None = None) -> bool:
    """Build for CUDA when ``nvcc`` AND an NVIDIA GPU are present (``LLAMASPLIT_CUDA=0/1`` overrides).

    ``nvcc`` alone is not enough: a toolkit without a GPU or cuBLAS fails CMake's configure step.
    """
    env = os.environ if env is None else env
    if env.get("LLAMASPLIT_CUDA") in ("0", "1"):
        return env["LLAMASPLIT_CUDA"] == "1"
    return bool(shutil.which("nvcc", path=env.get("PATH"))) and Path("/dev/nvidia0").exists()


def build(progress: Callable[[str], None] | None = None, env: Mapping[str, str] | None = None) -> Path:
    """Build the binaries once; later calls return at once. Returns the bin folder."""
    say = progress or (lambda msg: print(msg, file=sys.stderr))
    if is_built(env):
        return bin_dir(env)
    for tool in ("cmake", "ninja"):
        if not shutil.which(tool):
            raise LaunchError(f"{tool} is not installed", remedy=f"install it (`pip install {tool}` works) and run again")
    src = fetch_source(say, env)
    build_dir = home(env) / "build"
    log = home(env) / "build.log"
    jobs = str(os.cpu_count() or 2)
    steps = [
        ["cmake", "-S", str(src), "-B", str(build_dir), *cmake_args(env)],
        ["ninja", "-C", str(build_dir), "-j", jobs, *TARGETS],
    ]
    say(f"llamasplit: building llama.cpp {LLAMA_CPP_PYTHON_VERSION} ({', '.join(TARGETS)}); log in {log}")
    with open(log, "a") as log_fh:
        for argv in steps:
            proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            try:
                for line in proc.stdout:
                    log_fh.write(line)
                    if line.startswith("[") and "/" in line.split("]")[0]:
                        # ninja's "[12/229] Building ..." lines are the progress
                        print(f"\r  {line.split(']')[0]}]", end="", file=sys.stderr, flush=True)
                rc = proc.wait()
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            print("", file=sys.stderr)
            if rc != 0:
                raise LaunchError(f"building llama.cpp failed ({argv[0]} exited {rc})", remedy=f"see {log}")
    (build_dir / ".llamasplit-targets").write_text("\n".join(TARGETS) + "\n")
    say(f"llamasplit: llama.cpp binaries ready in {bin_dir(env)}")
    return bin_dir(env)
