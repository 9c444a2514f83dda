"""qwen3moe and qwen3vlmoe (``src/models/qwen3moe.cpp``, ``qwen3vlmoe.cpp``): qwen3's attention,
routed experts with renormalised weights."""

from llamasplit.memory.graph.family import Family

FAMILIES = {
    "qwen3moe": Family(expert_weights_norm=True),
    "qwen3vlmoe": Family(expert_weights_norm=True),
}
