"""The base of every settings model (stack config sections, service settings): declared once, strict.

A section is a pydantic model whose fields carry their type, constraints and camelCase alias in one place;
unknown keys are errors (with the near miss suggested), values are frozen, and every string is plain text
(no control characters, no surrounding or whitespace-only blanks; numbers and booleans are not each other).
:func:`problems` turns a validation error into the project's messages, ``<key>: <what is wrong, what is
allowed>``, one per problem, with the key as the user wrote it (``analysis.stepWeights[1]``); values quoted
back are bounded in size (:func:`shown`), and so is a list of messages (:func:`bounded`). Each area owns its
section (rollout/settings.py, model/gate.py, ...); infra/config/ composes them into the stack config.
"""

from __future__ import annotations

import difflib
import re
import types
import typing
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator
from pydantic.alias_generators import to_camel

# Values quoted back in messages are cut here, so a hostile file cannot make a huge error message.
MAX_SHOWN_VALUE = 80
# At most this many problems are listed (then "... and N more"), each at most MAX_PROBLEM_CHARS long.
MAX_PROBLEMS = 60
MAX_PROBLEM_CHARS = 400
Model = TypeVar("Model", bound="StrictSettings")
# user:password@ (or token@) after a URL's "//": never quoted back.
_URL_CREDENTIALS = re.compile(r"(?<=//)[^/@\s'\"]*@")
# Strings longer than this are refused (no config value comes near it).
MAX_TEXT = 4096
_CONTROL_NAMES = {"\n": "line feed", "\r": "carriage return", "\t": "tab", "\x00": "NUL"}
# Unicode categories refused inside values: controls (newline, tab, NUL...), format characters (bidi
# overrides, zero-width), surrogates, private use, and line/paragraph separators.
_UNPRINTABLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})


class StrictSettings(BaseModel):
    """Frozen, unknown keys refused, camelCase keys in files (snake_case attributes in code)."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        alias_generator=to_camel,
        populate_by_name=True,
        validate_default=True,
    )

    @field_validator("*", mode="before")
    @classmethod
    def _plain_values(cls, value: Any, info: ValidationInfo) -> Any:
        """For every field of every section: strings are plain text, and numbers, booleans and strings are
        not read as each other (pydantic alone would take true as 1, "3" as 3)."""
        field = cls.model_fields.get(info.field_name or "")
        annotation = field.annotation if field is not None else None
        kind = _scalar_kind(annotation) if field is not None else None
        numeric = kind in ("a whole number", "a number")
        if kind is not None and isinstance(value, bool) and not _accepts(annotation, bool):
            allowed = _range(cls, [info.field_name]) if numeric else None
            hint = (
                "a boolean"
                if numeric
                else "a boolean: quote the value in YAML; with `pulumi config set --path` add `--type string`"
            )
            got = "; got" if kind.startswith("one of") else ", got"
            raise ValueError(f"must be {kind}{f' in {allowed}' if allowed else ''}{got} {value} ({hint})")
        if isinstance(value, str):
            text_problem(value, raise_error=True)
            if numeric:
                allowed = _range(cls, [info.field_name])
                raise ValueError(f"must be {kind}{f' in {allowed}' if allowed else ''}, got {shown(value)} (a string)")
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                if isinstance(item, str) and (problem := text_problem(item)):
                    raise ValueError(f"item {index} {problem}")
        return value

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


def text_problem(value: str, *, raise_error: bool = False) -> str | None:
    """What makes ``value`` unfit as a config string (control characters, blank, huge), or None."""
    problem = None
    for position, char in enumerate(value):
        if unicodedata.category(char) in _UNPRINTABLE:
            name = _CONTROL_NAMES.get(char) or unicodedata.name(char, "a control character").lower()
            problem = (
                f"contains U+{ord(char):04X} ({name}) at position {position}; only printable text is allowed "
                "(check for a stray newline or tab)"
            )
            break
    if problem is None and len(value) > MAX_TEXT:
        problem = f"is {len(value)} characters long; at most {MAX_TEXT} are allowed"
    elif problem is None and value and not value.strip():
        problem = 'is only whitespace; give a value, or "" where the key may be empty'
    elif problem is None and value != value.strip():
        problem = f"has leading or trailing whitespace ({shown(value)}); write the value without it"
    if problem and raise_error:
        raise ValueError(problem)
    return problem


def key_text(part: Any) -> str:
    """A key quoted in a message: as written, or its repr when it is long or holds control characters."""
    text = str(part)
    return text if len(text) <= MAX_SHOWN_VALUE and text_problem(text) is None else shown(part)


def _accepts(annotation: Any, kind: type) -> bool:
    """Whether ``kind`` is one of the types the annotation allows (through Annotated, unions, containers)."""
    if annotation is kind:
        return True
    if annotation is Any:
        return True
    return any(_accepts(arg, kind) for arg in get_args(annotation) if not isinstance(arg, str | int | float))


def _scalar_kind(annotation: Any) -> str | None:
    """What a number, string or choice field takes, in words; None for other fields (objects, secrets)."""
    for arg in _unwrap(annotation):
        if arg is int:
            return "a whole number"
        if arg is float:
            return "a number"
        if get_origin(arg) is typing.Literal:
            return "one of " + ", ".join(str(v) for v in get_args(arg))
        if arg is str:
            return "a string"
    return None


def shown(value: Any) -> str:
    """A value quoted in a message, bounded in size, with any credentials of a URL in it masked."""
    text = _URL_CREDENTIALS.sub("***@", repr(value))
    return text if len(text) <= MAX_SHOWN_VALUE else f"{text[: MAX_SHOWN_VALUE - 15]}... ({len(text)} chars)"


def near_miss(word: str, choices: Iterable[str]) -> str:
    """``"did you mean X?"`` for the closest of ``choices`` to a mistyped ``word``, or ``""``."""
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f"did you mean {close[0]}?" if close else ""


def in_parentheses(hint: str) -> str:
    return f" ({hint})" if hint else ""


def bounded(lines: Sequence[str]) -> list[str]:
    """At most MAX_PROBLEMS lines of at most MAX_PROBLEM_CHARS characters each."""
    cut = [line if len(line) <= MAX_PROBLEM_CHARS else f"{line[: MAX_PROBLEM_CHARS - 20]}... (cut)" for line in lines]
    if len(cut) > MAX_PROBLEMS:
        cut = [*cut[:MAX_PROBLEMS], f"... and {len(cut) - MAX_PROBLEMS} more problems"]
    return cut


def _path(prefix: str, loc: Sequence[Any]) -> str:
    path = prefix
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            part = key_text(part)
            path = f"{path}.{part}" if path else part
    return path


def problems(error: ValidationError, prefix: str, model: Any = None, *, at: Sequence[Any] = ()) -> list[str]:
    """One ``<key>: <message>`` line per validation problem, keys as written in files.

    ``model``: the model validated at ``prefix``, used to name allowed keys and numeric ranges; ``at``: where
    in ``model`` the validated value sits, when it was validated on its own (one key of a larger model).
    """
    lines = []
    for item in error.errors(include_url=False):
        loc = _as_written(model, [*at, *(part for part in item["loc"] if not _is_validator_tag(part))])
        key = _path(prefix, loc)
        kind = item["type"]
        ctx = item.get("ctx") or {}
        if kind == "extra_forbidden":
            parent = _model_at(model, loc[:-1])
            allowed = parent.keys() if parent is not None else []
            hint = near_miss(str(loc[-1]), allowed) if loc else ""
            message = f"unknown key{in_parentheses(hint)}" + (
                f"; allowed keys are {', '.join(allowed)}" if allowed else ""
            )
        elif kind == "missing":
            message = "is required"
        elif isinstance(getattr(ctx.get("error"), "validation_error", None), ValidationError):
            # A section whose constructor raises its own error type (model/gate.py): its problems, in place.
            lines.extend(problems(ctx["error"].validation_error, key, _model_at(model, loc)))
            continue
        elif kind in ("value_error", "assertion_error"):
            # Our own validators' wording, after pydantic's "Value error, " prefix.
            message = item["msg"].removeprefix("Value error, ").removeprefix("Assertion failed, ")
        else:
            message = _message(kind, ctx, item["msg"], _range(model, loc), _literals(model, loc))
            if "input" in item:
                # "must be one of a, b; got 'c'": after a list, a comma would read as one more choice.
                message += f"{'; ' if kind == 'literal_error' else ', '}got {shown(item['input'])}"
        lines.append(f"{key}: {message}")
    return lines


def _as_written(model: Any, loc: list[Any]) -> list[Any]:
    """``loc`` with attribute names (models built in code) replaced by the keys files use."""
    written = []
    for index, part in enumerate(loc):
        field = _field(_model_at(model, loc[:index]), part) if isinstance(part, str) else None
        written.append(field.alias if field is not None and field.alias else part)
    return written


def _is_validator_tag(part: Any) -> bool:
    # pydantic puts the validator kind or a union member's type into the location; keys never look so.
    return isinstance(part, str) and part.startswith(("function-", "literal[", "constrained-", "lax-or-strict"))


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
    "model_attributes_type": "must be an object",
}


def _message(kind: str, ctx: Mapping[str, Any], fallback: str, allowed: str | None, literals: list[str]) -> str:
    """pydantic's error kinds in the project's words: what is wrong and what is allowed."""
    if kind in _BOUNDS:
        return f"must be in {allowed}" if allowed else f"must be {_BOUNDS[kind]} {_number(next(iter(ctx.values())))}"
    if kind in _TYPES:
        numeric = _TYPES[kind].endswith("number")
        return f"{_TYPES[kind]} in {allowed}" if allowed and numeric else _TYPES[kind]
    if kind == "too_short":
        return f"must have at least {ctx.get('min_length')} item(s)"
    if kind == "too_long":
        return f"must have at most {ctx.get('max_length')} item(s)"
    if kind == "literal_error":
        return f"must be one of {', '.join(literals) if literals else ctx.get('expected', '')}"
    if kind == "string_pattern_mismatch":
        return "is not in the allowed form"
    return fallback[0].lower() + fallback[1:] if fallback else kind


def _unwrap(annotation: Any) -> list[Any]:
    """The member types of an annotation, through Annotated, Optional/unions and list/tuple items."""
    origin = get_origin(annotation)
    if origin is typing.Annotated:
        return _unwrap(get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType, list, tuple, Sequence):
        return [member for arg in get_args(annotation) if arg is not Ellipsis for member in _unwrap(arg)]
    return [annotation]


def _model_at(model: Any, loc: Sequence[Any]) -> Any:
    """The settings model that holds the key at ``loc`` (list indexes skipped), or None."""
    current = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = _field(current, part)
        if field is None:
            return None
        current = next((t for t in _unwrap(field.annotation) if _is_model(t)), None)
    return current if _is_model(current) else None


def _is_model(kind: Any) -> bool:
    return isinstance(kind, type) and issubclass(kind, StrictSettings)


def _field(model: Any, key: Any) -> Any:
    if not _is_model(model):
        return None
    return next((f for name, f in model.model_fields.items() if key in (name, f.alias)), None)


def _leaf(model: Any, loc: Sequence[Any]) -> tuple[Any, list[Any]]:
    """The field at ``loc`` and the metadata constraining its value (item constraints for list items)."""
    keys = [part for part in loc if not isinstance(part, int)]
    if not keys:
        return None, []
    field = _field(_model_at(model, keys[:-1]), keys[-1])
    if field is None:
        return None, []
    metadata = list(field.metadata)
    if isinstance(loc[-1], int):
        # An item of a tuple/list field: its constraints sit on the item type (Annotated[int, Field(...)]).
        metadata = [m for arg in get_args(field.annotation) for m in getattr(arg, "__metadata__", ())]
        metadata = [c for m in metadata for c in getattr(m, "metadata", [m])]
    return field, metadata


def _range(model: Any, loc: Sequence[Any]) -> str | None:
    """The allowed interval of the number at ``loc`` (e.g. ``[1, 99]``), from the field's constraints."""
    _, metadata = _leaf(model, loc)
    low = next((getattr(m, "ge", None) for m in metadata if getattr(m, "ge", None) is not None), None)
    high = next((getattr(m, "le", None) for m in metadata if getattr(m, "le", None) is not None), None)
    if low is None or high is None:
        return None
    return f"[{_number(low)}, {_number(high)}]"


def _literals(model: Any, loc: Sequence[Any]) -> list[str]:
    field, _ = _leaf(model, loc)
    if field is None:
        return []
    return [str(v) for arg in _unwrap(field.annotation) if get_origin(arg) is typing.Literal for v in get_args(arg)]


def _number(value: Any) -> str:
    """A bound as people write it: 1000000000, not 1e+09; 0.5 stays 0.5."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:g}" if isinstance(value, float) else str(value)
