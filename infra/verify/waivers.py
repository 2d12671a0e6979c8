"""What a chart or an image imposes on the ``hardening`` check (infra/verify/hardening.py): each a
:class:`Waiver` with its reason. The check fails on any finding no waiver covers, and tests/test_hardening.py
fails on a waiver that covers nothing in any stack. Keep to the narrowest glob that is true.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass


@dataclass(frozen=True)
class Finding:
    rule: str
    origin: str  # "program", "gitops", "helm:<release>"
    workload: str  # Kind/namespace/name
    container: str  # "" for a pod- or namespace-level finding
    message: str

    def text(self) -> str:
        where = f" container {self.container}" if self.container else ""
        return f"{self.workload} ({self.origin}){where}: {self.message} [{self.rule}]"


@dataclass(frozen=True)
class Waiver:
    """A finding the chart or image imposes: ``rule`` for ``origin``'s ``workload`` (a glob over
    Kind/namespace/name) and ``container`` (a glob; "" for pod- or namespace-level findings), and why."""

    rule: str
    origin: str
    workload: str
    reason: str
    container: str = "*"

    def covers(self, finding: Finding) -> bool:
        return (
            self.rule == finding.rule
            and fnmatch.fnmatchcase(finding.origin, self.origin)
            and fnmatch.fnmatchcase(finding.workload, self.workload)
            and fnmatch.fnmatchcase(finding.container, self.container)
        )


_ARGO_CD_REDIS = (
    "Argo CD (chart argo-cd 7.7.11) hands the Redis password to Redis and to every component that talks to it as "
    "environment variables from Secret argocd-redis; the chart has no file-based alternative"
)
_HARBOR_ENV = (
    "Harbor's components (chart harbor 1.16.2) read their configuration, secrets included, from environment "
    "variables (envFrom of their Secrets); the chart and the images offer no file-based alternative"
)
_GRAFANA_ENV = (
    "the grafana chart (8.6.4, in kube-prometheus-stack 66.3.1) passes the admin credentials as environment "
    "variables to Grafana and to its sidecars, which reload dashboards and datasources through Grafana's API with "
    "them (templates/_pod.tpl REQ_USERNAME/REQ_PASSWORD); GF_SECURITY_ADMIN_PASSWORD__FILE would leave the "
    "sidecars without credentials"
)

WAIVERS: tuple[Waiver, ...] = (
    # --- secrets as environment variables (charts' conventions)
    Waiver("secret-env", "helm:argo-cd", "*/argocd/argo-cd-argocd-*", _ARGO_CD_REDIS),
    Waiver("secret-env", "helm:harbor", "*/harbor/harbor-*", _HARBOR_ENV),
    Waiver(
        "secret-env", "helm:kube-prometheus-stack", "Deployment/monitoring/kube-prometheus-stack-grafana", _GRAFANA_ENV
    ),
    # --- UIDs below 10000 (images built for one user)
    Waiver(
        "uid",
        "helm:argo-cd",
        "*/argocd/argo-cd-argocd-*",
        "Argo CD's images are built for their argocd user (999), whose home holds the git, ssh and gpg "
        "configuration the repo server and the controllers use; the chart leaves the UID to the image",
    ),
    Waiver(
        "uid",
        "helm:harbor",
        "StatefulSet/harbor/harbor-database",
        "harbor-db runs PostgreSQL as the image's postgres user: the chart fixes runAsUser and fsGroup 999 "
        "(templates/database/database-ss.yaml) with no value to change them",
    ),
    Waiver(
        "uid",
        "helm:harbor",
        "StatefulSet/harbor/harbor-redis",
        "the chart fixes Harbor's redis at runAsUser and fsGroup 999 (templates/redis/statefulset.yaml) with no "
        "value to change them",
    ),
    Waiver(
        "uid",
        "helm:istiod",
        "Deployment/istio-system/istiod",
        "istiod runs as its image's istio-proxy user (1337, the UID Istio's traffic redirection excludes); the chart "
        "sets no runAsUser and has no value for one",
    ),
    Waiver(
        "uid",
        "program",
        "WorkflowTemplate/argo/fraud-model-training.build-image",
        "rootless BuildKit runs as the image's user (1000), the one its /etc/subuid and /etc/subgid ranges are "
        "for; newuidmap refuses any other",
    ),
    # --- probes the charts do not define
    Waiver(
        "probes",
        "helm:argo-cd",
        "StatefulSet/argocd/argo-cd-argocd-application-controller",
        "the argo-cd chart (7.7.11) defines only a readiness probe for the application controller",
    ),
    Waiver(
        "probes",
        "helm:argo-rollouts",
        "Deployment/argo-rollouts/argo-rollouts-dashboard",
        "the argo-rollouts chart (2.38.2) has no probe values for the dashboard",
    ),
    Waiver(
        "probes",
        "helm:argo-workflows",
        "Deployment/argo/argo-workflows-server",
        "the argo-workflows chart (0.45.4) defines only a readiness probe for the server",
    ),
    Waiver(
        "probes",
        "helm:argo-workflows",
        "Deployment/argo/argo-workflows-workflow-controller",
        "the argo-workflows chart (0.45.4) defines only a liveness probe for the controller (it serves no traffic)",
    ),
    Waiver(
        "probes",
        "helm:istiod",
        "Deployment/istio-system/istiod",
        "the istiod chart (1.24.2) defines only a readiness probe for pilot",
    ),
    Waiver(
        "probes",
        "helm:kube-prometheus-stack",
        "Deployment/monitoring/kube-prometheus-stack-grafana",
        "the grafana chart (8.6.4) has no probe values for its dashboard and datasource sidecars",
        container="grafana-sc-*",
    ),
    # --- Pod Security
    Waiver(
        "pod-security",
        "program",
        "Namespace/fraud",
        "with the mesh, Istio injects istio-init into every pod, which needs NET_ADMIN and NET_RAW as root (no Istio "
        "CNI: istio 1.24.2 injection-template.yaml); not even baseline allows it. The namespace warns on restricted, "
        "and our own pods there pass it",
    ),
    Waiver(
        "pod-security",
        "program",
        "Namespace/argo",
        "the training pipeline's pods run here and its rootless BuildKit step needs unconfined seccomp and AppArmor "
        "and privilege escalation (newuidmap) for its user namespaces; not even baseline allows it",
    ),
    Waiver(
        "pod-security",
        "program",
        "Namespace/monitoring",
        "node-exporter reads the node itself: host network and PID namespaces and hostPath volumes",
    ),
    Waiver(
        "pod-security",
        "program",
        "WorkflowTemplate/argo/fraud-model-training.build-image",
        "rootless BuildKit needs unconfined seccomp and AppArmor and privilege escalation (newuidmap is setuid) for "
        "the user namespaces it builds in; no root and no privileged container",
    ),
)
