"""Inventory files: round trips, atomic writes, and one clear line for every bad file."""

from __future__ import annotations

import dataclasses
import json
import os

import pytest
from fake_nvml import FakeNvml, GPU, rtx3090
from test_devices_nvml import HOST, mig_fleet

from llamasplit.devices.measured import MeasuredSpeed
from llamasplit.devices.fleet import fleet_from_spec
from llamasplit.devices.inventory import SCHEMA, inventory_dict, load_inventory, save_inventory
from llamasplit.devices.nvml import NvmlSource
from llamasplit.errors import DeviceQueryError


def test_round_trip_simulated(tmp_path):
    fleet = fleet_from_spec("2x3090,4060ti-16g,ram=128GiB")
    path = save_inventory(fleet, tmp_path / "inv.json")
    data = json.loads(path.read_text())
    assert data["schema"] == "llamasplit.inventory/2" == SCHEMA
    assert [d["total_bytes"] for d in data["devices"]] == [25769803776, 25769803776, 17179869184]
    loaded = load_inventory(path)
    assert loaded == dataclasses.replace(fleet, source=f"inventory:{path}")
    assert loaded.simulated
    assert os.listdir(tmp_path) == ["inv.json"]  # no temporary file left behind


def test_round_trip_nvml_read_with_mig_and_notes(tmp_path):
    a = rtx3090("00000000:01:00.0", "GPU-aaaa0000-0000-0000-0000-000000000000", nvlinks=[("00000000:02:00.0", GPU)] * 4)
    b = rtx3090("00000000:02:00.0", "GPU-bbbb0000-0000-0000-0000-000000000000", nvlinks=[("00000000:01:00.0", GPU)] * 4,
                bus_width=None)
    for fake in (FakeNvml([a, b]), mig_fleet()):
        fleet = NvmlSource(fake, env={}, host=HOST).read()
        path = tmp_path / "nvml.json"
        save_inventory(fleet, path)
        assert load_inventory(path) == dataclasses.replace(fleet, source=f"inventory:{path}")


def test_overwrite_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "inv.json"
    save_inventory(fleet_from_spec("3090"), path)
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(DeviceQueryError) as err:
        save_inventory(fleet_from_spec("8xh100"), path)
    assert str(err.value) == f"cannot write inventory {path}: No space left on device; choose a writable path for --save"
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["inv.json"]


def test_unwritable_folder(tmp_path):
    with pytest.raises(DeviceQueryError) as err:
        save_inventory(fleet_from_spec("3090"), tmp_path / "missing" / "inv.json")
    assert "cannot write inventory" in str(err.value)


def _good() -> dict:
    return inventory_dict(fleet_from_spec("2x3090"))


def _with(mutate) -> dict:
    data = _good()
    mutate(data)
    return data


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([1, 2], "is not a JSON object"),
        (_with(lambda d: d.pop("schema")),
         "has schema None; this llamasplit reads 'llamasplit.inventory/1' or 'llamasplit.inventory/2'"),
        (_with(lambda d: d.update(schema="llamasplit.inventory/3")), "has schema 'llamasplit.inventory/3'"),
        (_with(lambda d: d["devices"][0].update(measured={"decode_gb_s": 10.0})), "devices[0].measured has no prefill_gflops"),
        (_with(lambda d: d["devices"][0].update(measured={"decode_gb_s": 0, "prefill_gflops": 5.0})),
         "devices[0].measured.decode_gb_s must be positive, not 0"),
        (_with(lambda d: d["host"].update(measured={"decode_gb_s": 9.0, "prefill_gflops": 5.0, "token_us": -3.0})),
         "host.measured.token_us is negative"),
        (_with(lambda d: d["host"].update(measured=[1, 2])), "host.measured must be an object"),
        (_with(lambda d: d.pop("devices")), "devices must be a list of objects"),
        (_with(lambda d: d.update(devices=[])), "lists no devices"),
        (_with(lambda d: d["devices"][0].update(total_bytes="24GiB")),
         "devices[0].total_bytes must be an integer or null, not '24GiB'"),
        (_with(lambda d: d["devices"][1].update(free_bytes=True)), "devices[1].free_bytes must be an integer or null, not True"),
        (_with(lambda d: d["devices"][0].update(free_bytes=-1)), "devices[0].free_bytes is negative"),
        (_with(lambda d: d["devices"][0].pop("name")), "devices[0] has no name"),
        (_with(lambda d: d["devices"][0].update(compute_capability=[8])), "devices[0].compute_capability must be a list of 2 values or null"),
        (_with(lambda d: d["devices"][0].update(bandwidth_gb_s="fast")), "devices[0].bandwidth_gb_s must be a number or null"),
        (_with(lambda d: d["devices"][0].update(notes="hello")), "devices[0].notes must be a list of strings"),
        (_with(lambda d: d["devices"][1].update(id=d["devices"][0]["id"])), "two devices share an id"),
        (_with(lambda d: d["links"][0].update(kind="WARP")), "links[0].kind 'WARP' is not one of"),
        (_with(lambda d: d["links"][0].pop("kind")), "links[0] has no kind"),
        (_with(lambda d: d["links"][0].update(b="GPU-nobody")), "links[0].b 'GPU-nobody' names no device in the file"),
        (_with(lambda d: d["links"][0].update(n_links=4.5)), "links[0].n_links must be an integer or null"),
        (_with(lambda d: d["host"].update(cpu_cores="many")), "host.cpu_cores must be an integer or null"),
        (_with(lambda d: d.update(simulated="yes")), "simulated must be true or false"),
    ],
)
def test_ill_typed_files(tmp_path, data, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(DeviceQueryError) as err:
        load_inventory(path)
    text = str(err.value)
    assert message in text
    assert text.startswith(f"inventory {path}")
    assert text.endswith("re-create it with `llamasplit gpus --save FILE`")
    assert "\n" not in text


def test_absent_and_not_json(tmp_path):
    with pytest.raises(DeviceQueryError) as err:
        load_inventory(tmp_path / "nope.json")
    assert str(err.value).startswith(f"inventory {tmp_path / 'nope.json'} does not exist")
    half = tmp_path / "half.json"
    half.write_text(json.dumps(_good())[:100])
    with pytest.raises(DeviceQueryError) as err:
        load_inventory(half)
    assert "is not JSON (line 1, column" in str(err.value)
    binary = tmp_path / "bin.json"
    binary.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(DeviceQueryError) as err:
        load_inventory(binary)
    assert str(err.value).startswith(f"cannot read inventory {binary}")


def test_version_1_files_are_still_read_and_measured_speeds_round_trip(tmp_path):
    fleet = fleet_from_spec("2x3090")
    old = {**inventory_dict(fleet), "schema": "llamasplit.inventory/1"}
    for d in (*old["devices"], old["host"]):
        d.pop("measured")
    (tmp_path / "v1.json").write_text(json.dumps(old))
    assert load_inventory(tmp_path / "v1.json") == dataclasses.replace(fleet, source=f"inventory:{tmp_path / 'v1.json'}")
    speed = MeasuredSpeed(decode_gb_s=12.5, prefill_gflops=80.0, layer_us=20.0, token_us=300.0, threads=2, how="llama-bench")
    measured = dataclasses.replace(
        fleet, devices=(dataclasses.replace(fleet.devices[0], measured=speed), fleet.devices[1]),
        host=dataclasses.replace(fleet.host, measured=speed),
    )
    path = save_inventory(measured, tmp_path / "v2.json")
    assert json.loads(path.read_text())["devices"][0]["measured"]["decode_gb_s"] == 12.5
    back = load_inventory(path)
    assert back.devices[0].measured == speed and back.host.measured == speed and back.devices[1].measured is None
