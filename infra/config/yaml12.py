"""YAML as Pulumi reads stack files: YAML 1.2 core scalars, no duplicate keys, bounded size and expansion.

Pulumi parses ``Pulumi.<stack>.yaml`` with Go's yaml.v3: ``on``/``yes``/``off`` are strings (only
true/false are booleans), timestamps stay strings, and a key given twice is an error. PyYAML (YAML 1.1)
would read ``simulateError: on`` as true and keep the last of two duplicate keys, so stack files are read
here instead: ruamel.yaml composes the node tree under YAML 1.2 rules, and :func:`to_python` converts it
while refusing duplicate keys, tags other than the core ones, merge keys, nesting deeper than
:data:`MAX_DEPTH` and anchors/aliases that expand past :data:`MAX_VALUES` values (an "alias bomb" of a
few hundred bytes would otherwise expand to millions). The file size is bounded before parsing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from fraudctl.settings import shown

MAX_VALUES = 10_000
MAX_DEPTH = 32
_CORE = "tag:yaml.org,2002:"


class YamlProblem(Exception):
    """Why a document cannot be read; ``path`` is where (keys and list indexes), ``message`` what."""

    def __init__(self, path: tuple[Any, ...], message: str):
        super().__init__(message)
        self.path = path
        self.message = message


def compose(text: str) -> Any:
    """The node tree of a single YAML 1.2 document (None when empty); YamlProblem if it is not YAML."""
    from ruamel.yaml import YAML
    from ruamel.yaml.error import MarkedYAMLError, YAMLError

    loader = YAML(typ="safe", pure=True)
    loader.version = (1, 2)
    try:
        return loader.compose(text)
    except MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = ", ".join(part for part in (error.context, error.problem) if part) or "unreadable"
        raise YamlProblem((), f"is not valid YAML: {shown(problem)[1:-1]}{where}") from None
    except YAMLError as error:
        raise YamlProblem((), f"is not valid YAML: {shown(str(error))[1:-1]}") from None
    except RecursionError:
        raise YamlProblem((), f"is nested too deeply to be a stack file (at most {MAX_DEPTH} levels)") from None


def to_python(node: Any, on_duplicate: Callable[[tuple[Any, ...], str], None], *, max_values: int = MAX_VALUES) -> Any:
    """Plain values (dict, list, str, int, float, bool, None) from a node tree.

    Duplicate keys are reported through ``on_duplicate(path, message)`` (the first value is kept, so every
    duplicate is named at once); anything else unreadable raises YamlProblem.
    """
    budget = [max_values]

    def convert(node: Any, path: tuple[Any, ...]) -> Any:
        budget[0] -= 1
        if budget[0] < 0:
            raise YamlProblem(
                path,
                f"expands to more than {max_values} values through YAML anchors and aliases; a stack file is "
                "plain data, write the values out",
            )
        if len(path) > MAX_DEPTH:
            raise YamlProblem(path, f"is nested deeper than {MAX_DEPTH} levels")
        tag = str(node.tag)
        if node.id == "scalar":
            return _scalar(tag, node.value, path)
        if node.id == "sequence":
            _require(tag, "seq", path)
            return [convert(item, (*path, i)) for i, item in enumerate(node.value)]
        _require(tag, "map", path)
        result: dict[Any, Any] = {}
        lines: dict[Any, int] = {}
        for key_node, value_node in node.value:
            if key_node.id != "scalar":
                raise YamlProblem(path, "has a key that is a list or mapping; keys are plain names")
            if str(key_node.tag) == _CORE + "merge":
                raise YamlProblem(path, "uses a `<<` merge key; write the keys out (Pulumi reads the file as data)")
            key = _scalar(str(key_node.tag), key_node.value, path)
            line = key_node.start_mark.line + 1
            if key in result:
                on_duplicate(
                    (*path, key),
                    f"is given twice (lines {lines[key]} and {line}); Pulumi refuses duplicate keys, keep one",
                )
                continue
            lines[key] = line
            result[key] = convert(value_node, (*path, key))
        return result

    return None if node is None else convert(node, ())


def _require(tag: str, kind: str, path: tuple[Any, ...]) -> None:
    if tag != _CORE + kind:
        raise YamlProblem(path, f"has the YAML tag {shown(tag)}; stack values are plain lists, mappings and scalars")


def _scalar(tag: str, text: str, path: tuple[Any, ...]) -> Any:
    """A scalar under the YAML 1.2 core schema (what yaml.v3 gives Pulumi for an untyped value)."""
    kind = tag.removeprefix(_CORE)
    if kind in ("str", "timestamp"):
        # yaml.v3 keeps timestamp-looking plain values as strings when decoding into an untyped value.
        return text
    if kind == "null":
        return None
    if kind == "bool":
        return text.lower() == "true"
    if kind == "int":
        return _int(text)
    if kind == "float":
        lowered = text.lower().replace("_", "")
        if lowered.endswith(".inf"):
            return -math.inf if lowered.startswith("-") else math.inf
        return math.nan if lowered == ".nan" else float(lowered)
    raise YamlProblem(path, f"has the YAML tag {shown(tag)}; stack values are plain lists, mappings and scalars")


def _int(text: str) -> int:
    digits = text.replace("_", "")
    sign = -1 if digits.startswith("-") else 1
    digits = digits.lstrip("+-")
    for prefix, base in (("0b", 2), ("0o", 8), ("0x", 16)):
        if digits.startswith(prefix):
            return sign * int(digits[2:], base)
    # Go's ParseInt(s, 0, 64), which yaml.v3 uses: a leading 0 means octal.
    if len(digits) > 1 and digits.startswith("0") and set(digits) <= set("01234567"):
        return sign * int(digits, 8)
    return sign * int(digits)


def load(text: str, on_duplicate: Callable[[tuple[Any, ...], str], None]) -> Any:
    """``compose`` then ``to_python``."""
    return to_python(compose(text), on_duplicate)
