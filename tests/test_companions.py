"""A draft model (-md) and LoRA adapters (--lora) planned with the model, from headers alone.

Byte arithmetic in the comments; the rules are llama.cpp's (``llamasplit/memory/companions.py``
cites each). The same figures against llama-server's real buffers: ``test_companions_real.py``.
"""

from __future__ import annotations

import json

import pytest
from synth import write_llama_dense
from synth_spec import lora_targets, write_lora

from llamasplit.cli import main
from llamasplit.devices.fleet import fleet_from_spec
from llamasplit.errors import ModelReadError, NoFeasiblePlan, UsageError
from llamasplit.memory.companions import (
    Companions, Draft, DraftSpec, check_lora, draft_settings, estimate_with_companions, read_lora, vocab_mismatch,
)
from llamasplit.memory.estimate import estimate
from llamasplit.memory.settings import LlamaSettings
from llamasplit.model.profile import read_model
from llamasplit.planner.plan import Plan, PlanOptions, plan
from llamasplit.runner.verify import verify

MiB = 1024 * 1024

# the draft below: llama, 1 block of n_embd 128 (2 heads of 64, 1 KV head), n_ff 256, vocab 32000, F16:
#   token_embd / output 32000 x 128 x 2 = 8_192_000 bytes each; output_norm 128 x 4 = 512
#   block: norms 2 x 512, q and o 2 x 128 x 128 x 2 = 65_536, k and v 2 x 128 x 64 x 2 = 32_768,
#          gate, up, down 3 x 128 x 256 x 2 = 196_608: 295_936 bytes
DRAFT_OUTPUT_LAYER = 8_192_000 + 512
DRAFT_BLOCK = 295_936
DRAFT_EMBD = 8_192_000


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("spec")
    main_path = write_llama_dense(tmp / "main.gguf", vocab="spm", header_only=True)
    draft_path = write_llama_dense(tmp / "draft.gguf", n_layer=1, n_embd=128, n_head=2, n_head_kv=1, n_ff=256,
                                   vocab="spm", header_only=True)
    other_path = write_llama_dense(tmp / "other.gguf", n_layer=1, n_embd=128, n_head=2, n_head_kv=1, n_ff=256,
                                   header_only=True)  # no tokenizer: LLAMA_VOCAB_TYPE_NONE
    return {k: (p, read_model(p, require_data=False)) for k, p in
            (("main", main_path), ("draft", draft_path), ("other", other_path))}


def _draft(models, **spec):
    path, profile = models["draft"]
    return Companions(draft=Draft(profile, DraftSpec(str(path), **spec)))


def test_draft_settings_follow_the_main_model_as_common_base_params_to_speculative():
    main_s = LlamaSettings(n_ctx=3000, n_gpu_layers=3, tensor_split=(3, 1), type_k="q8_0", flash_attn="on", n_ubatch=256,
                           overrides=(("ffn", "CPU"),), spec_type="draft-simple")
    d = draft_settings(main_s, 3072, DraftSpec("d.gguf", type_v="q8_0"), 2)
    # its own -ngld (all), -otd (none), cache types (f16 unless -ctkd/-ctvd); the main -ts, -fa, -ub;
    # the main context's padded n_ctx
    assert (d.n_gpu_layers, d.overrides, d.type_k, d.type_v) == (None, (), "f16", "q8_0")
    assert (d.tensor_split, d.flash_attn, d.n_ubatch, d.n_ctx, d.seq_count, d.unified) == ((3, 1), "on", 256, 3072, 4, True)
    # one output row per slot (n_outputs_max = n_parallel), not the main context's row per drafted token
    assert d.spec_type is None
    # -devd with one device: layer split, and -ts read for that one device (llama-model.cpp load_tensors)
    one = draft_settings(main_s.replace(split_mode="none"), 3072, DraftSpec("d.gguf", devices=("CUDA1",)), 1)
    assert (one.split_mode, one.tensor_split) == ("layer", (1.0,))
    # -ts 0,5 read for two draft devices is the split; for a first one alone all zero: llama.cpp splits
    # by free memory (two devices), or gives one device everything
    assert draft_settings(main_s.replace(tensor_split=(0, 5)), 3072, DraftSpec("d.gguf"), 2).tensor_split == (0, 5)
    assert draft_settings(main_s.replace(tensor_split=(0, 5, 0)), 3072, DraftSpec("d.gguf"), 1).tensor_split == (1.0,)
    three = draft_settings(main_s.replace(tensor_split=(0, 0, 5)), 3072, DraftSpec("d.gguf"), 2)
    assert three.tensor_split is None


def test_draft_weights_and_kv_per_device_to_the_byte(models):
    main_path, main_model = models["main"]
    fleet = fleet_from_spec("3090")
    s = LlamaSettings(n_ctx=4096, flash_attn="on")
    est = estimate_with_companions(main_model, list(fleet.devices), s, _draft(models))
    parts = est.devices[0].companion_parts
    # -ngld default: every draft layer on the main model's device (CUDA: F16 tensors are padded to
    # 128 bytes only, and every size here is a multiple of 128); token_embd stays mapped on the host
    assert parts["draft_model"] == DRAFT_BLOCK + DRAFT_OUTPUT_LAYER
    assert est.host.companion_parts["draft_model"] == DRAFT_EMBD
    # KV: 4096 cells (4 slots, unified) x 1 layer x (64 K + 64 V) x 2 bytes
    assert parts["draft_context"] == 4096 * 128 * 2
    # the host's output buffer: n_vocab x 4 slots x 4 bytes, plus n_embd under llama-server
    assert est.host.companion_parts["draft_output"] == (32000 + 128) * 4 * 4
    assert parts["draft_compute"] > 0
    alone = estimate(main_model, list(fleet.devices), s)
    assert est.devices[0].total_bytes == alone.devices[0].total_bytes + sum(parts.values())
    assert est.devices[0].model_bytes == alone.devices[0].model_bytes  # the main model's own figures stay


def test_ngld_zero_and_devd_none_keep_the_draft_on_the_host(models):
    _, main_model = models["main"]
    devices = list(fleet_from_spec("3090").devices)
    s = LlamaSettings(n_ctx=4096)
    for spec in ({"n_gpu_layers": 0}, {"devices": ()}):
        est = estimate_with_companions(main_model, devices, s, _draft(models, **spec))
        assert "draft_model" not in est.devices[0].companion_parts
        assert est.host.companion_parts["draft_model"] == DRAFT_EMBD + DRAFT_BLOCK + DRAFT_OUTPUT_LAYER
        assert est.host.companion_parts["draft_context"] == 4096 * 128 * 2


def test_the_fit_check_counts_the_draft(models):
    _, main_model = models["main"]
    fleet = fleet_from_spec("3090")
    opts = PlanOptions(settings=LlamaSettings(n_ctx=4096), fixed=frozenset({"n_ctx"}))
    alone = plan(main_model, fleet, opts)
    budget = alone.devices[0].total_bytes + 4 * MiB  # room for the model, not for the draft too
    tight = dict(margin_bytes=0, margin_overrides=(("CUDA0", fleet.devices[0].free_bytes - budget),))
    assert plan(main_model, fleet, PlanOptions(settings=opts.settings, fixed=opts.fixed, **tight)).settings.n_gpu_layers is None
    with_draft = plan(main_model, fleet, PlanOptions(settings=opts.settings, fixed=opts.fixed, companions=_draft(models),
                                                     **tight))
    # the draft's ~9 MiB on CUDA0 push main layers back to the CPU
    assert with_draft.settings.n_gpu_layers is not None and with_draft.settings.n_gpu_layers < 5
    d = with_draft.devices[0]
    assert d.total_bytes <= d.budget_bytes
    assert d.companion_parts["draft_model"] == DRAFT_BLOCK + DRAFT_OUTPUT_LAYER


def test_plan_flags_env_and_json_of_a_draft(models):
    _, main_model = models["main"]
    path = str(models["draft"][0])
    p = plan(main_model, fleet_from_spec("3090,3060-12g"),
             PlanOptions(settings=LlamaSettings(n_ctx=4096), fixed=frozenset({"n_ctx"}),
                         companions=_draft(models, devices=("CUDA1",), type_k="q8_0", n_max=8)))
    args = p.to_llama_args()
    # -md alone drafts nothing in this llama.cpp: the plan asks for draft-simple
    assert args[args.index("--spec-type") + 1] == "draft-simple"
    tail = args[args.index("-md"):]
    # CUDA1 of the fleet (the 3060) is pinned for the draft, and is CUDA0 under the plan's CUDA_VISIBLE_DEVICES
    assert tail == ["-md", path, "-ngld", "all", "-devd", "CUDA0", "-ctkd", "q8_0"]
    assert args[args.index("--spec-draft-n-max") + 1] == "8" and args.count("--spec-draft-n-max") == 1
    assert "3060" in p.devices[0].description and p.devices[0].layers == ()  # pinned for the draft alone
    env = p.to_llama_env()
    assert env["LLAMA_ARG_SPEC_DRAFT_MODEL"] == path and env["LLAMA_ARG_SPEC_DRAFT_CACHE_TYPE_K"] == "q8_0"
    assert p.env_leftover_args() == ["-devd", "CUDA0"]  # -devd has no LLAMA_ARG_* variable
    data = json.loads(p.to_json())
    assert data["draft"]["devices"] == ["CUDA0"] and data["devices"][0]["companion_parts"]["draft_model"] > 0
    assert Plan.from_json(p.to_json()).argv() == p.argv()
    assert "draft model: CUDA0" in p.summary()


def test_vocabulary_mismatch_is_one_line(models):
    _, main_model = models["main"]
    other_path, other = models["other"]
    why = vocab_mismatch(main_model, other)
    assert why is not None and "vocab type" in why
    assert vocab_mismatch(main_model, models["draft"][1]) is None
    with pytest.raises(UsageError, match="common_speculative_are_compatible"):
        plan(main_model, fleet_from_spec("3090"), PlanOptions(
            companions=Companions(draft=Draft(other, DraftSpec(str(other_path))))))


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A small main llama with its data (the CLI reads whole files), and a LoRA for it."""
    tmp = tmp_path_factory.mktemp("small")
    main_path = write_llama_dense(tmp / "small.gguf", n_layer=2, n_embd=128, n_head=2, n_head_kv=1, n_ff=256,
                                  n_vocab=512, vocab="spm")
    targets = lora_targets(read_model(main_path), ("attn_q",))
    return {"main": main_path, "lora": write_lora(tmp / "lora.gguf", arch="llama", targets=targets),
            "lora_qwen": write_lora(tmp / "qwen.gguf", arch="qwen2", targets=targets)}


def test_cli_draft_that_is_not_a_gguf_and_unknown_devd(small, tmp_path, capsys):
    bad = tmp_path / "draft.gguf"
    bad.write_bytes(b"NOPE" + bytes(100))
    main_path = str(small["main"])
    assert main(["plan", main_path, "--fleet", "3090", "-md", str(bad)]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not a GGUF file" in err[0]
    assert main(["plan", main_path, "--fleet", "3090", "-devd", "CUDA0"]) == 2
    assert "need a draft model" in capsys.readouterr().err


def test_llama_completion_takes_no_draft(models):
    _, main_model = models["main"]
    with pytest.raises(UsageError, match="not a flag of llama-completion"):
        plan(main_model, fleet_from_spec("3090"), PlanOptions(settings=LlamaSettings(binary="llama-completion"),
                                                              companions=_draft(models)))


# ---------------------------------------------------------------------------------------------
# LoRA


@pytest.fixture(scope="module")
def lora(tmp_path_factory, models):
    _, main_model = models["main"]
    tmp = tmp_path_factory.mktemp("lora")
    targets = lora_targets(main_model, ("attn_q", "ffn_down"))
    return {
        "ok": write_lora(tmp / "ok.gguf", arch="llama", targets=targets, rank=16),
        "arch": write_lora(tmp / "arch.gguf", arch="qwen2", targets=targets),
        "shape": write_lora(tmp / "shape.gguf", arch="llama", targets={"blk.0.attn_q.weight": (256, 512)}),
        "missing": write_lora(tmp / "missing.gguf", arch="llama", targets={"blk.9.attn_q.weight": (512, 512)}),
        "not_adapter": write_lora(tmp / "model.gguf", arch="llama", targets=targets, general_type="model"),
    }


def test_lora_pairs_sit_with_their_base_tensors_to_the_byte(models, lora):
    _, main_model = models["main"]
    adapter = read_lora(lora["ok"])
    assert len(adapter.tensors) == 8 and adapter.alpha == 16.0
    check_lora(adapter, main_model)
    devices = list(fleet_from_spec("3090,3060-12g").devices)
    # -ngl 4: blocks 1-3 and the output layer offloaded, -ts 1,1 -> blocks 1, 2 on CUDA0, block 3 and
    # the output on CUDA1 (float32 fractions 0, .25 | .5, .75 against the split at .5); block 0 on the CPU
    s = LlamaSettings(n_ctx=4096, n_gpu_layers=4, tensor_split=(1, 1))
    est = estimate_with_companions(main_model, devices, s, Companions(loras=(adapter,)))
    # per block, rank 16 f32: attn_q A 512 x 16 x 4 + B 16 x 512 x 4 = 65_536; ffn_down A 1408 x 16 x 4
    # + B 16 x 512 x 4 = 122_880: 188_416 bytes, each tensor a multiple of 128 (no CUDA padding)
    per_block = 65_536 + 122_880
    assert est.layer_device == (None, 0, 0, 1, 1)
    assert est.devices[0].companion_parts["lora"] == 2 * per_block
    assert est.devices[1].companion_parts["lora"] == per_block
    assert est.host.companion_parts["lora"] == per_block
    # [estimate] the A x cur products of one block: (16 + 16) x 512 tokens x 4 bytes
    assert est.devices[0].companion_parts["lora_compute"] == 32 * 512 * 4


def test_lora_flags(models, lora):
    _, main_model = models["main"]
    half = read_lora(lora["ok"], 0.5)
    p = plan(main_model, fleet_from_spec("3090"), PlanOptions(companions=Companions(loras=(read_lora(lora["ok"]), half))))
    args = p.to_llama_args()
    assert args[-4:] == ["--lora", str(lora["ok"]), "--lora-scaled", f"{lora['ok']}:0.5"]
    assert "LoRA: CUDA0" in p.summary()
    with pytest.raises(UsageError, match="one LoRA adapter"):
        p.to_llama_cpp_python_kwargs()


@pytest.mark.parametrize("case,error,match", [
    ("arch", UsageError, "a LoRA for qwen2, the model is llama"),
    ("shape", UsageError, "has shapes"),
    ("missing", UsageError, "does not exist in the base model"),
    ("not_adapter", ModelReadError, "not a LoRA adapter"),
])
def test_a_lora_for_another_model_is_one_line(models, lora, case, error, match):
    _, main_model = models["main"]
    with pytest.raises(error, match=match) as info:
        check_lora(read_lora(lora[case]), main_model)
    assert "\n" not in str(info.value)


def test_cli_lora_for_another_arch_exits_with_one_line(small, capsys):
    assert main(["plan", str(small["main"]), "--fleet", "3090", "--lora", str(small["lora_qwen"])]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "mismatch" in err[0]
    assert main(["plan", str(small["main"]), "--fleet", "3090", "--lora-scaled", str(small["lora"])]) == 2
    assert "FILE:SCALE" in capsys.readouterr().err
    assert main(["plan", str(small["main"]), "--fleet", "3090", "--lora", str(small["lora"]), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["command"][-2:] == ["--lora", str(small["lora"])] and data["loras"][0]["arch"] == "llama"


def test_check_compares_the_draft_buffers_apart_from_the_model(models):
    # a llama-server log: the main model's buffers, then (after "loading draft model") the draft's;
    # the draft's must not be added to the model's rows
    _, main_model = models["main"]
    p = plan(main_model, fleet_from_spec("3090"), PlanOptions(settings=LlamaSettings(n_ctx=4096), fixed=frozenset({"n_ctx"}),
                                                               companions=_draft(models)))
    dev, host = p.devices[0], p.host

    def mib(n: int) -> str:
        return f"{n / MiB:8.2f}"

    log = "\n".join([
        f"load_tensors: CUDA0 model buffer size = {mib(dev.model_bytes)} MiB",
        f"load_tensors: CPU_Mapped model buffer size = {mib(host.model_bytes)} MiB",
        f"llama_kv_cache: CUDA0 KV buffer size = {mib(dev.context_bytes)} MiB",
        f"sched_reserve: CUDA0 compute buffer size = {mib(dev.compute_bytes)} MiB",
        f"sched_reserve: CUDA_Host compute buffer size = {mib(host.compute_bytes)} MiB",
        "common_speculative_init_result: loading draft model 'draft.gguf'",
        f"load_tensors: CUDA0 model buffer size = {mib(dev.companion_parts['draft_model'])} MiB",
        f"load_tensors: CPU_Mapped model buffer size = {mib(host.companion_parts['draft_model'])} MiB",
        f"llama_kv_cache: CUDA0 KV buffer size = {mib(dev.companion_parts['draft_context'])} MiB",
        f"sched_reserve: CUDA0 compute buffer size = {mib(dev.companion_parts['draft_compute'] + 30 * MiB)} MiB",
    ])
    v = verify(p, log)
    assert v.row("CUDA0", "model").ok and v.row("CUDA0", "compute").ok  # the main rows as before
    assert v.row("CUDA0", "draft_model").ok and v.row("Host", "draft_model").ok and v.row("CUDA0", "draft_context").ok
    assert not v.row("CUDA0", "draft_compute").ok  # 30 MiB off: outside --check's max(15 %, 20 MiB)
    assert not v.ok and any("draft_compute" in line for line in v.table().splitlines())


def test_python_api_plans_a_draft_and_a_lora(small, tmp_path):
    import llamasplit

    draft = write_llama_dense(tmp_path / "draft.gguf", n_layer=1, n_embd=64, n_head=1, n_head_kv=1, n_ff=128,
                              n_vocab=512, vocab="spm")
    p = llamasplit.plan(small["main"], "3090", ctx=2048, draft=draft, ngld=0, lora=small["lora"])
    assert p.draft is not None and p.draft.n_gpu_layers == 0 and [a.path for a in p.loras] == [str(small["lora"])]
    assert p.host.companion_parts["draft_model"] > 0 and "draft_model" not in (p.devices[0].companion_parts or {})
    with pytest.raises(UsageError, match="unknown plan option"):
        llamasplit.plan(small["main"], "3090", draft_model=draft)


def test_launch_argv_carries_the_draft_and_warns_on_a_second_one(models):
    from llamasplit.runner.launch import LaunchOptions, build_argv, conflicting_args

    _, main_model = models["main"]
    p = plan(main_model, fleet_from_spec("3090"), PlanOptions(settings=LlamaSettings(n_ctx=4096), fixed=frozenset({"n_ctx"}),
                                                               companions=_draft(models)))
    opts = LaunchOptions(binary="llama-server", extra_args=("-md", "other.gguf"))
    argv = build_argv(p, opts)
    assert argv[argv.index("-md") + 1] == str(models["draft"][0]) and argv[-2:] == ["-md", "other.gguf"]
    assert any("overrides the plan's -md" in w for w in conflicting_args(p, opts))


def test_an_unknown_draft_cache_type_is_one_line(models):
    _, main_model = models["main"]
    draft_path, draft_model = models["draft"]
    for kind in ("type_k", "type_v"):
        for fa in ("on", "off"):
            comp = Companions(draft=Draft(draft_model, DraftSpec(str(draft_path), **{kind: "foo"})))
            with pytest.raises(UsageError, match="cache type 'foo' is not one llama.cpp accepts"):
                plan(main_model, fleet_from_spec("3090"), PlanOptions(settings=LlamaSettings(flash_attn=fa), companions=comp))


def test_draft_options_of_the_wrong_type_are_one_line(models):
    draft_path, _ = models["draft"]
    for bad in ({"n_max": "5"}, {"n_cpu_moe": 1.5}, {"n_max": True}):
        with pytest.raises(UsageError, match="must be a whole number"):
            DraftSpec(str(draft_path), **bad)


def test_a_quantised_draft_cache_must_divide_the_draft_head(models, tmp_path):
    _, main_model = models["main"]
    # heads of 16 (n_embd 64 / 4): q8_0's blocks of 32 do not divide them (llama_init_from_model refuses)
    path = write_llama_dense(tmp_path / "d16.gguf", n_layer=1, n_embd=64, n_head=4, n_head_kv=2, n_ff=128,
                             vocab="spm", header_only=True)
    comp = Companions(draft=Draft(read_model(path, require_data=False), DraftSpec(str(path), type_k="q8_0")))
    with pytest.raises(UsageError, match="do not divide its head size 16") as info:
        plan(main_model, fleet_from_spec("3090"), PlanOptions(companions=comp))
    assert "-ctkd f16" in info.value.remedy
    # llama.cpp checks unless flash attention is off (-fa auto counts: flash_attn_type != DISABLED)
    off = Companions(draft=Draft(read_model(path, require_data=False), DraftSpec(str(path), type_k="q8_0")))
    assert plan(main_model, fleet_from_spec("3090"), PlanOptions(settings=LlamaSettings(flash_attn="off"),
                                                                 companions=off)).draft.type_k == "q8_0"


def test_draft_n_max_sizes_the_main_context_outputs(models):
    # server_output_limits: n_parallel x (1 + n_max) output rows; the output device's compute buffer
    # holds their logits (n_vocab 32000 x 4 bytes a row), so n_max 64 costs more than the default 3
    _, main_model = models["main"]
    fleet = fleet_from_spec("3090")

    def output_device(n_max: int) -> int:
        p = plan(main_model, fleet, PlanOptions(settings=LlamaSettings(n_ctx=4096), fixed=frozenset({"n_ctx"}),
                                                companions=_draft(models, n_max=n_max)))
        assert p.settings.spec_draft_n_max == n_max
        return p.devices[0].compute_bytes

    assert output_device(64) - output_device(3) >= (4 * 65 - 4 * 4) * 32000 * 4 // 2
    with pytest.raises(UsageError, match="spec-draft-n-max"):
        LlamaSettings(spec_draft_n_max=-1)


def test_otd_moves_a_draft_tensor_and_the_host_maps_the_span(models):
    # -otd ^output\.weight=CPU (anchored: a regex_search of output\.weight also takes attn_output.weight,
    # as llama.cpp's does): the draft's output matrix stays on the host; the file holds token_embd,
    # output_norm, output in that order, so the host's mapped span covers all three (output_norm's
    # 512 bytes too, though that tensor is on CUDA0)
    _, main_model = models["main"]
    devices = list(fleet_from_spec("3090").devices)
    est = estimate_with_companions(main_model, devices, LlamaSettings(n_ctx=4096),
                                   _draft(models, overrides=((r"^output\.weight", "CPU"),)))
    assert est.devices[0].companion_parts["draft_model"] == DRAFT_BLOCK + 512
    assert est.host.companion_parts["draft_model"] == DRAFT_EMBD + DRAFT_OUTPUT_LAYER
    assert DraftSpec("d.gguf", overrides=((r"output\.weight", "CPU"),), cpu_moe=True).to_args()[-3:] == [
        "-otd", r"output\.weight=CPU", "-cmoed"]
