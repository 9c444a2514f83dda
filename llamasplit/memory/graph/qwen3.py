"""qwen3 (``src/models/qwen3.cpp``): per-head Q/K RMS norms before RoPE, from the tensors."""

from llamasplit.memory.graph.family import Family

FAMILIES = {"qwen3": Family()}
