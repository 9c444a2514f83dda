"""olmoe (``src/models/olmoe.cpp``): routed experts with renormalised weights, Q/K norms from the tensors."""

from llamasplit.memory.graph.family import Family

FAMILIES = {"olmoe": Family(expert_weights_norm=True)}
