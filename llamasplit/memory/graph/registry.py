"""The table of arch families, like llama.cpp's ``src/models/``: one module per family, each
exporting ``FAMILIES = {arch name: Family(...)}``. Adding an arch is one module here plus its
synthetic model in ``tests/synth.py`` (and its line in ``_MODULES``).

An arch missing from the table is built by the generic decoder from the tensors it has
(``family.DECODER``) if ``replay.replayable`` accepts it; ``NOT_REPLAYED`` archs never are."""

from __future__ import annotations

from llamasplit.memory.graph import (
    cohere2, deepseek2, exaone, falcon_h1, gemma, glm4moe, gptoss, granite, granitehybrid, internlm2, jamba, layernorm,
    lfm2, llama, llama4, mamba2, mistral3, nemotron_h, olmo2, olmoe, phi3, qwen2, qwen3, qwen3moe, qwen3next,
    stablelm, starcoder2,
)
from llamasplit.memory.graph.family import DECODER, Family

_MODULES = (
    llama, qwen2, qwen3, qwen3moe, mistral3, gemma, phi3, gptoss, glm4moe, deepseek2, granite, cohere2, olmo2,
    llama4, olmoe, exaone, internlm2, starcoder2, stablelm, layernorm, qwen3next, mamba2, granitehybrid, nemotron_h,
    lfm2, falcon_h1, jamba,
)

ARCHS: dict[str, Family] = {}
for _module in _MODULES:
    for _arch, _family in _module.FAMILIES.items():
        if _arch in ARCHS:
            raise RuntimeError(f"arch {_arch} is registered twice")
        ARCHS[_arch] = _family

NOT_REPLAYED = frozenset({
    # encoders, encoder-decoders and archs whose graphs differ beyond what the builder follows
    "bert", "nomic-bert", "nomic-bert-moe", "jina-bert-v2", "jina-bert-v3", "modern-bert", "neo-bert", "eurobert",
    "t5", "t5encoder", "gemma3n", "deepseek32", "deepseek4", "glm-dsa", "kimi-linear", "minimax-01",
})


def family_of(arch: str) -> Family:
    """The arch's family record, or the generic decoder's."""
    return ARCHS.get(arch, DECODER)
