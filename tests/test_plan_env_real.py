"""A plan's flags and its LLAMA_ARG_* environment form mean the same thing to real llama.cpp."""

from __future__ import annotations

import os

import pytest

from llamasplit.devices.device import Device, Fleet, HostInfo
from llamasplit.llamacpp.binaries import find_binary
from llamasplit.llamacpp.oracle import parse_fit_print
from llamasplit.model.profile import read_model
from llamasplit.planner.plan import PlanOptions, plan
from llamasplit.memory.settings import LlamaSettings
from procs import endpoints, rpc_workers, run_to_end

pytestmark = pytest.mark.llamacpp


def test_env_form_equals_flags_under_llama_fit_params(smollm2_path):
    with rpc_workers(2) as ws:
        eps = endpoints(ws)
        devices = tuple(
            Device(id=f"rpc:{ep}#0", name=f"RPC{i}", description=ep, backend="RPC", total_bytes=None,
                   free_bytes=24 << 30, host=ep, bandwidth_gb_s=10.0)
            for i, ep in enumerate(eps)
        )
        fleet = Fleet(devices=devices, host=HostInfo(ram_available_bytes=16 << 30))
        settings = LlamaSettings(n_ctx=4096, tensor_split=(1.0, 2.0), type_k="q8_0", type_v="q8_0", flash_attn="on",
                                 binary="llama-fit-params")
        p = plan(read_model(smollm2_path), fleet, PlanOptions(settings=settings, fixed=frozenset({"n_ctx", "tensor_split"})))
        binary = str(find_binary("llama-fit-params"))
        by_flags = run_to_end([binary, "-fitp", "on", "-m", str(smollm2_path), *p.to_llama_args()], timeout_s=120)
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLAMA_ARG_")}
        by_env = run_to_end([binary, "-fitp", "on"], timeout_s=120, env={**env, **p.to_llama_env()})
    rows_flags, rows_env = parse_fit_print(by_flags.stdout), parse_fit_print(by_env.stdout)
    assert "--rpc" in p.to_llama_args() and "LLAMA_ARG_RPC" in p.to_llama_env()
    assert len(rows_flags) == 3 and rows_flags == rows_env
    # and the plan's own numbers are llama.cpp's, to the MiB
    for row, dev in zip(rows_flags, p.devices):
        assert (row.model_mib, row.context_mib, row.compute_mib) == (
            dev.model_bytes >> 20, dev.context_bytes >> 20, dev.compute_bytes >> 20)
