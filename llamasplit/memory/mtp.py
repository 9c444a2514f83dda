"""Multi-token prediction with the model's own NextN blocks: ``--spec-type draft-mtp``.

What llama.cpp (the pinned tree) does, rule by rule:

- Weights. ``common_model_params_to_llama`` (common/common.cpp) sets ``mparams.load_mtp`` when the
  speculative types hold ``draft-mtp``; the arch's ``load_arch_tensors`` then creates the NextN
  blocks' tensors without ``TENSOR_SKIP`` (src/models/glm4-moe.cpp: ``if (!ml.load_mtp) mtp_flags
  |= TENSOR_SKIP``; qwen3next.cpp: ``int mtp_flags = !ml.load_mtp ? TENSOR_SKIP : 0``). They land
  on the device of their layer: ``load_tensors`` places all ``n_layer_all + 1`` layers anyway, so
  only the bytes change (``ModelProfile.load_mtp``).
- A second context. Without ``-md``, ``common_speculative_init_result`` (common/speculative.cpp)
  creates the draft context on the target model itself (``llama_init_from_model(model_tgt,
  cparams)``) with ``ctx_type = LLAMA_CONTEXT_TYPE_MTP``, ``n_ctx = llama_n_ctx(ctx_tgt)``,
  ``n_rs_seq = 0`` and the params of ``common_base_params_to_speculative``: the same slots and
  unified flag, the draft cache types (``-ctkd``/``-ctvd``, default f16), ``n_outputs_max =
  n_parallel`` with one output per sequence.
- Its cache. ``llama_model::create_memory`` (src/llama-model.cpp) gives an MTP context a plain
  ``llama_kv_cache`` whose filter keeps ``il >= n_layer()``: the NextN blocks only (the default
  branch: ``if (params.ctx_type == LLAMA_CONTEXT_TYPE_MTP) filter = il >= n_layer()``; for the
  hybrid qwen3next family ``mtp_on_hybrid_qwen`` skips the hybrid memory, so no recurrent state).
  Each layer's cells live on that layer's device (``offload_kqv``), like the main cache.
- Its buffers. The MTP context has its own output buffer (the same size as the main one under
  llama-server: ``n_outputs_max = n_parallel``) and its own scheduler, whose compute buffer holds
  the MTP graph (``LLM_GRAPH_TYPE_DECODER_MTP``: one block plus ``eh_proj`` and the LM head).
- The main context. ``common_context_params_to_llama`` sets ``n_rs_seq = need_n_rs_seq()`` (the
  draft's ``n_max``, 3 by default) for draft-mtp; llama-context.cpp clamps it to 0 unless
  ``llm_arch_supports_rs_rollback`` (src/llama-arch.cpp); a recurrent layer then holds
  ``mem_size * (1 + n_rs_seq)`` state rows (llama-memory-recurrent.cpp).
- A sidecar file (``-md MTP.gguf --spec-type draft-mtp``, or one found in an ``-hf`` repo:
  common/arg.cpp ``plan_spec.mtp``) is a draft model of its own (``has_dft()``): loaded with the
  draft's ``-ngld``/``-devd`` and an MTP context on it. That is the draft model's plan, not this one.

Measured (pinned llama-server, CPU, the synthetic GLM-4.5-shaped glm4moe with one NextN block,
``-c 4096 -fa on``): model 108.83 -> 123.85 MiB; the MTP context: output 0.49 MiB, KV 2.00 MiB
(one block), compute 13.01 MiB.
"""

from __future__ import annotations

import dataclasses

from llamasplit.errors import ModelReadError, UsageError
from llamasplit.model.profile import HParams, ModelProfile
from llamasplit.memory import kv

DRAFT_MTP = "draft-mtp"

MTP_ARCHS = frozenset({
    "bailingmoe3", "cohere2moe", "deepseek2", "deepseek32", "deepseek4", "glm-dsa", "glm4moe", "glm5-next",
    "hy_v3", "mimo2", "nemotron_h_moe", "qwen35", "qwen35moe", "qwen3next", "step35",
})
"""Archs whose ``build_arch_graph`` builds an ``LLM_GRAPH_TYPE_DECODER_MTP`` graph (src/models/*.cpp)."""

SINGLE_BLOCK_ARCHS = frozenset({"glm4moe", "qwen3next", "deepseek2"})
"""Archs whose ``graph_mtp`` asserts ``n_layer_nextn == 1`` (glm4-moe.cpp, qwen3next.cpp, deepseek2.cpp)."""

RS_ROLLBACK_ARCHS = frozenset({"kimi-k3", "qwen35", "qwen35moe", "qwen4exp", "deepseek4", "glm5-next", "nemotron_h",
                               "nemotron_h_moe", "lfm2", "lfm2moe", "bailingmoe3"})
"""``llm_arch_supports_rs_rollback`` (src/llama-arch.cpp): the archs whose recurrent state keeps
``n_rs_seq`` snapshots per sequence."""

NEXTN_REQUIRED = ("eh_proj", "enorm", "hnorm")
"""The NextN tensors every MTP graph reads (graph/mtp.py ``_inputs``)."""

DRAFT_N_MAX = 3
"""``common_params_speculative_draft::n_max`` default (common/common.h), --spec-draft-n-max."""


def enabled(spec_type: str | None) -> bool:
    """Whether ``--spec-type`` holds draft-mtp (a comma-separated list, common/arg.cpp)."""
    return spec_type is not None and DRAFT_MTP in spec_type.split(",")


def check(model: ModelProfile) -> None:
    """A UsageError unless llama.cpp can run draft-mtp on ``model`` from its own NextN blocks."""
    if model.arch not in MTP_ARCHS:
        raise UsageError(f"--spec-type draft-mtp: llama.cpp has no MTP head for the {model.arch} architecture",
                         remedy=f"use it with one of {', '.join(sorted(MTP_ARCHS))}, or drop --spec-type")
    hp = model.hparams
    if not hp.n_layer_nextn:
        raise UsageError(f"--spec-type draft-mtp: {model.arch}.nextn_predict_layers is 0, the model has no NextN block",
                         remedy="use a GGUF converted with its MTP layers (or give the MTP sidecar with -md)")
    if model.arch in SINGLE_BLOCK_ARCHS and hp.n_layer_nextn != 1:
        raise UsageError(f"--spec-type draft-mtp: llama.cpp's {model.arch} MTP head runs one NextN block, this model "
                         f"has {hp.n_layer_nextn}", remedy="drop --spec-type draft-mtp")
    if model.arch == "deepseek2" and not (hp.is_mla and hp.q_lora_rank > 0):
        raise UsageError("--spec-type draft-mtp: llama.cpp's deepseek2 MTP head needs MLA with a Q LoRA "
                         "(deepseek2.cpp graph_mtp asserts n_lora_q > 0)", remedy="drop --spec-type draft-mtp")
    names = {t.name for t in model.tensors}
    nextn_blocks = sorted({t.layer for t in model.tensors if ".nextn." in t.name and t.layer is not None})
    for il in nextn_blocks[:1]:  # the NextN block the MTP graph runs (graph/mtp.py)
        for part in NEXTN_REQUIRED:
            name = f"blk.{il}.nextn.{part}.weight"
            if name not in names:
                # llama-model.cpp load_tensors creates them without TENSOR_NOT_REQUIRED once the
                # NextN block is loaded: llama.cpp's load fails with "missing tensor"
                raise ModelReadError(f"--spec-type draft-mtp: the model's NextN block {il} has no {name} "
                                     "(llama.cpp would fail to load it: missing tensor)",
                                     remedy="use a complete GGUF with its MTP layers, or drop --spec-type draft-mtp")


def in_model(model: ModelProfile) -> bool:
    """Whether draft-mtp runs on ``model``'s own NextN blocks (an MTP arch with some): else a plan
    needs the MTP sidecar as ``-md`` (``check``)."""
    return model.arch in MTP_ARCHS and model.hparams.n_layer_nextn > 0


_WITH_MTP: dict[int, tuple[ModelProfile, ModelProfile]] = {}


def with_mtp(model: ModelProfile) -> ModelProfile:
    """``model`` with its NextN blocks' weights loaded (one profile per model, so the weight tables
    are built once)."""
    if model.load_mtp:
        return model
    cached = _WITH_MTP.get(id(model))
    if cached is None or cached[0] is not model:
        if len(_WITH_MTP) > 16:
            _WITH_MTP.clear()
        cached = _WITH_MTP[id(model)] = (model, dataclasses.replace(model, load_mtp=True))
    return cached[1]


def kv_layer_bytes(hp: HParams, il: int, layout: kv.KvLayout, type_k: str = "f16", type_v: str = "f16") -> int:
    """Bytes of the MTP context's K and V cache for layer ``il`` (0 outside the NextN blocks)."""
    if not hp.n_layer_kv <= il < hp.n_layer:
        return 0
    k = kv.row_bytes(kv.cache_type(type_k), hp.n_embd_k_gqa(il)) * layout.kv_size * layout.n_stream
    v = 0 if hp.is_mla else kv.row_bytes(kv.cache_type(type_v), hp.n_embd_v_gqa(il)) * layout.kv_size * layout.n_stream
    return k + v


NEEDS_RS_SEQ = frozenset({"draft-mtp", "draft-eagle3", "draft-dflash", "draft-dspark"})
"""The types ``common_params_speculative::need_n_rs_seq`` (common/common.h) asks snapshots for."""


def n_rs_seq(arch: str, spec_type: str | None, n_max: int = DRAFT_N_MAX) -> int:
    """Recurrent-state snapshots per sequence in the main context: ``need_n_rs_seq()``, clamped to 0
    by llama-context.cpp where the arch cannot roll back."""
    types = set(spec_type.split(",")) if spec_type else set()
    return n_max if types & NEEDS_RS_SEQ and arch in RS_ROLLBACK_ARCHS else 0


_SPEC_N_MAX = {"draft-simple": None, "draft-eagle3": None, "draft-mtp": None, "draft-dflash": None,
               "draft-dspark": None, "ngram-simple": 48, "ngram-map-k": 48, "ngram-map-k4v": 48, "ngram-mod": 64,
               "ngram-cache": 8}
"""``common_speculative_n_max`` (common/speculative.cpp): the draft types draft ``--spec-draft-n-max``
(``None`` here), the n-gram ones their own defaults (common/common.h: ``size_m`` 48, ngram-mod's
``n_max`` 64, ngram-cache 8)."""


def spec_n_max(spec_type: str | None, n_max: int = DRAFT_N_MAX) -> int:
    """The most tokens any of the ``--spec-type`` implementations drafts per step."""
    out = 0
    for t in (spec_type.split(",") if spec_type else ()):
        if t in _SPEC_N_MAX:
            value = _SPEC_N_MAX[t]
            out = max(out, max(0, n_max) if value is None else value)
    return out


def server_outputs(n_batch: int, n_parallel: int, spec_type: str | None, n_max: int = DRAFT_N_MAX) -> int:
    """The main context's ``n_outputs_max`` under llama-server (tools/server/server-context.cpp
    ``server_output_limits`` -> ``common_speculative_get_output_limits``): one output per slot and
    drafted token, ``min(n_batch, n_parallel x (1 + n_max))``, at least 1."""
    return max(1, min(n_batch, n_parallel * (1 + spec_n_max(spec_type, n_max))))
