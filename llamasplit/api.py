"""The Python API: the same three steps as the CLI (plan, load in-process, serve) as functions.

::

    import llamasplit
    plan = llamasplit.plan("model.gguf", ctx=32768)      # devices read once; the plan is pure data
    print(plan.summary())
    llm = llamasplit.load("model.gguf", ctx=32768)        # a llama_cpp.Llama with the plan applied
    with llamasplit.serve("model.gguf", rpc=["b:50052"]) as srv:
        print(srv.url, srv.report().table())

Plan options are ``LlamaSettings`` field names (``n_ctx``, ``n_gpu_layers``, ``tensor_split``,
``type_k``, ``flash_attn``, ...), the CLI's short names (``ctx``, ``ngl``, ``ts``, ``ctk``,
``ctv``, ``fa``, ``ub``, ``b``, ``np``), and ``margin`` (bytes or ``"1GiB"``). Every option given
is fixed: the planner searches only what is left.

``devices`` says where the devices come from, read once: ``None`` = this machine's GPUs (NVML;
none raises ``DeviceQueryError``), a ``Fleet``, a list of ``Device`` (``[]`` = CPU only), an
inventory file (``llamasplit gpus --save``), or a simulated-fleet spec such as ``"2x3090"``.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llamasplit.devices.device import Device, Fleet
from llamasplit.errors import LaunchError, UsageError
from llamasplit.planner.plan import DEFAULT_MARGIN_BYTES, Plan, PlanOptions
from llamasplit.memory.settings import LlamaSettings, parse_gpu_layers, parse_tensor_split
from llamasplit.units import parse_size

__all__ = ["plan", "load", "serve", "plan_options"]

ALIASES = {
    "ctx": "n_ctx", "ngl": "n_gpu_layers", "ts": "tensor_split", "sm": "split_mode", "mg": "main_gpu",
    "ctk": "type_k", "ctv": "type_v", "fa": "flash_attn", "ub": "n_ubatch", "b": "n_batch", "np": "n_parallel",
    "ot": "overrides",
}
"""The CLI's short names for ``LlamaSettings`` fields."""
_SETTINGS_FIELDS = tuple(f.name for f in dataclasses.fields(LlamaSettings))
COMPANION_OPTIONS = {
    "md": "md", "draft": "md", "ngld": "ngld", "devd": "devd", "ctkd": "ctkd", "ctvd": "ctvd", "otd": "otd",
    "cmoed": "cmoed", "ncmoed": "ncmoed", "draft_n_max": "draft_n_max", "lora": "lora", "lora_scaled": "lora_scaled",
}
"""A draft model (``draft="d.gguf"`` or ``md=``, with the CLI's ``ngld``, ``devd``, ``ctkd``, ``ctvd``,
``otd``, ``cmoed``, ``ncmoed``, ``draft_n_max``) and LoRA adapters (``lora="a.gguf"`` or a list,
``lora_scaled="a.gguf:0.5"``), planned with the model (``memory.companions``)."""
_SPLIT_MODES = ("none", "layer", "row", "tensor")


def _value(name: str, value: Any) -> Any:
    """Accept the Python-friendly spellings of a setting."""
    if name == "tensor_split" and value is not None:
        return parse_tensor_split(value)
    if name == "n_gpu_layers":
        return parse_gpu_layers(value)
    if name == "flash_attn" and isinstance(value, bool):
        return "on" if value else "off"
    if name == "split_mode" and isinstance(value, int):
        return _SPLIT_MODES[value]
    if name == "overrides":
        pairs = []
        for item in [value] if isinstance(value, str) else value:
            if isinstance(item, str):
                for one in item.split(","):
                    pattern, _, buft = one.rpartition("=")
                    pairs.append((pattern, buft))
            else:
                pairs.append(tuple(item))
        return tuple(pairs)
    return value


def plan_options(**options: Any) -> PlanOptions:
    """``PlanOptions`` from keyword options; an unknown name is a ``UsageError`` listing the known ones.

    >>> plan_options(ctx=8192, ts="3,1").settings.tensor_split
    (3.0, 1.0)
    >>> sorted(plan_options(ctx=8192).fixed)
    ['n_ctx']
    """
    margin = options.pop("margin", None)
    side = {COMPANION_OPTIONS[k]: options.pop(k) for k in list(options) if k in COMPANION_OPTIONS}
    kw: dict[str, Any] = {}
    for key, value in options.items():
        name = ALIASES.get(key, key)
        if name not in _SETTINGS_FIELDS:
            raise UsageError(
                f"unknown plan option {key!r}",
                remedy="use one of " + ", ".join([*_SETTINGS_FIELDS, *ALIASES, "margin", *COMPANION_OPTIONS]),
            )
        kw[name] = _value(name, value)
    settings = LlamaSettings(**kw)
    if isinstance(side.get("lora"), (str, os.PathLike)):
        side["lora"] = [os.fspath(side["lora"])]
    if isinstance(side.get("lora_scaled"), str):
        side["lora_scaled"] = [side["lora_scaled"]]
    if side.get("md") is not None:
        side["md"] = os.fspath(side["md"])
    if side.get("ngld") is not None:
        side["ngld"] = str(side["ngld"])
    if isinstance(side.get("devd"), (list, tuple)):
        side["devd"] = ",".join(side["devd"]) or "none"
    from llamasplit.memory.companions import companions_from_flags

    return PlanOptions(
        settings=settings,
        fixed=frozenset(k for k in kw if k != "binary"),
        margin_bytes=DEFAULT_MARGIN_BYTES if margin is None else parse_size(margin),
        companions=companions_from_flags(**side),
    )


def attach_projector(options: PlanOptions, model_location: str, *, hf: str | None = None,
                     hf_file: str | None = None) -> PlanOptions:
    """``options`` with the projector its ``settings.mmproj`` names read and planned beside the model
    (``model.projector.locate_projector``: a file, a URL, or ``auto``); unchanged without one."""
    spec = options.settings.mmproj
    if spec is None:
        return options
    from llamasplit.model.projector import locate_projector

    where, projector = locate_projector(spec, model_location, hf=hf, hf_file=hf_file)
    return dataclasses.replace(options, settings=options.settings.replace(mmproj=where),
                               companions=dataclasses.replace(options.companions, mmproj=projector))


def _is_plan_option(key: str) -> bool:
    return key in _SETTINGS_FIELDS or key in ALIASES or key == "margin" or key in COMPANION_OPTIONS


def read_fleet(devices: Any = None, rpc: str | Sequence[str] | None = None) -> Fleet:
    """Read the devices once (see the module docstring for what ``devices`` may be), RPC workers first."""
    from llamasplit.devices import sources

    if devices is None:
        return sources.resolve_fleet(rpc=rpc)
    if isinstance(devices, (str, os.PathLike)):
        text = os.fspath(devices)
        if Path(text).is_file() or text.endswith(".json"):
            return sources.resolve_fleet(inventory=text, rpc=rpc)
        return sources.resolve_fleet(fleet_spec=text, rpc=rpc)
    if isinstance(devices, Fleet):
        fleet = devices
    elif isinstance(devices, Sequence) and all(isinstance(d, Device) for d in devices):
        from llamasplit.devices.nvml import local_host

        fleet = Fleet(devices=tuple(devices), host=local_host(), source="python")
    else:
        raise UsageError(f"devices={devices!r} is not a Fleet, a list of Device, an inventory path or a fleet spec")
    from llamasplit.devices.listdevices import list_devices, parse_endpoints
    from llamasplit.llamacpp.binaries import find_binary

    endpoints = parse_endpoints(rpc)
    if endpoints:
        from llamasplit.devices.workerinfo import serving_fleet

        listed = list_devices(find_binary("llama-server"), endpoints)
        fleet = serving_fleet(fleet, [d for d in listed if d.backend == "RPC"], rpc)
    return fleet


def plan(model: str | os.PathLike[str] | None = None, devices: Any = None, *, rpc: str | Sequence[str] | None = None,
         hf: str | None = None, hf_file: str | None = None, **options: Any) -> Plan:
    """Plan ``model`` for ``devices`` (read once) with the given options; a pure-data ``Plan``.

    ``model`` is a path or an ``http(s)://`` URL of a ``.gguf``; or give ``hf="user/repo[:quant]"``
    (and ``hf_file``) as llama.cpp's ``-hf``: remote models are planned from their headers alone.
    ``mmproj="FILE"`` (or a URL, or ``"auto"``: beside the model or in the ``-hf`` repo) plans a
    multimodal projector with it (``mmproj_offload=False``: on the CPU).
    """
    from llamasplit.model.locate import open_model
    from llamasplit.planner.plan import plan as make_plan

    opts = plan_options(**options)
    profile = open_model(model, hf=hf, hf_file=hf_file)
    opts = attach_projector(opts, profile.path, hf=hf, hf_file=hf_file)
    return make_plan(profile, read_fleet(devices, rpc), opts)


def _local(model: Any, hf: str | None, hf_file: str | None) -> Any:
    """A remote model downloaded (huggingface_hub: progress, resumable, cached); a local one as it is."""
    if isinstance(model, Plan):
        return model
    from llamasplit.model.locate import model_source

    src = model_source(model, hf=hf, hf_file=hf_file)
    if not src.is_remote:
        return model
    from llamasplit.model.download import local_copy

    return str(local_copy(src, say=lambda line: print(line, file=sys.stderr)))


def load(model: str | os.PathLike[str] | None = None, devices: Any = None, *, hf: str | None = None,
         hf_file: str | None = None, **options: Any) -> Any:
    """A ``llama_cpp.Llama`` for ``model`` with the plan applied (layers, split, context, KV types).

    Plan options (and ``hf``/``hf_file``; a remote model is downloaded first) as for ``plan``; any other ``llama_cpp.Llama`` argument (``n_threads``,
    ``verbose``, ``seed``...) is passed through. In-process loading cannot reach RPC workers.
    llama-cpp-python has no device list, so when the plan pins CUDA devices this sets
    ``CUDA_DEVICE_ORDER``/``CUDA_VISIBLE_DEVICES`` in ``os.environ`` before llama_cpp is first
    imported (afterwards it is too late: a ``LaunchError`` says so).
    """
    already_imported = "llama_cpp" in sys.modules
    plan_kw = {k: v for k, v in options.items() if _is_plan_option(k)}
    llama_kw = {k: v for k, v in options.items() if not _is_plan_option(k)}
    plan_kw["binary"] = "llama-cpp-python"
    model = _local(model, hf, hf_file)
    the_plan = plan(model, devices, **plan_kw)
    if any((d.device_id or "").startswith("rpc:") for d in the_plan.devices):
        raise UsageError("llama-cpp-python cannot use RPC workers", remedy="use llamasplit.serve(model, rpc=[...])")
    _pin_cuda(the_plan, already_imported)
    try:
        import llama_cpp
    except ImportError as exc:
        raise LaunchError(
            "llama-cpp-python is not installed",
            remedy="run `llamasplit build-llama-cpp --bindings` (llama-cpp-python 0.3.36 on the same llama.cpp build)",
        ) from exc
    known = set(inspect.signature(llama_cpp.Llama.__init__).parameters) - {"self", "kwargs", "model_path"}
    unknown = sorted(set(llama_kw) - known)
    if unknown:
        raise UsageError(
            f"unknown option {', '.join(map(repr, unknown))}",
            remedy="give plan options (see llamasplit.api) or llama_cpp.Llama arguments",
        )
    kwargs = the_plan.to_llama_cpp_python_kwargs()
    kwargs.update(llama_kw)
    try:
        return llama_cpp.Llama(**kwargs)
    except (ValueError, RuntimeError) as exc:
        raise LaunchError(f"llama-cpp-python could not load {model}: {exc}",
                          remedy="check the model file and the plan (llamasplit plan MODEL)") from exc


def _pin_cuda(the_plan: Plan, already_imported: bool) -> None:
    from llamasplit.devices.cuda_env import launch_env

    pinned = [d for d in the_plan.fleet.devices if d.backend == "CUDA" and d.id.startswith(("GPU-", "MIG-"))]
    if not pinned:
        return  # no CUDA device known by UUID: nothing to arrange
    wanted = launch_env(the_plan.fleet.devices, os.environ)
    changes = {k: wanted[k] for k in ("CUDA_DEVICE_ORDER", "CUDA_VISIBLE_DEVICES") if os.environ.get(k) != wanted[k]}
    if not changes:
        return
    if already_imported:
        raise LaunchError(
            "llama_cpp was imported before llamasplit.load, so the plan's CUDA device order cannot be set",
            remedy="set " + " ".join(f"{k}={v}" for k, v in changes.items()) + " before importing llama_cpp",
        )
    os.environ.update(changes)


def serve(
    model: str | os.PathLike[str] | Plan | None = None,
    rpc: str | Sequence[str] | int | None = None,
    *,
    devices: Any = None,
    hf: str | None = None,
    hf_file: str | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    binary: str | None = None,
    extra_args: Sequence[str] = (),
    ready_timeout_s: float = 600.0,
    worker_threads: int | None = None,
    progress: Callable[[str, float], None] | None = None,
    **options: Any,
) -> Any:
    """Plan ``model`` and start llama-server with the plan; returns a running ``Server``.

    ``rpc`` lists RPC workers (``"host:port,..."`` or a list), or is a number of workers to start
    here on loopback (stopped with the server). ``port=None`` takes a free one. The ``Server`` has
    ``.url``, ``.stop()``, ``.report()`` (predicted vs actual), ``.wait()``, and works as a context
    manager. ``model`` may also be a ready ``Plan`` (then give no plan options); a URL or ``hf=`` model is downloaded first.
    """
    from llamasplit.devices.listdevices import parse_endpoints
    from llamasplit.runner.launch import SERVER, LaunchOptions, binary_kind, launch, take_address
    from llamasplit.runner.processes import free_port, start_rpc_worker, stop_all

    if binary is not None and binary_kind(binary) != SERVER:
        raise UsageError(f"serve() runs llama-server, not {binary}", remedy="use the CLI `llamasplit run --binary` for the others")
    workers = []
    model = _local(model, hf, hf_file)
    try:
        if isinstance(rpc, int) and not isinstance(rpc, bool):
            for _ in range(rpc):
                workers.append(start_rpc_worker(threads=worker_threads))
            endpoints = [w.endpoint for w in workers]
        else:
            endpoints = parse_endpoints(rpc)
        if isinstance(model, Plan):
            if options or endpoints:
                raise UsageError("serve(plan) takes the plan as it is", remedy="give no plan options or rpc with a Plan")
            the_plan = model
        else:
            options.setdefault("binary", SERVER)
            # the workers as given: a description after "=" (b:50052=3090) sizes that worker's device
            given = endpoints if workers else rpc
            the_plan = plan(model, devices, rpc=given or None, **options)
        launch_options = LaunchOptions(binary=binary, host=host, port=port or 0, extra_args=tuple(extra_args),
                                       ready_timeout_s=ready_timeout_s)
        # extra_args=["--port", P]: llama-server serves on P (the last --port wins), so wait for it there
        launch_options = take_address(launch_options, host_given=False, port_given=port is not None)
        if not launch_options.port:
            launch_options = dataclasses.replace(launch_options, port=free_port(launch_options.host))
        return launch(the_plan, launch_options, progress=progress, workers=workers)
    except BaseException:
        stop_all(workers)
        raise
