"""Readable problems: jsonschema's errors, paths and values as the validator reports them.

A problem is ``(location, message)``: the path of keys and indexes into the object, and what is wrong there;
:func:`render_problems` turns them into ``<kind>/<name>: <path>: <message>`` lines.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jsonschema
    from jsonschema.protocols import Validator

# Where in an object: its keys and list indexes, outermost first.
Location = tuple[Any, ...]
Problem = tuple[Location, str]


def schema_problems(validator: Validator, instance: Any, prefix: tuple[Any, ...] = ()) -> list[Problem]:
    problems: list[Problem] = []
    for error in validator.iter_errors(instance):
        problems.extend(_explain(error, prefix + tuple(error.absolute_path)))
    return problems


def _explain(error: jsonschema.ValidationError, path: Location) -> list[Problem]:
    kind, instance = error.validator, error.instance
    value: Any = error.validator_value  # the keyword's value in the schema (set on every error a validator yields)
    schema = error.schema if isinstance(error.schema, Mapping) else {}
    if kind == "additionalProperties" and value is False and isinstance(instance, dict):
        known = sorted(schema.get("properties", {}))
        return [((*path, extra), _unknown_field_message(extra, known)) for extra in sorted(set(instance) - set(known))]
    if kind == "required" and isinstance(instance, dict):
        return [((*path, name), "required field is missing") for name in value if name not in instance]
    if kind == "type":
        expected = value if isinstance(value, list) else [value]
        if instance is None:
            return [(path, f"null is not allowed here (expected {_or(expected)}; the field is not nullable)")]
        return [(path, f"expected {_or(expected)}, got {json_type(instance)} {short(instance)}")]
    if kind == "enum":
        return [(path, f"{short(instance)} is not one of: {', '.join(short(v) for v in value)}")]
    if kind == "pattern":
        return [(path, f"{short(instance)} does not match the pattern {value}")]
    if kind == "format":
        return [(path, f"{short(instance)} is not a valid {value}")]
    if kind in ("anyOf", "oneOf"):
        return [(path, _alternatives_message(kind, value, instance, error))]
    if kind == "const":
        return [(path, f"must be {short(value)}, got {short(instance)}")]
    return [(path, truncate(error.message))]


def _alternatives_message(
    kind: str, branches: list[dict[str, Any]], instance: Any, error: jsonschema.ValidationError
) -> str:
    if all(set(branch) == {"type"} for branch in branches):
        types: list[str] = []
        for branch in branches:
            for t in branch["type"] if isinstance(branch["type"], list) else [branch["type"]]:
                if t not in types and t != "null":
                    types.append(t)
        return f"expected {_or(types)}, got {json_type(instance)} {short(instance)}"
    described = " | ".join(_describe_branch(branch) for branch in branches)
    if kind == "oneOf" and not error.context:
        return f"must match exactly one of these alternatives, but matches several: {described}"
    return f"must match {'exactly ' if kind == 'oneOf' else ''}one of these alternatives: {described}"


def _describe_branch(branch: dict[str, Any]) -> str:
    if set(branch) == {"required"}:
        return "set {" + ", ".join(branch["required"]) + "}"
    inner = branch.get("not", {})
    if set(branch) == {"not"} and set(inner) == {"anyOf"} and all(set(b) == {"required"} for b in inner["anyOf"]):
        return "set none of " + ", ".join(f for b in inner["anyOf"] for f in b["required"])
    if set(branch) == {"type"}:
        return f"a value of type {branch['type']}"
    return "{" + ", ".join(f"{k}: {short(v, 40)}" for k, v in branch.items()) + "}"


def _unknown_field_message(name: str, known: list[str]) -> str:
    if not known:
        return f"unknown field {name!r}: this object takes no fields"
    hint = did_you_mean(name, known)
    if hint:
        return f"unknown field{hint}"
    listed = ", ".join(known[:25]) + (", ..." if len(known) > 25 else "")
    return f"unknown field {name!r}; known fields: {listed}"


def did_you_mean(name: str, candidates: Sequence[str]) -> str:
    by_lower = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.75)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


def describe_object(obj: Mapping[str, Any]) -> str:
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return f"{obj.get('kind') or '<no kind>'}/{name or '<no name>'}"


def render_problems(who: str, problems: list[Problem]) -> list[str]:
    unique = dict.fromkeys(f"{who}: {format_path(path)}: {message}" for path, message in problems)
    return sorted(unique)


_PLAIN_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def format_path(path: Iterable[Any]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _PLAIN_KEY_RE.fullmatch(str(part)):
            text += f".{part}" if text else str(part)
        else:
            text += f"[{json.dumps(str(part))}]"
    return text or "(root)"


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    if isinstance(value, Mapping):
        return "object"
    return type(value).__name__


def short(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        text = repr(value)
    return truncate(text, limit)


def truncate(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _or(types: Sequence[str]) -> str:
    return " or ".join(types)
