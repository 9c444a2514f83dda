"""What one arch family's graph needs beyond the shared blocks: its build function and the quirks
the generic decoder (``transformer.py``) follows for it, each from the family's
``src/models/<arch>.cpp`` (and its ``load_arch_hparams`` defaults)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from llamasplit.memory.graph.builder import Builder
    from llamasplit.model.profile import HParams, ModelProfile


@dataclass(frozen=True)
class Family:
    """One arch family's graph. The defaults are the generic decoder's (``src/models/llama.cpp``)."""

    build: Callable[[Builder], None] | None = None
    """Builds the layers and the output into the builder; ``None``: ``transformer.build_transformer``."""
    norm: str = "RMS_NORM"
    """The ggml op of the layer and output norms: ``NORM`` for the LayerNorm archs (``LLM_NORM``)."""
    ffn_norm: str = "ffn_norm"
    """The tensor stem of the norm before the FFN (glm4moe and gpt-oss call it ``post_attention_norm``)."""
    scale_embd: bool = False
    """gemma: the embeddings scaled by sqrt(n_embd) (``inp_scaled``)."""
    scale_q: bool = False
    """Q scaled by 1/sqrt(head) before attention (gemma; phi3's pre-scaled Q)."""
    attn_softcap: bool = False
    """gemma2: KQ soft-capped (scale, tanh, scale) when ``attn_logit_softcapping`` is set."""
    nope_layer_step: int = 0
    """llama4: every n-th layer has no RoPE and a temperature-scaled Q (``n_no_rope_layer_step``)."""
    kq_l2_norm: Callable[[HParams], bool] | None = None
    """llama4: weightless RMS norms of Q and K on the RoPE layers where this returns True (``use_kq_norm``)."""
    moe_weight_before_ffn: bool = False
    """llama4: the router weights multiply the experts' input, not their output (``build_moe_ffn``)."""
    late_out_ids: bool = False
    """gpt-oss: every token runs through the last layer, the output rows are picked after it."""
    expert_weights_norm: bool = False
    """Router weights renormalised when ``{arch}.expert_weights_norm`` is unset."""
    expert_gating: str = "softmax"
    """The router's gating when ``{arch}.expert_gating_func`` is unset: softmax, sigmoid, softmax_weight."""
    mla: bool = False
    """deepseek2's multi-head latent attention when the header has ``kv_lora_rank``."""
    replayable: Callable[[ModelProfile], bool] | None = None
    """A family whose build knows its recurrent (or otherwise special) layers says itself whether
    it can replay a model; ``None``: the generic check of ``replay.replayable``."""


DECODER = Family()
"""An arch with no module of its own: the generic decoder with no quirks, from the tensors it has."""
