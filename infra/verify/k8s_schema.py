"""Offline Kubernetes object validator: no kubectl, no cluster (used by ``fraudctl verify`` and the tests).

* Built-in kinds are checked against the strict JSON schemas that the `kubernetes_validate` package ships
  for KUBERNETES_VERSION (unknown fields are errors).
* Custom resources are checked against CustomResourceDefinitions handed to the registry: the CRDs the
  platform's Helm releases install, rendered by Helm from the vendored charts at their pinned versions
  (infra/helm.py). Their structural schemas are translated to JSON Schema 2020-12 with unknown fields as
  errors wherever the API server would prune them, like `kubectl apply --validate=strict`: a typo in a
  Canary field would otherwise be dropped silently and the rollout would run with defaults. CEL rules
  (x-kubernetes-validations) are evaluated for the subset of CEL the CRDs use.
* Every object also gets the API server's metadata checks (name, namespace, label and annotation syntax).

Usage:

    from infra.verify.k8s_schema import SchemaRegistry, validate_objects
    assert validate_objects(objects) == []            # CRDs of the pinned charts with their defaults
    SchemaRegistry(crds).validate_object(obj)          # CRDs of one render

Errors read `<kind>/<name>: <path>: <message>`, e.g.
`Canary/fraud-detector: spec.analysis.stepWieght: unknown field (did you mean 'stepWeight'?)`.
"""

from __future__ import annotations

import copy
import difflib
import functools
import importlib.resources
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# Kubernetes release whose built-in API schemas we validate against; must be one kubernetes_validate ships.
KUBERNETES_VERSION = "1.31.0"

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_LABEL_RE = re.compile(_DNS1123_LABEL)
_DNS1123_SUBDOMAIN_RE = re.compile(rf"{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*")
_DNS1035_LABEL_RE = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
_QUALIFIED_NAME_PART_RE = re.compile(r"([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]")
_ANNOTATIONS_MAX_BYTES = 256 * 1024

# Built-in kinds whose names follow a rule other than "DNS-1123 subdomain" (k8s.io/apimachinery validation).
_NAME_RULES_BY_KIND = {
    ("", "Namespace"): "label",
    ("", "Service"): "dns1035",
    ("rbac.authorization.k8s.io", "Role"): "path-segment",
    ("rbac.authorization.k8s.io", "ClusterRole"): "path-segment",
    ("rbac.authorization.k8s.io", "RoleBinding"): "path-segment",
    ("rbac.authorization.k8s.io", "ClusterRoleBinding"): "path-segment",
}
# Built-in kinds that are cluster-scoped: the API server rejects metadata.namespace on them.
_CLUSTER_SCOPED_BUILTIN_KINDS = frozenset(
    {
        "APIService",
        "CertificateSigningRequest",
        "ClusterRole",
        "ClusterRoleBinding",
        "ComponentStatus",
        "CSIDriver",
        "CSINode",
        "CustomResourceDefinition",
        "FlowSchema",
        "IngressClass",
        "MutatingWebhookConfiguration",
        "Namespace",
        "Node",
        "PersistentVolume",
        "PriorityClass",
        "PriorityLevelConfiguration",
        "RuntimeClass",
        "StorageClass",
        "ValidatingAdmissionPolicy",
        "ValidatingAdmissionPolicyBinding",
        "ValidatingWebhookConfiguration",
        "VolumeAttachment",
    }
)
_OBJECT_META_DEF = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


# --------------------------------------------------------------------------------------------------
# Public API


class SchemaRegistry:
    """Validates Kubernetes objects offline against the built-ins and the CRDs it is given.

    Schemas are translated lazily, once per kind and version. When two CRDs define the same kind, the
    first wins and the pair is listed in ``duplicate_crds`` (``fraudctl verify`` reports those).
    """

    def __init__(
        self,
        crds: Iterable[Mapping[str, Any]],
        kubernetes_version: str = KUBERNETES_VERSION,
        crd_source: str = "the given CRDs",
    ) -> None:
        self.kubernetes_version = kubernetes_version
        self.crd_source = crd_source
        # (rule, reason) of CEL rules not evaluated; filled as kinds are loaded (see _compile_cel_rules).
        self.skipped_cel_rules: list[tuple[str, str, str]] = []
        self.duplicate_crds: list[tuple[str, str]] = []
        self._crd_index: dict[tuple[str, str], _CrdIndexEntry] = {}
        for crd in crds:
            self._add_crd(crd)
        self._crd_schemas: dict[tuple[str, str, str], _CustomKind] = {}
        self._builtins: _BuiltinSchemas | None = None

    def _add_crd(self, crd: Mapping[str, Any]) -> None:
        if crd.get("apiVersion") != "apiextensions.k8s.io/v1" or crd.get("kind") != "CustomResourceDefinition":
            raise ValueError(
                f"expected an apiextensions.k8s.io/v1 CustomResourceDefinition, got "
                f"{crd.get('apiVersion')} {crd.get('kind')}"
            )
        spec = crd["spec"]
        key = (spec["group"], spec["names"]["kind"])
        if key in self._crd_index:
            self.duplicate_crds.append(key)
            return
        versions = {v["name"]: bool(v.get("served")) for v in spec["versions"]}
        self._crd_index[key] = _CrdIndexEntry(crd, spec["scope"], versions)

    # ---- lookups

    def crd_kinds(self) -> set[tuple[str, str]]:
        """(group, kind) of every custom resource kind the registry has a CRD for."""
        return set(self._index())

    def served_versions(self, group: str, kind: str) -> list[str]:
        entry = self._index().get((group, kind))
        return [] if entry is None else [v for v, served in entry.versions.items() if served]

    def builtin_kinds(self) -> set[tuple[str, str, str]]:
        """(group, version, kind) of every built-in kind known for kubernetes_version."""
        return set(self._builtin_schemas().kinds)

    # ---- validation

    def validate_objects(self, objs: Iterable[Any]) -> list[str]:
        """Errors of all objects, plus objects rendered twice under the same identity."""
        errors: list[str] = []
        first_seen: dict[tuple[str, str, str, str], int] = {}
        for position, obj in enumerate(objs):
            errors.extend(self.validate_object(obj))
            identity = _identity(obj)
            if identity is None:
                continue
            if identity in first_seen:
                errors.append(
                    f"{_describe(obj)}: (root): duplicate object: objects #{first_seen[identity]} and "
                    f"#{position} have the same apiVersion group, kind, namespace and name"
                )
            else:
                first_seen[identity] = position
        return errors

    def validate_object(self, obj: Any) -> list[str]:
        """Human-readable errors (`<kind>/<name>: <path>: <message>`); empty when the object is valid."""
        if not isinstance(obj, Mapping):
            return [f"<not an object>: (root): expected a mapping, got {_json_type(obj)} {_short(obj)}"]
        who = _describe(obj)
        try:
            obj = _plain_json(obj, ())
        except _NotJsonError as exc:
            return [f"{who}: {_format_path(exc.path)}: {exc}"]

        problems: list[tuple[tuple[Any, ...], str]] = []
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if not isinstance(api_version, str) or not api_version:
            problems.append((("apiVersion",), "required field is missing (expected e.g. apps/v1)"))
        if not isinstance(kind, str) or not kind:
            problems.append((("kind",), "required field is missing (expected e.g. Deployment)"))
        if problems:
            return _render(who, problems)
        group, _, version = api_version.rpartition("/")

        builtins = self._builtin_schemas()
        if builtins.has_group(group):
            def_name = builtins.kinds.get((group, version, kind))
            if def_name is None:
                return _render(who, [builtins.explain_unknown(group, version, kind, self.kubernetes_version)])
            problems.extend(_schema_problems(builtins.validator(def_name), obj))
            cluster_scoped = kind in _CLUSTER_SCOPED_BUILTIN_KINDS
        else:
            custom = self._custom_kind(group, version, kind)
            if isinstance(custom, tuple):
                return _render(who, [custom])
            cluster_scoped = custom.scope == "Cluster"
            problems.extend(self._custom_problems(custom, obj))

        problems.extend(_metadata_problems(obj, group, kind, cluster_scoped))
        return _render(who, problems)

    # ---- custom resources

    def _custom_problems(self, custom: _CustomKind, obj: dict) -> list[tuple[tuple[Any, ...], str]]:
        # The API server defaults before it validates (a defaulted field satisfies `required`, and CEL
        # rules see defaulted values). `obj` is already our own copy (see _plain_json), so default in place.
        _apply_defaults(custom.schema, obj)
        problems = list(_schema_problems(custom.validator, obj))
        metadata = obj.get("metadata")
        if isinstance(metadata, dict):
            problems.extend(
                _schema_problems(self._builtin_schemas().validator(_OBJECT_META_DEF), metadata, prefix=("metadata",))
            )
        if not problems and custom.has_cel:
            # Only on schema-valid objects, so rules see the types they were written for.
            problems.extend(_cel_problems(custom.schema, obj, ()))
        return problems

    def _custom_kind(self, group: str, version: str, kind: str) -> _CustomKind | tuple[tuple[str], str]:
        index = self._index()
        entry = index.get((group, kind))
        if entry is None:
            kinds_in_group = sorted(k for g, k in index if g == group)
            if kinds_in_group:
                hint = _did_you_mean(kind, kinds_in_group)
                return ("kind",), (
                    f"unknown kind {kind!r} in API group {group!r}{hint}; kinds with a CRD: {', '.join(kinds_in_group)}"
                )
            groups = sorted({g for g, _ in index})
            return ("apiVersion",), (
                f"no built-in API group and no CRD in {self.crd_source} for {group or 'core'!r} "
                f"(kind {kind}); CRD groups: {', '.join(groups)}"
            )
        served = [v for v, is_served in entry.versions.items() if is_served]
        if version not in served:
            status = "defined but not served" if version in entry.versions else "not defined"
            return ("apiVersion",), (
                f"{group}/{version} is {status} for {kind}; served versions: "
                f"{', '.join(f'{group}/{v}' for v in served)}"
            )
        key = (group, version, kind)
        if key not in self._crd_schemas:
            raw_schema = _crd_schema(entry.crd, version)
            self._crd_schemas[key] = _CustomKind(
                schema=raw_schema,
                validator=_LAZY.crd(_translate(raw_schema, root=True), format_checker=_formats()),
                scope=entry.scope,
                has_cel=self._compile_cel_rules(f"{kind}/{version}", raw_schema),
            )
        return self._crd_schemas[key]

    def _compile_cel_rules(self, where: str, schema: dict) -> bool:
        found = False
        for path, rule in _iter_cel_rules(schema, ()):
            found = True
            location = f"{where} {_format_path(path)}"
            if _is_transition_rule(rule["rule"]):
                self.skipped_cel_rules.append((location, rule["rule"], "transition rule (needs oldSelf)"))
                continue
            try:
                _compile_cel(rule["rule"])
            except _CelUnsupportedError as exc:
                self.skipped_cel_rules.append((location, rule["rule"], f"unsupported CEL: {exc}"))
        return found

    def _index(self) -> dict[tuple[str, str], _CrdIndexEntry]:
        return self._crd_index

    def _builtin_schemas(self) -> _BuiltinSchemas:
        if self._builtins is None:
            self._builtins = _load_builtin_schemas(self.kubernetes_version)
        return self._builtins


@functools.cache
def default_registry() -> SchemaRegistry:
    """One registry per process: the CRDs every pinned chart installs with its default values."""
    from infra.helm import pinned_chart_crds

    return SchemaRegistry(pinned_chart_crds(), crd_source="the pinned charts")


def validate_object(obj: Any) -> list[str]:
    return default_registry().validate_object(obj)


def validate_objects(objs: Iterable[Any]) -> list[str]:
    return default_registry().validate_objects(objs)


def crd_kinds() -> set[tuple[str, str]]:
    return default_registry().crd_kinds()


# --------------------------------------------------------------------------------------------------
# CRD index


@dataclass
class _CustomKind:
    schema: dict  # the CRD's openAPIV3Schema (descriptions stripped): drives defaulting and CEL
    validator: Any  # jsonschema validator of the translated schema
    scope: str
    has_cel: bool


@dataclass
class _CrdIndexEntry:
    crd: Mapping[str, Any]
    scope: str
    versions: dict[str, bool]  # version -> served


def _crd_schema(crd: Mapping[str, Any], version: str) -> dict:
    for v in crd["spec"]["versions"]:
        if v["name"] == version:
            schema = (v.get("schema") or {}).get("openAPIV3Schema")
            # A version without a schema accepts anything the API server would keep: nothing is pruned.
            if not schema:
                return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
            return _strip_descriptions(schema)
    raise KeyError(version)


def _strip_descriptions(node: dict) -> dict:
    """Drops `description` keywords (most of the bytes); keeps fields that happen to be named description."""
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "description":
            continue
        if key == "properties":
            out[key] = {name: _strip_descriptions(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not") and isinstance(value, dict):
            out[key] = _strip_descriptions(value)
        elif key in ("anyOf", "oneOf", "allOf"):
            out[key] = [_strip_descriptions(sub) for sub in value]
        else:
            out[key] = value
    return out


# --------------------------------------------------------------------------------------------------
# Structural schema -> JSON Schema 2020-12


def _translate(node: dict, root: bool = False, structural: bool = True) -> dict:
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
        out["properties"] = {name: _translate(sub, structural=structural) for name, sub in node["properties"].items()}
    if isinstance(node.get("additionalProperties"), dict):
        out["additionalProperties"] = _translate(node["additionalProperties"], structural=structural)
    elif "additionalProperties" in node:
        out["additionalProperties"] = node["additionalProperties"]
    if isinstance(node.get("items"), dict):
        out["items"] = _translate(node["items"], structural=structural)
    for junctor in ("anyOf", "oneOf", "allOf"):
        if junctor in node:
            out[junctor] = [_translate(sub, structural=False) for sub in node[junctor]]
    if "not" in node:
        out["not"] = _translate(node["not"], structural=False)

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


def _list_map_keys(validator: Any, keys: list[str], instance: Any, schema: dict) -> Iterator[Any]:
    from jsonschema import ValidationError

    if not isinstance(instance, list):
        return
    seen: dict[tuple, int] = {}
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


class _LazyValidatorClass:
    """Builds the jsonschema classes on first use (importing jsonschema is not free)."""

    @functools.cached_property
    def crd(self) -> Any:
        import jsonschema

        return jsonschema.validators.extend(self.builtin, validators={"x-list-map-keys": _list_map_keys})

    @functools.cached_property
    def builtin(self) -> Any:
        import jsonschema

        # JSON Schema counts 2.0 as an integer; the API server's JSON decoding does not.
        strict_types = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
            "integer", lambda _checker, value: isinstance(value, int) and not isinstance(value, bool)
        )
        return jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=strict_types)

    @functools.cached_property
    def formats(self) -> Any:
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


_LAZY = _LazyValidatorClass()


def _formats() -> Any:
    return _LAZY.formats


# --------------------------------------------------------------------------------------------------
# Built-in kinds (kubernetes_validate's strict schemas)


@dataclass
class _BuiltinSchemas:
    kinds: dict[tuple[str, str, str], str]  # (group, version, kind) -> definition name
    make_validator: Callable[[str], Any]
    _validators: dict[str, Any] = field(default_factory=dict)

    def has_group(self, group: str) -> bool:
        return any(g == group for g, _, _ in self.kinds)

    def validator(self, def_name: str) -> Any:
        if def_name not in self._validators:
            self._validators[def_name] = self.make_validator(def_name)
        return self._validators[def_name]

    def explain_unknown(self, group: str, version: str, kind: str, k8s_version: str) -> tuple[tuple[str], str]:
        prefix = f"{group}/" if group else ""
        versions = sorted(f"{prefix}{v}" for g, v, k in self.kinds if g == group and k == kind)
        if versions:
            return ("apiVersion",), (
                f"{prefix}{version} {kind} does not exist in Kubernetes {k8s_version}; available: {', '.join(versions)}"
            )
        kinds = sorted({k for g, _, k in self.kinds if g == group and not k.endswith("List")})
        return ("kind",), (
            f"unknown kind {kind!r} in built-in API group {group or 'core'!r} (Kubernetes "
            f"{k8s_version}){_did_you_mean(kind, kinds)}"
        )


def _load_builtin_schemas(k8s_version: str) -> _BuiltinSchemas:
    import kubernetes_validate.utils
    from referencing import Registry, Resource

    shipped = sorted(set(kubernetes_validate.utils.all_versions()))
    if k8s_version not in shipped:
        raise ValueError(
            f"kubernetes_validate does not ship schemas for Kubernetes {k8s_version}; it ships {', '.join(shipped)}"
        )
    # Read the package's schema directory directly: its validate() re-reads the 1.3 MB definitions file
    # on every call and stops at the first error; we want all errors, fast.
    schema_dir = importlib.resources.files("kubernetes_validate") / "kubernetes-json-schema"
    definitions = json.loads((schema_dir / f"v{k8s_version}-local-strict" / "_definitions.json").read_text())
    base_uri = definitions["$id"]
    registry = Registry().with_resource(base_uri, Resource.from_contents(definitions))
    kinds: dict[tuple[str, str, str], str] = {}
    for name, schema in definitions["$defs"].items():
        if name.startswith("io.k8s.apimachinery."):
            continue  # DeleteOptions/WatchEvent claim every group/version (even removed ones): not storable
        for gvk in schema.get("x-kubernetes-group-version-kind", []):
            kinds[(gvk["group"], gvk["version"], gvk["kind"])] = name

    def make_validator(def_name: str) -> Any:
        return _LAZY.builtin({"$ref": f"{base_uri}#/$defs/{def_name}"}, registry=registry, format_checker=_formats())

    return _BuiltinSchemas(kinds=kinds, make_validator=make_validator)


# --------------------------------------------------------------------------------------------------
# jsonschema errors -> readable problems


def _schema_problems(validator: Any, instance: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[tuple, str]]:
    problems: list[tuple[tuple, str]] = []
    for error in validator.iter_errors(instance):
        problems.extend(_explain(error, prefix + tuple(error.absolute_path)))
    return problems


def _explain(error: Any, path: tuple) -> list[tuple[tuple, str]]:
    kind, value, instance, schema = error.validator, error.validator_value, error.instance, error.schema
    if kind == "additionalProperties" and value is False and isinstance(instance, dict):
        known = sorted(schema.get("properties", {}))
        return [((*path, extra), _unknown_field_message(extra, known)) for extra in sorted(set(instance) - set(known))]
    if kind == "required" and isinstance(instance, dict):
        return [((*path, name), "required field is missing") for name in value if name not in instance]
    if kind == "type":
        expected = value if isinstance(value, list) else [value]
        if instance is None:
            return [(path, f"null is not allowed here (expected {_or(expected)}; the field is not nullable)")]
        return [(path, f"expected {_or(expected)}, got {_json_type(instance)} {_short(instance)}")]
    if kind == "enum":
        return [(path, f"{_short(instance)} is not one of: {', '.join(_short(v) for v in value)}")]
    if kind == "pattern":
        return [(path, f"{_short(instance)} does not match the pattern {value}")]
    if kind == "format":
        return [(path, f"{_short(instance)} is not a valid {value}")]
    if kind in ("anyOf", "oneOf"):
        return [(path, _alternatives_message(kind, value, instance, error))]
    if kind == "const":
        return [(path, f"must be {_short(value)}, got {_short(instance)}")]
    return [(path, _truncate(error.message))]


def _alternatives_message(kind: str, branches: list[dict], instance: Any, error: Any) -> str:
    if all(set(branch) == {"type"} for branch in branches):
        types: list[str] = []
        for branch in branches:
            for t in branch["type"] if isinstance(branch["type"], list) else [branch["type"]]:
                if t not in types and t != "null":
                    types.append(t)
        return f"expected {_or(types)}, got {_json_type(instance)} {_short(instance)}"
    described = " | ".join(_describe_branch(branch) for branch in branches)
    if kind == "oneOf" and not error.context:
        return f"must match exactly one of these alternatives, but matches several: {described}"
    return f"must match {'exactly ' if kind == 'oneOf' else ''}one of these alternatives: {described}"


def _describe_branch(branch: dict) -> str:
    if set(branch) == {"required"}:
        return "set {" + ", ".join(branch["required"]) + "}"
    inner = branch.get("not", {})
    if set(branch) == {"not"} and set(inner) == {"anyOf"} and all(set(b) == {"required"} for b in inner["anyOf"]):
        return "set none of " + ", ".join(f for b in inner["anyOf"] for f in b["required"])
    if set(branch) == {"type"}:
        return f"a value of type {branch['type']}"
    return "{" + ", ".join(f"{k}: {_short(v, 40)}" for k, v in branch.items()) + "}"


def _unknown_field_message(name: str, known: list[str]) -> str:
    if not known:
        return f"unknown field {name!r}: this object takes no fields"
    hint = _did_you_mean(name, known)
    if hint:
        return f"unknown field{hint}"
    listed = ", ".join(known[:25]) + (", ..." if len(known) > 25 else "")
    return f"unknown field {name!r}; known fields: {listed}"


def _did_you_mean(name: str, candidates: Sequence[str]) -> str:
    by_lower = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.75)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


# --------------------------------------------------------------------------------------------------
# Metadata checks (the API server's generic ObjectMeta validation)


def _metadata_problems(obj: dict, group: str, kind: str, cluster_scoped: bool) -> list[tuple[tuple, str]]:
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return [
            (
                ("metadata",),
                "required field is missing" if metadata is None else f"expected object, got {_json_type(metadata)}",
            )
        ]
    problems: list[tuple[tuple, str]] = []
    name = metadata.get("name")
    if not name:
        problems.append((("metadata", "name"), "required field is missing"))
    elif isinstance(name, str):
        rule = _NAME_RULES_BY_KIND.get((group, kind), "subdomain")
        message = _name_problem(name, rule)
        if message:
            problems.append((("metadata", "name"), message))
        if (group, kind) == ("apiextensions.k8s.io", "CustomResourceDefinition"):
            spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
            names = spec.get("names") if isinstance(spec.get("names"), dict) else {}
            expected = f"{names.get('plural')}.{spec.get('group')}"
            if name != expected:
                problems.append((("metadata", "name"), f"must be <spec.names.plural>.<spec.group> = {expected!r}"))
    namespace = metadata.get("namespace")
    if namespace is not None and isinstance(namespace, str):
        if cluster_scoped:
            problems.append((("metadata", "namespace"), f"not allowed: {kind} is cluster-scoped"))
        else:
            message = _name_problem(namespace, "label")
            if message:
                problems.append((("metadata", "namespace"), message))
    for field_name in ("labels", "annotations"):
        entries = metadata.get(field_name)
        if not isinstance(entries, dict):
            continue
        for key, value in entries.items():
            key_problem = _qualified_name_problem(key)
            if key_problem:
                problems.append((("metadata", field_name, key), f"invalid key: {key_problem}"))
            if field_name == "labels" and isinstance(value, str):
                value_problem = _label_value_problem(value)
                if value_problem:
                    problems.append((("metadata", field_name, key), f"invalid value {value!r}: {value_problem}"))
        if field_name == "annotations":
            total = sum(len(str(k).encode()) + len(str(v).encode()) for k, v in entries.items())
            if total > _ANNOTATIONS_MAX_BYTES:
                problems.append((("metadata", "annotations"), f"total size {total} bytes exceeds 262144"))
    return problems


def _name_problem(name: str, rule: str) -> str | None:
    if rule == "path-segment":
        if name in (".", "..") or "/" in name or "%" in name:
            return f"{name!r} is not a valid path segment name (must not be '.' or '..' or contain '/' or '%')"
        return None
    if rule == "label":
        if len(name) > 63 or not _DNS1123_LABEL_RE.fullmatch(name):
            return (
                f"{name!r} is not a valid DNS-1123 label (at most 63 characters: lowercase letters, digits "
                "and '-', starting and ending with a letter or digit)"
            )
        return None
    if rule == "dns1035":
        if len(name) > 63 or not _DNS1035_LABEL_RE.fullmatch(name):
            return (
                f"{name!r} is not a valid DNS-1035 label (at most 63 characters: lowercase letters, digits "
                "and '-', starting with a letter and ending with a letter or digit)"
            )
        return None
    if len(name) > 253 or not _DNS1123_SUBDOMAIN_RE.fullmatch(name):
        return (
            f"{name!r} is not a valid DNS-1123 subdomain (at most 253 characters: lowercase letters, digits, "
            "'-' and '.', starting and ending with a letter or digit)"
        )
    return None


def _qualified_name_problem(key: str) -> str | None:
    prefix, slash, name = key.rpartition("/")
    if slash:
        if not prefix:
            return f"{key!r} has an empty prefix before '/'"
        if len(prefix) > 253 or not _DNS1123_SUBDOMAIN_RE.fullmatch(prefix):
            return f"prefix {prefix!r} of {key!r} is not a valid DNS-1123 subdomain"
    if not name or len(name) > 63 or not _QUALIFIED_NAME_PART_RE.fullmatch(name):
        return (
            f"name part {name!r} of {key!r} must be 1-63 characters of letters, digits, '-', '_' or '.', "
            "starting and ending with a letter or digit"
        )
    return None


def _label_value_problem(value: str) -> str | None:
    if value and (len(value) > 63 or not _QUALIFIED_NAME_PART_RE.fullmatch(value)):
        return (
            "a label value must be empty or 1-63 characters of letters, digits, '-', '_' or '.', starting "
            "and ending with a letter or digit"
        )
    return None


# --------------------------------------------------------------------------------------------------
# Defaulting


def _apply_defaults(schema: dict, value: Any) -> None:
    if isinstance(value, dict):
        properties = schema.get("properties")
        if properties:
            for name, sub in properties.items():
                if name not in value and "default" in sub:
                    value[name] = copy.deepcopy(sub["default"])
            for name, item in value.items():
                if name in properties:
                    _apply_defaults(properties[name], item)
        elif isinstance(schema.get("additionalProperties"), dict):
            for item in value.values():
                _apply_defaults(schema["additionalProperties"], item)
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for item in value:
            _apply_defaults(schema["items"], item)


# --------------------------------------------------------------------------------------------------
# CEL (x-kubernetes-validations)
#
# The rules in our CRDs use a small part of CEL: has(), size(), ternaries, boolean and integer arithmetic,
# comparisons, string contains/startsWith/endsWith/matches, duration(), and the all/exists macros. This is
# a small interpreter for exactly that subset. Rules outside it are skipped (listed in
# SchemaRegistry.skipped_cel_rules; a test asserts that only transition rules are skipped), as are
# transition rules (those reading `oldSelf`): the API server only evaluates them on update.


class _CelUnsupportedError(Exception):
    pass


class _CelEvalError(Exception):
    pass


_CEL_TOKEN_RE = re.compile(
    r"""
    \s*(?:
      (?P<num>\d+\.\d+|\d+)
    | (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
    | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<op>==|!=|<=|>=|&&|\|\||[<>!?:+\-*/%()\[\],.])
    )""",
    re.VERBOSE,
)
_CEL_MACROS = ("all", "exists", "exists_one")
_CEL_METHODS = ("contains", "startsWith", "endsWith", "matches", "size")
_GO_DURATION_RE = re.compile(r"([-+]?)((?:(?:\d+\.?\d*|\.\d+)(?:ns|us|µs|ms|s|m|h))+|0)")
_GO_DURATION_PART_RE = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|ms|s|m|h)")
_GO_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def _is_transition_rule(rule: str) -> bool:
    return re.search(r"\boldSelf\b", rule) is not None


def _iter_cel_rules(schema: dict, path: tuple) -> Iterator[tuple[tuple, dict]]:
    for rule in schema.get("x-kubernetes-validations", []):
        yield path, rule
    for name, sub in schema.get("properties", {}).items():
        yield from _iter_cel_rules(sub, (*path, name))
    if isinstance(schema.get("additionalProperties"), dict):
        yield from _iter_cel_rules(schema["additionalProperties"], (*path, "*"))
    if isinstance(schema.get("items"), dict):
        yield from _iter_cel_rules(schema["items"], (*path, 0))


def _cel_problems(schema: dict, value: Any, path: tuple) -> list[tuple[tuple, str]]:
    problems: list[tuple[tuple, str]] = []
    for rule in schema.get("x-kubernetes-validations", []):
        source = rule["rule"]
        if _is_transition_rule(source):
            continue
        try:
            ast = _compile_cel(source)
        except _CelUnsupportedError:
            continue
        where = path + tuple(p for p in rule.get("fieldPath", "").split(".") if p)
        try:
            ok = _cel_eval(ast, {"self": value})
        except _CelEvalError as exc:
            problems.append((where, f"validation rule {source!r} failed to evaluate: {exc}"))
            continue
        if ok is not True:
            problems.append((where, f"{rule.get('message') or 'failed rule'} (rule: {source})"))
    if isinstance(value, dict):
        properties = schema.get("properties")
        if properties:
            for name, item in value.items():
                if name in properties:
                    problems.extend(_cel_problems(properties[name], item, (*path, name)))
        elif isinstance(schema.get("additionalProperties"), dict):
            for name, item in value.items():
                problems.extend(_cel_problems(schema["additionalProperties"], item, (*path, name)))
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for position, item in enumerate(value):
            problems.extend(_cel_problems(schema["items"], item, (*path, position)))
    return problems


@functools.cache
def _compile_cel(source: str) -> tuple:
    tokens: list[tuple[str, str]] = []
    position = 0
    source_stripped = source.rstrip()
    while position < len(source_stripped):
        match = _CEL_TOKEN_RE.match(source_stripped, position)
        if not match or match.end() == position:
            raise _CelUnsupportedError(f"cannot read {source_stripped[position : position + 20]!r}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        position = match.end()
    parser = _CelParser(tokens)
    ast = parser.expression()
    if parser.position != len(tokens):
        raise _CelUnsupportedError(f"unexpected {tokens[parser.position][1]!r}")
    return ast


class _CelParser:
    """Recursive descent over CEL's precedence: ?: < || < && < relations < +- < */% < unary < member."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.position = 0

    def peek(self) -> str | None:
        return self.tokens[self.position][1] if self.position < len(self.tokens) else None

    def take(self, expected: str | None = None) -> tuple[str, str]:
        if self.position >= len(self.tokens):
            raise _CelUnsupportedError("unexpected end of rule")
        token = self.tokens[self.position]
        if expected is not None and token[1] != expected:
            raise _CelUnsupportedError(f"expected {expected!r}, got {token[1]!r}")
        self.position += 1
        return token

    def expression(self) -> tuple:
        condition = self.binary(0)
        if self.peek() == "?":
            self.take("?")
            then = self.expression()
            self.take(":")
            return ("cond", condition, then, self.expression())
        return condition

    _LEVELS = (("||",), ("&&",), ("==", "!=", "<", "<=", ">", ">=", "in"), ("+", "-"), ("*", "/", "%"))

    def binary(self, level: int) -> tuple:
        if level == len(self._LEVELS):
            return self.unary()
        left = self.binary(level + 1)
        while self.peek() in self._LEVELS[level]:
            op = self.take()[1]
            left = ("op", op, left, self.binary(level + 1))
        return left

    def unary(self) -> tuple:
        if self.peek() == "!":
            self.take()
            return ("not", self.unary())
        if self.peek() == "-":
            self.take()
            return ("neg", self.unary())
        return self.member()

    def member(self) -> tuple:
        node = self.primary()
        while self.peek() in (".", "["):
            if self.take()[1] == "[":
                node = ("index", node, self.expression())
                self.take("]")
                continue
            kind, name = self.take()
            if kind != "ident":
                raise _CelUnsupportedError(f"expected a field name after '.', got {name!r}")
            if self.peek() != "(":
                node = ("select", node, name)
                continue
            self.take("(")
            if name in _CEL_MACROS:
                var_kind, var = self.take()
                if var_kind != "ident":
                    raise _CelUnsupportedError(f"{name}() needs a variable name")
                self.take(",")
                body = self.expression()
                self.take(")")
                node = ("macro", name, node, var, body)
            elif name in _CEL_METHODS:
                node = ("call", name, [node, *self.arguments()])
            else:
                raise _CelUnsupportedError(f"method {name}()")
        return node

    def arguments(self) -> list[tuple]:
        args: list[tuple] = []
        while self.peek() != ")":
            args.append(self.expression())
            if self.peek() == ",":
                self.take(",")
        self.take(")")
        return args

    def primary(self) -> tuple:
        kind, text = self.take()
        if kind == "num":
            return ("lit", float(text) if "." in text else int(text))
        if kind == "str":
            return ("lit", _cel_unquote(text))
        if kind == "op" and text == "(":
            inner = self.expression()
            self.take(")")
            return inner
        if kind == "op" and text == "[":
            return ("list", self.arguments_until("]"))
        if kind != "ident":
            raise _CelUnsupportedError(f"unexpected {text!r}")
        if text in ("true", "false", "null"):
            return ("lit", {"true": True, "false": False, "null": None}[text])
        if self.peek() != "(":
            return ("var", text)
        self.take("(")
        if text == "has":
            argument = self.expression()
            self.take(")")
            if argument[0] != "select":
                raise _CelUnsupportedError("has() needs a field selection")
            return ("has", argument[1], argument[2])
        if text in ("size", "duration", "string", "int"):
            return ("call", text, self.arguments())
        raise _CelUnsupportedError(f"function {text}()")

    def arguments_until(self, closing: str) -> list[tuple]:
        items: list[tuple] = []
        while self.peek() != closing:
            items.append(self.expression())
            if self.peek() == ",":
                self.take(",")
        self.take(closing)
        return items


def _cel_unquote(text: str) -> str:
    body = text[1:-1]
    return re.sub(r"\\(.)", lambda m: {"n": "\n", "t": "\t", "r": "\r"}.get(m.group(1), m.group(1)), body)


def _cel_eval(node: tuple, env: dict[str, Any]) -> Any:
    tag = node[0]
    if tag == "lit":
        return node[1]
    if tag == "var":
        if node[1] not in env:
            raise _CelEvalError(f"undeclared reference to {node[1]!r}")
        return env[node[1]]
    if tag == "select":
        target = _cel_eval(node[1], env)
        if not isinstance(target, dict):
            raise _CelEvalError(f"cannot select {node[2]!r} from {_json_type(target)}")
        if node[2] not in target:
            raise _CelEvalError(f"no such key: {node[2]}")
        return target[node[2]]
    if tag == "has":
        target = _cel_eval(node[1], env)
        if not isinstance(target, dict):
            raise _CelEvalError(f"has() on {_json_type(target)}")
        return node[2] in target
    if tag == "index":
        target, key = _cel_eval(node[1], env), _cel_eval(node[2], env)
        try:
            return target[key]
        except (KeyError, IndexError, TypeError) as exc:
            raise _CelEvalError(f"no such key or index: {key!r}") from exc
    if tag == "list":
        return [_cel_eval(item, env) for item in node[1]]
    if tag == "not":
        return not _cel_bool(_cel_eval(node[1], env))
    if tag == "neg":
        return -_cel_number(_cel_eval(node[1], env))
    if tag == "cond":
        return _cel_eval(node[2] if _cel_bool(_cel_eval(node[1], env)) else node[3], env)
    if tag == "op":
        return _cel_operator(node[1], node[2], node[3], env)
    if tag == "call":
        return _cel_call(node[1], [_cel_eval(arg, env) for arg in node[2]])
    if tag == "macro":
        _, name, target_node, var, body = node
        target = _cel_eval(target_node, env)
        if not isinstance(target, list | dict):
            raise _CelEvalError(f"{name}() on {_json_type(target)}")
        results = [_cel_bool(_cel_eval(body, {**env, var: item})) for item in target]
        if name == "all":
            return all(results)
        if name == "exists":
            return any(results)
        return sum(results) == 1
    raise _CelEvalError(f"unknown node {tag}")


def _cel_operator(op: str, left_node: tuple, right_node: tuple, env: dict[str, Any]) -> Any:
    if op in ("||", "&&"):
        # CEL's logical operators are commutative over errors: `false || error` is an error, but
        # `error || true` is true.
        outcomes: list[bool | _CelEvalError] = []
        for side in (left_node, right_node):
            try:
                outcomes.append(_cel_bool(_cel_eval(side, env)))
            except _CelEvalError as exc:
                outcomes.append(exc)
        decisive = op == "||"
        if decisive in outcomes:
            return decisive
        for outcome in outcomes:
            if isinstance(outcome, _CelEvalError):
                raise outcome
        return not decisive
    left, right = _cel_eval(left_node, env), _cel_eval(right_node, env)
    if op == "==":
        return _cel_equal(left, right)
    if op == "!=":
        return not _cel_equal(left, right)
    if op == "in":
        if not isinstance(right, list | dict):
            raise _CelEvalError(f"'in' on {_json_type(right)}")
        return left in right
    if op in ("<", "<=", ">", ">="):
        comparable = (isinstance(left, str) and isinstance(right, str)) or (_is_number(left) and _is_number(right))
        if not comparable:
            raise _CelEvalError(f"cannot compare {_json_type(left)} with {_json_type(right)}")
        return {"<": left < right, "<=": left <= right, ">": left > right, ">=": left >= right}[op]
    if op == "+":
        if isinstance(left, str | list) and type(left) is type(right):
            return left + right
        return _cel_number(left) + _cel_number(right)
    left_number, right_number = _cel_number(left), _cel_number(right)
    if op == "-":
        return left_number - right_number
    if op == "*":
        return left_number * right_number
    if right_number == 0:
        raise _CelEvalError("division by zero")
    if isinstance(left_number, int) and isinstance(right_number, int):
        quotient = abs(left_number) // abs(right_number) * (1 if (left_number >= 0) == (right_number >= 0) else -1)
        return quotient if op == "/" else left_number - quotient * right_number
    return left_number / right_number if op == "/" else math.fmod(left_number, right_number)


def _cel_call(name: str, args: list[Any]) -> Any:
    if name == "size":
        if len(args) != 1 or not isinstance(args[0], str | list | dict):
            raise _CelEvalError("size() needs one string, list or map")
        return len(args[0])
    if name == "duration":
        if len(args) != 1 or not isinstance(args[0], str):
            raise _CelEvalError("duration() needs one string")
        return _go_duration_seconds(args[0])
    if name == "string":
        return args[0] if isinstance(args[0], str) else json.dumps(args[0])
    if name == "int":
        try:
            return int(args[0])
        except (TypeError, ValueError) as exc:
            raise _CelEvalError(f"int({args[0]!r})") from exc
    target, *rest = args
    if not isinstance(target, str) or len(rest) != 1 or not isinstance(rest[0], str):
        raise _CelEvalError(f"{name}() needs a string receiver and one string argument")
    if name == "contains":
        return rest[0] in target
    if name == "startsWith":
        return target.startswith(rest[0])
    if name == "endsWith":
        return target.endswith(rest[0])
    try:
        return re.search(rest[0], target) is not None  # CEL matches() is an unanchored RE2 search
    except re.error as exc:
        raise _CelEvalError(f"invalid regular expression {rest[0]!r}") from exc


def _go_duration_seconds(text: str) -> float:
    match = _GO_DURATION_RE.fullmatch(text)
    if not match:
        raise _CelEvalError(f"invalid duration {text!r} (expected e.g. 1.5s, 300ms, 1h2m)")
    total = sum(float(number) * _GO_DURATION_UNITS[unit] for number, unit in _GO_DURATION_PART_RE.findall(text))
    return -total if match.group(1) == "-" else total


def _cel_bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _CelEvalError(f"expected a bool, got {_json_type(value)}")
    return value


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _cel_number(value: Any) -> int | float:
    if not _is_number(value):
        raise _CelEvalError(f"expected a number, got {_json_type(value)}")
    return value


def _cel_equal(left: Any, right: Any) -> bool:
    if _is_number(left) and _is_number(right):
        return left == right  # CEL compares int, uint and double by value
    return type(left) is type(right) and left == right


# --------------------------------------------------------------------------------------------------
# Small helpers


class _NotJsonError(Exception):
    def __init__(self, message: str, path: tuple) -> None:
        super().__init__(message)
        self.path = path


def _plain_json(value: Any, path: tuple) -> Any:
    """A deep copy made of dict/list/str/int/float/bool/None, or _NotJsonError saying where it is not."""
    if value is None or isinstance(value, str | bool | int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _NotJsonError(f"{value} is not representable in JSON", path)
        return value
    if isinstance(value, Mapping):
        out = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _NotJsonError(f"map key {key!r} is a {type(key).__name__}, not a string", path)
            out[key] = _plain_json(item, (*path, key))
        return out
    if isinstance(value, list | tuple):
        return [_plain_json(item, (*path, position)) for position, item in enumerate(value)]
    raise _NotJsonError(f"value of Python type {type(value).__name__} is not JSON data: {_short(value)}", path)


def _identity(obj: Any) -> tuple[str, str, str, str] | None:
    if not isinstance(obj, Mapping) or not isinstance(obj.get("metadata"), Mapping):
        return None
    api_version, kind, name = obj.get("apiVersion"), obj.get("kind"), obj["metadata"].get("name")
    if not (isinstance(api_version, str) and isinstance(kind, str) and isinstance(name, str)):
        return None
    return api_version.rpartition("/")[0], kind, str(obj["metadata"].get("namespace") or ""), name


def _describe(obj: Mapping) -> str:
    metadata = obj.get("metadata")
    name = metadata.get("name") if isinstance(metadata, Mapping) else None
    return f"{obj.get('kind') or '<no kind>'}/{name or '<no name>'}"


def _render(who: str, problems: list[tuple[tuple, str]]) -> list[str]:
    unique = dict.fromkeys(f"{who}: {_format_path(path)}: {message}" for path, message in problems)
    return sorted(unique)


_PLAIN_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


def _format_path(path: Iterable[Any]) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        elif _PLAIN_KEY_RE.fullmatch(str(part)):
            text += f".{part}" if text else str(part)
        else:
            text += f"[{json.dumps(str(part))}]"
    return text or "(root)"


def _json_type(value: Any) -> str:
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


def _short(value: Any, limit: int = 60) -> str:
    try:
        text = json.dumps(value, sort_keys=True)
    except (TypeError, ValueError):
        text = repr(value)
    return _truncate(text, limit)


def _truncate(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _or(types: Sequence[str]) -> str:
    return " or ".join(types)


def cluster_scoped_builtin(group: str, kind: str) -> bool:
    """Whether a built-in kind (core or a *.k8s.io group) is cluster-scoped."""
    return kind in _CLUSTER_SCOPED_BUILTIN_KINDS and (group == "" or group.endswith("k8s.io"))
