"""Pulumi.yaml's ``config:`` block, generated from the models: each default and description stated once.

The models (infra/config/stack.py and its sections) are the source: they validate, and their defaults are
what a stack gets. Pulumi still wants the keys declared in Pulumi.yaml (``pulumi config`` shows them, and
the engine checks a declared ``type``), so the block is generated: ``fraudctl config-schema --write``
rewrites it, and tests/test_config.py fails when the committed file differs from what the models say.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any, Literal, get_origin

import yaml

from infra.config.sources import project_defaults
from infra.config.stack import PROJECT, PROJECT_ROOT, StackSettings, secret_keys

# The generated part of Pulumi.yaml starts at this line and runs to the end of the file.
MARKER = (
    "# Generated from infra/config/ (StackSettings) by `fraudctl config-schema --write`: edit the models, not this."
)
_PREAMBLE = (
    "# Every key is validated before any resource is declared; errors name the key and the allowed values.\n"
    "# Object-valued keys are deep-merged over these defaults, so a stack sets only what it changes\n"
    "# (e.g. `pulumi config set --path serving.replicas 3`).\n"
)


def config_block() -> dict[str, dict[str, Any]]:
    """Pulumi.yaml's ``config:`` mapping (keys without the project prefix, as Pulumi.yaml writes them)."""
    defaults = project_defaults()
    secrets = secret_keys()
    block: dict[str, dict[str, Any]] = {}
    for name, info in StackSettings.model_fields.items():
        key = info.alias or name
        spec: dict[str, Any] = {}
        annotation = info.annotation
        if key in secrets or annotation is str or get_origin(annotation) is Literal:
            spec["type"] = "string"
        elif get_origin(annotation) is tuple:
            spec["type"] = "array"
            spec["items"] = {"type": "object"}
        if key in secrets:
            spec["secret"] = True
        spec["description"] = info.description
        if key in defaults:
            spec["default"] = defaults[key]
        block[key] = spec
    return block


def generated_text() -> str:
    body = yaml.safe_dump({"config": config_block()}, sort_keys=False, width=4096, allow_unicode=True)
    return f"{MARKER}\n{_PREAMBLE}{body}"


def pulumi_yaml(current: str) -> str:
    """``current`` (Pulumi.yaml's text) with its generated part replaced by what the models say."""
    if MARKER in current:
        head = current.split(MARKER, 1)[0]
    else:  # the first generation: everything above `config:` and its comment stays
        lines = current.split("\nconfig:", 1)[0].splitlines()
        while lines and lines[-1].startswith("#"):
            lines.pop()
        head = "\n".join(lines)
    return head.rstrip("\n") + "\n" + generated_text()


def write_pulumi_yaml(root: Path = PROJECT_ROOT) -> bool:
    """Rewrite Pulumi.yaml's generated part atomically; whether it changed."""
    from fraudctl.files import write_text

    path = root / "Pulumi.yaml"
    current = path.read_text()
    wanted = pulumi_yaml(current)
    if wanted == current:
        return False
    write_text(path, wanted)
    return True


def project_schema(root: Path = PROJECT_ROOT) -> dict[str, dict[str, Any]]:
    """The ``config:`` section of Pulumi.yaml with the project prefix removed (a copy: callers may edit it)."""
    path = root / "Pulumi.yaml"
    return copy.deepcopy(_read_schema(path, path.stat().st_mtime_ns))


@functools.cache
def _read_schema(path: Path, mtime_ns: int) -> dict[str, dict[str, Any]]:
    doc = yaml.safe_load(path.read_text())
    return {key.removeprefix(f"{PROJECT}:"): spec for key, spec in (doc.get("config") or {}).items()}
