"""stablelm (``src/models/stablelm.cpp``): LayerNorm with biases, partial RoPE."""

from llamasplit.memory.graph.family import Family

FAMILIES = {"stablelm": Family(norm="NORM")}
