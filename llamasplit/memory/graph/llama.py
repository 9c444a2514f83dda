"""llama (``src/models/llama.cpp``): the generic decoder as it is; its MoE variants (mixtral's
experts under ``llama``) renormalise the chosen experts' weights (``expert_weights_norm``)."""

from llamasplit.memory.graph.family import Family

FAMILIES = {
    "llama": Family(expert_weights_norm=True),
    "mixtral": Family(expert_weights_norm=True),
}
