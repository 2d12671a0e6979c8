"""The API server's generic ObjectMeta validation (k8s.io/apimachinery ``validation``): names by kind,
namespaces, label and annotation syntax, and which built-in kinds are cluster-scoped."""

from __future__ import annotations

import re
from typing import Any

from infra.verify.problems import Problem, json_type

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
CLUSTER_SCOPED_BUILTIN_KINDS = frozenset(
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


def metadata_problems(obj: dict[str, Any], group: str, kind: str, cluster_scoped: bool) -> list[Problem]:
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return [
            (
                ("metadata",),
                "required field is missing" if metadata is None else f"expected object, got {json_type(metadata)}",
            )
        ]
    problems: list[Problem] = []
    name = metadata.get("name")
    if not name:
        problems.append((("metadata", "name"), "required field is missing"))
    elif isinstance(name, str):
        rule = _NAME_RULES_BY_KIND.get((group, kind), "subdomain")
        message = _name_problem(name, rule)
        if message:
            problems.append((("metadata", "name"), message))
        if (group, kind) == ("apiextensions.k8s.io", "CustomResourceDefinition"):
            raw_spec = obj.get("spec")
            spec: dict[str, Any] = raw_spec if isinstance(raw_spec, dict) else {}
            raw_names = spec.get("names")
            names: dict[str, Any] = raw_names if isinstance(raw_names, dict) else {}
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


def cluster_scoped_builtin(group: str, kind: str) -> bool:
    """Whether a built-in kind (core or a *.k8s.io group) is cluster-scoped."""
    return kind in CLUSTER_SCOPED_BUILTIN_KINDS and (group == "" or group.endswith("k8s.io"))
