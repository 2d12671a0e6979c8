"""One region of the platform as a set of objects: ours (the program, GitOps-delivered ones included) and
every object the Helm releases create, as Helm renders them. The checks in :mod:`infra.verify.checks`
look things up here.

Pods are modelled through the templates that create them (Deployments, StatefulSets, DaemonSets, Jobs,
CronJobs, Argo Rollouts) and through the StatefulSets the Prometheus Operator creates for Prometheus and
Alertmanager resources (labels from prometheus-operator v0.78.2 ``pkg/prometheus/server/operator.go`` and
``pkg/alertmanager/operator.go`` ``makeSelectorLabels``, ``pkg/prometheus/promcfg.go``
``BuildPodMetadata``; ports from ``pkg/prometheus/common.go`` ``DefaultPortName`` and
``pkg/operator/config_reloader.go``). ``kube-system`` belongs to the cluster, not the platform: references
into it are taken as resolved.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from infra.verify.k8s_schema import SchemaRegistry, cluster_scoped_builtin

# Namespaces every cluster has, and the one whose pods and Services are the cluster's own.
CLUSTER_NAMESPACES = frozenset({"default", "kube-system", "kube-public", "kube-node-lease"})
CLUSTER_OWNED_NAMESPACE = "kube-system"
POD_TEMPLATE_PATHS = {
    "Deployment": ("spec", "template"),
    "StatefulSet": ("spec", "template"),
    "DaemonSet": ("spec", "template"),
    "ReplicaSet": ("spec", "template"),
    "Job": ("spec", "template"),
    "CronJob": ("spec", "jobTemplate", "spec", "template"),
    "Rollout": ("spec", "template"),
}


@dataclass(frozen=True)
class PlatformObject:
    obj: dict[str, Any]
    origin: str  # "program", "gitops" or "helm:<release>"
    source: str  # Pulumi resource name or the chart template

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind", ""))

    @property
    def group(self) -> str:
        api_version = str(self.obj.get("apiVersion", ""))
        return api_version.rsplit("/", 1)[0] if "/" in api_version else ""

    @property
    def metadata(self) -> dict[str, Any]:
        return self.obj.get("metadata") or {}

    @property
    def name(self) -> str:
        return str(self.metadata.get("name", ""))

    @property
    def namespace(self) -> str:
        return str(self.metadata.get("namespace") or "")

    @property
    def labels(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in (self.metadata.get("labels") or {}).items()}

    @property
    def spec(self) -> dict[str, Any]:
        return self.obj.get("spec") or {}

    @property
    def ref(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind}/{where}{self.name} ({self.origin})"


def cluster_baseline() -> list[PlatformObject]:
    """What every cluster has before the platform arrives and the platform refers to: the API server's own
    Service ``default/kubernetes`` (labels and port from kubernetes/kubernetes
    ``pkg/controlplane/controller/kubernetesservice``), which kube-prometheus-stack's apiserver
    ServiceMonitor selects."""
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": "kubernetes",
            "namespace": "default",
            "labels": {"component": "apiserver", "provider": "kubernetes"},
        },
        "spec": {"ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}]},
    }
    return [PlatformObject(service, "cluster", "the API server")]


@dataclass(frozen=True)
class PodTemplate:
    """Pods some workload creates: their namespace, labels, spec, and the workload."""

    owner: PlatformObject
    namespace: str
    labels: dict[str, str]
    spec: dict[str, Any]
    annotations: dict[str, str] = field(default_factory=dict)

    def containers(self) -> list[dict[str, Any]]:
        return [*(self.spec.get("initContainers") or []), *(self.spec.get("containers") or [])]


def selector_matches(selector: Mapping[str, Any] | None, labels: Mapping[str, str]) -> bool:
    """A LabelSelector (matchLabels + matchExpressions) or a plain map (Service selector)."""
    if selector is None:
        return False
    if "matchLabels" in selector or "matchExpressions" in selector:
        match_labels = selector.get("matchLabels") or {}
        expressions = selector.get("matchExpressions") or []
    else:
        match_labels, expressions = selector, []
    if any(labels.get(k) != str(v) for k, v in match_labels.items()):
        return False
    for expression in expressions:
        key, op, values = expression.get("key"), expression.get("operator"), expression.get("values") or []
        present = key in labels
        if (
            (op == "In" and (not present or labels[key] not in values))
            or (op == "NotIn" and present and labels[key] in values)
            or (op == "Exists" and not present)
            or (op == "DoesNotExist" and present)
        ):
            return False
    return True


class Platform:
    """The objects of one region, indexed for lookups."""

    def __init__(
        self, region: str, objects: Iterable[PlatformObject], registry: SchemaRegistry, releases: list[Any]
    ) -> None:
        self.region = region
        self.registry = registry
        self.releases = releases
        self.objects: list[PlatformObject] = []
        for item in objects:
            self.objects.append(self._with_namespace(item, releases))
        self._by_kind: dict[str, list[PlatformObject]] = {}
        for item in self.objects:
            self._by_kind.setdefault(item.kind, []).append(item)

    def _with_namespace(self, item: PlatformObject, releases: list[Any]) -> PlatformObject:
        """Helm installs namespaced objects without a namespace into the release's namespace."""
        if item.namespace or not item.origin.startswith("helm:") or self.cluster_scoped(item):
            return item
        release = next((r for r in releases if f"helm:{r.name}" == item.origin), None)
        if release is None:
            return item
        obj = {**item.obj, "metadata": {**item.metadata, "namespace": release.namespace}}
        return PlatformObject(obj, item.origin, item.source)

    def cluster_scoped(self, item: PlatformObject) -> bool:
        if cluster_scoped_builtin(item.group, item.kind):
            return True
        entry = self.registry._index().get((item.group, item.kind))
        return entry is not None and entry.scope == "Cluster"

    # ---- lookups

    def of_kind(self, *kinds: str) -> list[PlatformObject]:
        return [o for kind in kinds for o in self._by_kind.get(kind, [])]

    def find(self, kind: str, namespace: str, name: str) -> list[PlatformObject]:
        return [o for o in self._by_kind.get(kind, []) if o.name == name and o.namespace == namespace]

    def namespaces(self) -> set[str]:
        return {o.name for o in self.of_kind("Namespace")} | CLUSTER_NAMESPACES

    def pod_templates(self) -> list[PodTemplate]:
        templates: list[PodTemplate] = []
        for kind, path in POD_TEMPLATE_PATHS.items():
            for owner in self.of_kind(kind):
                node: Any = owner.obj
                for key in path:
                    node = (node or {}).get(key)
                if isinstance(node, dict):
                    meta = node.get("metadata") or {}
                    templates.append(
                        PodTemplate(
                            owner,
                            owner.namespace,
                            {str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
                            node.get("spec") or {},
                            {str(k): str(v) for k, v in (meta.get("annotations") or {}).items()},
                        )
                    )
        templates += list(self._operator_pods())
        return templates

    def _operator_pods(self) -> Iterator[PodTemplate]:
        for kind, app, container in (
            ("Prometheus", "prometheus", "prometheus"),
            ("Alertmanager", "alertmanager", "alertmanager"),
        ):
            for owner in self.of_kind(kind):
                if owner.group != "monitoring.coreos.com":
                    continue
                labels = {
                    "app.kubernetes.io/managed-by": "prometheus-operator",
                    "app.kubernetes.io/name": app,
                    "app.kubernetes.io/instance": owner.name,
                    app: owner.name,
                }
                if kind == "Prometheus":
                    labels |= {"operator.prometheus.io/name": owner.name, "operator.prometheus.io/shard": "0"}
                labels |= {
                    str(k): str(v) for k, v in ((owner.spec.get("podMetadata") or {}).get("labels") or {}).items()
                }
                port = {"Prometheus": 9090, "Alertmanager": 9093}[kind]
                spec = {
                    "serviceAccountName": owner.spec.get("serviceAccountName") or "default",
                    # The operator copies these onto the pods it makes (spec.securityContext,
                    # spec.automountServiceAccountToken of the Prometheus / Alertmanager resource).
                    "securityContext": owner.spec.get("securityContext") or {},
                    **(
                        {"automountServiceAccountToken": owner.spec["automountServiceAccountToken"]}
                        if "automountServiceAccountToken" in owner.spec
                        else {}
                    ),
                    "containers": [
                        {
                            "name": container,
                            "ports": [{"name": owner.spec.get("portName") or "web", "containerPort": port}],
                        },
                        {"name": "config-reloader", "ports": [{"name": "reloader-web", "containerPort": 8080}]},
                    ],
                }
                yield PodTemplate(owner, owner.namespace, labels, spec)

    def pods_selected(self, namespace: str, selector: Mapping[str, Any] | None) -> list[PodTemplate]:
        return [t for t in self.pod_templates() if t.namespace == namespace and selector_matches(selector, t.labels)]
