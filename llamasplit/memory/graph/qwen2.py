"""qwen2 (``src/models/qwen2.cpp``: Q/K/V biases, from the tensors) and qwen2moe
(``src/models/qwen2moe.cpp``: routed experts with renormalised weights, a shared expert)."""

from llamasplit.memory.graph.family import Family

FAMILIES = {
    "qwen2": Family(),
    "qwen2moe": Family(expert_weights_norm=True),
}
