"""``llamasplit plan MODEL``: the split, the flags, memory per device and speed; and ``demo``."""

from __future__ import annotations

import dataclasses
import json
import sys

import typer

from llamasplit.cli import options as O

from llamasplit.cli.app import app, say
from llamasplit.cli.modelarg import read_cli_model
from llamasplit.devices.device import Fleet
from llamasplit.errors import NoFeasiblePlan, UsageError
from llamasplit.model.profile_cache import read_model
from llamasplit.memory.companions import companions_from_flags
from llamasplit.planner.plan import PlanOptions, alternatives, plan
from llamasplit.memory.settings import LlamaSettings, parse_gpu_layers, parse_tensor_split
from llamasplit.units import parse_size


def _fleet(fleet_spec: str | None, inventory: str | None, rpc: str | None) -> Fleet:
    """The fleet to plan for; with no GPU here, the CPU (said in one line on stderr)."""
    from llamasplit.devices.sources import resolve_fleet

    hw = resolve_fleet(fleet_spec=fleet_spec, inventory=inventory, rpc=rpc)
    if hw.source == "cpu":
        for note in hw.notes:
            say(f"llamasplit: {note}")
    return hw


def build_options(
    *, ctx: int | None, ngl: str | None, ts: str | None, ctk: str, ctv: str, fa: str, ub: int, b: int,
    np_: int | None, binary: str, margin: str, swa_full: bool, nkvo: bool, no_mmap: bool, ot: list[str] | None,
    cpu_moe: bool, n_cpu_moe: int, mmproj: str | None = None, no_mmproj_offload: bool = False,
    spec_type: str | None = None,
) -> PlanOptions:
    """Map CLI flags onto settings, remembering which ones the user fixed."""
    fixed: set[str] = set()
    kw: dict = {}
    if ctx:
        kw["n_ctx"] = ctx
        fixed.add("n_ctx")
    if ngl is not None:
        kw["n_gpu_layers"] = parse_gpu_layers(ngl)
        fixed.add("n_gpu_layers")
    if ts:
        kw["tensor_split"] = parse_tensor_split(ts)
        fixed.add("tensor_split")
    if np_ == -1:  # llama-server: -np -1 = auto
        np_ = None
    overrides = []
    for item in ot or []:
        for pair in item.split(","):
            pattern, _, buft = pair.rpartition("=")
            overrides.append((pattern, buft))
    settings = LlamaSettings(
        type_k=ctk, type_v=ctv, flash_attn=fa, n_ubatch=ub, n_batch=b, n_parallel=np_, binary=binary,
        swa_full=swa_full, offload_kqv=not nkvo, use_mmap=not no_mmap, overrides=tuple(overrides),
        cpu_moe=cpu_moe, n_cpu_moe=n_cpu_moe, mmproj=mmproj, mmproj_offload=not no_mmproj_offload,
        spec_type=spec_type, **kw,
    )
    default_margin, per_device = parse_margins(margin)
    return PlanOptions(settings=settings, fixed=frozenset(fixed), margin_bytes=default_margin, margin_overrides=per_device)


def refuse_unplanned_mtp_flags(spec_type: str | None, md: str | None, ctkd: str, ctvd: str) -> None:
    """draft-mtp on the model's own NextN blocks sizes its MTP context's cache with -ctkd/-ctvd
    (common_base_params_to_speculative); ``memory.mtp`` plans it as f16 only, so other types are
    refused rather than planned wrong."""
    from llamasplit.memory import mtp

    if mtp.enabled(spec_type) and not md and (ctkd != "f16" or ctvd != "f16"):
        raise UsageError("-ctkd/-ctvd with --spec-type draft-mtp on the model's own NextN blocks are not planned",
                         remedy="drop them (the MTP context's cache is planned as llama.cpp's default f16)")


def parse_margins(text: str) -> tuple[int, tuple[tuple[str, int], ...]]:
    """``1GiB`` or ``1GiB,CUDA1=3GiB,Host=8GiB``: the default margin, then per-device ones.

    >>> parse_margins("512MiB,CUDA1=2GiB")
    (536870912, (('CUDA1', 2147483648),))
    """
    default = 1024 * 1024 * 1024
    per: list[tuple[str, int]] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, eq, size = part.partition("=")
        if eq:
            per.append((name, parse_size(size)))
        else:
            default = parse_size(part)
    return default, tuple(per)


@app.command("plan")
def plan_cmd(
    model: str = typer.Argument(None, help="A .gguf file, or an http(s):// URL of one (its header is read remotely)."),
    hf: O.Hf = None,
    hf_file: O.HfFile = None,
    fleet: O.Fleet = None,
    inventory: O.Inventory = None,
    rpc: O.Rpc = None,
    ctx: O.Ctx = None,
    ngl: O.Ngl = None,
    ts: O.Ts = None,
    ctk: O.Ctk = "f16",
    ctv: O.Ctv = "f16",
    fa: O.Fa = "auto",
    ub: O.Ub = 512,
    b: O.B = 2048,
    np_: O.Np = None,
    binary: str = typer.Option("llama-server", "--binary", help="llama-server, llama-completion, llama-cli or llama-cpp-python."),
    margin: O.Margin = "1GiB",
    swa_full: O.SwaFull = False,
    nkvo: O.Nkvo = False,
    no_mmap: O.NoMmap = False,
    ot: O.Ot = None,
    cpu_moe: O.CpuMoe = False,
    n_cpu_moe: O.NCpuMoe = 0,
    as_json: bool = typer.Option(False, "--json", help="Print the Plan as JSON (stdout)."),
    quant: str = typer.Option(None, "--quant", help="Plan for this model at another quantization (e.g. Q3_K_M), computed from this file."),
    quants: bool = typer.Option(False, "--quants", help="Compare the common quantizations side by side."),
    split_mode: O.SplitMode = "layer",
    md: O.Md = None,
    ngld: O.Ngld = None,
    devd: O.Devd = None,
    ctkd: O.Ctkd = "f16",
    ctvd: O.Ctvd = "f16",
    otd: O.Otd = None,
    cmoed: O.Cmoed = False,
    ncmoed: O.Ncmoed = 0,
    draft_n_max: O.DraftNMax = 3,
    lora: O.Lora = None,
    lora_scaled: O.LoraScaled = None,
    mmproj: O.Mmproj = None,
    no_mmproj_offload: O.NoMmprojOffload = False,
    spec_type: O.SpecType = None,
) -> None:
    """Plan how llama.cpp should split MODEL over the GPUs: layers, flags, memory, speed."""
    if split_mode == "auto" and (md or lora or lora_scaled or mmproj):
        raise UsageError("plan -sm auto compares splits of the model alone; a draft model, LoRA or projector is "
                         "planned with -sm layer, none or tensor", remedy="give -sm layer (run -sm auto plans them too)")
    if split_mode in ("auto", "row") and spec_type:
        raise UsageError(f"plan -sm {split_mode} compares splits without speculative decoding; --spec-type is "
                         "planned with -sm layer or none", remedy="give -sm layer")
    if split_mode in ("auto", "row"):
        from llamasplit.cli.tensor import format_recommendation
        from llamasplit.planner.recommend import recommend
        from llamasplit.memory.tensor_split import refuse_row_mode

        hw = _fleet(fleet, inventory, rpc)
        if split_mode == "row":
            refuse_row_mode(hw.devices)
        settings = LlamaSettings(n_ctx=ctx or 4096, type_k=ctk, type_v=ctv, flash_attn=fa, n_ubatch=ub, n_batch=b,
                                 n_parallel=np_, binary=binary)
        rec = recommend(read_cli_model(model, hf, hf_file, local_reader=read_model), hw, settings)
        print(json.dumps(rec.to_dict(), indent=2) if as_json else format_recommendation(rec))
        return
    if split_mode not in ("layer", "none", "tensor"):
        raise UsageError(f"--split-mode {split_mode!r} is not one of layer, none, tensor, row, auto")
    options = build_options(
        ctx=ctx, ngl=ngl, ts=ts, ctk=ctk, ctv=ctv, fa=fa, ub=ub, b=b, np_=np_, binary=binary, margin=margin,
        swa_full=swa_full, nkvo=nkvo, no_mmap=no_mmap, ot=ot, cpu_moe=cpu_moe, n_cpu_moe=n_cpu_moe,
        mmproj=mmproj, no_mmproj_offload=no_mmproj_offload, spec_type=spec_type,
    )
    if split_mode != "layer":
        options = dataclasses.replace(options, settings=options.settings.replace(split_mode=split_mode))
    refuse_unplanned_mtp_flags(spec_type, md, ctkd, ctvd)
    options = dataclasses.replace(options, companions=companions_from_flags(
        md=md, ngld=ngld, devd=devd, ctkd=ctkd, ctvd=ctvd, otd=otd, cmoed=cmoed, ncmoed=ncmoed,
        draft_n_max=draft_n_max, lora=lora, lora_scaled=lora_scaled))
    if draft_n_max != 3:  # also without -md (draft-mtp, ngram types): the main context's output rows
        options = dataclasses.replace(options, settings=options.settings.replace(spec_draft_n_max=draft_n_max),
                                      fixed=options.fixed | {"spec_draft_n_max"})
    if quants and hf and ":" not in hf and not hf_file and not quant:
        from llamasplit.cli.variants import rank_repo

        print(rank_repo(hf, _fleet(fleet, inventory, rpc), options, as_json=as_json))
        return
    profile = read_cli_model(model, hf, hf_file, local_reader=read_model)
    if options.settings.mmproj is not None:
        from llamasplit.api import attach_projector

        options = attach_projector(options, profile.path, hf=hf, hf_file=hf_file)
    if quant:
        profile = profile.requantized(quant)
    hw = _fleet(fleet, inventory, rpc)
    if quants:
        print(compare_quants(profile, hw, options))
        return
    try:
        result = plan(profile, hw, options)
    except NoFeasiblePlan as err:
        if not as_json:
            print(f"does not fit: {err.message}")
            alts = alternatives(profile, hw, options)
            for alt in alts:
                print("  instead, " + alt.line())
            if not alts:
                print("  nothing simple fits: no q8_0 cache, shorter context or smaller quantization is enough")
        raise
    print(result.to_json() if as_json else result.summary())


def compare_quants(profile, hw, options, types=("Q8_0", "Q6_K", "Q5_K_M", "Q4_K_M", "Q3_K_M", "IQ3_XS", "Q2_K")) -> str:
    """One line per quantization: size, whether it fits, the context it allows, predicted speed."""
    from llamasplit.units import format_size

    lines = [f"{'type':<8} {'weights':>11} {'fits':>5} {'context':>8} {'tok/s':>8} {'prefill':>8}  basis"]
    for q in types:
        try:
            m = profile.requantized(q)
        except UsageError:
            continue
        try:
            p = plan(m, hw, options)
            dec = f"{p.decode_tok_s:.1f}" if p.decode_tok_s else "?"
            pre = f"{p.prefill_tok_s:.0f}" if p.prefill_tok_s else "?"
            lines.append(f"{q:<8} {format_size(m.tensor_bytes):>11} {'yes':>5} {p.n_ctx:>8} {dec:>8} {pre:>8}  {p.speed_basis or 'unknown'}")
        except NoFeasiblePlan:
            lines.append(f"{q:<8} {format_size(m.tensor_bytes):>11} {'no':>5} {'-':>8} {'-':>8} {'-':>8}")
    return "\n".join(lines)


@app.command()
def demo(
    fleet: str = typer.Option(None, "--fleet", help="Plan for simulated GPUs instead of this machine (with no GPU here, 3090,3060-12g is shown too)."),
    tokens: int = typer.Option(24, "--tokens", help="Tokens to generate."),
) -> None:
    """The main job end to end: a real model, a plan for this machine's GPUs, and a short generation."""
    from llamasplit.llamacpp.binaries import find_binary
    from llamasplit.realmodels import fetch_model
    from llamasplit.runner.processes import run_to_end

    path = fetch_model("smollm2")
    profile = read_model(path)
    options = PlanOptions(settings=LlamaSettings(n_ctx=4096, binary="llama-completion"), fixed=frozenset({"n_ctx"}))
    hw = _fleet(fleet, None, None)
    result = plan(profile, hw, options)
    print(result.summary())
    print()
    if not fleet and hw.source == "cpu":
        simulated = "3090,3060-12g"
        say(f"llamasplit: and the same model on a simulated fleet, --fleet {simulated}:")
        print(plan(profile, _fleet(simulated, None, None), options).summary())
        print()
    if hw.simulated:
        say("llamasplit: the plan is for simulated GPUs; generating on this machine's CPU instead")
        args = ["-ngl", "0", "-c", "4096"]
    else:
        args = result.to_llama_args()
    argv = [str(find_binary("llama-completion")), "-m", str(path), *args, "-n", str(tokens), "--temp", "0",
            "-no-cnv", "-p", "The three primary colors are", "-t", "2"]
    say("llamasplit: running " + " ".join(argv[1:]))
    done = run_to_end(argv, timeout_s=300)
    if done.returncode != 0:
        from llamasplit.errors import LaunchError

        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise LaunchError(f"llama-completion failed (exit {done.returncode}): {last}")
    print(done.stdout.strip())
    sys.stdout.flush()
