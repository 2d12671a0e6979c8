"""``fraudctl``: the one entry point for everything the project does outside ``pulumi``.

Each area registers its own subcommands (``register(commands, bench)``), so this module only
assembles the parser and turns the errors every area raises for bad input into exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from fraudctl.errors import UsageError

# Modules that contribute subcommands; each defines register(commands, bench).
COMMAND_MODULES = ("infra.cli", "model.cli", "serving.cli", "rehearsal.cli", "ops.cli", "ops.replay", "rollout.cli")
__all__ = ["UsageError", "build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fraudctl", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench_parser = commands.add_parser("bench", help="measure and print figures as JSON")
    bench = bench_parser.add_subparsers(dest="bench", required=True, metavar="TARGET")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(commands, bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.handler(args) or 0)
    except UsageError as exc:
        print(f"fraudctl {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fraudctl: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
