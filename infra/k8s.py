"""Plain builders for Kubernetes objects (dicts in wire format) and one way to declare them.

Builders are pure so tests can call them directly; ``declare`` turns a dict into the typed Pulumi
resource for its kind (or a CustomResource), always with the region's explicit provider.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the SDK is loaded only to declare (chart values and object builders need none of it)
    import pulumi

# A Kubernetes object in wire format (apiVersion, kind, metadata, ...), as the builders return it; values may be
# Pulumi Outputs (secrets, digests) until the engine resolves them.
Manifest = dict[str, Any]

MANAGED_BY = {"app.kubernetes.io/managed-by": "pulumi", "app.kubernetes.io/part-of": "fraud-platform"}
RESTRICTED_SECURITY_CONTEXT: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "runAsNonRoot": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


def labels(name: str, component: str, **extra: str) -> dict[str, str]:
    return {"app.kubernetes.io/name": name, "app.kubernetes.io/component": component, **MANAGED_BY, **extra}


def namespace(name: str, *, mesh: bool = False, pod_security: str | None = None) -> Manifest:
    """A namespace; ``pod_security`` enforces a Pod Security Admission level for namespaces whose
    workloads we write ourselves (charts' own pods are left to the chart)."""
    ns_labels = dict(MANAGED_BY)
    if pod_security:
        ns_labels["pod-security.kubernetes.io/enforce"] = pod_security
    if mesh:
        ns_labels["istio-injection"] = "enabled"
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": ns_labels}}


def container(
    name: str,
    image: Any,
    *,
    args: Sequence[Any] | None = None,
    command: Sequence[str] | None = None,
    env: Sequence[Mapping[str, Any]] = (),
    ports: Sequence[Mapping[str, Any]] = (),
    requests: Mapping[str, str],
    limits: Mapping[str, str],
    probes: Mapping[str, Any] | None = None,
    volume_mounts: Sequence[Mapping[str, Any]] = (),
    run_as_user: int = 10001,
) -> dict[str, Any]:
    """A container with restricted defaults: non-root, read-only root, no privilege escalation."""
    spec: dict[str, Any] = {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "resources": {"requests": dict(requests), "limits": dict(limits)},
        "securityContext": {**RESTRICTED_SECURITY_CONTEXT, "runAsUser": run_as_user, "runAsGroup": run_as_user},
    }
    if command:
        spec["command"] = list(command)
    if args:
        spec["args"] = list(args)
    if env:
        spec["env"] = [dict(e) for e in env]
    if ports:
        spec["ports"] = [dict(p) for p in ports]
    if volume_mounts:
        spec["volumeMounts"] = [dict(v) for v in volume_mounts]
    spec.update(probes or {})
    return spec


def secret_env(name: str, secret: str, key: str) -> dict[str, Any]:
    """A Secret's key as an environment variable: for charts' conventions only; our workloads read secrets
    from files (:func:`secret_files`), which child processes, crash reports and ``/proc/<pid>/environ`` never
    see and which a rotated Secret updates in place."""
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}


# Secret files: readable by the owner and the pod's fsGroup (our containers run in it), nobody else.
SECRET_FILE_MODE = 0o440


def secret_files(
    volume: str, secret: str, mount_path: str, keys: Sequence[str] | None = None, *, optional: bool = False
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A Secret mounted read-only as files under ``mount_path`` (only ``keys`` when given): (volume, mount)."""
    source: dict[str, Any] = {"secretName": secret, "defaultMode": SECRET_FILE_MODE}
    if keys is not None:
        source["items"] = [{"key": key, "path": key} for key in keys]
    if optional:
        source["optional"] = True
    return {"name": volume, "secret": source}, {"name": volume, "mountPath": mount_path, "readOnly": True}


def service(
    name: str,
    ns: str,
    selector: Mapping[str, str],
    ports: Sequence[Mapping[str, Any]],
    *,
    obj_labels: Mapping[str, str],
) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "labels": dict(obj_labels)},
        "spec": {"type": "ClusterIP", "selector": dict(selector), "ports": [dict(p) for p in ports]},
    }


def deployment(
    name: str,
    ns: str,
    obj_labels: Mapping[str, str],
    pod_spec: Mapping[str, Any],
    *,
    replicas: int = 1,
    pod_labels: Mapping[str, str] | None = None,
) -> Manifest:
    """A Deployment selecting its pods by ``app.kubernetes.io/name``; the pod spec gets restricted defaults
    (and no service-account token unless ``pod_spec`` asks for one)."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": dict(obj_labels)},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app.kubernetes.io/name": name}},
            "template": {
                "metadata": {"labels": dict(pod_labels or obj_labels)},
                # No service-account token unless the pod says it talks to the API server.
                "spec": {"securityContext": pod_security_context(), "automountServiceAccountToken": False, **pod_spec},
            },
        },
    }


def secret(name: str, ns: str, string_data: Mapping[str, Any], *, obj_labels: Mapping[str, str]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns, "labels": dict(obj_labels)},
        "type": "Opaque",
        "stringData": dict(string_data),
    }


def pod_security_context(fs_group: int = 10001) -> dict[str, Any]:
    return {"runAsNonRoot": True, "fsGroup": fs_group, "seccompProfile": {"type": "RuntimeDefault"}}


def tmp_volume() -> tuple[dict[str, Any], dict[str, Any]]:
    """An emptyDir for /tmp, since root filesystems are read-only."""
    return {"name": "tmp", "emptyDir": {}}, {"name": "tmp", "mountPath": "/tmp"}


# ---------------------------------------------------------------------------------------------------


def object_suffix(obj: Mapping[str, Any]) -> str:
    """``<kind>-<name>``: how a component names the resource of one of its objects."""
    return f"{str(obj['kind']).lower()}-{obj['metadata']['name']}"


def _resource_class(api_version: str, kind: str) -> Callable[..., pulumi.CustomResource] | None:
    """The typed pulumi-kubernetes class of a built-in kind (each takes the object's fields as keywords)."""
    import pulumi_kubernetes as k8s

    table: dict[tuple[str, str], Callable[..., pulumi.CustomResource]] = {
        ("v1", "Namespace"): k8s.core.v1.Namespace,
        ("v1", "Service"): k8s.core.v1.Service,
        ("v1", "ConfigMap"): k8s.core.v1.ConfigMap,
        ("v1", "Secret"): k8s.core.v1.Secret,
        ("v1", "ServiceAccount"): k8s.core.v1.ServiceAccount,
        ("v1", "PersistentVolumeClaim"): k8s.core.v1.PersistentVolumeClaim,
        ("apps/v1", "Deployment"): k8s.apps.v1.Deployment,
        ("apps/v1", "StatefulSet"): k8s.apps.v1.StatefulSet,
        ("batch/v1", "Job"): k8s.batch.v1.Job,
        ("policy/v1", "PodDisruptionBudget"): k8s.policy.v1.PodDisruptionBudget,
        ("autoscaling/v2", "HorizontalPodAutoscaler"): k8s.autoscaling.v2.HorizontalPodAutoscaler,
        ("networking.k8s.io/v1", "NetworkPolicy"): k8s.networking.v1.NetworkPolicy,
        ("rbac.authorization.k8s.io/v1", "Role"): k8s.rbac.v1.Role,
        ("rbac.authorization.k8s.io/v1", "RoleBinding"): k8s.rbac.v1.RoleBinding,
        ("rbac.authorization.k8s.io/v1", "ClusterRole"): k8s.rbac.v1.ClusterRole,
        ("rbac.authorization.k8s.io/v1", "ClusterRoleBinding"): k8s.rbac.v1.ClusterRoleBinding,
    }
    return table.get((api_version, kind))


def declare(logical_name: str, obj: Mapping[str, Any], opts: pulumi.ResourceOptions) -> pulumi.CustomResource:
    """Declare one Kubernetes object; built-ins get their typed class, others a CustomResource."""
    import pulumi_kubernetes as k8s

    api_version, kind = obj["apiVersion"], obj["kind"]
    fields = {k: v for k, v in obj.items() if k not in ("apiVersion", "kind")}
    cls = _resource_class(api_version, kind)
    if cls is None:
        return k8s.apiextensions.CustomResource(logical_name, api_version=api_version, kind=kind, opts=opts, **fields)
    kwargs = {_snake(k): v for k, v in fields.items()}
    return cls(logical_name, opts=opts, **kwargs)


def _snake(key: str) -> str:
    return "".join("_" + c.lower() if c.isupper() else c for c in key)
