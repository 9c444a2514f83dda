"""The other LayerNorm decoders (``src/models/gpt2.cpp``, ``starcoder.cpp``, ``falcon.cpp``,
``bloom.cpp``, ``mpt.cpp``, ``phi2.cpp``, ``gptneox.cpp``, ``command-r.cpp``): the generic decoder
with ``LLM_NORM``. Not checked against llama.cpp (no synthetic model yet)."""

from llamasplit.memory.graph.family import Family

_LAYERNORM = Family(norm="NORM")
FAMILIES = {
    arch: _LAYERNORM for arch in ("gpt2", "starcoder", "falcon", "bloom", "mpt", "phi2", "gptneox", "command-r")
}
