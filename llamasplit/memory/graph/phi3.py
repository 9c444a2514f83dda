"""phi3 (``src/models/phi3.cpp``): fused QKV and fused gate/up (from the tensors), Q scaled by
1/sqrt(head) before attention."""

from llamasplit.memory.graph.family import Family

FAMILIES = {"phi3": Family(scale_q=True)}
