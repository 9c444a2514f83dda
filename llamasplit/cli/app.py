"""The typer application and the one boundary that turns our errors into a line and an exit code."""

from __future__ import annotations

import sys

import typer

from llamasplit import __version__
from llamasplit.cli import coercion

coercion.install()  # plain values without pydantic: most of start-up otherwise

app = typer.Typer(
    name="llamasplit",
    help="Plan and run llama.cpp across several GPUs and hosts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def say(message: str) -> None:
    """People-talk goes to stderr; stdout carries data."""
    print(message, file=sys.stderr)


def _version_callback(value: bool) -> None:
    if value:
        print(f"llamasplit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks for errors."),
) -> None:
    """Plan and run llama.cpp across several GPUs and hosts."""
    _State.debug = debug


class _State:
    debug = False


def _flags_without_metavar() -> None:
    """Typer's rich help writes ``<bool>`` after every on/off flag (``--json <bool>``), as if it took
    a value; a flag's help shows no type, as click's own help does."""
    from typer.core import TyperOption

    shown = TyperOption.display_type_rich

    def display_type_rich(self, ctx):  # type: ignore[no-untyped-def]
        if self.is_flag and self.metavar is None:
            return None
        return shown(self, ctx)

    TyperOption.display_type_rich = display_type_rich  # type: ignore[method-assign]


_flags_without_metavar()
