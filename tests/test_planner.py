"""The planner on real model headers and simulated fleets: fit, order, fixed flags, JSON, errors."""

from __future__ import annotations

import json

import pytest

from llamasplit.cli import main
from llamasplit.devices.fleet import fleet_from_spec
from llamasplit.errors import NoFeasiblePlan
from llamasplit.model.profile import read_model
from llamasplit.memory.estimate import estimate, layer_devices
from llamasplit.planner.plan import Plan, PlanOptions, plan
from llamasplit.memory.settings import LlamaSettings

MiB = 1024 * 1024


def _opts(**kw):
    fixed = frozenset(k for k in ("n_ctx", "n_gpu_layers", "tensor_split") if k in kw)
    return PlanOptions(settings=LlamaSettings(**kw), fixed=fixed)


def test_small_model_goes_to_the_fastest_card_only(smollm2_path):
    # 4090 (1008 GB/s) + 4060 Ti (288 GB/s): the model fits on the 4090, so the 4060 Ti is left out
    p = plan(read_model(smollm2_path), fleet_from_spec("4060ti-16,4090"), _opts(n_ctx=8192))
    assert [d.description for d in p.devices] == ["NVIDIA GeForce RTX 4090"]
    assert p.devices[0].layers == tuple(range(31))
    assert p.settings.n_gpu_layers is None and p.settings.tensor_split is None
    assert p.decode_tok_s and p.default_split_decode_tok_s and p.decode_tok_s > p.default_split_decode_tok_s


def test_integer_tensor_split_reproduces_the_planned_counts(gemma3_path):
    # tight budgets force a split: each planned count survives llama.cpp's float32 rule
    model = read_model(gemma3_path)
    fleet = fleet_from_spec("3090,3060-12g")
    options = PlanOptions(settings=LlamaSettings(n_ctx=32768), fixed=frozenset({"n_ctx"}), margin_bytes=0,
                          margin_overrides=(("CUDA0", (24 * 1024 - 512 - 700) * MiB),))
    p = plan(model, fleet, options)
    counts = [len(d.layers) for d in p.devices]
    ngl = p.settings.n_gpu_layers
    assert len(p.devices) == 2 and sum(counts) == (19 if ngl is None else ngl)
    # the fast card is last: it holds the output layer (18) and the last blocks
    assert p.devices[1].description.endswith("3090") and 18 in p.devices[1].layers
    ts = p.settings.tensor_split
    assert ts == tuple(float(c) for c in counts)
    got = layer_devices(18, 2, ngl, ts)
    assert [got.count(0), got.count(1)] == counts
    for d in p.devices:
        assert d.total_bytes <= d.budget_bytes


def test_fixed_flags_are_estimated_not_searched(smollm2_path):
    model = read_model(smollm2_path)
    fleet = fleet_from_spec("2x3090")
    p = plan(model, fleet, _opts(n_ctx=4096, n_gpu_layers=99, tensor_split=(1.0, 2.0)))
    est = estimate(model, fleet.devices, LlamaSettings(n_ctx=4096, n_gpu_layers=99, tensor_split=(1.0, 2.0)))
    assert [d.model_bytes for d in p.devices] == [d.model_bytes for d in est.devices]
    assert p.settings.tensor_split == (1.0, 2.0)
    assert "-ts" in p.to_llama_args() and "1,2" in p.to_llama_args()


def test_no_feasible_plan_names_the_shortfall(gemma3_path):
    model = read_model(gemma3_path)
    fleet = fleet_from_spec("3060-12g,ram=1GiB")
    options = PlanOptions(settings=LlamaSettings(n_ctx=32768), fixed=frozenset({"n_ctx"}),
                          margin_bytes=12 * 1024 * MiB)
    with pytest.raises(NoFeasiblePlan) as info:
        plan(model, fleet, options)
    assert info.value.shortfall_bytes and info.value.suggestions
    assert "\n" not in str(info.value)


def test_plan_json_round_trips_and_carries_llama_names(smollm2_path, capsys):
    rc = main(["plan", str(smollm2_path), "--fleet", "3090,3060-12g", "--ctx", "4096", "--json"])
    out = capsys.readouterr().out
    assert rc == 0
    data = json.loads(out)
    assert data["schema"] == "llamasplit.plan/1"
    assert data["devices"][0]["name"] == "CUDA0"
    for key in ("model_bytes", "context_bytes", "compute_bytes"):
        assert isinstance(data["devices"][0][key], int)
    assert data["argv"][:2] == ["-ngl", "all"]
    assert Plan.from_json(out).to_dict() == data


def test_plan_without_gpus_is_one_line_and_non_zero(smollm2_path, capsys, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    rc = main(["plan", str(smollm2_path), "--inventory", "/nonexistent/inventory.json"])
    err = capsys.readouterr().err
    assert rc != 0 and err.count("\n") == 1 and "inventory" in err


def test_moe_that_does_not_fit_sends_routed_experts_to_cpu_not_whole_layers():
    from llamasplit.model.shapes import moe_profile

    model = moe_profile(n_layer=16, n_dense=1, n_embd=2048, n_head=16, n_expert=256, n_expert_used=8,
                        n_ff=8192, n_ff_exp=2048, n_vocab=32000, q_lora_rank=512, kv_lora_rank=256)
    fleet = fleet_from_spec("2x3060-12g,ram=256GiB")
    experts = sum(t.n_bytes for t in model.tensors if t.role.value == "experts")
    assert experts > 2 * 12 * 1024 * MiB  # the routed experts alone outgrow both cards
    p = plan(model, fleet, _opts(n_ctx=8192))
    assert p.settings.n_gpu_layers is None  # every layer's attention stays on a GPU
    k = p.settings.n_cpu_moe
    assert 0 < k < 16 and "--n-cpu-moe" in p.to_llama_args()
    # the smallest k that fits: one layer fewer overflows a card with the same split
    est = estimate(model, [d for d in _plan_devices(p, fleet)], p.settings.replace(n_cpu_moe=k - 1))
    assert any(e.total_bytes > d.budget_bytes for e, d in zip(est.devices, p.devices))
    # whole-layer offload of the same model decodes slower than the expert split
    layered = plan(model, fleet, PlanOptions(settings=LlamaSettings(n_ctx=8192), fixed=frozenset({"n_ctx", "overrides"})))
    assert layered.settings.n_gpu_layers is not None and p.decode_tok_s > layered.decode_tok_s


def _plan_devices(p, fleet):
    by_id = {d.id: d for d in fleet.devices}
    return [by_id[d.device_id] for d in p.devices]


def test_plan_env_pins_the_chosen_cards_in_plan_order(smollm2_path):
    # 3060 is PCI index 0, 4090 index 1: the plan uses only the 4090, so CUDA0 must be it
    p = plan(read_model(smollm2_path), fleet_from_spec("3060-12g,4090"), _opts(n_ctx=8192))
    assert p.cuda_env() == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "1"}
    assert [d.name for d in p.devices] == ["CUDA0"]


def test_alternatives_each_fit_and_say_what_they_cost():
    from llamasplit.model.shapes import dense_profile
    from llamasplit.planner.plan import alternatives

    model = dense_profile()  # 70B-shaped, ~40 GiB of weights
    fleet = fleet_from_spec("3090,3060-12g,ram=16GiB")
    options = _opts(n_ctx=16384)
    with pytest.raises(NoFeasiblePlan) as info:
        plan(model, fleet, options)
    short = {k: v for k, v in info.value.shortfall_bytes.items() if v}
    assert list(short) == ["Host"]  # the cards are full to their budgets; the RAM is what is missing
    alts = alternatives(model, fleet, options)
    whats = [a.what.split(" ")[0] for a in alts]
    assert whats[0] == "q8_0" and "context" in whats and any(w.startswith("Q3_K_M") for w in whats)
    for alt in alts:
        for d in alt.plan.devices:
            assert d.total_bytes <= d.budget_bytes
        assert alt.plan.host.total_bytes <= fleet.host.ram_available_bytes
    q3 = next(a for a in alts if a.what.startswith("Q3_K_M"))
    assert q3.plan.model_path.endswith(".Q3_K_M.gguf") and "-m" in q3.line()


def test_requantized_profile_matches_the_recipe_totals(smollm2_path):
    m = read_model(smollm2_path)
    # SmolLM2 at Q3_K_M: 91,724,544 bytes, as llama-quantize writes it (tests/test_quant.py checks the file)
    r = m.requantized("Q3_K_M")
    assert r.tensor_bytes == 91724544 and r.quantized_from == "Q4_1" and r.file_type_name == "Q3_K_M"


def test_split_modes_on_the_command_line(smollm2_path, capsys):
    m = str(smollm2_path)
    assert main(["plan", m, "--fleet", "2xh100-sxm", "-sm", "row"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "SYCL" in err
    assert main(["plan", m, "--fleet", "2xh100-sxm", "-sm", "none", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert len(data["devices"]) == 1 and data["argv"][data["argv"].index("-sm") + 1] == "none"
    assert main(["plan", m, "--fleet", "2xh100-sxm", "-sm", "auto"]) == 0
    out = capsys.readouterr().out
    assert "tensor" in out and "layer" in out and out.strip().splitlines()[-1].startswith("use ")


def test_unknown_option_is_one_line_exit_2(smollm2_path, capsys):
    assert main(["plan", str(smollm2_path), "--bogus"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--bogus" in err


def test_run_with_a_saved_plan_names_exactly_the_plan_options_it_ignores(smollm2_path, tmp_path, capsys):
    assert main(["plan", str(smollm2_path), "--fleet", "3090", "--json"]) == 0
    saved = tmp_path / "plan.json"
    saved.write_text(capsys.readouterr().out)
    assert main(["run", "--plan", str(saved), "--ctx", "100", "-ctk", "q8_0", "--dry-run"]) == 0
    err = capsys.readouterr().err
    assert "ignoring the plan options ctk, ctx\n" in err
    assert main(["run", "--plan", str(saved), "--dry-run"]) == 0
    assert "ignoring" not in capsys.readouterr().err
