"""``llamasplit comm`` (what tensor parallelism sends) and ``llamasplit recommend`` (single device,
layer split, tensor split or one replica per GPU?)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer

from llamasplit.cli import options as O
from llamasplit.cli.app import app, say
from llamasplit.errors import UsageError
from llamasplit.model.profile import ModelProfile, read_model
from llamasplit.speed import comm as C
from llamasplit.planner import recommend as R

SHAPES: dict[str, dict[str, int]] = {
    "llama-7b": dict(n_layer=32, n_embd=4096, n_head=32, n_head_kv=32, n_ff=11008, n_vocab=32000, n_ctx_train=4096),
    "llama-13b": dict(n_layer=40, n_embd=5120, n_head=40, n_head_kv=40, n_ff=13824, n_vocab=32000, n_ctx_train=4096),
    "llama-70b": dict(n_layer=80, n_embd=8192, n_head=64, n_head_kv=8, n_ff=28672, n_vocab=32000, n_ctx_train=4096),
    "llama3-8b": dict(n_layer=32, n_embd=4096, n_head=32, n_head_kv=8, n_ff=14336, n_vocab=128256, n_ctx_train=8192),
    "llama3-70b": dict(n_layer=80, n_embd=8192, n_head=64, n_head_kv=8, n_ff=28672, n_vocab=128256, n_ctx_train=8192),
}
"""Model shapes by name, for questions about models nobody has to download (weights typed like Q4_K_M)."""


def load_model(model: str | None, hf: str | None = None, hf_file: str | None = None) -> ModelProfile:
    """A GGUF path or http(s):// URL, ``-hf user/repo[:quant]``, or one of ``SHAPES``."""
    from llamasplit.model.remote import is_url

    if hf or hf_file or (model and is_url(model)):
        from llamasplit.cli.modelarg import read_cli_model

        return read_cli_model(model, hf, hf_file, local_reader=read_model)
    if not model:
        raise UsageError("no model given", remedy=f"give a .gguf path or URL, -hf user/repo[:quant], or one of {', '.join(SHAPES)}")
    key = model.lower()
    if key in SHAPES and not Path(model).exists():
        from llamasplit.model.shapes import dense_profile

        return dense_profile(**SHAPES[key], name=key)
    if not Path(model).exists() and not model.endswith(".gguf"):
        raise UsageError(f"{model!r} is neither a file nor a model shape", remedy=f"give a .gguf path or one of {', '.join(SHAPES)}")
    return read_model(model)


GB = 1e9


def comm_report(model: ModelProfile, *, tp: int, batch: int, seq: int, dtype_bytes: int, link_gb_s: float) -> dict[str, Any]:
    """Every traffic figure of tensor parallelism for one forward pass, each named for what it is."""
    if tp < 1 or batch < 1 or seq < 1 or dtype_bytes < 1 or link_gb_s <= 0:
        raise UsageError("--tp, --batch, --seq and --dtype-bytes must be positive integers, --link-gb-s positive")
    hp = model.hparams
    t = C.Traffic(hp.n_embd, hp.n_layer, tp, batch * seq, dtype_bytes)
    ring = t.ring_factor
    rounded_layer_gb = round(t.layer_bytes / GB)
    out = {
        "model": model.name or model.path,
        "n_embd": hp.n_embd,
        "n_layer": hp.n_layer,
        "tp": tp,
        "tokens": t.tokens,
        "dtype_bytes": dtype_bytes,
        "allreduces_per_layer": t.allreduces_per_layer,
        "activation_bytes": t.activation_bytes,
        "layer_bytes": t.layer_bytes,
        "ring_factor": ring,
        "ring_wire_bytes_per_layer": ring * t.layer_bytes,
        "design_factor_2_wire_bytes_per_layer": 2 * t.layer_bytes,
        "model_activation_bytes": t.model_bytes,
        "ring_wire_bytes_total": ring * t.model_bytes,
        "link_gb_s": link_gb_s,
        "ring_seconds": ring * t.model_bytes / (link_gb_s * GB),
        "design_text": {
            "layer_gb": rounded_layer_gb,
            "total_gb": rounded_layer_gb * hp.n_layer,
            "seconds": rounded_layer_gb * hp.n_layer / link_gb_s,
        },
        "butterfly_steps": C.butterfly_steps(tp) + (0 if tp & (tp - 1) == 0 else 1),
        "butterfly_wire_bytes_per_layer": t.butterfly_bytes_per_layer,
        "llama_cpp_activation_bytes": t.tokens * hp.n_embd * C.ACTIVATION_BYTES,
        "per_token_layer_bytes": t.allreduces_per_layer * hp.n_embd * dtype_bytes,
        "decode_allreduces_per_token": t.allreduces_per_layer * hp.n_layer,
    }
    return out


def human_bytes(n: float) -> str:
    """Decimal units, as link bandwidths are quoted.

    >>> human_bytes(536870912), human_bytes(1152), human_bytes(2.5e6)
    ('0.537 GB', '1.152 kB', '2.500 MB')
    """
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale * (0.1 if unit == "GB" else 1):
            return f"{n / scale:.3f} {unit}"
    return f"{n:.0f} bytes"


def format_comm(r: dict[str, Any]) -> str:
    hb = human_bytes
    d = r["design_text"]
    n = r["tp"]
    lines = [
        f"{r['model']}: n_embd {r['n_embd']}, {r['n_layer']} layers, tensor parallel over {n} devices, "
        f"{r['tokens']} tokens per step, {r['dtype_bytes']} bytes per value",
        f"  one all-reduced activation, tokens x n_embd x bytes:      {hb(r['activation_bytes'])} ({r['activation_bytes']} bytes)",
        f"  per layer, {r['allreduces_per_layer']} all-reduces (attention out + FFN out):      {hb(r['layer_bytes'])}",
        f"  per layer on the wire per device, exact ring 2(n-1)/n = {r['ring_factor']:.2f}: {hb(r['ring_wire_bytes_per_layer'])}",
        f"  per layer on the wire by the design's ring factor of 2:   {hb(r['design_factor_2_wire_bytes_per_layer'])}",
        f"  whole model, {r['n_layer']} layers: activations {hb(r['model_activation_bytes'])}; exact ring per device "
        f"{hb(r['ring_wire_bytes_total'])} = {r['ring_seconds']:.3g} s at {r['link_gb_s']:g} GB/s",
    ]
    if d["layer_gb"] >= 1:
        lines.append(
            f"  the design's text, \"~{d['layer_gb']} GB per layer, {d['total_gb']} GB total, {d['seconds']:.2f} s at "
            f"{r['link_gb_s']:g} GB/s\": the per-layer activations rounded to {d['layer_gb']} GB, times {r['n_layer']} layers, "
            "no ring factor"
        )
    lines += [
        f"  llama.cpp all-reduces F32 activations ({hb(r['llama_cpp_activation_bytes'])} each here); NCCL on CUDA sends "
        f"large ones as BF16; without a backend all-reduce its butterfly sends the whole tensor in each of "
        f"{r['butterfly_steps']} step(s) (ceil(log2 {n}), plus a copy-back when {n} is not a power of two): "
        f"{hb(r['butterfly_wire_bytes_per_layer'])} per layer per device",
        f"  per decoded token: {hb(r['per_token_layer_bytes'])} per layer in {r['decode_allreduces_per_token']} all-reduces: "
        "latency, not bandwidth, sets their cost",
    ]
    return "\n".join(lines)


@app.command("comm")
def comm_cmd(
    model: str = typer.Argument(None, help="A .gguf file or URL, or a model shape (" + ", ".join(SHAPES) + ")."),
    hf: O.Hf = None,
    hf_file: O.HfFile = None,
    tp: int = typer.Option(2, "--tp", help="Devices the tensors are split over."),
    batch: int = typer.Option(1, "--batch", help="Sequences per step."),
    seq: int = typer.Option(1, "--seq", help="Tokens per sequence per step (a prompt's length; 1 when decoding)."),
    dtype_bytes: int = typer.Option(2, "--dtype-bytes", help="Bytes per activation value (2 = fp16)."),
    link_gb_s: float = typer.Option(100.0, "--link-gb-s", help="Link bandwidth for the time figure, GB/s."),
    as_json: bool = typer.Option(False, "--json", help="Print the figures as JSON."),
) -> None:
    """Per-layer and per-token all-reduce traffic of tensor parallelism for MODEL."""
    report = comm_report(load_model(model, hf, hf_file), tp=tp, batch=batch, seq=seq, dtype_bytes=dtype_bytes, link_gb_s=link_gb_s)
    print(json.dumps(report, indent=2) if as_json else format_comm(report))


def format_recommendation(rec: R.Recommendation) -> str:
    lines = [f"{'option':<14} {'devices':<24} {'decode tok/s':>13} {'prefill tok/s':>14} {'comm':>6}  basis, note"]
    for o in rec.options:
        devs = ",".join(o.devices) or "-"
        if o.speed is None:
            lines.append(f"{o.kind:<14} {devs:<24} {'-':>13} {'-':>14} {'-':>6}  {o.why_not}")
            continue
        if not o.known:
            unknown = ", ".join(o.speed.unknown) or "a device"
            lines.append(f"{o.kind:<14} {devs:<24} {'?':>13} {'?':>14} {'?':>6}  fits; speed unknown: {unknown} not measured")
            continue
        dec = f"{o.decode_tok_s:.1f}" + (f" x{o.replicas}" if o.replicas > 1 else "")
        lines.append(
            f"{o.kind:<14} {devs:<24} {dec:>13} {o.speed.prefill_tok_s:>14.0f} {o.speed.decode_comm_share:>6.0%}  "
            f"{o.speed.speed_basis}{', ' + o.detail if o.detail else ''}"
        )
    lines.append(f"(prefill of a {rec.prompt_tokens}-token prompt; comm = share of a decoded token spent communicating)")
    if rec.best is not None and rec.best.argv:
        lines.append("command: " + " ".join(rec.best.argv))
    lines.append(rec.verdict)
    return "\n".join(lines)


@app.command("recommend")
def recommend_cmd(
    model: str = typer.Argument(None, help="A .gguf file or URL, or a model shape (" + ", ".join(SHAPES) + ")."),
    hf: O.Hf = None,
    hf_file: O.HfFile = None,
    fleet: str = typer.Option(None, "--fleet", help="Simulated GPUs, e.g. 2xh100-sxm,2xl4."),
    inventory: str = typer.Option(None, "--inventory", help="A saved inventory (llamasplit gpus --save)."),
    rpc: str = typer.Option(None, "--rpc", help="RPC workers host:port,..."),
    ctx: int = typer.Option(4096, "--ctx", "-c", help="Context length."),
    prompt_tokens: int = typer.Option(2048, "--prompt-tokens", help="Prompt length the prefill figure is for."),
    margin: str = typer.Option("1GiB", "--margin", help="Memory kept free on every device."),
    no_nccl: bool = typer.Option(False, "--no-nccl", help="llama.cpp was built without NCCL."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Single device, layer split, tensor split or one replica per GPU: predicted prefill and decode, and which."""
    from llamasplit.devices.sources import resolve_fleet
    from llamasplit.memory.settings import LlamaSettings
    from llamasplit.units import parse_size

    profile = load_model(model, hf, hf_file)
    hw = resolve_fleet(fleet_spec=fleet, inventory=inventory, rpc=rpc)
    if hw.simulated:
        say(f"llamasplit: simulated fleet ({hw.source}): numbers are for that hardware")
    rec = R.recommend(profile, hw, LlamaSettings(n_ctx=ctx), prompt_tokens=prompt_tokens,
                      margin_bytes=parse_size(margin), nccl=not no_nccl)
    print(json.dumps(rec.to_dict(), indent=2) if as_json else format_recommendation(rec))
