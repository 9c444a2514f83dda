"""The typer application and the one boundary that turns our errors into a line and an exit code."""

from __future__ import annotations

import sys

import typer

from llamasplit import __version__

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
