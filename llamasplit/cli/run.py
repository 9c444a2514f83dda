"""``llamasplit run``: plan (or read a plan) and start llama.cpp with it; ``llamasplit worker``: an RPC worker.

``run`` prints llama-server's URL on stdout once it answers ``/health`` and people-talk on stderr:
the command, a loading status, predicted against actual memory. Ctrl-C or SIGTERM stops
llama.cpp (and anything we started) within 5 s; the exit status follows the child's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import typer

from llamasplit.cli import options as O

from llamasplit.cli.app import app, say
from llamasplit.cli.plan import _fleet, build_options, companions_from_flags, refuse_unplanned_mtp_flags
from llamasplit.errors import LaunchError, UsageError
from llamasplit.planner.plan import Plan, plan
from llamasplit.memory.settings import BINARIES
from llamasplit.runner.launch import (
    DEFAULT_PORT, take_address,
    SERVER, LaunchOptions, Server, StatusLine, binary_kind, build_argv, child_env, conflicting_args, default_binary,
    describe_exit, dropped_env, exit_status, explain_failure, launch, resolve_binary,
)
from llamasplit.runner.verify import Verification
from llamasplit.runner.processes import LOOPBACK, check_bind_host, port_in_use, start_rpc_worker


class _Signalled(BaseException):
    """SIGTERM/SIGHUP turned into an exception, so ``finally`` blocks stop the children."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@contextlib.contextmanager
def _signals_as_exceptions() -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: object) -> None:
        raise _Signalled(signum)

    old = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)


# the plan options `run` shares with `plan`, with their defaults: given together with --plan they are ignored


def _plan_defaults() -> dict[str, object]:
    """The plan options `run` shares with `plan`, with their defaults, read off the signature."""
    import inspect

    out = {}
    for name, p in inspect.signature(run_cmd).parameters.items():
        if name not in _RUN_ONLY:  # typer.Option(default, ...) or an Annotated option's plain default
            out[name] = p.default.default if isinstance(p.default, typer.models.ParameterInfo) else p.default
    return out


_RUN_ONLY = {"context", "model", "hf", "hf_file", "plan_file", "binary", "dry_run", "check", "host", "port", "timeout", "watch"}


def _read_plan(plan_file: str, model: str | None) -> Plan:
    try:
        text = Path(plan_file).read_text()
    except OSError as exc:
        raise UsageError(f"cannot read the plan {plan_file}: {exc.strerror or exc}",
                         remedy="make one with `llamasplit plan MODEL --json > plan.json`") from exc
    import json

    from llamasplit.untrusted import printable_tree

    try:
        doc = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError):
        doc = None  # Plan.from_json says what is wrong
    if doc is not None and not isinstance(doc, dict):
        raise UsageError(f"the plan {plan_file} is not a JSON object", remedy="make one with `llamasplit plan MODEL --json > plan.json`")
    if doc is not None:  # names and descriptions from a file are shown: no raw escapes
        text = json.dumps(printable_tree(doc, limit=4096))
    result = Plan.from_json(text)
    if model:
        from llamasplit.model.profile import read_model

        profile = read_model(model)  # the same model, stored under another path on this machine
        if profile.arch != result.arch:
            raise UsageError(f"{model} is a {profile.arch} model but the plan is for {result.arch}",
                             remedy="give the model the plan was made for")
        result = dataclasses.replace(result, model_path=str(model))
    return result


def _plan_split(profile, hw, options, split_mode: str) -> Plan:
    """The plan for ``-sm``: layer, none and tensor as asked; auto the faster of layer and tensor."""
    from llamasplit.planner.plan import auto_plan

    if split_mode not in ("layer", "none", "tensor", "row", "auto"):
        raise UsageError(f"--split-mode {split_mode!r} is not one of layer, none, tensor, row, auto")
    if split_mode == "auto":
        return auto_plan(profile, hw, options)
    if split_mode != "layer":
        options = dataclasses.replace(options, settings=options.settings.replace(split_mode=split_mode))
    return plan(profile, hw, options)


def _command_line(argv: list[str], env_changes: dict[str, str]) -> str:
    prefix = [f"{k}={shlex.quote(v)}" for k, v in env_changes.items()]
    return " ".join([*prefix, *(shlex.quote(a) for a in argv)])


@app.command("run", context_settings={"allow_extra_args": True})
def run_cmd(
    context: typer.Context,
    model: str = typer.Argument(None, help="A .gguf file or an http(s):// URL of one, downloaded first (optional with --plan: the plan's model at this path)."),
    hf: O.Hf = None,
    hf_file: O.HfFile = None,
    plan_file: str = typer.Option(None, "--plan", help="Run a saved plan (llamasplit plan ... --json > plan.json)."),
    fleet: str = typer.Option(None, "--fleet", help="Simulated GPUs: only with --dry-run."),
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
    margin: O.Margin = "1GiB",
    swa_full: O.SwaFull = False,
    nkvo: O.Nkvo = False,
    no_mmap: O.NoMmap = False,
    ot: O.Ot = None,
    cpu_moe: O.CpuMoe = False,
    n_cpu_moe: O.NCpuMoe = 0,
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
    binary: str = typer.Option(None, "--binary", help="llama-server (default), llama-completion, llama-cli, or a path."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the command (stdout) and exit."),
    check: bool = typer.Option(False, "--check", help="Load, compare predicted with actual memory per device, stop; exit 1 if off."),
    watch: bool = typer.Option(False, "--watch", help="While serving, show GPU memory (NVML) every second next to the plan, on stderr."),
    host: str = typer.Option(None, "--host", help=f"llama-server's address (default {LOOPBACK})."),
    port: int = typer.Option(None, "--port", help=f"llama-server's port (default {DEFAULT_PORT})."),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds llama-server may take to load."),
) -> None:
    """Plan MODEL for this machine (or read --plan) and start llama.cpp with exactly that plan.

    Arguments after -- go to llama.cpp last (e.g. -- -t 8 --api-key KEY).
    """
    extra = list(context.args)
    if model is not None and model.startswith("-"):  # click hands the first word after -- to MODEL
        extra.insert(0, model)
        model = None
    kind = binary_kind(binary) if binary else None
    if plan_file:
        defaults, here = _plan_defaults(), locals()
        given = {k for k, v in defaults.items() if here[k] != v}
        if given:
            say("llamasplit: warning: --plan given; ignoring the plan options " + ", ".join(sorted(given)))
        the_plan = _read_plan(plan_file, model)
    else:
        if hf or hf_file or (model and model.lower().startswith(("http://", "https://"))):
            from llamasplit.model.download import local_copy
            from llamasplit.model.locate import model_source

            src = model_source(model, hf=hf, hf_file=hf_file)
            if dry_run:  # plan from the remote header; llama.cpp's -mu would fetch the file
                from llamasplit.cli.modelarg import read_cli_model

                remote_profile = read_cli_model(model, hf, hf_file)
                model = None
            else:
                model = str(local_copy(src, say=say))
                say(f"llamasplit: the model is at {model}")
        if not model and not (hf or hf_file):
            raise UsageError("give a MODEL to plan, or --plan plan.json", remedy="e.g. llamasplit run model.gguf --rpc host:50052")
        from llamasplit.model.profile import read_model

        options = build_options(
            ctx=ctx, ngl=ngl, ts=ts, ctk=ctk, ctv=ctv, fa=fa, ub=ub, b=b, np_=np_, binary=kind or SERVER,
            margin=margin, swa_full=swa_full, nkvo=nkvo, no_mmap=no_mmap, ot=ot, cpu_moe=cpu_moe, n_cpu_moe=n_cpu_moe,
            mmproj=mmproj, no_mmproj_offload=no_mmproj_offload, spec_type=spec_type,
        )
        refuse_unplanned_mtp_flags(spec_type, md, ctkd, ctvd)
        options = dataclasses.replace(options, companions=companions_from_flags(
            md=md, ngld=ngld, devd=devd, ctkd=ctkd, ctvd=ctvd, otd=otd, cmoed=cmoed, ncmoed=ncmoed,
            draft_n_max=draft_n_max, lora=lora, lora_scaled=lora_scaled))
        if draft_n_max != 3:  # also without -md (draft-mtp, ngram types): the main context's output rows
            options = dataclasses.replace(options, settings=options.settings.replace(spec_draft_n_max=draft_n_max),
                                          fixed=options.fixed | {"spec_draft_n_max"})
        profile = read_model(model) if model else remote_profile
        if options.settings.mmproj is not None:
            from llamasplit.api import attach_projector

            options = attach_projector(options, profile.path, hf=hf, hf_file=hf_file)
        the_plan = _plan_split(profile, _fleet(fleet, inventory, rpc), options, split_mode)
    run_binary = binary or default_binary(the_plan)
    if binary_kind(run_binary) != the_plan.settings.binary and the_plan.settings.binary in BINARIES:
        say(f"llamasplit: warning: the plan was made for {the_plan.settings.binary}, not {binary_kind(run_binary)}: "
            "their defaults (slots, compute buffers) differ; re-plan with --binary for exact numbers")
    opts = LaunchOptions(binary=run_binary, host=host or LOOPBACK, port=port or DEFAULT_PORT, extra_args=tuple(extra),
                         ready_timeout_s=timeout)
    # -- --port P / --host H: llama-server takes the last one, so wait for it there
    opts = take_address(opts, host_given=host is not None, port_given=port is not None)
    host = opts.host
    for warning in conflicting_args(the_plan, opts):
        say(f"llamasplit: warning: {warning}")
    for name in dropped_env(os.environ):
        say(f"llamasplit: note: {name} is set here; llama.cpp is started without it so that it runs the plan")

    if dry_run:
        say(the_plan.summary())
        env = child_env(the_plan, os.environ)
        changes = {}
        if "CUDA_VISIBLE_DEVICES" in env:  # the plan pins CUDA devices by UUID
            changes = {k: env[k] for k in ("CUDA_DEVICE_ORDER", "CUDA_VISIBLE_DEVICES") if os.environ.get(k) != env[k]}
        with contextlib.suppress(LaunchError):  # a path when the binary is here, else its name
            opts = dataclasses.replace(opts, binary=str(resolve_binary(run_binary)))
        print(_command_line(build_argv(the_plan, opts), changes))
        return
    if binary_kind(run_binary) == SERVER and host not in (LOOPBACK, "localhost", "::1"):
        say(f"llamasplit: warning: llama-server on {host} answers anyone who can reach it; "
            "pass -- --api-key KEY to require a key")
    _run(the_plan, opts, check=check, watch=watch)


def _run(the_plan: Plan, opts: LaunchOptions, *, check: bool, watch: bool = False) -> None:
    where = ", ".join(d.name for d in the_plan.devices) or "the CPU"
    status = StatusLine(f"loading {the_plan.model_name or Path(the_plan.model_path).name} on {where}")
    server = None
    with _signals_as_exceptions():
        try:
            server = launch(the_plan, opts, progress=status)
            status.done()
            say("llamasplit: running " + _command_line(server.argv, {}))
            if server.url is not None:
                print(server.url, flush=True)
                say(f"llamasplit: {server.name} (pid {server.pid}) is serving at {server.url}; "
                    f"log {server.log_path}; Ctrl-C stops it")
                report = _report(server, full=check)
                if check:
                    if not report.ok:
                        server.process.keep_log = True
                        say(f"llamasplit: log kept: {server.log_path}")
                    raise SystemExit(0 if report.ok else 1)
                if watch:
                    _watch(server, the_plan)
            rc = server.wait()
            assert rc is not None
            if rc != 0:
                why = server.explain()
                say(f"llamasplit: {server.name} exited ({describe_exit(rc)})" + (f": {why[0]}" if why else "")
                    + (f"; {why[1]}" if why and why[1] else "") + f"; log {server.log_path}")
            if check:
                report = _report(server, full=True)
                raise SystemExit(exit_status(rc) or (0 if report.ok else 1))
            raise SystemExit(exit_status(rc))
        except KeyboardInterrupt:
            status.done()
            _stopped(server, "interrupted")
            raise SystemExit(130) from None
        except _Signalled as sig:
            status.done()
            _stopped(server, f"got {signal.Signals(sig.signum).name}")
            raise SystemExit(128 + sig.signum) from None
        finally:
            status.done()
            if server is not None:
                server.stop()


def _watch(server: Server, the_plan: Plan) -> None:
    """``run --watch``: llamasplit top for the server's pid on stderr until it exits (no GPU: one line)."""
    import sys

    from llamasplit.errors import DeviceQueryError
    from llamasplit.runner.watch import watch

    try:
        watch(pids=[server.pid], plan=the_plan, out=sys.stderr, until=lambda: not server.alive())
    except DeviceQueryError as err:
        say(f"llamasplit: --watch: {err.message}")


def _stopped(server: Server | None, why: str) -> None:
    if server is not None:
        server.stop()
        say(f"llamasplit: {why}; stopped {server.name} (pid {server.pid})")
    else:
        say(f"llamasplit: {why}")


def _report(server: Server, *, full: bool) -> Verification:
    report = server.report()
    if full:
        say(report.table())
    elif not report.found_buffers:
        say("llamasplit: llama.cpp logged no buffer sizes, so the allocation cannot be compared with the plan")
    elif report.ok:
        say("llamasplit: the allocation matches the plan on every device (--check shows the table)")
    else:
        say("llamasplit: warning: the allocation differs from the plan: " + "; ".join(report.failures()))
    return report


@app.command("worker")
def worker_cmd(
    host: str = typer.Option(LOOPBACK, "--host", help="Address to listen on (loopback unless --allow-remote)."),
    port: int = typer.Option(50052, "--port", help="Port to listen on."),
    device: list[str] = typer.Option(None, "--device", "-d", help="Devices to expose (e.g. CUDA0), repeat or comma-separate."),
    threads: int = typer.Option(None, "--threads", "-t", help="CPU threads for a CPU device."),
    allow_remote: bool = typer.Option(False, "--allow-remote", help="Allow a non-loopback address (no authentication!)."),
    publish: bool = typer.Option(True, "--publish/--no-publish",
                                 help="Publish this worker's GPUs (read once through NVML) on PORT+1, read-only, bound like the worker."),
    inventory: str = typer.Option(None, "--inventory", help="Publish this saved snapshot (llamasplit gpus --save) instead of reading NVML."),
) -> None:
    """Start a llama.cpp RPC worker (ggml-rpc-server) for `llamasplit run --rpc HOST:PORT` on another machine.

    It also publishes what it serves (GPU names, UUIDs, VRAM, bandwidth, compute capability, PCIe/NVLink)
    as JSON on GET http://HOST:PORT+1/llamasplit/devices, so the client sizes each device with its
    backend's rules: no authentication, read-only, bound like the worker (see devices/workerinfo.py).
    --inventory publishes a saved snapshot instead of reading NVML.
    """
    from llamasplit.devices.workerinfo import InfoServer, info_port, worker_document

    warning = check_bind_host(host, allow_remote)
    if warning:
        say(f"llamasplit: {warning}")
    if port_in_use(host, port):
        raise LaunchError(f"port {port} on {host} is in use", remedy="pick another with --port, or stop what listens there")
    if publish and port_in_use(host, info_port(port)):
        raise LaunchError(f"port {info_port(port)} on {host} (the device endpoint, --port + 1) is in use",
                          remedy="pick another --port, or --no-publish (clients then need --rpc HOST:PORT=GPU)")
    devices = [d.strip() for item in device or [] for d in item.split(",") if d.strip()]
    snapshot = _worker_snapshot(inventory, devices) if publish else None
    worker = None
    info = None
    with _signals_as_exceptions():
        try:
            env = {**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}  # CUDA0.. = NVML's order, as published
            worker = start_rpc_worker(host=host, port=port, threads=threads, devices=devices or None, env=env)
            if snapshot is not None:
                try:
                    info = InfoServer(worker_document(snapshot, worker.endpoint), host, info_port(port)).start()
                except OSError as exc:
                    raise LaunchError(f"cannot listen on {host}:{info_port(port)} for the device endpoint: {exc.strerror or exc}",
                                      remedy="pick another --port, or --no-publish (clients then need --rpc HOST:PORT=GPU)") from exc
                served = ", ".join(d.description for d in snapshot.devices) or "the CPU"
                say(f"llamasplit: publishing what this worker serves ({served}) on "
                    f"http://{worker.endpoint.rpartition(':')[0]}:{info.port}/llamasplit/devices (read-only, no authentication)")
            print(worker.endpoint, flush=True)
            reach = worker.endpoint if host not in ("0.0.0.0", "::") else f"THIS-HOST:{port}"
            say(f"llamasplit: RPC worker (ggml-rpc-server pid {worker.pid}) listening on {worker.endpoint}; "
                f"on the main machine: llamasplit run MODEL --rpc {reach}; Ctrl-C stops it")
            rc = worker.proc.wait()
            worker.keep_log = True  # named below
            why = explain_failure(worker.log_text())
            say(f"llamasplit: the RPC worker exited ({describe_exit(rc)})" + (f": {why[0]}" if why else "")
                + f"; log {worker.log_path}")
            raise SystemExit(exit_status(rc) or 1)
        except KeyboardInterrupt:
            say("llamasplit: stopping the RPC worker")
            raise SystemExit(130) from None
        except _Signalled as sig:
            raise SystemExit(128 + sig.signum) from None
        finally:
            if info is not None:
                info.stop()
            if worker is not None:
                worker.stop()


def _worker_snapshot(inventory: str | None, devices: list[str]):
    """What this worker serves, read once: a saved inventory, else NVML (no GPU: the CPU; NVML broken: None)."""
    from llamasplit.devices.device import Fleet
    from llamasplit.errors import DeviceQueryError
    from llamasplit.devices.nvml import NoGpuFound, NvmlSource, local_host
    from llamasplit.devices.sources import InventorySource
    from llamasplit.devices.workerinfo import worker_fleet

    if inventory is not None:
        fleet = InventorySource(Path(inventory)).read()
    else:
        try:
            fleet = NvmlSource(env={**os.environ, "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}).read()
        except NoGpuFound:
            fleet = Fleet(devices=(), host=local_host(), source="cpu")
        except DeviceQueryError as err:  # a broken driver should not stop the worker itself
            say(f"llamasplit: warning: cannot read this worker's GPUs ({err.message}); publishing nothing, "
                "so clients size it as a CPU unless they describe it (--rpc HOST:PORT=GPU)")
            return None
    return worker_fleet(fleet, devices)
