"""mamba2 and mamba (``src/models/mamba.cpp`` ``llama_model_mamba::graph``: ``build_mamba2_layer``
for mamba2, ``build_mamba_layer`` for Mamba-1 and falcon-mamba): no attention and no positions;
per layer an RMS norm, the mixer, the residual."""

from __future__ import annotations

from llamasplit.memory.graph.builder import Builder
from llamasplit.memory.graph.family import Family
from llamasplit.model.profile import ModelProfile

MAMBA2_TENSORS = ("ssm_in.weight", "ssm_conv1d.weight", "ssm_conv1d.bias", "ssm_dt.bias", "ssm_a", "ssm_d",
                  "ssm_out.weight")


def mamba2_shapes_ok(model: ModelProfile) -> bool:
    """The hyper-parameters ``build_mamba2_layer`` asserts on (d_inner divisible by the heads and groups)."""
    hp = model.hparams
    return (hp.ssm_d_conv > 1 and hp.ssm_d_inner > 0 and hp.ssm_d_state > 0 and hp.ssm_dt_rank > 0
            and hp.ssm_n_group > 0 and hp.ssm_d_inner % hp.ssm_dt_rank == 0 and hp.ssm_d_inner % hp.ssm_n_group == 0)


def has_mamba2(names: set[str], il: int) -> bool:
    return all(f"blk.{il}.{t}" in names for t in MAMBA2_TENSORS)


MAMBA1_TENSORS = ("ssm_in.weight", "ssm_conv1d.weight", "ssm_conv1d.bias", "ssm_x.weight", "ssm_dt.weight",
                  "ssm_dt.bias", "ssm_a", "ssm_d", "ssm_out.weight")


def check(model: ModelProfile) -> bool:
    names = {t.name for t in model.tensors}
    hp = model.hparams
    if model.arch == "mamba":
        shapes = hp.ssm_d_conv > 1 and hp.ssm_d_inner > 0 and hp.ssm_d_state > 0 and hp.ssm_dt_rank > 0
        return shapes and all(f"blk.{il}.attn_norm.weight" in names and all(f"blk.{il}.{t}" in names
                                                                            for t in MAMBA1_TENSORS)
                              for il in range(hp.n_layer_kv))
    return mamba2_shapes_ok(model) and all(
        f"blk.{il}.attn_norm.weight" in names and has_mamba2(names, il) for il in range(hp.n_layer_kv))


def build(b: Builder) -> None:
    o = b.o
    inp_l = b.inp_embd()
    rs = b.rs_inputs()
    out_ids = b.inp_out_ids()
    n_layer = b.hp.n_layer_kv
    for il in b.ctx.layers:
        cur = b.norm(inp_l, b.lw(il, "attn_norm"), il)
        b.cb(cur, "attn_norm", il)
        cur = b.mamba2_layer(rs, cur, il) if b.arch == "mamba2" else b.mamba_layer(rs, cur, il)
        if il == n_layer - 1:
            cur = o.get_rows(cur, out_ids)
            inp_l = o.get_rows(inp_l, out_ids)
        cur = o.binary("ADD", cur, inp_l)
        b.cb(cur, "l_out", il)
        inp_l = cur
    b.output(inp_l)


FAMILIES = {
    "mamba2": Family(build=build, replayable=check),
    "mamba": Family(build=build, replayable=check),
}
