"""mistral3 (``src/models/mistral3.cpp``): the llama graph."""

from llamasplit.memory.graph.family import Family

FAMILIES = {"mistral3": Family()}
