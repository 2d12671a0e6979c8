"""Helm values for each platform chart, as plain functions of the parts of the stack config they use.

No secret ever appears here in plain text: charts are pointed at Secrets the program creates
(``existingSecret``-style keys), and the one value a chart only takes inline (Harbor's internal
database password) is passed in as a Pulumi secret Output by the caller.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from infra import k8s
from infra.chart_archives import CHARTS_DIR, archive_name
from infra.config import ChartComponent

# Namespaces of the platform, one per component.
NAMESPACES = {
    "istio": "istio-system",
    "argocd": "argocd",
    "argoWorkflows": "argo",
    "argoRollouts": "argo-rollouts",
    "flagger": "flagger-system",
    "monitoring": "monitoring",
    "harbor": "harbor",
    "mlflow": "mlflow",
}
FRAUD_NAMESPACE = "fraud"
# The Pod Security level each platform namespace enforces: restricted wherever every pod in it (the chart's,
# with the values below, and ours) passes it; None (privileged) where one cannot, for the reason given
# (fraudctl verify's hardening check evaluates every pod against the level its namespace enforces).
POD_SECURITY: dict[str, str | None] = {
    "istio": "restricted",
    "argocd": "restricted",
    # The training pipeline's pods run here, and its rootless BuildKit step needs unconfined seccomp and
    # AppArmor and privilege escalation (newuidmap) for its user namespaces: not even baseline allows that.
    "argoWorkflows": None,
    "argoRollouts": "restricted",
    "flagger": "restricted",
    # node-exporter reads the node itself: host network and PID namespaces, hostPath volumes.
    "monitoring": None,
    "harbor": "restricted",
    "mlflow": "restricted",
}
CHARTS_FOLDER = CHARTS_DIR.name
PROMETHEUS_SERVICE = "kube-prometheus-stack-prometheus"
PROMETHEUS_URL = f"http://{PROMETHEUS_SERVICE}.{NAMESPACES['monitoring']}:9090"
LOADTESTER_URL = f"http://flagger-loadtester.{NAMESPACES['flagger']}/"
GRAFANA_DASHBOARD_LABEL = "grafana_dashboard"
ISTIO_HUB = "docker.io/istio"
# Secret names the charts read (the program creates them from pulumi-random passwords).
GRAFANA_ADMIN_SECRET = "grafana-admin"
HARBOR_ADMIN_SECRET = "harbor-admin"
HARBOR_SECRET_KEY_SECRET = "harbor-secret-key"
ARGOCD_SECRET = "argocd-secret"
ARGO_WORKFLOWS_ARTIFACTS_SECRET = "argo-artifacts-s3"


@dataclass(frozen=True)
class ChartRelease:
    """One Helm release: where it comes from and where it goes."""

    name: str
    chart: str
    component: str
    namespace: str


@dataclass(frozen=True)
class ChartSource:
    """What a Helm release is told to install: ``chart`` (a path or a name), ``version``, ``repository``."""

    chart: str
    version: str | None
    repository: str | None


def chart_source(spec: ChartRelease, component: ChartComponent) -> ChartSource:
    """The vendored archive by default; the named chart at ``version`` when the stack sets a repository.

    A local archive is passed as a path relative to the project (``pulumi up`` runs there) and without
    ``version``: pulumi-kubernetes resolves a local path before any repository and never uses the version
    for it (provider/pkg/provider/helm_release.go ``locateChart``/``localChart``), then records the chart's
    own Chart.yaml version in the state (``setReleaseAttributes``); the archive's name carries the version
    and tests/test_chart_archives.py holds it equal to its Chart.yaml. A changed archive is noticed through
    the rendered-manifest checksum the provider computes in Check.
    """
    if component.repository:
        return ChartSource(spec.chart, component.version, component.repository)
    return ChartSource(f"./{CHARTS_FOLDER}/{archive_name(spec.chart, component.version)}", None, None)


def chart_releases(component: str) -> list[ChartRelease]:
    """The releases a component installs, in install order."""
    ns = NAMESPACES.get(component)
    table = {
        "istio": [
            ChartRelease("istio-base", "base", "istio", ns or ""),
            ChartRelease("istiod", "istiod", "istio", ns or ""),
        ],
        "argocd": [ChartRelease("argo-cd", "argo-cd", "argocd", ns or "")],
        "argoWorkflows": [ChartRelease("argo-workflows", "argo-workflows", "argoWorkflows", ns or "")],
        "argoRollouts": [ChartRelease("argo-rollouts", "argo-rollouts", "argoRollouts", ns or "")],
        "flagger": [ChartRelease("flagger", "flagger", "flagger", ns or "")],
        "flaggerLoadtester": [
            ChartRelease("flagger-loadtester", "loadtester", "flaggerLoadtester", NAMESPACES["flagger"])
        ],
        "monitoring": [ChartRelease("kube-prometheus-stack", "kube-prometheus-stack", "monitoring", ns or "")],
        "harbor": [ChartRelease("harbor", "harbor", "harbor", ns or "")],
    }
    return table[component]


# UIDs the charts' pods run as where their values allow one (fraudctl verify's hardening check wants every
# container at 10000 or above and says why where a chart or image rules it out: infra/verify/waivers.py).
# 65534 (nobody) for images that are built to run as it; 10001 for static binaries that need no home.
NOBODY = 65534
CONTROLLER_UID = 10001
GRAFANA_UID = 10472  # Grafana's image makes its writable paths 0777 for any UID (the chart's default is 472)
REDIS_UID = 10999  # Argo CD's Redis keeps nothing on disk (--save "", no appendonly)
LOADTESTER_UID = 10100


def pod_security(uid: int, *, fs_group: bool = True) -> dict[str, Any]:
    """A pod securityContext: that UID and group, non-root, the runtime's default seccomp profile."""
    context: dict[str, Any] = {
        "runAsNonRoot": True,
        "runAsUser": uid,
        "runAsGroup": uid,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if fs_group:
        context["fsGroup"] = uid
    return context


def container_security(uid: int | None = None) -> dict[str, Any]:
    """A restricted container securityContext (Pod Security restricted: no escalation, no capabilities), as our
    own containers get it (k8s.RESTRICTED_SECURITY_CONTEXT)."""
    context = copy.deepcopy(k8s.RESTRICTED_SECURITY_CONTEXT)
    if uid is not None:
        context |= {"runAsUser": uid, "runAsGroup": uid}
    return context


def _resources(cpu: str, memory: str, cpu_limit: str | None = None, memory_limit: str | None = None) -> dict[str, Any]:
    return {
        "requests": {"cpu": cpu, "memory": memory},
        "limits": {"cpu": cpu_limit or cpu, "memory": memory_limit or memory},
    }


def small_footprint(environment: str) -> bool:
    """dev runs one replica of each controller and keeps less history."""
    return environment == "dev"


def istio_base_values() -> dict[str, Any]:
    return {"defaultRevision": "default"}


def istiod_values(*, small: bool, version: str) -> dict[str, Any]:
    return {
        # The chart sets no seccomp profile on pilot unless told (istiod 1.24.2 templates/deployment.yaml).
        "seccompProfile": {"type": "RuntimeDefault"},
        "pilot": {
            "autoscaleEnabled": not small,
            "replicaCount": 1 if small else 2,
            "resources": _resources("100m", "256Mi", "1", "1Gi"),
        },
        "meshConfig": {
            # Sidecar metrics merged into the app's scrape, so one ServiceMonitor sees both.
            "enablePrometheusMerge": True,
            "accessLogFile": "/dev/stdout",
        },
        "global": {
            # The source chart defaults to gcr.io/istio-testing and latest; istio/release-builder stamps these
            # into the published chart (charts/SOURCES.md). Set here so both sources run the release images,
            # pilot and the injected sidecars alike.
            "hub": ISTIO_HUB,
            "tag": version,
            "proxy": {"resources": _resources("50m", "64Mi", "500m", "256Mi")},
        },
    }


def argocd_values() -> dict[str, Any]:
    return {
        # The admin password hash and server key live in argocd-secret, which the program creates.
        "configs": {
            "secret": {"createSecret": False},
            "params": {"server.insecure": True},
            "cm": {"exec.enabled": False, "admin.enabled": True},
        },
        "dex": {"enabled": False},
        "server": {"service": {"type": "ClusterIP"}, "metrics": {"enabled": True}},
        "controller": {"metrics": {"enabled": True}},
        "repoServer": {"metrics": {"enabled": True}},
        "applicationSet": {"livenessProbe": {"enabled": True}, "readinessProbe": {"enabled": True}},
        "notifications": {"livenessProbe": {"enabled": True}, "readinessProbe": {"enabled": True}},
        "redis": {
            "resources": _resources("50m", "64Mi", "200m", "128Mi"),
            "securityContext": pod_security(REDIS_UID, fs_group=False),
            "livenessProbe": {"enabled": True},
            "readinessProbe": {"enabled": True},
            # Redis never calls the API server.
            "automountServiceAccountToken": False,
        },
    }


def argo_workflows_values(
    *, monitoring: bool, artifact_endpoint: str, artifact_bucket: str, static_credentials: bool
) -> dict[str, Any]:
    s3: dict[str, Any] = {
        "bucket": artifact_bucket,
        "endpoint": artifact_endpoint,
        "insecure": artifact_endpoint.startswith("mlflow-minio."),
    }
    if static_credentials:
        s3["accessKeySecret"] = {"name": ARGO_WORKFLOWS_ARTIFACTS_SECRET, "key": "accesskey"}
        s3["secretKeySecret"] = {"name": ARGO_WORKFLOWS_ARTIFACTS_SECRET, "key": "secretkey"}
    else:
        s3["useSDKCreds"] = True
    return {
        "controller": {
            "workflowNamespaces": [NAMESPACES["argoWorkflows"], FRAUD_NAMESPACE],
            "metricsConfig": {"enabled": True},
            "serviceMonitor": {"enabled": monitoring},
            "podSecurityContext": pod_security(CONTROLLER_UID),
        },
        "server": {"authModes": ["client"], "secure": False, "podSecurityContext": pod_security(CONTROLLER_UID)},
        "workflow": {"serviceAccount": {"create": True, "name": "argo-workflow"}, "rbac": {"create": True}},
        # Workflow artifacts go to the same S3-compatible store as MLflow's, credentials from a Secret.
        "artifactRepository": {"archiveLogs": True, "s3": s3},
    }


def argo_rollouts_values(*, small: bool, monitoring: bool) -> dict[str, Any]:
    return {
        "installCRDs": True,
        "podSecurityContext": pod_security(CONTROLLER_UID),
        "dashboard": {
            "enabled": True,
            "podSecurityContext": pod_security(CONTROLLER_UID),
            "containerSecurityContext": container_security(),
        },
        "controller": {
            "replicas": 1 if small else 2,
            "metrics": {"enabled": True, "serviceMonitor": {"enabled": monitoring}},
        },
    }


def flagger_values(*, monitoring: bool) -> dict[str, Any]:
    return {
        "meshProvider": "istio",
        "metricsServer": PROMETHEUS_URL,
        # The chart's crds/ folder installs the CRDs; crd.create (meant for Helm v2, see the chart's
        # values.yaml) would template the same three again and Helm 3 fails the release (fluxcd/flagger#1199).
        "crd": {"create": False},
        "prometheus": {"install": False},
        "serviceMonitor": {"enabled": monitoring},
        "resources": _resources("50m", "64Mi", "500m", "256Mi"),
        "securityContext": {"enabled": True, "context": container_security(CONTROLLER_UID)},
    }


# The load tester's own ServiceAccount (the program's, without a token: the chart has no value to turn the
# token off, and with rbac.create false its pod would run as the namespace's default account).
LOADTESTER_SERVICE_ACCOUNT = "flagger-loadtester"


def flagger_loadtester_values() -> dict[str, Any]:
    return {
        "cmd": {"timeout": "1h"},
        "serviceAccountName": LOADTESTER_SERVICE_ACCOUNT,
        # The image's user is app (100); its binary is readable and executable by any UID.
        "securityContext": {"enabled": True, "context": container_security(LOADTESTER_UID)},
        "resources": _resources("50m", "64Mi", "500m", "256Mi"),
        # No sidecar: the load tester calls canary pods directly and should not be routed by the mesh.
        "podAnnotations": {"sidecar.istio.io/inject": "false"},
    }


def monitoring_values(*, small: bool) -> dict[str, Any]:
    return {
        "prometheus": {
            "prometheusSpec": {
                # Select every ServiceMonitor/PrometheusRule, not only the chart's own.
                "serviceMonitorSelectorNilUsesHelmValues": False,
                "podMonitorSelectorNilUsesHelmValues": False,
                "ruleSelectorNilUsesHelmValues": False,
                "retention": "7d" if small else "15d",
                "resources": _resources("200m", "512Mi", "1", "2Gi"),
                # The image's user (nobody); the chart's default is 1000.
                "securityContext": pod_security(NOBODY),
            }
        },
        "alertmanager": {
            "enabled": True,
            # Alertmanager never calls the API server.
            "alertmanagerSpec": {"securityContext": pod_security(NOBODY), "automountServiceAccountToken": False},
        },
        "prometheusOperator": {
            "admissionWebhooks": {"patch": {"securityContext": pod_security(NOBODY, fs_group=False)}},
        },
        "grafana": {
            "securityContext": pod_security(GRAFANA_UID),
            "admin": {"existingSecret": GRAFANA_ADMIN_SECRET, "userKey": "admin-user", "passwordKey": "admin-password"},
            "sidecar": {
                "dashboards": {
                    "enabled": True,
                    "label": GRAFANA_DASHBOARD_LABEL,
                    "labelValue": "1",
                    "searchNamespace": "ALL",
                }
            },
        },
    }


def harbor_values(
    *, address: str, tls_secret: str, small: bool, monitoring: bool, database_password: Any
) -> dict[str, Any]:
    """Harbor behind its own ClusterIP Service, TLS from ``tls_secret`` (the program's certificate, see
    infra/registry.py), ``externalURL`` the registry's one name ``address`` (host:port): the token realm it
    hands out is then the name clients already reach."""
    return {
        "expose": {
            "type": "clusterIP",
            "tls": {"enabled": True, "certSource": "secret", "secret": {"secretName": tls_secret}},
            "clusterIP": {"name": "harbor"},
        },
        "externalURL": f"https://{address}",
        # The portal offers the CA for download; core, jobservice, registry and trivy trust it.
        "caSecretName": tls_secret,
        "caBundleSecretName": tls_secret,
        "existingSecretAdminPassword": HARBOR_ADMIN_SECRET,
        "existingSecretAdminPasswordKey": "HARBOR_ADMIN_PASSWORD",
        "existingSecretSecretKey": HARBOR_SECRET_KEY_SECRET,
        "database": {"type": "internal", "internal": {"password": database_password}},
        "metrics": {"enabled": True, "serviceMonitor": {"enabled": monitoring}},
        "trivy": {"enabled": not small},
        "persistence": {"enabled": True},
    }
