"""gemma2, gemma3, gemma-embedding (``src/models/gemma2.cpp``, ``gemma3.cpp``,
``gemma-embedding.cpp``): embeddings scaled by sqrt(n_embd), Q pre-scaled, post-attention and
post-FFN norms (from the tensors), sliding-window layers; gemma2 soft-caps KQ."""

from llamasplit.memory.graph.family import Family

FAMILIES = {
    "gemma2": Family(scale_embd=True, scale_q=True, attn_softcap=True),
    "gemma3": Family(scale_embd=True, scale_q=True),
    "gemma-embedding": Family(scale_embd=True, scale_q=True),
}
