"""starcoder2 (``src/models/starcoder2.cpp``): LayerNorm with biases, Q/K/V/output biases, an
ungated FFN (from the tensors)."""

from llamasplit.memory.graph.family import Family

FAMILIES = {"starcoder2": Family(norm="NORM")}
