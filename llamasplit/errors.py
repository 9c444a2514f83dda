"""The errors llamasplit raises, one tree, each carrying a one-line message and a remedy.

::

    LlamasplitError                 anything we raise on purpose; the CLI prints one line and exits 1
     +-- ModelReadError             a GGUF file that cannot be read (missing, truncated, malformed)
     +-- DeviceQueryError           a device source that cannot answer (no driver, bad inventory)
     +-- NoFeasiblePlan             no placement fits; carries the shortfall per device
     +-- LaunchError                llama.cpp could not be built, found, started or kept alive
     +-- UsageError                 a bad option value (a size, a fleet spec, a flag combination)
     +-- FetchError                 a real model or llama.cpp source could not be fetched or verified

Foreign errors (OSError, pynvml's NVMLError, subprocess failures) are converted where they enter
with ``raise ... from exc`` so the cause survives for ``--debug``. Messages often quote a file or
another host (a key, a tensor name, a device description): every message and remedy goes through
``untrusted.printable`` here, once, so no error can put a terminal escape or a megabyte on screen.
"""

from __future__ import annotations

from llamasplit.untrusted import printable

MAX_MESSAGE_CHARS = 2000


class LlamasplitError(Exception):
    """Base of every error llamasplit raises on purpose.

    ``str(err)`` is one line: what went wrong, why, and what to do.
    """

    exit_code = 1

    def __init__(self, message: str, *, remedy: str | None = None) -> None:
        self.message = printable(" ".join(message.split()), limit=MAX_MESSAGE_CHARS)
        self.remedy = printable(" ".join(remedy.split()), limit=MAX_MESSAGE_CHARS) if remedy else None
        super().__init__(self.one_line())

    def one_line(self) -> str:
        if self.remedy:
            return f"{self.message}; {self.remedy}"
        return self.message


class ModelReadError(LlamasplitError):
    """A model file that cannot be read as GGUF."""


class DeviceQueryError(LlamasplitError):
    """A device source that cannot answer."""


class NoFeasiblePlan(LlamasplitError):
    """No placement of the model fits the devices.

    ``shortfall_bytes`` maps a device name to how many bytes it is short;
    ``suggestions`` lists the next moves, each one line.
    """

    def __init__(
        self,
        message: str,
        *,
        shortfall_bytes: dict[str, int] | None = None,
        suggestions: list[str] | None = None,
        remedy: str | None = None,
    ) -> None:
        self.shortfall_bytes = dict(shortfall_bytes or {})
        self.suggestions = list(suggestions or [])
        super().__init__(message, remedy=remedy)


class LaunchError(LlamasplitError):
    """llama.cpp could not be found, built, started or kept alive."""


class UsageError(LlamasplitError):
    """A bad option value."""

    exit_code = 2


class FetchError(LlamasplitError):
    """A real model or the llama.cpp source could not be fetched or verified."""
