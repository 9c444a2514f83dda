"""exaone (``src/models/exaone.cpp``): the llama graph."""

from llamasplit.memory.graph.family import Family

FAMILIES = {"exaone": Family()}
