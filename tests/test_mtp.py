"""MTP speculative decoding (``--spec-type draft-mtp``, ``memory.mtp``) without binaries: the
arithmetic of each rule, the refusals, and llama-server's real buffers recorded in
``tests/golden/mtp_server.json`` (``benchmarks/mtp_server.py --record``: the synthetic glm4moe,
qwen3next and deepseek2 with one NextN block each, CPU and two RPC workers, every layer and ``-ngl 3``, two
contexts, flash attention on and off), each the same 0.01 MiB in the estimate.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from synth import write_glm4moe, write_llama_dense, write_qwen3next
from synth_mtp import write_deepseek2_mtp

from llamasplit.devices.device import Device, Fleet, HostInfo
from llamasplit.errors import UsageError
from llamasplit.memory import mtp
from llamasplit.memory.estimate import estimate
from llamasplit.memory.repack import CpuFeatures
from llamasplit.memory.settings import LlamaSettings
from llamasplit.model.profile import read_model
from llamasplit.planner.plan import PlanOptions, plan

MiB = 1024 * 1024
GOLDEN = json.loads((Path(__file__).with_name("golden") / "mtp_server.json").read_text())
WRITERS = {
    "glm4moe": lambda path: write_glm4moe(path, vocab="spm", header_only=True),
    "qwen3next": lambda path: write_qwen3next(path, n_nextn=1, header_only=True),
    "deepseek2": lambda path: write_deepseek2_mtp(path, header_only=True),
}
"""benchmarks/mtp_server.py MODELS, header only."""


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mtp")
    return {name: read_model(w(tmp / f"{name}.gguf"), require_data=False) for name, w in WRITERS.items()}


def test_draft_mtp_loads_the_nextn_block_and_gives_the_mtp_context_its_own_buffers(models):
    model = models["glm4moe"]
    nextn = sum(t.n_bytes for t in model.tensors if t.layer == 4)
    plain = estimate(model, [], LlamaSettings(n_ctx=4096))
    est = estimate(model, [], LlamaSettings(n_ctx=4096, spec_type="draft-mtp"))
    # load_mtp: the NextN block's tensors get a buffer (mapped on the CPU)
    assert est.host.model_bytes == plain.host.model_bytes + nextn == model.tensor_bytes
    # the main cache is unchanged (4 trunk blocks); the MTP context caches the NextN block alone:
    # K + V of 2 heads x 64, 4096 cells (4 unified slots), f16 (-ctkd/-ctvd default)
    assert est.host.context_bytes == plain.host.context_bytes == 4 * 2 * 128 * 4096 * 2
    parts = est.host.companion_parts
    assert parts["mtp_context"] == 2 * 128 * 4096 * 2
    # server_output_limits: 4 slots x (1 + 3 drafted tokens) output rows of n_vocab (+ n_embd) floats
    assert est.host.output_bytes == (32000 + 512) * 16 * 4
    # the MTP context's rows (n_parallel): logits, embd_nextn, the sampler's 2 x n_vocab floats and
    # 1 + n_vocab tokens; the main context's embd_nextn for n_batch = 2048 tokens
    assert parts["mtp_output"] == (4 * 32000 + 512 + 1) * 4 * 4 + 512 * 2048 * 4
    assert parts["mtp_compute"] > 0
    assert "--spec-type" in LlamaSettings(spec_type="draft-mtp").to_args()


def test_the_mtp_cache_follows_its_layer_and_the_kv_offload_flag(models):
    model = models["glm4moe"]
    dev = [Device(id="rpc:0", name="RPC0", description="w", backend="RPC", total_bytes=None, free_bytes=None,
                  host="127.0.0.1:50052")]
    on = estimate(model, dev, LlamaSettings(n_ctx=4096, spec_type="draft-mtp", tensor_split=(1,)))
    off = estimate(model, dev, LlamaSettings(n_ctx=4096, spec_type="draft-mtp", offload_kqv=False, tensor_split=(1,)))
    assert on.devices[0].companion_parts["mtp_context"] == 2 * 128 * 4096 * 2
    assert "mtp_context" not in on.host.companion_parts
    assert off.host.companion_parts["mtp_context"] == 2 * 128 * 4096 * 2


def test_rollback_snapshots_multiply_the_recurrent_state_where_the_arch_can_roll_back():
    # llama-context.cpp clamps n_rs_seq to 0 unless llm_arch_supports_rs_rollback
    assert mtp.n_rs_seq("qwen3next", "draft-mtp") == 0
    assert mtp.n_rs_seq("qwen35", "draft-mtp") == 3
    assert mtp.n_rs_seq("lfm2", "draft-eagle3,ngram-mod") == 3
    assert mtp.n_rs_seq("lfm2", "ngram-mod") == 0  # need_n_rs_seq: only the draft-model types
    assert mtp.spec_n_max("ngram-mod") == 64 and mtp.spec_n_max("draft-mtp,ngram-cache") == 8
    assert mtp.server_outputs(2048, 4, None) == 4 and mtp.server_outputs(8, 4, "draft-mtp") == 8


def _fleet() -> Fleet:
    return Fleet(devices=(), host=HostInfo(ram_total_bytes=64 * 1024**3, ram_available_bytes=60 * 1024**3), source="test")


def test_draft_mtp_is_refused_in_one_line_where_llama_cpp_has_no_mtp_head(tmp_path, models):
    llama = read_model(write_llama_dense(tmp_path / "l.gguf", header_only=True), require_data=False)
    no_nextn = read_model(write_qwen3next(tmp_path / "q.gguf", header_only=True), require_data=False)
    opts = PlanOptions(settings=LlamaSettings(n_ctx=4096, spec_type="draft-mtp"), fixed=frozenset({"n_ctx"}))
    with pytest.raises(UsageError, match="no MTP head for the llama"):
        plan(llama, _fleet(), opts)
    with pytest.raises(UsageError, match="nextn_predict_layers is 0"):
        plan(no_nextn, _fleet(), opts)
    two = read_model(write_deepseek2_mtp(tmp_path / "d.gguf", n_nextn=2, header_only=True), require_data=False)
    with pytest.raises(UsageError, match="runs one NextN block, this model has 2"):
        plan(two, _fleet(), opts)
    with pytest.raises(UsageError, match="not a flag of llama-fit-params"):
        LlamaSettings(spec_type="draft-mtp", binary="llama-fit-params")
    with pytest.raises(UsageError, match="comma-separated list"):
        LlamaSettings(spec_type="mtp")
    result = plan(models["glm4moe"], _fleet(), opts)
    assert result.host.companion_parts["mtp_context"] == 2 * 128 * 4096 * 2
    assert "--spec-type" in result.argv()
    # a NextN block without its projection: llama.cpp's load fails (missing tensor), ours is one line
    import dataclasses

    from llamasplit.errors import ModelReadError

    glm = models["glm4moe"]
    missing = dataclasses.replace(glm, tensors=tuple(t for t in glm.tensors if not t.name.endswith("nextn.eh_proj.weight")))
    with pytest.raises(ModelReadError, match=r"has no blk\.\d+\.nextn\.eh_proj\.weight"):
        plan(missing, _fleet(), opts)


@pytest.mark.parametrize("family", sorted(WRITERS))
def test_estimate_matches_recorded_llama_server_buffers(family, models):
    cpu = CpuFeatures(frozenset(GOLDEN["cpu_flags"]), GOLDEN["cpu_machine"] or "x86_64", GOLDEN["amx_built"])
    model = models[family]
    records = [r for r in GOLDEN["records"] if r["family"] == family]
    assert len(records) == 12
    wrong = []
    for r in records:
        settings = LlamaSettings.from_dict(r["settings"])
        assert settings.spec_type == "draft-mtp"
        devices = [Device(id=f"rpc:{i}", name=f"RPC{i}", description="worker", backend="RPC", total_bytes=None,
                          free_bytes=None, host=f"127.0.0.1:{50052 + i}") for i in range(r["n_rpc"])]
        est = estimate(model, devices, settings, cpu=cpu)
        for d in (*est.devices, est.host):
            name = "CPU" if d is est.host else d.name
            ours = {
                ("main", "CPU_Mapped" if d is est.host else f"model:{name}"): est.host_mapped_bytes if d is est.host else d.model_bytes,
                ("main", f"context:{name}"): d.context_bytes,
                ("main", f"compute:{name}"): d.compute_bytes,
                ("mtp", f"KV:{name}"): d.companion_parts.get("mtp_context", 0),
                ("mtp", f"compute:{name}"): d.companion_parts.get("mtp_compute", 0),
            }
            for (ctx, key), n in ours.items():
                real = r[ctx].get("model:CPU_Mapped" if key == "CPU_Mapped" else key, 0.0)
                if abs(round(n / MiB, 2) - real) > 0.011:
                    wrong.append(f"{r['command']}: {ctx} {key} {n / MiB:.2f} MiB, llama-server {real:.2f}")
    assert not wrong, "\n".join(wrong)


SERVER_LOG = """\
load_tensors:   CPU_Mapped model buffer size =   123.85 MiB
llama_context:        CPU  output buffer size =     0.49 MiB
llama_kv_cache:        CPU KV buffer size =     8.00 MiB
sched_reserve:        CPU compute buffer size =    13.11 MiB
common_speculative_init_result: creating MTP draft context against the target model 'glm.gguf'
llama_context:        CPU  output buffer size =     0.49 MiB
llama_kv_cache:        CPU KV buffer size =     2.00 MiB
sched_reserve:        CPU compute buffer size =    13.01 MiB
sched_reserve:        CPU compute buffer size =    13.01 MiB
"""
"""llama-server's buffer lines for the synthetic glm4moe, ``-c 4096 -fa on --spec-type draft-mtp``,
CPU only (the pinned build, ``-lv 4``; timestamps cut)."""


def test_run_check_compares_the_mtp_context_on_its_own_rows(models):
    from llamasplit.runner.verify import verify

    opts = PlanOptions(settings=LlamaSettings(n_ctx=4096, flash_attn="on", spec_type="draft-mtp"),
                       fixed=frozenset({"n_ctx"}))
    result = verify(plan(models["glm4moe"], _fleet(), opts), SERVER_LOG)
    rows = {(r.device, r.kind): r for r in result.rows}
    # the main context's KV is the first 8 MiB alone; the MTP context's 2 MiB is its own row
    assert rows[("Host", "context")].actual_bytes == 8 * MiB
    assert rows[("Host", "mtp_context")].actual_bytes == 2 * MiB
    assert round(rows[("Host", "mtp_compute")].actual_bytes / MiB, 2) == 13.01
    assert result.ok, result.format() if hasattr(result, "format") else result


def test_a_rollback_arch_keeps_n_max_state_snapshots_per_slot(tmp_path):
    """llama-memory-recurrent.cpp: ``mem_size * (1 + n_rs_seq)`` rows, n_rs_seq = --spec-draft-n-max
    for the draft-model types on an arch that rolls back (lfm2: llm_arch_supports_rs_rollback)."""
    from synth import write_lfm2

    model = read_model(write_lfm2(tmp_path / "lfm2.gguf", header_only=True), require_data=False)
    base = LlamaSettings(n_ctx=4096)
    kv_only = estimate(model, [], base).host.context_bytes - 4 * 4 * 512 * 2 * 4  # 4 conv blocks, 4 slots
    # lfm2's conv state: n_embd x (l_cache - 1) F32 per slot and conv block
    for spec, n_max, rows in ((None, 3, 1), ("draft-eagle3", 3, 4), ("draft-eagle3", 5, 6), ("ngram-mod", 3, 1)):
        est = estimate(model, [], base.replace(spec_type=spec, spec_draft_n_max=n_max))
        assert est.host.context_bytes == kv_only + rows * 4 * 4 * 512 * 2 * 4, (spec, n_max)


def test_cli_plans_draft_mtp_and_refuses_what_it_cannot_in_one_line(tmp_path, capsys):
    from llamasplit.cli import main

    glm = str(write_glm4moe(tmp_path / "glm.gguf", n_vocab=2048, n_embd=256, head_dim=32, n_ff=512, n_ff_exp=128))
    assert main(["plan", glm, "--fleet", "3090", "-c", "4096", "--spec-type", "draft-mtp", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["command"][-2:] == ["--spec-type", "draft-mtp"]
    for extra, words in ((["-ctkd", "q8_0"], "-ctkd/-ctvd"), (["-sm", "auto"], "-sm auto"),
                         (["--spec-type", "mtp"], "comma-separated")):
        args = ["plan", glm, "--fleet", "3090", "--spec-type", "draft-mtp", *extra]
        assert main(args) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and words in err[0], err
