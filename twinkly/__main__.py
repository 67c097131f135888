"""``python -m twinkly COMMAND`` (and the ``twinkly`` console script): Twinkly's tools.

The proxy itself runs under ``twistd twinkly``; these commands work on what it leaves behind.
To add a command, give it a module with ``add_arguments(parser)`` and
``run(args, stdout, stderr) -> int`` and list it in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import IO

# name -> (module, one-line help). Modules are imported only to build the parser.
COMMANDS: dict[str, tuple[str, str]] = {
    "report": ("twinkly.cli.report", "summarise a report file (JSON lines) by fingerprint"),
    "recheck": ("twinkly.cli.recheck", "re-run repro bundles on both databases, compare again"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="twinkly",
        description="Tools for Twinkly, the PostgreSQL proxy that compares two databases.",
        epilog="Run the proxy itself with: twistd -n twinkly --config FILE",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", title="commands")
    for name, (module_name, help_text) in COMMANDS.items():
        module = importlib.import_module(module_name)
        sub = commands.add_parser(name, help=help_text, description=module.__doc__)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(
    argv: list[str] | None = None, stdout: IO[str] | None = None, stderr: IO[str] | None = None
) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else 2
    if args.command is None:
        parser.print_help(stderr or sys.stderr)
        return 2
    try:
        return int(args.run(args, stdout, stderr))
    except BrokenPipeError:  # e.g. piped into head: not an error
        return 0


if __name__ == "__main__":
    sys.exit(main())
