"""gpt-oss (``src/models/openai-moe.cpp``): ``post_attention_norm`` is the norm before the experts,
softmax over the chosen experts' weights (``LLAMA_EXPERT_GATING_FUNC_TYPE_SOFTMAX_WEIGHT``), and
every token kept through the last layer (``embeddings_nextn_masked`` false by default), the
output rows picked after it. Expert biases (``ggml_add_id``) come from the tensors."""

from llamasplit.memory.graph.family import Family

FAMILIES = {"gpt-oss": Family(ffn_norm="post_attention_norm", late_out_ids=True, expert_gating="softmax_weight")}
