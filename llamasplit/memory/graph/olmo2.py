"""olmo2 (``src/models/olmo2.cpp``): no pre-norms, post-attention and post-FFN norms, full-width
Q/K norms, all from the tensors."""

from llamasplit.memory.graph.family import Family

FAMILIES = {"olmo2": Family()}
