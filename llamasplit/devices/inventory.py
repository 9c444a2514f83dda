"""Inventory files: a ``Fleet`` saved as versioned JSON, to plan later or elsewhere.

::

    {"schema": "llamasplit.inventory/2", "source": "nvml", "simulated": false,
     "host": {...}, "devices": [{...}, ...], "links": [{...}, ...], "notes": [...]}

Writes are atomic (a temporary file in the same folder, flushed, then renamed over the target), so
a reader never sees half a file. Version 2 added ``measured`` (``llamasplit bench``'s speeds) to
devices and the host; version 1 files (without it) are still read. Every problem reading one (absent, not JSON, wrong schema, a field
of the wrong type) is one ``DeviceQueryError`` line naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import types
import typing
from pathlib import Path
from typing import Any

from llamasplit.devices.device import Device, Fleet, HostInfo, Link, LinkKind
from llamasplit.devices.measured import MeasuredSpeed
from llamasplit.errors import DeviceQueryError
from llamasplit.untrusted import printable_tree

SCHEMA = "llamasplit.inventory/2"
READABLE_SCHEMAS = ("llamasplit.inventory/1", SCHEMA)
"""Every schema this version reads; it writes only ``SCHEMA``."""
_REMEDY = "re-create it with `llamasplit gpus --save FILE`"


def inventory_dict(fleet: Fleet) -> dict[str, Any]:
    """The JSON document for ``fleet``."""
    return {"schema": SCHEMA, **fleet.to_dict()}


def save_inventory(fleet: Fleet, path: str | Path) -> Path:
    """Write ``fleet`` to ``path`` atomically; returns the path written."""
    target = Path(path)
    text = json.dumps(inventory_dict(fleet), indent=2, sort_keys=False) + "\n"
    folder = target.parent if str(target.parent) else Path(".")
    tmp_name: str | None = None
    try:
        with tempfile.NamedTemporaryFile(
            "w", encoding="utf-8", dir=folder, prefix=f".{target.name}.", suffix=".tmp", delete=False
        ) as tmp:
            tmp_name = tmp.name
            tmp.write(text)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, target)
        tmp_name = None
    except OSError as exc:
        raise DeviceQueryError(
            f"cannot write inventory {target}: {exc.strerror or exc}",
            remedy="choose a writable path for --save",
        ) from exc
    finally:
        if tmp_name is not None:
            try:
                os.unlink(tmp_name)
            except OSError:
                pass
    return target


def load_inventory(path: str | Path) -> Fleet:
    """Read an inventory file back into a ``Fleet`` whose source is ``inventory:PATH``."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise DeviceQueryError(f"inventory {source} does not exist", remedy=_REMEDY) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DeviceQueryError(f"cannot read inventory {source}: {exc}", remedy=_REMEDY) from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DeviceQueryError(
            f"inventory {source} is not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})", remedy=_REMEDY
        ) from exc
    return fleet_from_inventory(data, where=f"inventory {source}", source=f"inventory:{source}")


def fleet_from_inventory(data: Any, *, where: str = "inventory", source: str | None = None) -> Fleet:
    """Check an inventory document field by field and build the ``Fleet``."""
    if not isinstance(data, dict):
        raise DeviceQueryError(f"{where} is not a JSON object", remedy=_REMEDY)
    data = printable_tree(data)  # names, descriptions and notes are shown in tables: no raw escapes
    _all_finite(data, where)
    schema = data.get("schema")
    if schema not in READABLE_SCHEMAS:
        raise DeviceQueryError(
            f"{where} has schema {schema!r}; this llamasplit reads {' or '.join(map(repr, READABLE_SCHEMAS))}",
            remedy=_REMEDY,
        )
    devices = _list(data, "devices", where)
    if not devices:
        raise DeviceQueryError(f"{where} lists no devices", remedy=_REMEDY)
    for n, item in enumerate(devices):
        _check_fields(Device, item, f"{where}: devices[{n}]", skip={"measured"})
        _check_measured(item, f"{where}: devices[{n}]")
    ids = [d["id"] for d in devices]
    if len(set(ids)) != len(ids):
        raise DeviceQueryError(f"{where}: two devices share an id", remedy=_REMEDY)
    for n, item in enumerate(devices):
        free, total = item.get("free_bytes"), item.get("total_bytes")
        if free is not None and total is not None and free > total:
            raise DeviceQueryError(f"{where}: devices[{n}] has free_bytes {free} above total_bytes {total}", remedy=_REMEDY)
    links = _list(data, "links", where, required=False)
    for n, item in enumerate(links):
        label = f"{where}: links[{n}]"
        _check_fields(Link, item, label, skip={"kind"})
        try:
            LinkKind(item.get("kind"))
        except ValueError as exc:
            kinds = ", ".join(k.value for k in LinkKind)
            raise DeviceQueryError(f"{label}.kind {item.get('kind')!r} is not one of {kinds}", remedy=_REMEDY) from exc
        for end in ("a", "b"):
            if item[end] not in ids:
                raise DeviceQueryError(f"{label}.{end} {item[end]!r} names no device in the file", remedy=_REMEDY)
    host = data.get("host", {})
    _check_fields(HostInfo, host, f"{where}: host", skip={"measured"})
    _check_measured(host, f"{where}: host")
    for key, kind in (("source", str), ("simulated", bool)):
        if key in data and not isinstance(data[key], kind):
            raise DeviceQueryError(f"{where}: {key} must be {_type_words(kind)}", remedy=_REMEDY)
    notes = data.get("notes", [])
    if not isinstance(notes, list) or not all(isinstance(x, str) for x in notes):
        raise DeviceQueryError(f"{where}: notes must be a list of strings", remedy=_REMEDY)
    fleet = Fleet.from_dict(data)
    if source is not None:
        fleet = dataclasses.replace(fleet, source=source)
    return fleet


def _all_finite(value: Any, where: str) -> None:
    """json reads NaN and Infinity; no number in an inventory may be either (NaN bandwidth printed "nan tok/s")."""
    if isinstance(value, float) and not math.isfinite(value):
        raise DeviceQueryError(f"{where} holds the number {value}", remedy=_REMEDY)
    if isinstance(value, dict):
        for k, v in value.items():
            _all_finite(v, f"{where}: {k}" if ":" not in where else f"{where}.{k}")
    elif isinstance(value, list):
        for n, v in enumerate(value):
            _all_finite(v, f"{where}[{n}]")


def _list(data: dict[str, Any], key: str, where: str, *, required: bool = True) -> list[dict[str, Any]]:
    if key not in data and not required:
        return []
    value = data.get(key)
    if not isinstance(value, list) or not all(isinstance(x, dict) for x in value):
        raise DeviceQueryError(f"{where}: {key} must be a list of objects", remedy=_REMEDY)
    return value


def _type_words(kind: Any) -> str:
    return {str: "a string", bool: "true or false", int: "an integer", float: "a number"}.get(kind, str(kind))


_PLURAL = {str: "strings", int: "integers", float: "numbers"}


def _matches(value: Any, hint: Any) -> tuple[bool, str]:
    """Whether a JSON value fits a dataclass field's type hint, and the hint in words."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        results = [_matches(value, arg) for arg in args]
        return any(ok for ok, _ in results), " or ".join(words for _, words in results)
    if hint is type(None):
        return value is None, "null"
    if hint is bool:
        return isinstance(value, bool), "true or false"
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool), "an integer"
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool), "a number"
    if hint is str:
        return isinstance(value, str), "a string"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            ok = isinstance(value, list) and all(_matches(v, args[0])[0] for v in value)
            return ok, f"a list of {_PLURAL.get(args[0], 'values')}"
        ok = isinstance(value, list) and len(value) == len(args) and all(
            _matches(v, a)[0] for v, a in zip(value, args)
        )
        return ok, f"a list of {len(args)} values"
    if isinstance(hint, type) and issubclass(hint, LinkKind):
        return isinstance(value, str), "a link kind"
    return True, str(hint)


def _check_fields(cls: type, item: dict[str, Any], label: str, *, skip: set[str] = frozenset()) -> None:
    """Every field of dataclass ``cls`` present in ``item`` has the right JSON type; required ones are there."""
    if not isinstance(item, dict):
        raise DeviceQueryError(f"{label} must be an object", remedy=_REMEDY)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if f.name not in item:
            if required:
                raise DeviceQueryError(f"{label} has no {f.name}", remedy=_REMEDY)
            continue
        ok, words = _matches(item[f.name], hints[f.name])
        if not ok:
            raise DeviceQueryError(f"{label}.{f.name} must be {words}, not {item[f.name]!r}", remedy=_REMEDY)
        if f.name.endswith("_bytes") and isinstance(item[f.name], int) and item[f.name] < 0:
            raise DeviceQueryError(f"{label}.{f.name} is negative", remedy=_REMEDY)
        value = item[f.name]
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value < 0:
            raise DeviceQueryError(f"{label}.{f.name} is negative", remedy=_REMEDY)
    if "kind" in skip and "kind" not in item:
        raise DeviceQueryError(f"{label} has no kind", remedy=_REMEDY)


def _check_measured(item: dict[str, Any], label: str) -> None:
    """``measured`` is absent, null, or a MeasuredSpeed object with positive speeds."""
    value = item.get("measured") if isinstance(item, dict) else None
    if value is None:
        return
    _check_fields(MeasuredSpeed, value, f"{label}.measured")
    for key in ("decode_gb_s", "prefill_gflops"):
        if not value[key] > 0:
            raise DeviceQueryError(f"{label}.measured.{key} must be positive, not {value[key]!r}", remedy=_REMEDY)
    for key in ("layer_us", "token_us", "row_ns", "prefill_row_ns"):
        if key in value and value[key] < 0:
            raise DeviceQueryError(f"{label}.measured.{key} is negative", remedy=_REMEDY)
