"""The llama.cpp binaries, built from the same source as the pinned llama-cpp-python.

The version we pin is the ``vendor/llama.cpp`` tree inside the ``llama-cpp-python`` sdist, so the
binaries (llama-server, ggml-rpc-server, llama-fit-params, ...) and the Python bindings are one
llama.cpp. ``build()`` fetches that sdist from PyPI once, configures it with CMake and Ninja
(``-DGGML_RPC=ON``, shared libraries, CUDA when ``nvcc`` and a GPU are present) and caches the
result by version outside the repo. ``install_bindings()`` then installs llama-cpp-python from the
same sdist with ``-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF`` (pure Python, no second compile) and links
the shared libraries of this build (``libllama``, ``libggml*``, ``libmtmd``) into its ``lib`` folder,
which is where llama-cpp-python 0.3.36 loads them from (``llama_cpp/llama_cpp.py`` and
``_ggml.py``: ``pathlib.Path(__file__).parent / "lib"``). So llama.cpp is compiled exactly once.
``find_binary()`` is the one way the rest of the code finds a binary.
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

TARGETS = (
    "ggml-rpc-server", "llama-server", "llama-cli", "llama-completion", "llama-fit-params",
    "llama-quantize", "llama-bench",
)
LIBRARIES = ("llama", "mtmd")
"""Shared-library targets built beside the binaries (ggml's libraries come with them)."""
ENV_BIN = "LLAMASPLIT_LLAMA_CPP_BIN"

_BUILD_HINT = "build them once with `llamasplit build-llama-cpp` (about 8 minutes on 2 cores), or point LLAMASPLIT_LLAMA_CPP_BIN at a folder that has them"


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


def sdist_path(env: Mapping[str, str] | None = None) -> Path:
    """The downloaded sdist, kept so that llama-cpp-python installs from it without a second download."""
    return home(env) / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"


def _stamp(env: Mapping[str, str] | None = None) -> str:
    """What a finished build holds and how it was configured: a change of either builds again."""
    return "\n".join((*TARGETS, *(f"lib{name}" for name in LIBRARIES), *cmake_args(env))) + "\n"


def is_built(env: Mapping[str, str] | None = None) -> bool:
    stamp = home(env) / "build" / ".llamasplit-targets"
    return stamp.is_file() and stamp.read_text() == _stamp(env) and all(
        (bin_dir(env) / t).is_file() for t in TARGETS
    )


def shared_libraries(env: Mapping[str, str] | None = None) -> list[Path]:
    """The build's shared libraries (real files and their soname links), sorted by name."""
    return sorted(p for p in bin_dir(env).glob("lib*.so*") if p.is_file())


def fetch_source(progress: Callable[[str], None], env: Mapping[str, str] | None = None) -> Path:
    """Download and unpack the pinned llama-cpp-python sdist (once)."""
    src = source_dir(env)
    if (src / "CMakeLists.txt").is_file() and sdist_path(env).is_file():
        return src
    root = home(env)
    root.mkdir(parents=True, exist_ok=True)
    progress(f"llamasplit: downloading llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION} source from PyPI")
    with tempfile.TemporaryDirectory(dir=root, prefix=".sdist-") as tmp:
        # --no-binary for this package only: ":all:" also applies to the build backend pip installs to
        # read the sdist's metadata, and building scikit-build-core's own build chain from sources
        # took minutes on a fresh machine
        argv = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", "llama-cpp-python",
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
        target = root / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"
        if target.exists():
            shutil.rmtree(target)
        (unpack / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}").replace(target)
        archives[0].replace(sdist_path(env))
    return src


def cmake_args(env: Mapping[str, str] | None = None) -> list[str]:
    """The configure flags: RPC on, no network features, CUDA when nvcc is present."""
    env = os.environ if env is None else env
    args = [
        "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release", "-DGGML_RPC=ON", "-DLLAMA_CURL=OFF",
        "-DLLAMA_OPENSSL=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
        "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DBUILD_SHARED_LIBS=ON",
        "-DGGML_NATIVE=ON",
    ]
    args.append("-DGGML_CUDA=ON" if want_cuda(env) else "-DGGML_CUDA=OFF")
    if not want_amx(env):
        # explicit -mno-* flags win over ggml-cpu's later -march=native (GCC and Clang)
        no_amx = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
        args += [f"-DCMAKE_C_FLAGS={no_amx}", f"-DCMAKE_CXX_FLAGS={no_amx}"]
    return args


def want_amx(env: Mapping[str, str] | None = None) -> bool:
    """Whether ggml-cpu may use Intel AMX tiles: on x86 only with ``LLAMASPLIT_CPU_AMX=1``.

    ``-march=native`` turns AMX on wherever ``/proc/cpuinfo`` lists ``amx_tile``, but a virtual
    machine can list it without enabling the tile state: ggml-cpu's AMX kernels
    (``ggml/src/ggml-cpu/amx/mmq.cpp``, ``tinygemm_kernel_amx``) then die on their first
    ``tilezero`` with SIGILL (seen on this project's 2-core VMs for every Q4_1 matmul). AMX only
    speeds up CPU prompt processing on Sapphire Rapids and later, so it is opt-in.
    """
    env = os.environ if env is None else env
    import platform

    if platform.machine().lower() not in ("x86_64", "amd64"):
        return True  # the flags do not exist there; nothing to turn off
    return env.get("LLAMASPLIT_CPU_AMX") == "1"


def want_cuda(env: Mapping[str, str] | None = None) -> bool:
    """Build for CUDA when ``nvcc`` AND an NVIDIA GPU are present (``LLAMASPLIT_CUDA=0/1`` overrides).

    ``nvcc`` alone is not enough: a toolkit without a GPU or cuBLAS fails CMake's configure step.
    """
    env = os.environ if env is None else env
    if env.get("LLAMASPLIT_CUDA") in ("0", "1"):
        return env["LLAMASPLIT_CUDA"] == "1"
    return bool(shutil.which("nvcc", path=env.get("PATH"))) and Path("/dev/nvidia0").exists()


class NinjaProgress:
    """Turns ninja's ``[12/229] Building ...`` lines into a counter people can see.

    On a terminal the counter is redrawn in place; otherwise (CI, a pipe, a log) one line is printed
    per 5 % step, so a 10-minute build never sits silent.

    >>> out = []
    >>> prog = NinjaProgress("build", tty=False, write=out.append)
    >>> for i in range(1, 41): prog.feed(f"[{i}/40] Building CXX object x.o")
    >>> out[0], out[-1], len(out)
    ('  build: 1/40 (2%)', '  build: 40/40 (100%)', 21)
    """

    def __init__(self, label: str, tty: bool | None = None, write: Callable[[str], None] | None = None) -> None:
        self.label = label
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.write = write or (lambda text: print(text, file=sys.stderr, flush=True))
        self.last_step = -1

    def feed(self, line: str) -> None:
        if not line.startswith("[") or "]" not in line:
            return
        counter = line[1:line.index("]")]
        done, _, total = counter.partition("/")
        if not (done.isdigit() and total.isdigit()) or int(total) == 0:
            return
        pct = 100 * int(done) // int(total)
        if self.tty:
            print(f"\r  {self.label}: {done}/{total} ({pct}%)", end="", file=sys.stderr, flush=True)
        elif pct // 5 > self.last_step:
            self.last_step = pct // 5
            self.write(f"  {self.label}: {done}/{total} ({pct}%)")

    def close(self) -> None:
        if self.tty:
            print("", file=sys.stderr, flush=True)


def _run_logged(argv: list[str], log_fh, progress: NinjaProgress | None, env: Mapping[str, str] | None = None) -> int:
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=None if env is None else dict(env))
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            log_fh.write(line)
            if progress is not None:
                progress.feed(line)
        return proc.wait()
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    finally:
        if progress is not None:
            progress.close()


def build(progress: Callable[[str], None] | None = None, env: Mapping[str, str] | None = None) -> Path:
    """Build the binaries and shared libraries once; later calls return at once. Returns the bin folder."""
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
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
        ("configure", ["cmake", "-S", str(src), "-B", str(build_dir), *cmake_args(env)]),
        ("compile", ["ninja", "-C", str(build_dir), "-j", jobs, *TARGETS, *LIBRARIES]),
    ]
    say(f"llamasplit: building llama.cpp {LLAMA_CPP_PYTHON_VERSION} once ({', '.join(TARGETS)} and the shared "
        f"libraries; about 8 minutes on 2 cores); log in {log}")
    with open(log, "a") as log_fh:
        for label, argv in steps:
            say(f"llamasplit: {label} ...")
            rc = _run_logged(argv, log_fh, NinjaProgress(label) if label == "compile" else None)
            if rc != 0:
                raise LaunchError(f"building llama.cpp failed ({argv[0]} exited {rc})", remedy=f"see {log}")
    (build_dir / ".llamasplit-targets").write_text(_stamp(env))
    say(f"llamasplit: llama.cpp binaries ready in {bin_dir(env)}")
    return bin_dir(env)


def bindings_lib_dir(python: str = sys.executable) -> Path | None:
    """``llama_cpp/lib`` of the llama-cpp-python installed for ``python``, or None when not installed."""
    code = ("import importlib.util as u, importlib.metadata as m; s = u.find_spec('llama_cpp'); "
            "print(m.version('llama-cpp-python') if s else '', (s.submodule_search_locations or [''])[0] if s else '')")
    proc = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    version, _, where = proc.stdout.strip().partition(" ")
    if proc.returncode != 0 or version != LLAMA_CPP_PYTHON_VERSION or not where:
        return None
    return Path(where) / "lib"


def bindings_linked(python: str = sys.executable, env: Mapping[str, str] | None = None) -> bool:
    """True when llama-cpp-python is installed for ``python`` and loads this build's libraries."""
    lib = bindings_lib_dir(python)
    if lib is None:
        return False
    wanted = [p.name for p in shared_libraries(env)]
    return bool(wanted) and all((lib / name).resolve() == (bin_dir(env) / name).resolve() for name in wanted)


def install_bindings(python: str = sys.executable, progress: Callable[[str], None] | None = None,
                     env: Mapping[str, str] | None = None) -> Path:
    """Install llama-cpp-python from the pinned sdist without compiling llama.cpp again.

    ``-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF`` (llama-cpp-python's CMakeLists.txt options) make its
    build pure Python; the shared libraries of ``build()`` are then linked into ``llama_cpp/lib``.
    Returns that folder. Idempotent.
    """
    say = progress or (lambda msg: print(msg, file=sys.stderr, flush=True))
    build(say, env)
    if bindings_linked(python, env):
        return bindings_lib_dir(python)  # type: ignore[return-value]
    log = home(env) / "build.log"
    child_env = dict(os.environ if env is None else env)
    child_env["CMAKE_ARGS"] = "-DLLAMA_BUILD=OFF -DLLAVA_BUILD=OFF"
    say("llamasplit: installing llama-cpp-python from the same source (no second compile)")
    argv = [python, "-m", "pip", "install", "--progress-bar", "off", str(sdist_path(env))]
    with open(log, "a") as log_fh:
        rc = _run_logged(argv, log_fh, None, env=child_env)
    if rc != 0:
        raise LaunchError(f"installing llama-cpp-python failed (pip exited {rc})", remedy=f"see {log}")
    lib = bindings_lib_dir(python)
    if lib is None:
        raise LaunchError("llama-cpp-python did not install where this Python finds it", remedy=f"see {log}")
    lib.mkdir(parents=True, exist_ok=True)
    for src_lib in shared_libraries(env):
        dest = lib / src_lib.name
        if dest.is_symlink() or dest.exists():
            dest.unlink()
        dest.symlink_to(src_lib.resolve() if not src_lib.is_symlink() else src_lib)
    say(f"llamasplit: llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} uses the libraries in {bin_dir(env)}")
    return lib
