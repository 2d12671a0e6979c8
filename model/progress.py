"""Progress lines for long work, on stderr so stdout stays clean for results."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Report = Callable[[str], None]


def stderr_report(prefix: str = "fraudctl") -> Report:
    """A reporter that prints ``[prefix] message`` to stderr, flushed at once."""

    def report(message: str) -> None:
        print(f"[{prefix}] {message}", file=sys.stderr, flush=True)

    return report


def quiet(message: str) -> None:
    """A reporter that drops every message (library use without output)."""


@contextmanager
def step(report: Report, what: str) -> Iterator[None]:
    """Report ``what ...`` before and ``what: done in N s`` after a block of work."""
    report(f"{what} ...")
    started = time.perf_counter()
    yield
    report(f"{what}: done in {time.perf_counter() - started:.1f} s")
