"""glm4moe (``src/models/glm4-moe.cpp``): ``post_attention_norm`` is the norm before the FFN,
sigmoid gating by default (``load_arch_hparams``); NextN blocks are not built (``n_layer_kv``)."""

from llamasplit.memory.graph.family import Family

FAMILIES = {"glm4moe": Family(ffn_norm="post_attention_norm", expert_gating="sigmoid")}
