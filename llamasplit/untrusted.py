"""Strings from files and other hosts, made safe to print.

A GGUF header, an inventory or plan file, a worker's device description and llama.cpp's log lines
are untrusted: they can carry terminal escapes (``ESC [ 2 J`` clears the screen, ``ESC ] 0 ;`` sets
the window title), carriage returns that overwrite what was printed, bidirectional overrides that
make text read backwards, or megabytes of one string. ``printable`` keeps what a person should see
and replaces the rest, like gguf-py's ``gguf_dump.py`` does before it prints names; every string
that came from outside goes through it before it reaches a terminal or an error message.
"""

from __future__ import annotations

import re
import unicodedata

_ASCII_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_UNSAFE_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}
"""Unicode control, format (bidi overrides, zero-width), surrogate, private-use, unassigned and
line/paragraph separators."""


def printable(value: object, limit: int = 200) -> str:
    """``value`` as one line a terminal shows as it is: unsafe characters become ``?``, at most
    ``limit`` characters (a longer one is cut and ends with ``...``).

    >>> printable("llama")
    'llama'
    >>> printable("red\\x1b[31m\\r\\n")
    'red?[31m??'
    >>> printable("abc\\u202edef")
    'abc?def'
    >>> printable("x" * 10, limit=6)
    'xxx...'
    >>> printable(b"\\xffraw")
    "b'\\\\xffraw'"
    """
    text = value if isinstance(value, str) else repr(value)
    if len(text) > limit:
        text = text[: max(limit - 3, 0)] + "..."
    if text.isascii():
        return _ASCII_CONTROL.sub("?", text)
    return "".join("?" if unicodedata.category(c) in _UNSAFE_CATEGORIES else c for c in text)


def printable_tree(value: object, limit: int = 500) -> object:
    """Every string in a JSON-shaped value (dicts, lists, strings, numbers) through ``printable``:
    for documents read from a file (inventories, plans) before anything in them is shown.

    >>> printable_tree({"name": "GPU\\x1b[2J", "notes": ["ok", "\\u202eok"], "n": 3})
    {'name': 'GPU?[2J', 'notes': ['ok', '?ok'], 'n': 3}
    """
    if isinstance(value, str):
        return printable(value, limit=limit)
    if isinstance(value, dict):
        return {printable(k, limit=limit) if isinstance(k, str) else k: printable_tree(v, limit) for k, v in value.items()}
    if isinstance(value, list):
        return [printable_tree(v, limit) for v in value]
    return value
