"""internlm2 (``src/models/internlm2.cpp``): the llama graph with a fused QKV (from the tensors)."""

from llamasplit.memory.graph.family import Family

FAMILIES = {"internlm2": Family()}
