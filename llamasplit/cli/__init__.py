"""Command line: a thin skin over the functions the Python API exports.

Each subcommand lives in its own module and registers itself on ``app``.
"""

from __future__ import annotations

import sys
import traceback

from llamasplit.cli.app import _State, app
from llamasplit.errors import LlamasplitError
from llamasplit.untrusted import printable

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
    except Exception as exc:  # usage errors from typer's click, or a bug of ours
        # typer vendors click (typer._click): recognise its exceptions by class name, not by import
        kinds = {cls.__name__ for cls in type(exc).__mro__}
        if "Exit" in kinds:
            return int(getattr(exc, "exit_code", 0))
        if "NoArgsIsHelpError" in kinds:  # `llamasplit` (or a command) alone: the help is the answer
            text = exc.format_message()  # type: ignore[attr-defined]
            if text.strip():  # rich prints the help itself and leaves the message empty
                print(text, file=sys.stderr)
            return 0
        if "ClickException" in kinds:
            print(f"llamasplit: error: {printable(exc.format_message(), limit=2000)}", file=sys.stderr)  # type: ignore[attr-defined]
            return int(getattr(exc, "exit_code", 2))
        if "Abort" in kinds:
            print("llamasplit: interrupted", file=sys.stderr)
            return 130
        if _State.debug:
            traceback.print_exc()
        first = printable(" ".join(str(exc).split()), limit=500) or type(exc).__name__
        print(f"llamasplit: internal error: {type(exc).__name__}: {first}; please report it (rerun with --debug for the traceback)", file=sys.stderr)
        return 70
    return 0


def entry() -> None:
    sys.exit(main())
