"""`llamasplit top` and the watch loop behind `run --watch`, against the fake NVML."""

from __future__ import annotations

import io
import sys

import pynvml
import pytest

from fake_nvml import FakeNvml, rtx3060, rtx3090
from llamasplit.cli import main
from llamasplit.devices.nvml import NvmlSource
from llamasplit.errors import DeviceQueryError
from llamasplit.model.profile import read_model
from llamasplit.planner.plan import PlanOptions, plan
from llamasplit.memory.settings import LlamaSettings
from llamasplit.runner.watch import render, sample, watch

MiB = 1024 * 1024
GiB = 1024 * MiB
UUID_A = "GPU-aaaaaaaa-0000-0000-0000-000000000001"
UUID_B = "GPU-bbbbbbbb-0000-0000-0000-000000000002"


def _fake(**kw) -> FakeNvml:
    a = rtx3090("0000:01:00.0", UUID_A, free_bytes=20 * GiB, processes=[(4242, 3 * GiB), (77, 512 * MiB)], **kw)
    b = rtx3060("0000:02:00.0", UUID_B, processes=[(4242, None)])
    return FakeNvml([a, b])


def test_sample_reads_used_free_and_per_process_memory():
    fake = _fake()
    fake.nvmlInit()
    s = sample(fake, [4242])
    fake.nvmlShutdown()
    assert [x.uuid for x in s] == [UUID_A, UUID_B]
    assert s[0].free_bytes == 20 * GiB and s[0].used_bytes == s[0].total_bytes - 20 * GiB
    assert s[0].process_bytes == 3 * GiB  # only the watched pid
    assert s[1].process_bytes is None  # NVML_VALUE_NOT_AVAILABLE stays unknown, never 0
    fake.nvmlInit()
    everyone = sample(fake)
    fake.nvmlShutdown()
    assert everyone[0].process_bytes == 3 * GiB + 512 * MiB


def test_render_puts_the_plan_next_to_what_nvml_sees(smollm2_path):
    fake = _fake()
    fleet = NvmlSource(fake, env={"CUDA_DEVICE_ORDER": "PCI_BUS_ID"}).read()
    the_plan = plan(read_model(smollm2_path), fleet, PlanOptions(settings=LlamaSettings(n_ctx=4096), fixed=frozenset({"n_ctx"})))
    fake.nvmlInit()
    text = render(sample(fake, [4242]), the_plan, [4242], when="12:00:00")
    fake.nvmlShutdown()
    lines = text.splitlines()
    assert lines[0] == "llamasplit top 12:00:00 (pid 4242)"
    row = {ln.split()[0]: ln for ln in lines[2:]}
    planned = {d.device_id: d for d in the_plan.devices}
    held = [d for d in the_plan.devices if d.layers]
    assert held, "the plan puts layers on a GPU"
    for d in held:
        idx = "0" if d.device_id == UUID_A else "1"
        from llamasplit.units import format_size

        assert f"{d.name} {format_size(planned[d.device_id].total_bytes)}" in row[idx]
    # the 3090's watched process holds 3 GiB: the difference from the plan is shown with its sign
    from llamasplit.units import format_size as fs

    a = planned.get(UUID_A)
    if a is not None:
        assert row["0"].endswith(("+" if 3 * GiB >= a.total_bytes else "-") + fs(abs(3 * GiB - a.total_bytes)))
    assert not any(ch in row["1"] for ch in "+")


def test_render_lists_every_compute_process_with_a_sanitised_name():
    fake = _fake()
    fake.nvmlInit()
    s = sample(fake, [4242])
    fake.nvmlShutdown()
    names = {4242: "llama-server", 77: "evil\x1b[2Jname"}
    text = render(s, None, [4242], names=names.get)
    assert "*    gpu 0 pid 4242 llama-server: 3.00 GiB" in text
    assert "     gpu 0 pid 77 evil[2Jname: 512.00 MiB" in text and "\x1b" not in text
    assert "*    gpu 1 pid 4242 llama-server: not reported" in text


def test_watch_is_bounded_plain_text_when_not_a_terminal_and_redraws_on_one():
    out = io.StringIO()
    sleeps: list[float] = []
    n = watch(_fake(), pids=[4242], interval_s=0.5, count=3, out=out, tty=False, sleep=sleeps.append)
    assert n == 3 and sleeps == [0.5, 0.5]  # no sleep after the last sample
    blocks = out.getvalue().strip().split("\n\n")
    assert len(blocks) == 3 and all(b.startswith("llamasplit top ") for b in blocks)
    assert "\x1b" not in out.getvalue()
    tty = io.StringIO()
    watch(_fake(), count=2, out=tty, tty=True, sleep=lambda s: None)
    assert tty.getvalue().count("\x1b[H\x1b[2J") == 2
    # until(): stops as soon as the server is gone
    calls = iter([False, True])
    assert watch(_fake(), count=None, out=io.StringIO(), tty=False, until=lambda: next(calls), sleep=lambda s: None) == 1


def test_watch_without_a_driver_is_one_line():
    fake = _fake()
    fake.init_error = pynvml.NVML_ERROR_LIBRARY_NOT_FOUND
    with pytest.raises(DeviceQueryError, match="no NVIDIA GPU found"):
        watch(fake, count=1, out=io.StringIO())
    assert not fake.initialised


def test_top_command_with_the_fake_nvml(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pynvml", _fake())  # the NVML door: llamasplit imports pynvml lazily
    rc = main(["top", "--count", "2", "--interval", "0.05", "--pid", "4242"])
    out = capsys.readouterr().out
    assert rc == 0
    assert out.count("llamasplit top ") == 2 and "NVIDIA GeForce RTX 3090" in out and "3.00 GiB" in out
    assert main(["top", "--interval", "0"]) != 0
    assert "too short" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([], init_error=pynvml.NVML_ERROR_LIBRARY_NOT_FOUND))
    assert main(["top", "--count", "1"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no NVIDIA GPU found" in err[0] and "top watches NVIDIA GPUs" in err[0]
