"""Shared, cached offline renders of the real Pulumi program for the infra tests."""

from __future__ import annotations

import contextlib
import functools
import io
from dataclasses import dataclass
from pathlib import Path

from infra.render import RenderResult, run_program

ROOT = Path(__file__).resolve().parent.parent
STACKS = tuple(sorted(p.name[len("Pulumi.") : -len(".yaml")] for p in ROOT.glob("Pulumi.*.yaml")))
STRATEGIES = ("canary", "blue-green")


@functools.cache
def rendered(stack: str, strategy: str = "canary", **overrides: object) -> RenderResult:
    """Render ``stack`` with ``strategy`` (and dotted-key overrides such as delivery="argocd")."""
    values: dict = {"strategy": strategy}
    for key, value in overrides.items():
        node = values
        *parents, leaf = key.split("__")  # serving__replicas=3 -> serving.replicas
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return run_program(stack, overrides=values)


def all_renders() -> list[tuple[str, str, RenderResult]]:
    return [(stack, strategy, rendered(stack, strategy)) for stack in STACKS for strategy in STRATEGIES]


@dataclass(frozen=True)
class CliResult:
    returncode: int
    stdout: str
    stderr: str


def fraudctl(*args: str) -> CliResult:
    """``fraudctl ARGS`` run in this process, from the repository root, as a user runs it: exit code and what it
    printed. (The console script as a process: tests/test_pipeline_submit.py.)"""
    from fraudctl.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.chdir(ROOT), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exit_:  # argparse's usage errors
            code = exit_.code if isinstance(exit_.code, int) else 1
    return CliResult(code, out.getvalue(), err.getvalue())
