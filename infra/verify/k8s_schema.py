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

This module is the registry; the concerns it combines live beside it: ``structural`` (schemas, validators,
defaulting), ``cel`` (the CEL subset), ``object_meta`` (metadata checks), ``problems`` (readable messages).

Usage:

    from infra.verify.k8s_schema import SchemaRegistry, validate_objects
    assert validate_objects(objects) == []            # CRDs of the pinned charts with their defaults
    SchemaRegistry(crds).validate_object(obj)          # CRDs of one render

Errors read `<kind>/<name>: <path>: <message>`, e.g.
`Canary/fraud-detector: spec.analysis.stepWieght: unknown field (did you mean 'stepWeight'?)`.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from infra.verify.cel import CelUnsupportedError, compile_rule, is_transition_rule, iter_rules, rule_problems
from infra.verify.object_meta import CLUSTER_SCOPED_BUILTIN_KINDS, cluster_scoped_builtin, metadata_problems
from infra.verify.problems import (
    Location,
    Problem,
    describe_object,
    did_you_mean,
    format_path,
    json_type,
    render_problems,
    schema_problems,
    short,
)
from infra.verify.structural import VALIDATORS, Schema, apply_defaults, crd_schema, format_checker, translate

if TYPE_CHECKING:
    from jsonschema.protocols import Validator

__all__ = [
    "KUBERNETES_VERSION",
    "SchemaRegistry",
    "cluster_scoped_builtin",
    "crd_kinds",
    "default_registry",
    "validate_object",
    "validate_objects",
]

# Kubernetes release whose built-in API schemas we validate against; must be one kubernetes_validate ships.
KUBERNETES_VERSION = "1.31.0"
_OBJECT_META_DEF = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"


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
                    f"{describe_object(obj)}: (root): duplicate object: objects #{first_seen[identity]} and "
                    f"#{position} have the same apiVersion group, kind, namespace and name"
                )
            else:
                first_seen[identity] = position
        return errors

    def validate_object(self, obj: Any) -> list[str]:
        """Human-readable errors (`<kind>/<name>: <path>: <message>`); empty when the object is valid."""
        if not isinstance(obj, Mapping):
            return [f"<not an object>: (root): expected a mapping, got {json_type(obj)} {short(obj)}"]
        who = describe_object(obj)
        try:
            obj = _plain_json(obj, ())
        except _NotJsonError as exc:
            return [f"{who}: {format_path(exc.path)}: {exc}"]

        problems: list[Problem] = []
        api_version, kind = obj.get("apiVersion"), obj.get("kind")
        if not isinstance(api_version, str) or not api_version:
            problems.append((("apiVersion",), "required field is missing (expected e.g. apps/v1)"))
        if not isinstance(kind, str) or not kind:
            problems.append((("kind",), "required field is missing (expected e.g. Deployment)"))
        if problems:
            return render_problems(who, problems)
        group, _, version = api_version.rpartition("/")

        builtins = self._builtin_schemas()
        if builtins.has_group(group):
            def_name = builtins.kinds.get((group, version, kind))
            if def_name is None:
                return render_problems(who, [builtins.explain_unknown(group, version, kind, self.kubernetes_version)])
            problems.extend(schema_problems(builtins.validator(def_name), obj))
            cluster_scoped = kind in CLUSTER_SCOPED_BUILTIN_KINDS
        else:
            custom = self._custom_kind(group, version, kind)
            if isinstance(custom, tuple):
                return render_problems(who, [custom])
            cluster_scoped = custom.scope == "Cluster"
            problems.extend(self._custom_problems(custom, obj))

        problems.extend(metadata_problems(obj, group, kind, cluster_scoped))
        return render_problems(who, problems)

    # ---- custom resources

    def _custom_problems(self, custom: _CustomKind, obj: dict[str, Any]) -> list[Problem]:
        # The API server defaults before it validates (a defaulted field satisfies `required`, and CEL
        # rules see defaulted values). `obj` is already our own copy (see _plain_json), so default in place.
        apply_defaults(custom.schema, obj)
        problems = list(schema_problems(custom.validator, obj))
        metadata = obj.get("metadata")
        if isinstance(metadata, dict):
            problems.extend(
                schema_problems(self._builtin_schemas().validator(_OBJECT_META_DEF), metadata, prefix=("metadata",))
            )
        if not problems and custom.has_cel:
            # Only on schema-valid objects, so rules see the types they were written for.
            problems.extend(rule_problems(custom.schema, obj, ()))
        return problems

    def _custom_kind(self, group: str, version: str, kind: str) -> _CustomKind | Problem:
        index = self._index()
        entry = index.get((group, kind))
        if entry is None:
            kinds_in_group = sorted(k for g, k in index if g == group)
            if kinds_in_group:
                hint = did_you_mean(kind, kinds_in_group)
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
            raw_schema = crd_schema(entry.crd, version)
            self._crd_schemas[key] = _CustomKind(
                schema=raw_schema,
                validator=VALIDATORS.crd(translate(raw_schema, root=True), format_checker=format_checker()),
                scope=entry.scope,
                has_cel=self._compile_cel_rules(f"{kind}/{version}", raw_schema),
            )
        return self._crd_schemas[key]

    def _compile_cel_rules(self, where: str, schema: Schema) -> bool:
        found = False
        for path, rule in iter_rules(schema, ()):
            found = True
            location = f"{where} {format_path(path)}"
            if is_transition_rule(rule["rule"]):
                self.skipped_cel_rules.append((location, rule["rule"], "transition rule (needs oldSelf)"))
                continue
            try:
                compile_rule(rule["rule"])
            except CelUnsupportedError as exc:
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


@dataclass
class _CustomKind:
    schema: Schema  # the CRD's openAPIV3Schema (descriptions stripped): drives defaulting and CEL
    validator: Validator  # of the translated schema
    scope: str
    has_cel: bool


@dataclass
class _CrdIndexEntry:
    crd: Mapping[str, Any]
    scope: str
    versions: dict[str, bool]  # version -> served


@dataclass
class _BuiltinSchemas:
    kinds: dict[tuple[str, str, str], str]  # (group, version, kind) -> definition name
    make_validator: Callable[[str], Validator]
    _validators: dict[str, Validator] = field(default_factory=dict)

    def has_group(self, group: str) -> bool:
        return any(g == group for g, _, _ in self.kinds)

    def validator(self, def_name: str) -> Validator:
        if def_name not in self._validators:
            self._validators[def_name] = self.make_validator(def_name)
        return self._validators[def_name]

    def explain_unknown(self, group: str, version: str, kind: str, k8s_version: str) -> Problem:
        prefix = f"{group}/" if group else ""
        versions = sorted(f"{prefix}{v}" for g, v, k in self.kinds if g == group and k == kind)
        if versions:
            return ("apiVersion",), (
                f"{prefix}{version} {kind} does not exist in Kubernetes {k8s_version}; available: {', '.join(versions)}"
            )
        kinds = sorted({k for g, _, k in self.kinds if g == group and not k.endswith("List")})
        return ("kind",), (
            f"unknown kind {kind!r} in built-in API group {group or 'core'!r} (Kubernetes "
            f"{k8s_version}){did_you_mean(kind, kinds)}"
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

    def make_validator(def_name: str) -> Validator:
        schema = {"$ref": f"{base_uri}#/$defs/{def_name}"}
        return VALIDATORS.builtin(schema, registry=registry, format_checker=format_checker())

    return _BuiltinSchemas(kinds=kinds, make_validator=make_validator)


class _NotJsonError(Exception):
    def __init__(self, message: str, path: Location) -> None:
        super().__init__(message)
        self.path = path


def _plain_json(value: Any, path: Location) -> Any:
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
    raise _NotJsonError(f"value of Python type {type(value).__name__} is not JSON data: {short(value)}", path)


def _identity(obj: Any) -> tuple[str, str, str, str] | None:
    if not isinstance(obj, Mapping) or not isinstance(obj.get("metadata"), Mapping):
        return None
    api_version, kind, name = obj.get("apiVersion"), obj.get("kind"), obj["metadata"].get("name")
    if not (isinstance(api_version, str) and isinstance(kind, str) and isinstance(name, str)):
        return None
    return api_version.rpartition("/")[0], kind, str(obj["metadata"].get("namespace") or ""), name
