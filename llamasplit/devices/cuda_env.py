"""CUDA device numbering: what ``CUDA_VISIBLE_DEVICES`` selects, and the env a child is launched with.

CUDA numbers devices in ``CUDA_DEVICE_ORDER`` (default ``FASTEST_FIRST``, which differs from
nvidia-smi's PCI order on mixed fleets), then keeps only those ``CUDA_VISIBLE_DEVICES`` lists, in
the order listed. Entries may be indices, GPU UUIDs (``GPU-8932f937-...``, or any prefix unique on
the machine), or MIG ids (``MIG-<uuid>`` or the older ``MIG-GPU-<uuid>/<gi>/<ci>``). An entry that
matches nothing ends the list: CUDA ignores it and everything after it.

llamasplit launches every child with ``CUDA_DEVICE_ORDER=PCI_BUS_ID`` and the plan's UUIDs in
``CUDA_VISIBLE_DEVICES``, so ``CUDA0..n`` in the child are exactly the plan's devices, in order.
Everything here is pure: environments come in as mappings and go out as new dicts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from llamasplit.devices.device import Device
from llamasplit.errors import DeviceQueryError


@dataclass(frozen=True)
class CudaUnit:
    """One thing CUDA can enumerate: a whole GPU, or one MIG instance of a GPU."""

    uuid: str
    """``GPU-...`` for a whole GPU, ``MIG-...`` for a MIG instance."""
    gpu_position: int
    """Position of the (parent) physical GPU in PCI bus order; what an index entry refers to."""
    parent_uuid: str | None = None
    """The physical GPU's UUID, for a MIG instance."""
    gpu_instance_id: int | None = None
    compute_instance_id: int | None = None


def _is_uuid(device: Device) -> bool:
    return device.id.startswith(("GPU-", "MIG-"))


def _match_prefix(units: Sequence[CudaUnit], prefix: str, *, mig: bool) -> list[int] | None:
    """Positions of the units a UUID (or unique UUID prefix) names, or ``None``."""
    if mig:
        hits = [i for i, u in enumerate(units) if u.parent_uuid is not None and u.uuid.startswith(prefix)]
        exact = [i for i in hits if units[i].uuid == prefix]
        hits = exact or hits
        return hits if len(hits) == 1 else None
    parents = {u.parent_uuid or u.uuid for u in units}
    named = [p for p in parents if p.startswith(prefix)]
    if prefix in parents:
        named = [prefix]
    if len(named) != 1:
        return None
    return [i for i, u in enumerate(units) if (u.parent_uuid or u.uuid) == named[0]]


def _match_token(units: Sequence[CudaUnit], token: str) -> list[int] | None:
    if token.isdigit():
        position = int(token)
        hits = [i for i, u in enumerate(units) if u.gpu_position == position]
        return hits or None
    if token.startswith("MIG-GPU-") and token.count("/") == 2:  # MIG-GPU-<uuid>/<gi>/<ci>
        parent, gi, ci = token[len("MIG-"):].split("/")
        if not (gi.isdigit() and ci.isdigit()):
            return None
        hits = [
            i
            for i, u in enumerate(units)
            if u.parent_uuid == parent and u.gpu_instance_id == int(gi) and u.compute_instance_id == int(ci)
        ]
        return hits or None
    if token.startswith("MIG-"):
        return _match_prefix(units, token, mig=True)
    if token.startswith("GPU-"):
        return _match_prefix(units, token, mig=False)
    # A bare UUID without its prefix: accepted here for convenience.
    return _match_prefix(units, "GPU-" + token, mig=False) or _match_prefix(units, "MIG-" + token, mig=True)


def visible_units(
    units: Sequence[CudaUnit], cuda_visible_devices: str | None
) -> tuple[list[int], list[str]]:
    """Which ``units`` (given in PCI bus order) CUDA shows, in CUDA's order, and notes on what was dropped.

    >>> gpus = [CudaUnit("GPU-aaa", 0), CudaUnit("GPU-bbb", 1), CudaUnit("GPU-ccc", 2)]
    >>> visible_units(gpus, None)[0]
    [0, 1, 2]
    >>> visible_units(gpus, "2,GPU-a")[0]
    [2, 0]
    >>> visible_units(gpus, "1,7,0")
    ([1], ["CUDA_VISIBLE_DEVICES entry '7' matches no GPU; CUDA ignores it and the 1 entry after it"])
    """
    if cuda_visible_devices is None:
        return list(range(len(units))), []
    tokens = [t.strip() for t in cuda_visible_devices.split(",")]
    if tokens == [""]:
        return [], []
    chosen: list[int] = []
    for n, token in enumerate(tokens):
        hits = _match_token(units, token) if token else None
        if hits is None or any(h in chosen for h in hits):
            rest = len(tokens) - n - 1
            why = "matches no GPU" if hits is None else "repeats a GPU"
            tail = f" and the {rest} entr{'y' if rest == 1 else 'ies'} after it" if rest else ""
            return chosen, [f"CUDA_VISIBLE_DEVICES entry {token!r} {why}; CUDA ignores it{tail}"]
        chosen.extend(hits)
    return chosen, []


def launch_env(devices: Sequence[Device], base_env: Mapping[str, str]) -> dict[str, str]:
    """The environment for a llama.cpp child: ``base_env`` with the CUDA devices pinned by UUID.

    ``devices`` are in plan order. CUDA devices carrying a UUID (``GPU-...``/``MIG-...`` ids, as the
    NVML source gives them) are listed in ``CUDA_VISIBLE_DEVICES`` in that order, so the child's
    ``CUDA0..n`` are exactly these devices. Devices of other backends are left alone. CUDA devices
    without a UUID (simulated, or read from llama.cpp) leave ``CUDA_VISIBLE_DEVICES`` as it was;
    a mix of both cannot be pinned and raises ``DeviceQueryError``.

    >>> gpu = Device("GPU-1234", "CUDA0", "RTX 3090", "CUDA", 1, 1)
    >>> launch_env([gpu], {"PATH": "/bin"})
    {'PATH': '/bin', 'CUDA_DEVICE_ORDER': 'PCI_BUS_ID', 'CUDA_VISIBLE_DEVICES': 'GPU-1234'}
    """
    env = dict(base_env)
    env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
    cuda = [d for d in devices if d.backend == "CUDA" and d.host == "localhost"]
    pinned = [d for d in cuda if _is_uuid(d)]
    if not pinned:
        return env
    if len(pinned) != len(cuda):
        loose = ", ".join(d.name for d in cuda if not _is_uuid(d))
        raise DeviceQueryError(
            f"cannot pin the CUDA devices by UUID: {loose} has no GPU UUID",
            remedy="plan from a fresh NVML read (drop --inventory/--fleet) or from a single source",
        )
    seen: list[str] = []
    for d in pinned:
        if d.id in seen:
            raise DeviceQueryError(f"device {d.id} appears twice in the plan", remedy="list each GPU once")
        seen.append(d.id)
    env["CUDA_VISIBLE_DEVICES"] = ",".join(seen)
    return env
