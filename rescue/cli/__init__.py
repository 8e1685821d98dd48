"""The command line: one module per subcommand, all over the same core as the UI.

Each subcommand module has ``add_parser(subparsers)`` which registers itself and
sets ``func`` to a callable taking the parsed arguments and returning an exit
code. :func:`main` turns every :class:`~rescue.errors.RescueError` into its
message (control characters escaped, line breaks kept) and exit code: no
traceback reaches the user.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from rescue import __version__
from rescue.cli.report import report
from rescue.errors import EXIT_CANCELLED, EXIT_FAILED, EXIT_REFUSED, RescueError

UI_OPTIONS = {"--debug"}
"""The options that go with no command: with only these, the full-screen interface
starts without the parser, whose subcommand modules bring in the whole core (seconds
of the console's start under a slow CPU; the UI imports a screen's core when opened)."""


def build_parser() -> argparse.ArgumentParser:
    # one module per subcommand, imported here: not when the UI starts
    from rescue.cli import (  # noqa: PLC0415
        capture,
        consolidate,
        decrypt,
        extract,
        info,
        job,
        mount,
        network,
        restore,
        shares,
        verify,
    )
    from rescue.cli import list as list_cmd  # noqa: PLC0415

    parser = argparse.ArgumentParser(
        prog="rescue",
        description="Capture, restore and browse disk images. "
        "Without a command, starts the full-screen interface.",
        epilog="Exit codes: 0 ok, 1 failed, 2 refused or bad input, "
        "3 finished with unreadable sectors, 130 cancelled.",
    )
    parser.add_argument("--version", action="version", version=f"rescue {__version__}")
    parser.add_argument("--debug", action="store_true", help="log every system call to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in (list_cmd, capture, restore, verify, job, info, mount, extract, decrypt,
                   consolidate, shares, network):  # fmt: skip
        module.add_parser(sub)
    return parser


def _start_ui() -> int:
    from rescue.tui.app import run_app  # noqa: PLC0415  (keep textual out of CLI start-up)

    return run_app()


def main(argv: Sequence[str] | None = None) -> int:
    # (not list(): the package's `list` is the list subcommand once a parser was built)
    words = sys.argv[1:] if argv is None else [*argv]
    run: Callable[[], int]
    if set(words) <= UI_OPTIONS:
        debug, run = "--debug" in words, _start_ui
    else:
        try:
            args = build_parser().parse_args(words)
        except SystemExit as exc:  # argparse: --help (0) or a usage error (2)
            return int(exc.code or 0) if exc.code in (0, None) else EXIT_REFUSED
        debug = args.debug
        run = _start_ui if args.command is None else lambda: int(args.func(args))
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        result = run()
    except RescueError as exc:
        report(exc)
        return exc.exit_code
    except KeyboardInterrupt:
        print("rescue: cancelled.", file=sys.stderr)
        return EXIT_CANCELLED
    except BrokenPipeError:
        return EXIT_FAILED
    return result
