"""Structural schemas (CRDs' openAPIV3Schema) as JSON Schema 2020-12, the validators that check them, and
the API server's defaulting.

Unknown fields are errors wherever the API server would prune them, like ``kubectl apply --validate=strict``:
a typo in a Canary field would otherwise be dropped silently and the rollout would run with defaults.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jsonschema
    from jsonschema.protocols import Validator

# A schema node (a CRD's openAPIV3Schema, or its JSON Schema translation).
Schema = dict[str, Any]


def crd_schema(crd: Mapping[str, Any], version: str) -> Schema:
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            schema = (v.get("schema") or {}).get("openAPIV3Schema")
            # A version without a schema accepts anything the API server would keep: nothing is pruned.
            if not schema:
                return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
            return strip_descriptions(schema)
    raise KeyError(version)


def strip_descriptions(node: Schema) -> Schema:
    """Drops `description` keywords (most of the bytes); keeps fields that happen to be named description."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "description":
            continue
        if key == "properties":
            out[key] = {name: strip_descriptions(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = strip_descriptions(value)
        elif key in ("anyOf", "oneOf", "allOf"):
            out[key] = [strip_descriptions(sub) for sub in value]
        else:
            out[key] = value
    return out


def translate(node: Schema, root: bool = False, structural: bool = True) -> Schema:
    """Translates one node of a Kubernetes structural schema.

    `structural` is False inside anyOf/oneOf/allOf/not: those branches only add value checks (e.g. "one of
    these fields is required") over fields declared outside them, so they must not forbid other fields.
    """
    out: dict[str, Any] = {}
    for key in (
        "enum",
        "pattern",
        "minLength",
        "maxLength",
        "minimum",
        "maximum",
        "multipleOf",
        "minItems",
        "maxItems",
        "uniqueItems",
        "minProperties",
        "maxProperties",
        "required",
        "format",
    ):
        if key in node:
            out[key] = node[key]
    # OpenAPI 3.0 spells exclusive bounds as booleans next to minimum/maximum.
    for bound, exclusive in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if node.get(exclusive) is True and bound in node:
            out[exclusive] = out.pop(bound)

    preserve_unknown = bool(node.get("x-kubernetes-preserve-unknown-fields"))
    if node.get("x-kubernetes-int-or-string"):
        types: list[str] = ["integer", "string"]
    elif "type" in node:
        types = [node["type"]]
    else:
        types = []
    if types and node.get("nullable"):
        types.append("null")
        if "enum" in out:
            out["enum"] = [*out["enum"], None]
    if types:
        out["type"] = types[0] if len(types) == 1 else types

    if "properties" in node:
        out["properties"] = {name: translate(sub, structural=structural) for name, sub in node["properties"].items()}
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = translate(node["additionalProperties"], structural=structural)
    elif "additionalProperties" in node:
        out["additionalProperties"] = node["additionalProperties"]
    if isinstance(node.get("items"), dict):
        out["items"] = translate(node["items"], structural=structural)
    for junctor in ("anyOf", "oneOf", "allOf"):
        if junctor in node:
            out[junctor] = [translate(sub, structural=False) for sub in node[junctor]]
    if "not" in node:
        out["not"] = translate(node["not"], structural=False)

    list_type = node.get("x-kubernetes-list-type")
    if list_type == "set":
        out["uniqueItems"] = True
    elif list_type == "map" and node.get("x-kubernetes-list-map-keys"):
        out["x-list-map-keys"] = node["x-kubernetes-list-map-keys"]

    is_object = node.get("type") == "object" or "properties" in node
    if structural and is_object and not preserve_unknown and "additionalProperties" not in node:
        # The API server prunes fields its schema does not list: strict validation reports them instead.
        # This includes objects with no properties at all (Go structs with no fields, e.g. `archive.none`).
        properties = out.setdefault("properties", {})
        if node.get("x-kubernetes-embedded-resource"):
            for implied in ("apiVersion", "kind", "metadata"):
                properties.setdefault(implied, {})
        out["additionalProperties"] = False
    if root:
        properties = out.setdefault("properties", {})
        properties["apiVersion"] = {"type": "string"}
        properties["kind"] = {"type": "string"}
        # Validated separately against the built-in strict ObjectMeta schema (CRDs cannot constrain it).
        properties["metadata"] = {"type": "object"}
    return out


def _list_map_keys(
    validator: Validator, keys: list[str], instance: Any, schema: Schema
) -> Iterator[jsonschema.ValidationError]:
    from jsonschema import ValidationError

    if not isinstance(instance, list):
        return
    seen: dict[tuple[str, ...], int] = {}
    for position, item in enumerate(instance):
        if not isinstance(item, dict):
            continue
        key = tuple(json.dumps(item.get(k), sort_keys=True) for k in keys)
        if key in seen:
            described = ", ".join(f"{k}={item.get(k)!r}" for k in keys)
            yield ValidationError(
                f"duplicate entry ({described}) also at index {seen[key]}; entries of this "
                f"list must be unique by {', '.join(keys)}",
                path=[position],
            )
        else:
            seen[key] = position


class _Validators:
    """Builds the jsonschema classes on first use (importing jsonschema is not free)."""

    @functools.cached_property
    def crd(self) -> type[Validator]:
        import jsonschema

        extended: type[Validator] = jsonschema.validators.extend(
            self.builtin, validators={"x-list-map-keys": _list_map_keys}
        )
        return extended

    @functools.cached_property
    def builtin(self) -> type[Validator]:
        import jsonschema

        # JSON Schema counts 2.0 as an integer; the API server's JSON decoding does not.
        strict_types = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
            "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)
        )
        strict: type[Validator] = jsonschema.validators.extend(
            jsonschema.Draft202012Validator, type_checker=strict_types
        )
        return strict

    @functools.cached_property
    def formats(self) -> jsonschema.FormatChecker:
        import jsonschema

        # Only the integer ranges: the API server also checks e.g. date-time and byte, which we do not.
        checker = jsonschema.FormatChecker(formats=())

        @checker.checks("int32")
        def _int32(value: object) -> bool:
            return not isinstance(value, int) or -(2**31) <= value < 2**31

        @checker.checks("int64")
        def _int64(value: object) -> bool:
            return not isinstance(value, int) or -(2**63) <= value < 2**63

        return checker


VALIDATORS = _Validators()


def format_checker() -> jsonschema.FormatChecker:
    return VALIDATORS.formats


def apply_defaults(schema: Schema, value: Any) -> None:
    if isinstance(value, dict):
        properties = schema.get("properties")
        if properties:
            for name, sub in properties.items():
                if name not in value and "default" in sub:
                    value[name] = copy.deepcopy(sub["default"])
            for name, item in value.items():
                if name in properties:
                    apply_defaults(properties[name], item)
        elif isinstance(schema.get("additionalProperties"), dict):
            for item in value.values():
                apply_defaults(schema["additionalProperties"], item)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            apply_defaults(schema["items"], item)
