"""``llamasplit inspect MODEL``: what the header says, and what the model would weigh at other quantizations."""

from __future__ import annotations

import json
from typing import Any

import typer

from llamasplit.cli import options as O
from llamasplit.cli.app import app
from llamasplit.cli.modelarg import read_cli_model
from llamasplit.model.remote import is_url
from llamasplit.model import profile_cache
from llamasplit.model.profile import ModelProfile
from llamasplit.memory.kv import kv_bytes_per_token
from llamasplit.units import format_size

WHAT_IF_TYPES = ("F16", "Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q4_0", "Q3_K_M", "IQ4_XS", "Q2_K")


def what_if(model: ModelProfile) -> list[dict[str, Any]]:
    """Sizes of the same model at other quantizations, by llama.cpp's own recipe."""
    try:
        from llamasplit.model.quant import requantized_bytes
    except ImportError:  # pragma: no cover - the recipe module ships with the package
        return []
    raw = [_raw(t) for t in model.tensors]
    out = []
    for ftype in WHAT_IF_TYPES:
        n_bytes = requantized_bytes(model.arch, model.metadata, raw, ftype)
        out.append({"type": ftype, "tensor_bytes": n_bytes})
    return out


def _raw(t):
    from llamasplit.model.gguf_reader import RawTensor

    return RawTensor(t.name, t.ggml_type, t.shape, t.n_bytes, t.offset)


def inspect_dict(model: ModelProfile) -> dict[str, Any]:
    hp = model.hparams
    return {
        "path": model.path,
        "name": model.name,
        "arch": model.arch,
        "file_type": model.file_type_name,
        "file_bytes": model.file_bytes,
        "files": list(model.files),
        "n_layer": hp.n_layer,
        "n_tensors": len(model.tensors),
        "tensor_bytes": model.tensor_bytes,
        "n_embd": hp.n_embd,
        "n_vocab": hp.n_vocab,
        "n_ctx_train": hp.n_ctx_train,
        "n_head": max(hp.n_head) if hp.n_head else 0,
        "n_head_kv": max(hp.n_head_kv) if hp.n_head_kv else 0,
        "expert_count": hp.n_expert,
        "expert_used_count": hp.n_expert_used,
        "sliding_window": hp.n_swa or None,
        "swa_layers": sum(hp.is_swa),
        "mla": hp.is_mla,
        "recurrent_layers": sum(hp.is_recurrent),
        "tied_embeddings": model.tied_embeddings,
        "kv_bytes_per_token": {
            "f16": kv_bytes_per_token(hp, "f16", "f16"),
            "q8_0": kv_bytes_per_token(hp, "q8_0", "q8_0"),
        },
        "kv_bytes_per_token_full_attention": {
            "f16": kv_bytes_per_token(hp, "f16", "f16", swa=False),
            "q8_0": kv_bytes_per_token(hp, "q8_0", "q8_0", swa=False),
        },
        "what_if": what_if(model),
    }


@app.command()
def inspect(
    model: str = typer.Argument(None, help="A .gguf file (any shard of a split model), or an http(s):// URL of one."),
    hf: O.Hf = None,
    hf_file: O.HfFile = None,
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """Read a model's GGUF header (never the weights) and show what memory depends on."""
    if hf or hf_file or (model and is_url(model)):  # remote: the header alone, over HTTP
        info = inspect_dict(read_cli_model(model, hf, hf_file))
    else:
        if not model:
            read_cli_model(model)  # the one-line "no model given"
        # the header and the what-if sizes of an unchanged file come from the header cache
        info = profile_cache.cached(model, lambda: inspect_dict(profile_cache.read_model(model)),
                                    lambda d: list(d["files"]), variant="inspect")
    if as_json:
        print(json.dumps(info, indent=2))
        return
    rows = [
        ("model", f"{info['name'] or '?'} ({info['arch']}, {info['file_type']})"),
        ("file", f"{info['path']} ({format_size(info['file_bytes'])})"),
        ("tensors", f"{info['n_tensors']}, {format_size(info['tensor_bytes'])}"),
        ("layers", f"{info['n_layer']} (embd {info['n_embd']}, heads {info['n_head']}/{info['n_head_kv']} kv)"),
        ("vocab / train ctx", f"{info['n_vocab']} / {info['n_ctx_train']}"),
        ("experts", f"{info['expert_count']} ({info['expert_used_count']} used)" if info["expert_count"] else "dense"),
        ("sliding window", f"{info['sliding_window']} on {info['swa_layers']} layers" if info["sliding_window"] else "none"),
        ("KV per token", f"f16 {format_size(info['kv_bytes_per_token']['f16'])}, q8_0 {format_size(info['kv_bytes_per_token']['q8_0'])}"),
    ]
    for key, value in rows:
        print(f"{key:<18} {value}")
    if info["what_if"]:
        print("what if (weights): " + ", ".join(f"{w['type']} {format_size(w['tensor_bytes'])}" for w in info["what_if"]))
