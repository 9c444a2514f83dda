"""The GPU catalog and simulated fleets (``--fleet SPEC``), with the byte arithmetic spelled out."""

from __future__ import annotations

import pytest

from llamasplit.devices.catalog import load_catalog, pcie_gb_s
from llamasplit.devices.device import LinkKind
from llamasplit.devices.fleet import IDLE_USED_BYTES, fleet_from_spec, parse_fleet_spec
from llamasplit.errors import UsageError

GiB = 1024**3
MiB = 1024**2

REQUIRED = [
    "3060-12g", "3090", "3090-ti", "4060ti-16g", "4070-ti-super", "4080", "4090", "5090",
    "a4000", "a5000", "a6000", "l4", "l40s", "a100-40g-sxm", "a100-80g-sxm", "a100-80g-pcie",
    "h100-sxm", "h100-pcie", "h200", "rtx6000-ada", "v100-32g", "t4", "2080ti", "p40",
]


# -- catalog ----------------------------------------------------------------------------------


def test_catalog_has_every_required_gpu_with_sane_fields():
    cat = load_catalog()
    assert sorted(REQUIRED) == cat.names()
    for key in REQUIRED:
        spec = cat.specs[key]
        assert spec.vram_bytes % MiB == 0 and 8 * GiB <= spec.vram_bytes <= 141 * GiB, key
        assert spec.vram_basis in ("nvidia-smi", "datasheet"), key
        assert 250 <= spec.bandwidth_gb_s <= 5000, key
        assert spec.fp16_tflops is None or 20 <= spec.fp16_tflops <= 1000, key
        assert spec.pcie_gen in (3, 4, 5) and spec.pcie_width in (8, 16), key
        assert spec.source and spec.nvml_names, key
        if spec.nvlink_links:
            assert spec.nvlink_topology in ("bridge", "switch") and spec.nvlink_gb_s_per_link, key
        else:
            assert spec.nvlink_topology is None and spec.nvlink_gb_s_per_link is None, key
        # the per-link figure must agree with the architecture table NVML reads use
        if spec.nvlink_links:
            assert cat.nvlink_gb_s_per_link(spec.architecture, spec.compute_capability) == spec.nvlink_gb_s_per_link


def test_catalog_numbers_for_the_cards_people_ask_about():
    cat = load_catalog()
    r3090 = cat.specs["3090"]
    assert r3090.vram_bytes == 24 * GiB == 25769803776
    assert (r3090.bandwidth_gb_s, r3090.fp16_tflops) == (936.0, 71.0)
    assert (r3090.nvlink_links, r3090.nvlink_gb_s_per_link, r3090.nvlink_gb_s) == (4, 14.0625, 56.25)
    assert cat.specs["h100-sxm"].nvlink_gb_s == 18 * 25.0 == 450.0
    assert cat.specs["h200"].vram_bytes == 143771 * MiB
    assert cat.specs["4060ti-16g"].pcie_gb_s == 15.76  # Gen4 x8: 8 x 1.97
    assert cat.specs["p40"].fp16_tflops is None  # no tensor cores: unknown, not 0


def test_aliases_and_spellings_resolve():
    cat = load_catalog()
    assert cat.get("3060").key == "3060-12g"
    assert cat.get("4060ti-16").key == "4060ti-16g"
    assert cat.get("a100-80g").key == "a100-80g-sxm"
    assert cat.get("A100-80GB").key == "a100-80g-sxm"
    assert cat.get("RTX 3090").key == "3090"
    assert cat.get("NVIDIA GeForce RTX 4090").key == "4090"
    assert cat.get("rtx6000-ada").key == "rtx6000-ada"
    # no alias shadows another entry's key
    assert not set(cat.aliases) & set(cat.specs)


def test_unknown_gpu_names_close_entries():
    with pytest.raises(UsageError) as err:
        load_catalog().get("3099")
    assert "unknown GPU '3099'" in str(err.value)
    assert "3090" in str(err.value)


def test_by_nvml_name():
    cat = load_catalog()
    assert cat.by_nvml_name("NVIDIA GeForce RTX 4060 Ti", 16380 * MiB).key == "4060ti-16g"
    assert cat.by_nvml_name("GeForce RTX 2080 Ti").key == "2080ti"
    assert cat.by_nvml_name("NVIDIA Mystery GPU") is None


def test_pcie_and_nvlink_tables():
    assert (pcie_gb_s(3, 16), pcie_gb_s(4, 16), pcie_gb_s(5, 16)) == (15.76, 31.52, 63.04)
    assert pcie_gb_s(4, None) is None
    cat = load_catalog()
    assert cat.nvlink_gb_s_per_link("ampere", (8, 0)) == 25.0  # A100 NVLink3
    assert cat.nvlink_gb_s_per_link("ampere", (8, 6)) == 14.0625  # GA102 bridge
    assert cat.nvlink_gb_s_per_link("hopper", (9, 0)) == 25.0
    assert cat.nvlink_gb_s_per_link("blackwell", (10, 0)) == 50.0
    assert cat.nvlink_gb_s_per_link(None, None) is None


# -- fleet specs ------------------------------------------------------------------------------


def test_two_3090s_and_a_3060():
    fleet = fleet_from_spec("2x3090,3060-12g")
    assert fleet.simulated and fleet.source == "fleet:2x3090,3060-12g"
    assert [d.name for d in fleet.devices] == ["CUDA0", "CUDA1", "CUDA2"]
    assert [d.cuda_index for d in fleet.devices] == [0, 1, 2]
    # 24 GiB = 25769803776; minus 512 MiB idle = 25232932864
    assert [d.total_bytes for d in fleet.devices] == [25769803776, 25769803776, 12884901888]
    assert [d.free_bytes for d in fleet.devices] == [25232932864, 25232932864, 12348030976]
    assert IDLE_USED_BYTES == 536870912
    assert [d.bandwidth_gb_s for d in fleet.devices] == [936.0, 936.0, 360.0]
    assert [d.reserved_bytes for d in fleet.devices] == [None, None, None]
    a, b, c = (d.id for d in fleet.devices)
    bridge = fleet.link(a, b)
    assert (bridge.kind, bridge.n_links, bridge.bandwidth_gb_s, bridge.p2p) == (LinkKind.NVLINK, 4, 56.25, True)
    for x, y in ((a, c), (b, c)):
        link = fleet.link(x, y)
        assert (link.kind, link.bandwidth_gb_s, link.n_links) == (LinkKind.PHB, 31.52, None)
    assert len(fleet.links) == 3
    host = fleet.host
    assert (host.ram_total_bytes, host.ram_available_bytes, host.cpu_cores, host.ram_bandwidth_gb_s) == (
        64 * GiB, 60 * GiB, 16, 50.0)


def test_single_4060ti_alias():
    fleet = fleet_from_spec("4060ti-16")
    (d,) = fleet.devices
    assert (d.description, d.total_bytes, d.free_bytes) == (
        "NVIDIA GeForce RTX 4060 Ti 16GB", 17179869184, 17179869184 - 536870912)
    assert (d.pcie_gen, d.pcie_width, d.compute_capability) == (4, 8, (8, 9))
    assert fleet.links == ()


def test_four_a100_sxm_behind_nvswitch():
    fleet = fleet_from_spec("4xa100-80g-sxm")
    assert [d.total_bytes for d in fleet.devices] == [85899345920] * 4
    assert len(fleet.links) == 6
    assert {(l.kind, l.n_links, l.bandwidth_gb_s) for l in fleet.links} == {(LinkKind.NVSWITCH, 12, 300.0)}


def test_nvswitch_groups_of_eight_and_bridges_in_pairs():
    fleet = fleet_from_spec("10xh100")
    ids = [d.id for d in fleet.devices]
    assert fleet.link(ids[0], ids[7]).kind is LinkKind.NVSWITCH
    assert fleet.link(ids[8], ids[9]).kind is LinkKind.NVSWITCH
    cross = fleet.link(ids[7], ids[8])
    assert (cross.kind, cross.bandwidth_gb_s) == (LinkKind.PHB, 63.04)  # Gen5 x16: 16 x 3.94

    three = fleet_from_spec("3x3090")
    t = [d.id for d in three.devices]
    assert three.link(t[0], t[1]).kind is LinkKind.NVLINK
    assert three.link(t[1], t[2]).kind is LinkKind.PHB  # the odd card out has no partner

    mixed = fleet_from_spec("3090,4090,3090")  # identical cards pair up in spec order
    m = [d.id for d in mixed.devices]
    assert mixed.link(m[0], m[2]).kind is LinkKind.NVLINK
    assert mixed.link(m[0], m[1]).kind is LinkKind.PHB


def test_pcie_uses_the_lower_end_of_the_pair():
    fleet = fleet_from_spec("3090,4060ti-16g,t4,5090")
    ids = [d.id for d in fleet.devices]
    assert fleet.link(ids[0], ids[1]).bandwidth_gb_s == 15.76  # Gen4, x8 of the 4060 Ti
    assert fleet.link(ids[0], ids[2]).bandwidth_gb_s == 15.76  # Gen3 x16 of the T4: 16 x 0.985
    assert fleet.link(ids[0], ids[3]).bandwidth_gb_s == 31.52  # Gen4 of the 3090
    assert fleet.link(ids[1], ids[2]).bandwidth_gb_s == 7.88  # Gen3 x8


def test_host_settings():
    spec = parse_fleet_spec("2x3090, ram=128GiB, cores=32, ram-bw=80")
    assert len(spec.gpus) == 2
    assert (spec.host.ram_total_bytes, spec.host.ram_available_bytes) == (128 * GiB, 120 * GiB)
    assert (spec.host.cpu_cores, spec.host.ram_bandwidth_gb_s) == (32, 80.0)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("2x3099", ["'3099'", "3090"]),
        ("xyzzy", ["'xyzzy'", "catalog names:", "a100-80g-sxm"]),
        ("2x4060ti", ["'4060ti'", "close catalog names: 4060ti-16g"]),
        ("", ["empty --fleet"]),
        ("0x3090", ["zero GPUs"]),
        ("3090,,3060", ["empty entry"]),
        ("3090,speed=9", ["unknown setting 'speed=9'"]),
        ("3090,ram=lots", ["'lots'"]),
        ("3090,cores=0", ["cores=0"]),
        ("65x3090", ["more than 64"]),
        ("ram=64GiB", ["names no GPU"]),
    ],
)
def test_bad_specs_are_usage_errors(spec, words):
    with pytest.raises(UsageError) as err:
        fleet_from_spec(spec)
    text = str(err.value)
    assert "\n" not in text
    for word in words:
        assert word in text
