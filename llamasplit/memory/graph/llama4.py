"""llama4 (``src/models/llama4.cpp``): no RoPE but a temperature-scaled Q on every 4th layer
(``n_no_rope_layer_step``), weightless Q/K norms on the others unless it is the 17B-128E
(``use_kq_norm = type != LLM_TYPE_17B_128E``, here: 128 experts), sigmoid router whose weights
multiply the experts' input."""

from llamasplit.memory.graph.family import Family

FAMILIES = {
    "llama4": Family(nope_layer_step=4, kq_l2_norm=lambda hp: hp.n_expert != 128, moe_weight_before_ffn=True,
                     expert_gating="sigmoid"),
}
