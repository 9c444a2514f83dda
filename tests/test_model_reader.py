"""The GGUF header reader and ModelProfile: real fixtures, synthetic shapes, and hostile input."""

from __future__ import annotations

import struct
import tracemalloc

import gguf
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from llamasplit.errors import ModelReadError
from llamasplit.model.gguf_reader import read_header
from llamasplit.model.profile import Block, Role, read_model
from llamasplit.memory.kv import kv_bytes_per_token
from synth import write_model


def test_smollm2_profile_matches_gguf_reader(smollm2_path):
    m = read_model(smollm2_path)
    ref = gguf.GGUFReader(str(smollm2_path))
    assert m.arch == "llama"
    assert len(m.tensors) == len(ref.tensors) == 272
    assert m.tensor_bytes == sum(int(t.n_bytes) for t in ref.tensors)
    for ours, theirs in zip(m.tensors, ref.tensors):
        assert ours.name == theirs.name
        assert ours.n_bytes == int(theirs.n_bytes)
        assert ours.shape == tuple(int(x) for x in theirs.shape)
        assert ours.offset == int(theirs.data_offset)  # GGUFReader reports absolute offsets too
    hp = m.hparams
    assert (hp.n_layer, hp.n_embd, hp.n_vocab, hp.n_head[0], hp.n_head_kv[0]) == (30, 576, 49152, 9, 3)
    assert m.tied_embeddings and not any(hp.is_swa)
    # K and V rows: 64 * 3 = 192 f16 values = 384 bytes each, 30 layers: 30 * 768 = 23040 bytes/token
    assert kv_bytes_per_token(hp) == 23040


def test_gemma3_profile_has_sliding_window_pattern(gemma3_path):
    m = read_model(gemma3_path)
    hp = m.hparams
    assert (m.arch, hp.n_layer, hp.n_swa, hp.n_vocab) == ("gemma3", 18, 512, 262144)
    # gemma3: pattern 6, every 6th layer (5, 11, 17) is full attention
    assert [il for il, swa in enumerate(hp.is_swa) if not swa] == [5, 11, 17]
    assert m.tensor("token_embd.weight").block is Block.INPUT
    assert m.tensor("blk.3.ffn_down.weight").role is Role.FFN_DOWN


def test_moe_and_tied_synthetic(tmp_path):
    path = write_model(tmp_path / "moe.gguf", arch="qwen3moe", n_expert=8, n_expert_used=2, tied=True)
    m = read_model(path)
    assert (m.hparams.n_expert, m.hparams.n_expert_used) == (8, 2)
    exps = [t for t in m.tensors if t.role is Role.EXPERTS]
    assert len(exps) == 6 and all(t.block is Block.LAYER for t in exps)
    # ffn_gate_exps: 8 experts x 128 x 64 f32 = 262144 bytes
    assert m.tensor("blk.0.ffn_gate_exps.weight").n_bytes == 8 * 128 * 64 * 4
    assert m.tied_embeddings


def test_mla_keys_make_k_only_cache(tmp_path):
    kv = {
        "{arch}.attention.kv_lora_rank": 32,
        "{arch}.attention.key_length": 48,
        "{arch}.attention.value_length": 32,
        "{arch}.attention.key_length_mla": 24,
        "{arch}.attention.value_length_mla": 16,
    }
    path = write_model(tmp_path / "mla.gguf", arch="deepseek2", n_head_kv=1, extra_kv=kv)
    hp = read_model(path).hparams
    assert hp.is_mla and hp.kv_lora_rank == 32
    # K only: 48 f16 values = 96 bytes per layer per token, 2 layers
    assert kv_bytes_per_token(hp) == 2 * 96


def test_split_model_sums_all_shards(tmp_path):
    a = write_model(tmp_path / "m-00001-of-00002.gguf", split=(0, 2, 4), tensors=[("token_embd.weight", (256, 64)), ("output_norm.weight", (64,))])
    write_model(tmp_path / "m-00002-of-00002.gguf", split=(1, 2, 4), tensors=[("blk.0.attn_norm.weight", (64,)), ("blk.1.attn_norm.weight", (64,))])
    m = read_model(a)
    assert len(m.files) == 2 and len(m.tensors) == 4
    assert m.tensor_bytes == 256 * 64 * 4 + 3 * 64 * 4


def test_missing_shard_is_one_clear_error(tmp_path):
    a = write_model(tmp_path / "m-00001-of-00002.gguf", split=(0, 2, 4), tensors=[("token_embd.weight", (256, 64))])
    with pytest.raises(ModelReadError, match="m-00002-of-00002.gguf: no such file"):
        read_model(a)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda b: b"GGML" + b[4:], "not a GGUF file"),
        (lambda b: b[:4] + struct.pack("<I", 1) + b[8:], "version 1"),
        (lambda b: b[:8] + struct.pack("<Q", 1 << 60) + b[16:], "tensor count"),
        (lambda b: b[:16] + struct.pack("<Q", 1 << 60) + b[24:], "metadata count"),
        (lambda b: b[:200], "offset"),
    ],
)
def test_corrupt_headers_fail_with_one_line(tmp_path, smollm2_path, mutate, message):
    head = smollm2_path.read_bytes()[: 2 * 1024 * 1024]
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(mutate(head))
    with pytest.raises(ModelReadError, match=message) as info:
        read_model(bad)
    assert "\n" not in str(info.value) and str(bad) in str(info.value)


def test_tensor_data_past_end_of_file_is_reported(tmp_path, smollm2_path):
    bad = tmp_path / "truncated.gguf"
    bad.write_bytes(smollm2_path.read_bytes()[: 4 * 1024 * 1024])
    with pytest.raises(ModelReadError, match="past the end of the file"):
        read_model(bad)
    # header-only reading (huge-model headers) accepts it
    assert len(read_header(bad, require_data=False).tensors) == 272


def test_huge_string_array_claim_is_refused_without_allocating(tmp_path):
    # a header whose one key claims 2^60 strings
    body = struct.pack("<4sIQQ", b"GGUF", 3, 0, 1)
    key = b"tokenizer.ggml.tokens"
    body += struct.pack("<Q", len(key)) + key + struct.pack("<IIQ", 9, 8, 1 << 60) + b"\0" * 64
    bad = tmp_path / "huge.gguf"
    bad.write_bytes(body)
    tracemalloc.start()
    with pytest.raises(ModelReadError, match="more than the file holds"):
        read_header(bad)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 1024 * 1024


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_real_header_never_crashes(tmp_path_factory, smollm2_path, data):
    """Any byte mutation of a real header gives a profile or one ModelReadError, bounded in memory."""
    head = bytearray(_HEAD_CACHE.setdefault("h", smollm2_path.read_bytes()[:1_800_000]))
    for _ in range(data.draw(st.integers(1, 8))):
        pos = data.draw(st.integers(0, 4096))
        head[pos] = data.draw(st.integers(0, 255))
    path = tmp_path_factory.mktemp("fuzz") / "m.gguf"
    path.write_bytes(bytes(head))
    tracemalloc.start()
    try:
        read_header(path, require_data=False)
    except ModelReadError as err:
        assert "\n" not in str(err)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024


_HEAD_CACHE: dict[str, bytes] = {}
