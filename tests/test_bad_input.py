"""Bad input ends in one of our errors with one clean line: damaged or hostile GGUF headers (each a
mutation of a real fixture or of a small synthetic header), hostile strings, bad option values."""

from __future__ import annotations

import math
import struct

import pytest

import fuzzgguf as F
from llamasplit.devices.fleet import fleet_from_spec
from llamasplit.errors import LlamasplitError, ModelReadError
from llamasplit.model.profile import read_model
from llamasplit.planner.plan import PlanOptions, plan
from llamasplit.untrusted import printable

FLEET = "3090,3060-12g"


def _write(h: F.Header, tmp_path, name: str = "m.gguf"):
    path = tmp_path / name
    path.write_bytes(h.to_bytes())
    return path


def _set(h: F.Header, key: str, vtype: int, payload: bytes) -> F.Header:
    h = h.copy()
    h.kvs = [kv for kv in h.kvs if kv[0] != key.encode()] + [(key.encode(), vtype, payload)]
    return h


def _drop(h: F.Header, key: str) -> F.Header:
    h = h.copy()
    h.kvs = [kv for kv in h.kvs if kv[0] != key.encode()]
    return h


def _read_error(path) -> str:
    with pytest.raises(ModelReadError) as info:
        read_model(path, require_data=False)
    line = info.value.one_line()
    assert "\n" not in line and "\x1b" not in line
    return line


@pytest.fixture(scope="module")
def smollm2_header(smollm2_path):
    return F.header_of_file(smollm2_path)


# -- per-layer values: the fuzzer's crashes in the per-layer conversion (int() of NaN, inf, "abc") --

@pytest.mark.parametrize("key", ["llama.attention.head_count", "llama.attention.head_count_kv", "llama.feed_forward_length"])
@pytest.mark.parametrize("vtype, payload, shown", [
    (F.FLOAT32, F.enc_scalar(F.FLOAT32, math.nan), "nan"),
    (F.FLOAT64, F.enc_scalar(F.FLOAT64, math.inf), "inf"),
    (F.STRING, F.enc_string("abc"), "abc"),
    (F.ARRAY, F.enc_array(F.FLOAT32, [math.nan] * 30), "nan"),
    (F.ARRAY, F.enc_array(F.INT32, [9] * 29 + [-3]), "-3"),  # a negative count: negative memory before
    (F.INT32, F.enc_scalar(F.INT32, -7), "-7"),
])
def test_per_layer_values_must_be_counts(smollm2_header, tmp_path, key, vtype, payload, shown):
    line = _read_error(_write(_set(smollm2_header, key, vtype, payload), tmp_path))
    assert key in line and shown in line and "not a count" in line


def test_per_layer_array_of_the_wrong_length(smollm2_header, tmp_path):
    h = _set(smollm2_header, "llama.attention.head_count_kv", F.ARRAY, F.enc_array(F.INT32, [3] * 29))
    assert "has 29 entries for 30 layers" in _read_error(_write(h, tmp_path))


def test_a_valid_per_layer_array_still_reads(smollm2_header, tmp_path):
    h = _set(smollm2_header, "llama.attention.head_count_kv", F.ARRAY, F.enc_array(F.INT32, [3] * 30))
    assert read_model(_write(h, tmp_path), require_data=False).hparams.n_head_kv == (3,) * 30


# -- structure llama.cpp refuses ----------------------------------------------------------------------

def test_tensor_of_a_block_past_block_count(smollm2_header, tmp_path):
    # SmolLM2 has 30 blocks (0..29); blk.30 is never created by llama.cpp, which then refuses the file
    h = smollm2_header.copy()
    name, dims, t, off = h.tensors[-1]
    h.tensors[-1] = (b"blk.30.ffn_up.weight", dims, t, off)
    line = _read_error(_write(h, tmp_path))
    assert "blk.30.ffn_up.weight belongs to block 30 but llama.block_count is 30" in line


def test_duplicate_metadata_key(smollm2_header, tmp_path):
    # ggml/src/gguf.cpp gguf_init_from_file_impl: "duplicate key '%s' for KV pair %d"
    h = smollm2_header.copy()
    h.kvs.append(F.int_entry("llama.block_count", 30))
    assert "metadata key 'llama.block_count' appears twice" in _read_error(_write(h, tmp_path))


def test_empty_metadata_key(smollm2_header, tmp_path):
    h = smollm2_header.copy()
    h.kvs.append((b"", F.UINT32, F.enc_scalar(F.UINT32, 1)))
    assert "a metadata key is empty" in _read_error(_write(h, tmp_path))


def test_tensor_with_more_elements_than_int64(smollm2_header, tmp_path):
    h = smollm2_header.copy()
    name, dims, t, off = h.tensors[0]
    h.tensors[0] = (name, (2**40, 2**40), 0, off)  # F32, 2^80 elements
    assert "more than int64 can count" in _read_error(_write(h, tmp_path))


@pytest.mark.parametrize("n_layer", [0, 513, 100_000])
def test_block_count_outside_what_llama_cpp_loads(smollm2_header, tmp_path, n_layer):
    h = _set(smollm2_header, "llama.block_count", F.UINT32, F.enc_scalar(F.UINT32, n_layer))
    line = _read_error(_write(h, tmp_path))  # 100000 was read, then planned for minutes
    assert f"llama.block_count is {n_layer}; llama.cpp loads 1 to 512 blocks" in line


def test_block_count_512_is_read_and_planned(tmp_path):
    # the largest llama.cpp accepts: a header-only 512-block model plans in bounded time
    path = _write(F.synthetic("llama", n_layer=512), tmp_path)
    model = read_model(path, require_data=False)
    assert model.hparams.n_layer == 512 and len(model.tensors) == 3 + 512 * 9
    assert plan(model, fleet_from_spec(FLEET), PlanOptions()).n_ctx == 4096


def test_table_of_70000_tensors_is_refused_before_it_is_read(smollm2_header, tmp_path):
    h = smollm2_header.copy()
    proto = h.tensors[0]
    h.tensors += [(b"extra.%d.weight" % i, proto[1], proto[2], proto[3]) for i in range(70_000)]
    line = _read_error(_write(h, tmp_path))  # refused from the count, before any entry is read
    assert "tensor count 70272 is more than any llama.cpp model has (at most 65536)" in line


def test_moe_without_expert_used_count(tmp_path):
    h = _drop(F.synthetic("qwen3moe", n_expert=4, n_expert_used=2), "qwen3moe.expert_used_count")
    assert "qwen3moe.expert_count is 4 but qwen3moe.expert_used_count is missing or 0" in _read_error(_write(h, tmp_path))


@pytest.mark.parametrize("key, value, words", [
    ("qwen3moe.expert_used_count", 5, "expert_used_count is 5 but qwen3moe.expert_count is 4"),
    ("qwen3moe.expert_count", 2000, "expert_count is 2000; llama.cpp allows at most 1024"),
    ("qwen3moe.expert_group_count", 3, "expert_group_count 3 (with 0 used) does not divide the 4 experts"),
    ("qwen3moe.nextn_predict_layers", 5, "nextn_predict_layers is 5, more than the 4 blocks"),
])
def test_expert_counts_llama_cpp_asserts_on(tmp_path, key, value, words):
    h = _set(F.synthetic("qwen3moe", n_expert=4, n_expert_used=2), key, F.UINT32, F.enc_scalar(F.UINT32, value))
    assert words in _read_error(_write(h, tmp_path))


@pytest.mark.parametrize("stem", ["ffn_up_exps", "ffn_gate_inp", "ffn_down_exps"])
def test_moe_missing_one_expert_tensor_still_plans(tmp_path, stem):
    # was: AttributeError in the compute-graph replay; such a layer is now sized by the heuristic
    h = F.synthetic("qwen3moe", n_expert=4, n_expert_used=2)
    h.tensors = [t for t in h.tensors if t[0] != f"blk.1.{stem}.weight".encode()]
    result = plan(read_model(_write(h, tmp_path), require_data=False), fleet_from_spec(FLEET), PlanOptions())
    assert all(d.compute_bytes >= 0 and d.total_bytes > 0 for d in result.devices)


# -- hostile strings ----------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", ["llama\x1b[2J", "\x1b]0;pwned\x07", "llama\r", "lla\u202ema", "Llama", ""])
def test_architecture_that_is_not_a_llama_cpp_name(smollm2_header, tmp_path, arch):
    h = _set(smollm2_header, "general.architecture", F.STRING, F.enc_string(arch))
    line = _read_error(_write(h, tmp_path))
    assert "general.architecture" in line
    assert not any(c in line for c in "\x1b\x07\r\u202e")


def test_model_name_with_escapes_is_cleaned_in_the_plan_table(smollm2_header, tmp_path):
    h = _set(smollm2_header, "general.name", F.STRING, F.enc_string("evil\x1b[2J\u202ename\r"))
    model = read_model(_write(h, tmp_path), require_data=False)
    assert model.name == "evil?[2J?name?"
    text = plan(model, fleet_from_spec(FLEET), PlanOptions()).summary()
    assert "evil?[2J?name?" in text and "\x1b" not in text


def test_every_error_message_is_printable_and_bounded():
    err = LlamasplitError("tensor 'a\x1b[31m" + "x" * 10_000 + "'", remedy="do\x07 this")
    line = err.one_line()
    assert "\x1b" not in line and "\x07" not in line and len(line) < 4100
    assert line.startswith("tensor 'a?[31mxxx") and line.endswith("; do? this")


def test_printable_keeps_ordinary_text():
    assert printable("Gemma 3 270m — café, 東京") == "Gemma 3 270m — café, 東京"
    assert printable(struct.pack("<I", 7)) == "b'\\x07\\x00\\x00\\x00'"


def test_negative_vocab_size(smollm2_header, tmp_path):
    # was: an output buffer of -32 bytes in the plan
    h = _set(smollm2_header, "llama.vocab_size", F.INT32, F.enc_scalar(F.INT32, -2))
    assert "metadata key llama.vocab_size = -2 is out of range" in _read_error(_write(h, tmp_path))


# -- option values: one line naming the option, exit 2 ------------------------------------------------

def _cli(capsys, *args: str) -> tuple[int, str, str]:
    from llamasplit.cli import main

    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("args, line", [
    (["-ts", "a,b"], "--tensor-split 'a,b': 'a' is not a number; give one proportion per device, e.g. -ts 3,1"),
    (["-ts", "nan,1"], "--tensor-split 'nan,1': 'nan' is not a finite, non-negative proportion"),
    (["-ts", "inf,1"], "--tensor-split 'inf,1': 'inf' is not a finite, non-negative proportion"),
    (["-ts", "-1,2"], "--tensor-split '-1,2': '-1' is not a finite, non-negative proportion"),
    (["-ngl", "abc"], "--n-gpu-layers 'abc' is not a number of layers; give a number from 0, or all"),
    (["-ngl", "-7"], "--n-gpu-layers -7 is negative; give a number of layers from 0, or all"),
    (["-c", "-5"], "--ctx -5 is negative; give a context length in tokens (0: the model's training context)"),
    (["-np", "-3"], "--parallel -3 is negative"),
    (["-ncmoe", "-3"], "--n-cpu-moe -3 is negative"),
])
def test_bad_option_values_are_one_line(smollm2_path, capsys, args, line):
    rc, out, err = _cli(capsys, "plan", str(smollm2_path), "--fleet", FLEET, *args)
    assert rc == 2 and out == ""
    assert err.splitlines() == [f"llamasplit: error: {line}"] or err.startswith(f"llamasplit: error: {line}")
    assert len(err.splitlines()) == 1


def test_api_takes_the_same_checks(smollm2_path):
    import llamasplit
    from llamasplit.errors import UsageError

    for kw in ({"ts": "a,b"}, {"ts": [float("nan"), 1.0]}, {"ngl": "abc"}, {"ngl": -7}, {"ctx": -5}):
        with pytest.raises(UsageError):
            llamasplit.plan(smollm2_path, FLEET, **kw)
    assert llamasplit.plan(smollm2_path, FLEET, ts="1/3", ngl="all").settings.tensor_split == (1.0, 3.0)


def test_fleet_count_is_checked_before_the_list_is_built():
    from llamasplit.errors import UsageError

    with pytest.raises(UsageError, match="has more than 64 GPUs"):
        fleet_from_spec("300000000x3090")  # was 14.6 s and 2.4 GB: the list was built first
    with pytest.raises(UsageError, match="has more than 64 GPUs"):
        fleet_from_spec("60x3090,5x3090")
    assert len(fleet_from_spec("64x3090").devices) == 64


def test_context_beyond_training_is_noted_and_alternatives_stay_within_it(smollm2_path, capsys):
    # SmolLM2 was trained on 8192 tokens
    rc, out, err = _cli(capsys, "plan", str(smollm2_path), "--fleet", FLEET, "-c", "20000")
    assert rc == 0
    assert "note: context 20000 is longer than the 8192 tokens the model was trained on" in out
    rc, out, err = _cli(capsys, "plan", str(smollm2_path), "--fleet", "3060-12g", "-c", "99999999")
    assert rc == 1
    contexts = [int(c) for c in __import__("re").findall(r"instead, context (\d+)", out)]
    assert contexts == [8192]  # was 3125248: more than the model was trained for


def _inventory(tmp_path, change) -> str:
    import json

    from llamasplit.devices.inventory import save_inventory

    path = save_inventory(fleet_from_spec("3090,3060-12g"), tmp_path / "inv.json")
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))  # json writes NaN as NaN, as a hand-edited file may hold it
    return str(path)


@pytest.mark.parametrize("change, words", [
    (lambda d: d["devices"][0].update(bandwidth_gb_s=float("nan")), "devices[0].bandwidth_gb_s holds the number nan"),
    (lambda d: d["devices"][1].update(bandwidth_gb_s=float("inf")), "devices[1].bandwidth_gb_s holds the number inf"),
    (lambda d: d["devices"][0].update(free_bytes=d["devices"][0]["total_bytes"] + 1), "devices[0] has free_bytes"),
    (lambda d: d["devices"][0].update(bandwidth_gb_s=-5.0), "devices[0].bandwidth_gb_s is negative"),
])
def test_inventory_numbers_must_make_sense(smollm2_path, tmp_path, capsys, change, words):
    rc, out, err = _cli(capsys, "plan", str(smollm2_path), "--inventory", _inventory(tmp_path, change))
    assert rc == 1 and "nan tok/s" not in out
    assert err.startswith("llamasplit: error: inventory ") and words in err and len(err.splitlines()) == 1


def test_inventory_device_description_is_cleaned(smollm2_path, tmp_path, capsys):
    def evil(d):
        d["devices"][0]["description"] = "RTX\x1b[2J\x1b]0;owned\x07 3090\u202e"
        d["notes"] = ["\x1b[31mred"]

    rc, out, err = _cli(capsys, "plan", str(smollm2_path), "--inventory", _inventory(tmp_path, evil))
    assert rc == 0
    assert "\x1b" not in out + err and "\x07" not in out + err and "\u202e" not in out + err


# -- RPC host names: resolved by us, no network needed for these two ---------------------------------

@pytest.mark.parametrize("endpoint, why", [
    ("a..b:50052", "not a valid host name"),  # an empty label: refused before any lookup
    ("-bad-:50052", "Name or service not known"),  # glibc refuses it without asking a name server
])
def test_rpc_host_that_does_not_resolve(smollm2_path, capsys, endpoint, why):
    rc, out, err = _cli(capsys, "plan", str(smollm2_path), f"--rpc={endpoint}")
    assert rc == 1
    host = endpoint.rpartition(":")[0]
    assert err == (f"llamasplit: error: RPC worker {endpoint}: cannot resolve the host name {host!r} ({why}); "
                   "check the name, or give the worker's IP address\n")


# -- the CLI itself ------------------------------------------------------------------------------------

def test_no_arguments_shows_the_help_and_no_empty_error(capsys):
    rc, out, err = _cli(capsys)
    assert rc == 0
    assert "Usage: llamasplit" in out + err and "llamasplit: error" not in out + err


@pytest.mark.parametrize("command", [[], ["plan"], ["run"], ["worker"]])
def test_help_shows_no_bool_metavar(capsys, command):
    rc, out, err = _cli(capsys, *command, "--help")
    assert rc == 0 and "--help" in out
    assert "<bool>" not in out


# -- run MODEL -- --port P: llama-server serves on P, so that is where we wait ---------------------------

def test_extra_port_and_host_are_taken_over(smollm2_path, capsys):
    rc, out, err = _cli(capsys, "run", str(smollm2_path), "--fleet", FLEET, "--dry-run", "--", "--port", "9123",
                        "--host", "127.0.0.2", "-t", "2")
    assert rc == 0
    argv = out.split()
    assert argv.count("--port") == 1 and argv[argv.index("--port") + 1] == "9123"
    assert argv.count("--host") == 1 and argv[argv.index("--host") + 1] == "127.0.0.2"
    assert argv[-2:] == ["-t", "2"] and "--port" not in err


@pytest.mark.parametrize("args, line", [
    (["--port", "8081", "--", "--port", "9123"], "--port 8081 and -- --port 9123 disagree; give the port once"),
    (["--", "--port", "http"], "--port 'http' after -- is not a port number; give a port from 1 to 65535"),
    (["--", "--port", "70000"], "--port '70000' after -- is not a port number"),
    (["--", "--port"], "--port after -- has no value; give llamasplit --port VALUE instead"),
])
def test_extra_port_problems_are_one_line(smollm2_path, capsys, args, line):
    rc, out, err = _cli(capsys, "run", str(smollm2_path), "--fleet", FLEET, "--dry-run", *args)
    assert rc == 2 and err.startswith(f"llamasplit: error: {line}")


def test_take_address_is_pure_and_keeps_the_other_extras():
    from llamasplit.runner.launch import LaunchOptions, take_address

    base = LaunchOptions(port=8080, extra_args=("-t", "4", "--port", "9000", "--api-key", "k"))
    got = take_address(base, host_given=False, port_given=False)
    assert (got.host, got.port, got.extra_args) == ("127.0.0.1", 9000, ("-t", "4", "--api-key", "k"))
    assert take_address(LaunchOptions(port=9000, extra_args=("--port", "9000")), host_given=False, port_given=True).port == 9000


def test_plan_file_strings_are_cleaned_and_a_non_object_is_one_line(smollm2_path, tmp_path, capsys):
    import json

    rc, out, _ = _cli(capsys, "plan", str(smollm2_path), "--fleet", FLEET, "--json")
    doc = json.loads(out)
    doc["model"]["name"] = "evil\x1b[2J"
    doc["devices"][0]["description"] = "x\x1b]0;t\x07"
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(doc))
    rc, out, err = _cli(capsys, "run", "--plan", str(path), "--dry-run")
    assert rc == 0 and "evil?[2J (llama)" in err
    assert "\x1b" not in out + err and "\x07" not in out + err
    path.write_text("[]")
    rc, out, err = _cli(capsys, "run", "--plan", str(path), "--dry-run")
    assert rc == 2 and err.startswith(f"llamasplit: error: the plan {path} is not a JSON object")


def test_device_descriptions_from_llama_cpp_are_cleaned():
    from llamasplit.devices.listdevices import parse_list_devices

    text = "Available devices:\n  CUDA0: NVIDIA\x1b[2J RTX\u202e 3090 (24135 MiB, 23800 MiB free)\n"
    (dev,) = parse_list_devices(text)
    assert dev.description == "NVIDIA[2J RTX? 3090"


@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_non_finite_float_in_a_key_the_replay_reads(tmp_path, value):
    # benchmarks/fuzz.py case 44693 of 100000 (seed 1): int(inf) in the compute-graph replay
    h = _set(F.synthetic("qwen3moe", n_expert=4, n_expert_used=2), "qwen3moe.expert_gating_func",
             F.FLOAT32, F.enc_scalar(F.FLOAT32, value))
    result = plan(read_model(_write(h, tmp_path), require_data=False), fleet_from_spec(FLEET), PlanOptions())
    assert all(d.compute_bytes > 0 for d in result.devices)
