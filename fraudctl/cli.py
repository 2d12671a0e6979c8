"""``fraudctl``: the one entry point for everything the project does outside ``pulumi``.

Each area registers its own subcommands (``register(commands, bench)``), so this module only
assembles the parser, sets up logging (the one place: progress goes to stderr through stdlib
``logging``, machine output stays on stdout) and turns the errors every area raises for bad input
into exit code 2.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence
from typing import TextIO

from fraudctl.errors import UsageError

# Modules that contribute subcommands; each defines register(commands, bench).
COMMAND_MODULES = ("infra.cli", "model.cli", "serving.cli", "rehearsal.cli", "ops.cli", "ops.replay", "rollout.cli")
# The project's own loggers (``logging.getLogger(__name__)`` in these packages): progress at INFO.
PROJECT_LOGGERS = ("fraudctl", "infra", "model", "ops", "rehearsal", "rollout", "serving")
# Libraries whose warnings are not news to a person: urllib3 warns on every retry of a request that then
# fails (or succeeds) with its own clear message. Shown with --verbose.
CHATTY_LIBRARIES = ("urllib3",)
__all__ = ["UsageError", "build_parser", "main", "run", "setup_logging"]

log = logging.getLogger("fraudctl")


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (test capture swaps it). Below WARNING,
    only the project's records pass unless ``libraries`` is set: a library that sets its own logger to INFO
    (MLServer does, with its own handler) is not repeated here."""

    def __init__(self, libraries: bool = False) -> None:
        super().__init__(sys.stderr)
        self.libraries = libraries

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name.partition(".")[0] in PROJECT_LOGGERS
        if record.levelno < logging.WARNING and not (ours or self.libraries):
            return False
        return bool(super().filter(record))

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass


class _Formatter(logging.Formatter):
    """Progress as plain lines; warnings and errors say so; ``--verbose`` adds time and logger."""

    def __init__(self, verbose: bool) -> None:
        detailed = "%(asctime)s %(levelname)s %(name)s: %(message)s"
        super().__init__(detailed if verbose else "%(message)s", "%H:%M:%S")
        self.verbose = verbose

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if not self.verbose and record.levelno >= logging.WARNING and not getattr(record, "plain", False):
            return f"{record.levelname.lower()}: {text}"
        return text


def setup_logging(verbosity: int = 0) -> None:
    """One stderr handler on the root logger. ``verbosity`` -1 (``--quiet``): warnings and errors only;
    0: the project's progress; 1 (``--verbose``): the project's debug messages and libraries' progress.
    Idempotent: calling it again replaces the handler (``main`` may run several times in one process)."""
    root = logging.getLogger()
    for handler in [h for h in root.handlers if isinstance(h, _StderrHandler)]:
        root.removeHandler(handler)
    handler = _StderrHandler(libraries=verbosity > 0)
    handler.setFormatter(_Formatter(verbose=verbosity > 0))
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbosity > 0 else logging.WARNING)
    project = {-1: logging.WARNING, 0: logging.INFO}.get(verbosity, logging.DEBUG)
    for name in PROJECT_LOGGERS:
        logging.getLogger(name).setLevel(project)
    for name in CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(logging.NOTSET if verbosity > 0 else logging.ERROR)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fraudctl", description=(__doc__ or "").splitlines()[0])
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors on stderr")
    noise.add_argument("-v", "--verbose", action="store_true", help="debug messages, with time and source")
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


def run(args: argparse.Namespace, name: str) -> int:
    """Run a parsed command's ``handler`` the one way every entry point does: bad input (a UsageError) is one
    line ``<name>: <message>`` without a traceback, exit 2; Ctrl-C is ``<name>: interrupted``, exit 130."""
    try:
        return int(args.handler(args) or 0)
    except UsageError as exc:
        log.error("%s: %s", name, exc, extra={"plain": True})  # names the command already
        return 2
    except KeyboardInterrupt:
        log.error("%s: interrupted", name, extra={"plain": True})
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(-1 if args.quiet else 1 if args.verbose else 0)
    return run(args, f"fraudctl {args.command}")


if __name__ == "__main__":
    sys.exit(main())
