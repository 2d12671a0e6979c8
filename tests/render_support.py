"""Shared, cached offline renders of the real Pulumi program for the infra tests."""

from __future__ import annotations

import functools
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
