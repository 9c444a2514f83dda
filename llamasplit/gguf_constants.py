"""gguf-py's constants (type sizes, metadata keys, tensor names), without importing all of gguf.

``import gguf`` pulls in numpy and the reader/writer (about 100 ms); a header-only tool that people
call from scripts should start faster than that. ``gguf/constants.py`` imports nothing from its
package, so we load that one file from the installed gguf and re-export it. If gguf's package was
already imported, its own module is used, so the enums are the very same objects.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def _load() -> ModuleType:
    if "gguf.constants" in sys.modules:
        return sys.modules["gguf.constants"]
    name = "llamasplit._gguf_constants"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("gguf")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the gguf package is not installed (pip install gguf)")
    path = Path(next(iter(spec.submodule_search_locations))) / "constants.py"
    file_spec = importlib.util.spec_from_file_location(name, path)
    assert file_spec is not None and file_spec.loader is not None
    module = importlib.util.module_from_spec(file_spec)
    sys.modules[name] = module
    file_spec.loader.exec_module(module)
    return module


_c = _load()
GGML_QUANT_SIZES = _c.GGML_QUANT_SIZES
GGUF_MAGIC = _c.GGUF_MAGIC
GGMLQuantizationType = _c.GGMLQuantizationType
GGUFValueType = _c.GGUFValueType
Keys = _c.Keys
LlamaFileType = _c.LlamaFileType
MODEL_TENSOR = _c.MODEL_TENSOR
TENSOR_NAMES = _c.TENSOR_NAMES
MODEL_ARCH = _c.MODEL_ARCH
MODEL_ARCH_NAMES = _c.MODEL_ARCH_NAMES
