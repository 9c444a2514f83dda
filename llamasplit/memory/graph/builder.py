"""``Builder``: the common part and every block, what an arch's ``build`` function works with."""

from __future__ import annotations

from llamasplit.memory.graph.attention import Attention
from llamasplit.memory.graph.ffn import Ffn
from llamasplit.memory.graph.ssm import Ssm


class Builder(Attention, Ffn, Ssm):
    """Builds one arch's worst-case graph the way llama.cpp's llm_graph_context does."""
