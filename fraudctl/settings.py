"""The base of every settings model (stack config sections, service settings): declared once, strict.

A section is a pydantic model whose fields carry their type, constraints and camelCase alias in one place;
unknown keys are errors, values are frozen. :func:`problems` turns a validation error into the project's
messages, ``<key>: <what is wrong, what is allowed>``, one per problem, with the key as the user wrote it
(``analysis.stepWeights[1]``). Each area owns its section (rollout/settings.py, model/gate.py, ...);
infra/config.py composes them into the stack config.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

# Values quoted back in messages are cut here, so a hostile file cannot make a huge error message.
MAX_SHOWN_VALUE = 80
Model = TypeVar("Model", bound="StrictSettings")


class StrictSettings(BaseModel):
    """Frozen, unknown keys refused, camelCase keys in files (snake_case attributes in code)."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        validate_default=True,
    )

    @classmethod
    def from_section(cls: type[Model], key: str, raw: Any) -> tuple[Model | None, list[str]]:
        """Validate the stack section ``key``: the model, or None and every problem as ``<key...>: ...``."""
        if raw is None:
            raw = {}
        if not isinstance(raw, Mapping):
            return None, [f"{key}: must be an object with keys {', '.join(cls.keys())}, got {type(raw).__name__}"]
        try:
            return cls.model_validate(dict(raw)), []
        except ValidationError as error:
            return None, problems(error, key, cls)

    @classmethod
    def keys(cls) -> list[str]:
        """The section's keys as written in stack files."""
        return [field.alias or name for name, field in cls.model_fields.items()]


def shown(value: Any) -> str:
    """A value quoted in a message, bounded in size."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_VALUE else f"{text[: MAX_SHOWN_VALUE - 15]}... ({len(text)} chars)"


def _path(prefix: str, loc: Sequence[Any]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path = f"{path}.{part}" if path else str(part)
    return path


def problems(error: ValidationError, prefix: str, model: type[StrictSettings] | None = None) -> list[str]:
    """One ``<key>: <message>`` line per validation problem, keys as written in files."""
    lines = []
    for item in error.errors(include_url=False):
        loc = [part for part in item["loc"] if part not in ("function-after", "function-before")]
        key = _path(prefix, loc)
        kind = item["type"]
        if kind == "extra_forbidden":
            allowed = ", ".join(model.keys()) if model is not None and len(loc) == 1 else "see Pulumi.yaml"
            message = f"unknown key; allowed keys are {allowed}"
        elif kind == "missing":
            message = "is required"
        elif kind == "value_error":
            # Our own validators' wording, after pydantic's "Value error, " prefix.
            message = item["msg"].removeprefix("Value error, ")
        else:
            message = _message(kind, item.get("ctx") or {}, item["msg"], _range(model, loc))
            if "input" in item:
                message += f", got {shown(item['input'])}"
        lines.append(f"{key}: {message}")
    return lines


_BOUNDS = {"greater_than_equal": ">=", "less_than_equal": "<=", "greater_than": ">", "less_than": "<"}
_TYPES = {
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "int_type": "must be a whole number",
    "float_parsing": "must be a number",
    "float_type": "must be a number",
    "finite_number": "must be a finite number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be a string",
    "list_type": "must be a list",
    "tuple_type": "must be a list",
    "dict_type": "must be an object",
    "model_type": "must be an object",
}


def _message(kind: str, ctx: Mapping[str, Any], fallback: str, allowed: str | None) -> str:
    """pydantic's error kinds in the project's words: what is wrong and what is allowed."""
    if kind in _BOUNDS:
        return f"must be in {allowed}" if allowed else f"must be {_BOUNDS[kind]} {next(iter(ctx.values()), '?')}"
    if kind in _TYPES:
        numeric = _TYPES[kind].endswith("number")
        return f"{_TYPES[kind]} in {allowed}" if allowed and numeric else _TYPES[kind]
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} item(s)"
    if kind == "literal_error":
        return f"must be one of {ctx.get('expected', '')}"
    if kind == "string_pattern_mismatch":
        return "is not in the allowed form"
    return fallback[0].lower() + fallback[1:] if fallback else kind


def _range(model: type[StrictSettings] | None, loc: Sequence[Any]) -> str | None:
    """The allowed interval of the number at ``loc`` (e.g. ``[1, 99]``), from the field's constraints."""
    if model is None or not loc or not isinstance(loc[0], str):
        return None
    field = next((f for name, f in model.model_fields.items() if loc[0] in (name, f.alias)), None)
    if field is None:
        return None
    metadata = list(field.metadata)
    if len(loc) > 1 and isinstance(loc[1], int):
        # An item of a tuple/list field: its constraints sit on the item type (Annotated[int, Field(...)]).
        metadata = [m for arg in get_args(field.annotation) for m in getattr(arg, "__metadata__", ())]
        metadata = [c for m in metadata for c in getattr(m, "metadata", [m])]
    low = next((getattr(m, "ge", None) for m in metadata if getattr(m, "ge", None) is not None), None)
    high = next((getattr(m, "le", None) for m in metadata if getattr(m, "le", None) is not None), None)
    if low is None or high is None:
        return None
    return f"[{low:g}, {high:g}]"
