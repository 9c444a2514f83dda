"""Per-arch rules of the estimator that need no llama.cpp binary: NextN/MTP blocks, CPU repacking.

The figures llama.cpp itself gives for these models are checked in ``test_archs_real.py``.
"""

from __future__ import annotations

from gguf import GGML_QUANT_SIZES
from gguf.constants import GGMLQuantizationType as Q
from synth import write_glm4moe, write_llama_dense, write_model, write_qwen3next

from llamasplit.devices.device import Fleet, HostInfo
from llamasplit.model.profile import Block, Role, TensorInfo, read_model
from llamasplit.memory.estimate import estimate
from llamasplit.planner.plan import PlanOptions, plan
from llamasplit.memory.repack import AMX, CPU_REPACK, CpuFeatures, extra_alloc_bytes, extra_buffer
from llamasplit.memory.settings import LlamaSettings

MiB = 1024 * 1024


def test_nextn_block_weights_are_skipped_but_the_block_keeps_its_place(tmp_path):
    model = read_model(write_glm4moe(tmp_path / "glm.gguf"))
    hp = model.hparams
    assert (hp.n_layer, hp.n_layer_nextn, hp.n_layer_kv) == (5, 1, 4)
    nextn = [t for t in model.tensors if t.layer == 4]
    # the NextN block (blk.4): a whole MoE block plus eh_proj / enorm / hnorm / shared_head_norm
    # F16 matrices, F32 vectors: attention q 512x512, k and v 512x128, output 512x512 -> 1.25 MiB;
    # experts 3 x 16 x 256 x 512 -> 12 MiB; shared expert 3 x 256 x 512 -> 0.75 MiB;
    # eh_proj 1024 x 512 -> 1 MiB; router 512 x 16 x 2 bytes; vectors:
    # attn_norm, post_attention_norm, enorm, hnorm, shared_head_norm 5 x 512, q/k/v biases
    # 512 + 128 + 128, exp_probs_b 16
    vectors = (5 * 512 + 768 + 16) * 4
    matrices = (2 * 512 * 512 + 2 * 512 * 128 + 3 * 16 * 256 * 512 + 3 * 256 * 512 + 1024 * 512 + 512 * 16) * 2
    assert sum(t.n_bytes for t in nextn) == vectors + matrices
    assert len(model.loaded_tensors) == len(model.tensors) - len(nextn)
    # CPU only, mmap: the host's model bytes are the loaded tensors' bytes, the NextN block's left out
    est = estimate(model, [], LlamaSettings(n_ctx=4096, binary="llama-fit-params"))
    assert est.host.model_bytes == model.tensor_bytes - (vectors + matrices)
    # the block still counts in the layer split: -ngl N puts the output (slot 5) and blocks 5-N+1.. on the device
    assert len(est.layer_device) == hp.n_layer + 1
    # and has no KV cache: 4 trunk layers x (K + V) 128 x 4096 x 2 bytes
    assert est.host.context_bytes == 4 * 2 * 128 * 4096 * 2



def test_qwen3next_linear_attention_blocks_hold_a_state_the_others_a_kv_cache(tmp_path):
    """src/models/qwen3next.cpp load_arch_hparams: block i is recurrent iff (i + 1) %
    full_attention_interval != 0 and it is a trunk block; llama-model.cpp create_memory gives the
    hybrid memory filter_attn = trunk and not recurrent, filter_recr = trunk and recurrent."""
    model = read_model(write_qwen3next(tmp_path / "q.gguf", n_nextn=1, header_only=True), require_data=False)
    hp = model.hparams
    assert hp.is_recurrent == (True, False, True, False, False)  # the MTP block (4) is neither
    est = estimate(model, [], LlamaSettings(n_ctx=4096, binary="llama-completion"))
    # KV: blocks 1 and 3, (K + V) 2 heads x 64 x 4096 cells x 2 bytes = 2 MiB each (llama.cpp: 4.00 MiB);
    # state, one sequence, F32, blocks 0 and 2: conv (4 - 1) x (512 + 2 x 4 x 64) = 3072 values,
    # delta-net state 64 x 512 = 32768 values (llama.cpp: RS 0.27 MiB = R 0.02 + S 0.25)
    assert est.host.context_bytes == 2 * 2 * 128 * 4096 * 2 + 2 * (3 * 1024 + 64 * 512) * 4
    # llama-server: 4 slots, 4 state cells
    est4 = estimate(model, [], LlamaSettings(n_ctx=4096))
    assert est4.host.context_bytes == 2 * 2 * 128 * 4096 * 2 + 4 * 2 * (3 * 1024 + 64 * 512) * 4


# --- the CPU's extra buffer types (planner.repack) ---------------------------------------------

AVX2 = CpuFeatures(frozenset({"avx2", "avx512f"}), "x86_64")
AMX_BUILD = CpuFeatures(frozenset({"avx2", "avx512f", "amx_int8", "avx512_vnni"}), "x86_64", amx_built=True)
ARM = CpuFeatures(frozenset({"asimd", "asimddp"}), "aarch64")


def _w(name, qtype, shape, role=Role.FFN_DOWN, block=Block.LAYER):
    block_elems, block_bytes = GGML_QUANT_SIZES[qtype]
    n_bytes = shape[0] // block_elems * block_bytes
    for d in shape[1:]:
        n_bytes *= d
    return TensorInfo(name, int(qtype), shape, n_bytes, block, 0, role)


def test_which_weights_repack_on_which_cpu():
    q4_0 = _w("blk.0.ffn_down.weight", Q.Q4_0, (512, 1408))
    q4_1 = _w("blk.0.ffn_down.weight", Q.Q4_1, (512, 1408))
    q8_0 = _w("blk.0.ffn_down.weight", Q.Q8_0, (512, 1408))
    # x86 + AVX2 (repack.cpp): Q4_0 rows in 8s repack; Q4_1 and Q8_0 have no x86 kernel
    assert [extra_buffer(t, AVX2) for t in (q4_0, q4_1, q8_0)] == [CPU_REPACK, None, None]
    # 1404 rows is not a multiple of 8: no interleaved layout
    assert extra_buffer(_w("blk.0.ffn_down.weight", Q.Q4_0, (512, 1404)), AVX2) is None
    # with AMX built in, AMX comes first and takes Q4_0/Q4_1/Q8_0 and F16 mat-muls with 32-row tiles
    assert [extra_buffer(t, AMX_BUILD) for t in (q4_0, q4_1, q8_0)] == [AMX, AMX, AMX]
    assert extra_buffer(_w("blk.0.ffn_down.weight", Q.F16, (512, 1408)), AMX_BUILD) == AMX
    # the same flags without an AMX build: back to CPU_REPACK / nothing
    assert extra_buffer(q4_1, CpuFeatures(AMX_BUILD.flags, "x86_64", amx_built=False)) is None
    # experts (MUL_MAT_ID, 3-D) never go to AMX, Q4_K experts repack on AVX2
    exps = _w("blk.0.ffn_up_exps.weight", Q.Q4_K, (512, 256, 16), role=Role.EXPERTS)
    assert extra_buffer(exps, AMX_BUILD) == CPU_REPACK
    # ARM with dotprod: Q8_0 repacks (rows in 4s)
    assert extra_buffer(q8_0, ARM) == CPU_REPACK
    # norms, biases and the token embedding (GET_ROWS) stay in CPU buffers
    assert extra_buffer(_w("token_embd.weight", Q.Q4_0, (512, 32000), Role.TOKEN_EMBD, Block.INPUT), AVX2) is None
    # ... but a tied embedding's output copy is a mat-mul
    tok = _w("token_embd.weight", Q.Q4_0, (512, 32000), Role.TOKEN_EMBD, Block.INPUT)
    assert extra_buffer(tok, AVX2, tied_output=True) == CPU_REPACK


def test_amx_repacked_sizes():
    # Q8_0 gains 4 bytes of s8s8 compensation per 32-element block (amx/mmq.cpp get_row_size):
    # SmolLM2's tied output, 49152 rows of 576: 18 blocks x (34 + 4) bytes x 49152 = 33619968 bytes
    out = _w("token_embd.weight", Q.Q8_0, (576, 49152), Role.TOKEN_EMBD, Block.INPUT)
    assert extra_alloc_bytes(out, AMX) == 49152 * 18 * 38
    # Q4_1 keeps its size (no compensation), CPU_REPACK always does; both pad to 32 bytes
    assert extra_alloc_bytes(_w("blk.0.ffn_down.weight", Q.Q4_1, (576, 1536)), AMX) == 576 // 32 * 20 * 1536
    assert extra_alloc_bytes(_w("blk.0.ffn_down.weight", Q.Q4_0, (32, 1)), CPU_REPACK) == 32  # 18 -> 32


def test_cpu_layers_repacked_weights_leave_the_host_model_figure(tmp_path):
    model = read_model(write_llama_dense(tmp_path / "q4.gguf", matrix_type="Q4_0", header_only=True),
                       require_data=False)
    settings = LlamaSettings(n_ctx=4096, binary="llama-fit-params")
    plain = estimate(model, [], settings)
    est = estimate(model, [], settings, cpu=AVX2)
    # every Q4_0 mat-mul weight (rows of 512 or 1408, both multiples of 8) repacks, the output
    # (32000 rows) too; token_embd (GET_ROWS) and the F32 norms stay
    repacked = [t for t in model.tensors if t.type_name == "Q4_0" and t.name != "token_embd.weight"]
    assert est.host.extra_buffers == {CPU_REPACK: sum((t.n_bytes + 31) // 32 * 32 for t in repacked)}
    assert est.host.model_bytes == plain.host.model_bytes - sum(t.n_bytes for t in repacked)
    assert est.host.total_bytes == plain.host.total_bytes - sum(t.n_bytes for t in repacked) + est.host.extra_bytes
    # -nr: no extra buffer types
    assert estimate(model, [], settings.replace(repack=False), cpu=AVX2).host.extra_buffers == {}
    assert "-nr" in settings.replace(repack=False).to_args()


def test_cpuinfo_flags_are_parsed_and_kept_in_the_host_snapshot():
    cpu = CpuFeatures.from_cpuinfo("processor : 0\nflags : fpu avx2 amx_int8 avx512_vnni\n", amx_built=False)
    assert cpu.avx2 and not cpu.amx
    host = HostInfo(cpu_flags=("avx2", "fpu"), cpu_machine="x86_64")
    assert HostInfo.from_dict(host.to_dict()) == host


def test_a_cpu_plan_holds_the_repacked_weights_and_says_when_compute_is_not_replayed(tmp_path):
    model = read_model(write_llama_dense(tmp_path / "q4.gguf", matrix_type="Q4_0", header_only=True),
                       require_data=False)
    fleet = Fleet(devices=(), host=HostInfo(ram_available_bytes=64 << 30, cpu_flags=("avx2",), cpu_machine="x86_64"))
    p = plan(model, fleet, PlanOptions(settings=LlamaSettings(n_ctx=4096), fixed=frozenset({"n_ctx"})))
    est = estimate(model, [], p.settings, cpu=CpuFeatures(frozenset({"avx2"})))
    assert est.host.extra_bytes > 0
    assert p.host.model_bytes == est.host.model_bytes + est.host.extra_bytes
    assert p.host.total_bytes == est.host.total_bytes
    assert not any("not replayed" in n for n in p.notes)
    # an arch the graph replay does not follow: the plan says its compute figure is a guide
    other = read_model(write_model(tmp_path / "mm.gguf", arch="minimax-01"))
    notes = plan(other, fleet, PlanOptions(settings=LlamaSettings(n_ctx=4096), fixed=frozenset({"n_ctx"}))).notes
    assert any(n.startswith("compute estimated, not replayed") for n in notes)
