"""Command line: a thin skin over the functions the Python API exports.

Each subcommand lives in its own module and registers itself on ``app``.
"""

from __future__ import annotations

import sys
import traceback

from llamasplit.cli.app import _State, app
from llamasplit.errors import LlamasplitError

from llamasplit.cli import commands  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, map our errors to one line on stderr and an exit code."""
    if argv is None:
        argv = sys.argv[1:]
    commands.load(argv)
    try:
        app(args=argv, prog_name="llamasplit", standalone_mode=False)
    except LlamasplitError as err:
        if _State.debug:
            traceback.print_exc()
        print(f"llamasplit: error: {err.one_line()}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("llamasplit: interrupted", file=sys.stderr)
        return 130
    except SystemExit as exc:  # typer.Exit and click's own exits
        return int(exc.code or 0) if not isinstance(exc.code, str) else 1
    except Exception as exc:  # click usage errors arrive here in non-standalone mode
        import click

        if isinstance(exc, click.exceptions.Exit):
            return exc.exit_code
        if isinstance(exc, click.ClickException):
            print(f"llamasplit: error: {exc.format_message()}", file=sys.stderr)
            return exc.exit_code
        if isinstance(exc, click.exceptions.Abort):
            print("llamasplit: interrupted", file=sys.stderr)
            return 130
        raise
    return 0


def entry() -> None:
    sys.exit(main())
