"""Plain coercion for plain CLI values, so that a command does not import pydantic to parse an int.

typer 0.29 builds a pydantic ``TypeAdapter`` for every parameter of the command being run
(``typer/_coercion.py: build_runtime_param``); importing pydantic and building ~30 adapters is most
of ``llamasplit plan``'s start-up. Our options are all ``str``, ``int``, ``float``, ``bool``, ``Path``,
optional or in a list: those are converted here with the same results (a value of the wrong kind is
click's usual "Invalid value for '-c'" usage error, exit 2). Any other annotation, or a ranged or
choice parameter, goes to typer's own builder unchanged. Installed once by ``install()``; typer is
pinned (pyproject.toml), and ``install`` checks the two names it replaces exist before touching them.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

_PLAIN: dict[Any, Callable[[Any], Any]] = {}


def _to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError
    if isinstance(value, int):
        return value
    text = str(value).strip()
    return int(text)


def _to_float(value: Any) -> float:
    out = float(value)
    if not math.isfinite(out):
        raise ValueError
    return out


def _to_str(value: Any) -> str:
    if isinstance(value, bytes):
        raise ValueError
    return str(value)


def _to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on", "y", "t"):
        return True
    if text in ("0", "false", "no", "off", "n", "f"):
        return False
    raise ValueError


_PLAIN = {int: _to_int, float: _to_float, str: _to_str, bool: _to_bool, Path: Path}
_NAMES = {int: "an integer", float: "a finite number", str: "a string", bool: "true or false", Path: "a path"}


def _unwrap_optional(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin is typing.Union or (hasattr(types, "UnionType") and isinstance(annotation, types.UnionType)):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return args[0]
        return None
    return annotation


def plain_kind(annotation: Any) -> tuple[Any, bool] | None:
    """``(base type, is_list)`` when ``annotation`` is one we convert ourselves, else None.

    >>> plain_kind(typing.Optional[int]), plain_kind(list[str]), plain_kind(typing.Optional[list[str]])
    ((<class 'int'>, False), (<class 'str'>, True), (<class 'str'>, True))
    >>> plain_kind(dict[str, int]) is None
    True
    """
    inner = _unwrap_optional(annotation)
    if inner is None:
        return None
    is_list = typing.get_origin(inner) is list
    if is_list:
        args = typing.get_args(inner)
        if len(args) != 1:
            return None
        inner = _unwrap_optional(args[0])
    if inner in _PLAIN:
        return inner, is_list
    return None


def install() -> None:
    """Route plain parameters of every typer command to ``PlainRuntimeParam`` (idempotent)."""
    from typer import _coercion, core
    from typer._click.exceptions import BadParameter

    original = getattr(core, "build_runtime_param", None)
    if original is None or getattr(original, "_llamasplit_plain", False):
        return

    @dataclass(frozen=True)
    class PlainRuntimeParam(_coercion.RuntimeParam):
        base: Any = str
        is_list: bool = False

        def _coerce_value(self, value: Any, param: Any, ctx: Any) -> Any:
            convert = _PLAIN[self.base]

            def one(item: Any) -> Any:
                try:
                    return convert(item)
                except (TypeError, ValueError, OverflowError):
                    raise BadParameter(f"{str(item)[:80]!r} is not {_NAMES[self.base]}.", ctx=ctx, param=param) from None

            if self.is_list:
                items = value if isinstance(value, (list, tuple)) else [value]
                return [one(item) for item in items]
            return one(value)

    def build_runtime_param(descriptor: Any) -> Any:
        info = descriptor.parameter_info
        kind = plain_kind(descriptor.annotation)
        if (kind is None or descriptor.file_annotation is not None or getattr(info, "min", None) is not None
                or getattr(info, "max", None) is not None or descriptor.is_choice or descriptor.is_path):
            return original(descriptor)
        return PlainRuntimeParam(parameter_info=info, annotation=descriptor.annotation, base=kind[0], is_list=kind[1])

    build_runtime_param._llamasplit_plain = True  # type: ignore[attr-defined]
    core.build_runtime_param = build_runtime_param
