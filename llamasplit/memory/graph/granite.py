"""granite (``src/models/granite.cpp``): the embedding, residual and logit scales (``ggml_scale``),
read from the header keys the builder checks (``embedding_scale``, ``residual_scale``,
``logit_scale``)."""

from llamasplit.memory.graph.family import Family

FAMILIES = {"granite": Family()}
