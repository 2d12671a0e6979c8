"""The model server: namespace, pod template, Deployment (Flagger's target), Services, autoscaling,
disruption budget, metrics scraping and the published evaluation metrics."""

from __future__ import annotations

from typing import Any

import pulumi

from infra import k8s
from infra.config import CandidateMetrics, ModelSettings, ServingSettings
from infra.service.names import (
    APP,
    HEALTH_LIVE,
    HEALTH_READY,
    METRICS_SERVICE,
    NS,
    PREVIEW,
    SERVER_ARGS,
    SERVICE_ACCOUNT,
    SIGNING_SECRET,
    SIGNING_SECRET_KEY,
    VERSION_POD_LABEL,
    WORKLOAD_LABEL,
    meta,
    object_labels,
)
from rollout import analysis
from serving.faults import MODE_ENV
from serving.feedback import FILE_SUFFIX, SIGNING_KEY_ENV
from serving.protocol import METRICS_PATH
from serving.settings import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    ServingConfig,
    mlserver_environment,
)


def namespace_object(mesh: bool) -> k8s.Manifest:
    """The fraud namespace: in the mesh when Istio is on (then Pod Security can only warn: istio-init
    needs NET_ADMIN), else restricted."""
    obj = k8s.namespace(NS, mesh=mesh, pod_security=None if mesh else "restricted")
    obj["metadata"]["labels"]["pod-security.kubernetes.io/warn"] = "restricted"
    return obj


def serving_config(model: ModelSettings, serving: ServingSettings) -> ServingConfig:
    return ServingConfig(
        model_uri=model.target_uri,
        version_label=model.target_version,
        model_name=model.name,
        host="0.0.0.0",
        http_port=DEFAULT_HTTP_PORT,
        grpc_port=DEFAULT_GRPC_PORT,
        metrics_port=DEFAULT_METRICS_PORT,
        max_batch_size=serving.max_batch_size,
        max_batch_time_seconds=serving.max_batch_time,
    )


SIGNING_KEY_DIR = "/etc/fraud-feedback"


def serving_env(model: ModelSettings, serving: ServingSettings, *, mlflow_enabled: bool) -> list[dict[str, Any]]:
    """MLServer settings from serving.settings (parallel workers 0, OMP_NUM_THREADS=1, adaptive batching,
    the version label), where the shared signing key's file is, MLflow access, and the drill's fault."""
    values = mlserver_environment(serving_config(model, serving))
    values["HOME"] = "/tmp"
    if mlflow_enabled and model.target_uri.startswith(("models:/", "runs:/")):
        from infra.mlflow import TRACKING_URL

        values["MLFLOW_TRACKING_URI"] = TRACKING_URL
    if serving.simulate_error != "false":
        values[MODE_ENV] = serving.simulate_error
    # The signing key is a file (the Secret mounted by pod_template), named by <variable>_FILE.
    values[SIGNING_KEY_ENV + FILE_SUFFIX] = f"{SIGNING_KEY_DIR}/{SIGNING_SECRET_KEY}"
    return [{"name": name, "value": value} for name, value in sorted(values.items())]


def serving_image(model: ModelSettings, built: pulumi.Input[str]) -> pulumi.Input[str]:
    """The image the model server runs: the one the training pipeline built for the candidate
    (model.candidateImage, by digest) while the candidate is the target, else the one this program built.
    A model and the code that serves it roll out together."""
    if model.target == "candidate" and model.candidate_image:
        return model.candidate_image
    return built


def _probe(path: str, **timing: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "timeoutSeconds": 2, **timing}


def pod_template(
    model: ModelSettings, s: ServingSettings, image: pulumi.Input[str], *, strategy: str, mlflow: bool
) -> k8s.Manifest:
    """The model server's pods, serving ``model``'s target with ``s``'s resources; ``strategy`` names the label
    each version's pods are spread by, ``mlflow``: the in-cluster MLflow runs (models:/ URIs load from it)."""
    tmp_volume, tmp_mount = k8s.tmp_volume()
    key_volume, key_mount = k8s.secret_files("signing-key", SIGNING_SECRET, SIGNING_KEY_DIR, [SIGNING_SECRET_KEY])
    pod_labels = {
        **object_labels(APP),
        **WORKLOAD_LABEL,
        VERSION_POD_LABEL: model.target_version,
    }
    selector = {"app.kubernetes.io/name": APP}
    revision_label = "pod-template-hash" if strategy == "canary" else "rollouts-pod-template-hash"
    container = k8s.container(
        "mlserver",
        image,
        args=SERVER_ARGS,
        env=serving_env(model, s, mlflow_enabled=mlflow),
        ports=[
            {"name": "http", "containerPort": DEFAULT_HTTP_PORT},
            {"name": "grpc", "containerPort": DEFAULT_GRPC_PORT},
            {"name": "http-metrics", "containerPort": DEFAULT_METRICS_PORT},
        ],
        requests={"cpu": s.cpu_request, "memory": s.memory_request},
        limits={"cpu": s.cpu_limit, "memory": s.memory_limit},
        probes={
            # Loading the model (possibly from MLflow) may take minutes; liveness starts after it.
            "startupProbe": _probe(HEALTH_READY, periodSeconds=5, failureThreshold=60),
            "readinessProbe": _probe(HEALTH_READY, periodSeconds=5, failureThreshold=2),
            "livenessProbe": _probe(HEALTH_LIVE, periodSeconds=10, failureThreshold=3),
        },
        volume_mounts=[tmp_mount, key_mount],
    )
    return {
        "metadata": {
            "labels": pod_labels,
            "annotations": {
                "fraud-platform/model-uri": model.target_uri,
                # Envoy metrics on 15090 are scraped through the metrics Service, not by annotation.
                "prometheus.io/scrape": "false",
            },
        },
        "spec": {
            "serviceAccountName": SERVICE_ACCOUNT,
            "automountServiceAccountToken": False,
            "securityContext": k8s.pod_security_context(),
            "terminationGracePeriodSeconds": 30,
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": key,
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": selector},
                    # Spread each version's pods on their own, not the old and new versions together.
                    "matchLabelKeys": [revision_label],
                }
                for key in ("topology.kubernetes.io/zone", "kubernetes.io/hostname")
            ],
            "containers": [container],
            "volumes": [tmp_volume, key_volume],
        },
    }


def service_account() -> k8s.Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(SERVICE_ACCOUNT),
        "automountServiceAccountToken": False,
    }


def signing_secret(key: pulumi.Input[str]) -> k8s.Manifest:
    """The feedback signing key, one for all replicas of every version (tokens verify anywhere)."""
    return k8s.secret(SIGNING_SECRET, NS, {SIGNING_SECRET_KEY: key}, obj_labels=object_labels(SIGNING_SECRET))


def deployment(pod: k8s.Manifest) -> k8s.Manifest:
    """Flagger's target, running ``pod`` (:func:`pod_template`). No ``replicas``: the HPA owns the count
    and Flagger scales this copy to zero once a version is promoted, so declaring one would fight both."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(APP),
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": APP}},
            "revisionHistoryLimit": 5,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": pod,
        },
    }


def _serving_ports() -> list[dict[str, Any]]:
    return [
        {"name": "http", "port": DEFAULT_HTTP_PORT, "targetPort": "http"},
        {"name": "grpc", "port": DEFAULT_GRPC_PORT, "targetPort": "grpc"},
    ]


def blue_green_services() -> list[k8s.Manifest]:
    """Active and preview Services; Argo Rollouts adds the pod-template-hash to each selector."""
    return [
        k8s.service(name, NS, {"app.kubernetes.io/name": APP}, _serving_ports(), obj_labels=object_labels(name))
        for name in (APP, PREVIEW)
    ]


def metrics_service(mesh: bool) -> k8s.Manifest:
    """Headless, selecting every model-server pod once (primary, canary, active, preview alike); with the
    mesh, Envoy's metrics too."""
    ports = [{"name": "http-metrics", "port": DEFAULT_METRICS_PORT, "targetPort": "http-metrics"}]
    if mesh:
        ports.append({"name": "http-envoy-prom", "port": 15090, "targetPort": 15090})
    svc = k8s.service(METRICS_SERVICE, NS, WORKLOAD_LABEL, ports, obj_labels=object_labels(METRICS_SERVICE))
    svc["spec"]["clusterIP"] = "None"
    return svc


def service_monitor(mesh: bool) -> k8s.Manifest:
    endpoints = [{"port": "http-metrics", "path": METRICS_PATH, "interval": "15s"}]
    if mesh:
        endpoints.append({"port": "http-envoy-prom", "path": "/stats/prometheus", "interval": "15s"})
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": meta(APP),
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": METRICS_SERVICE}},
            "namespaceSelector": {"matchNames": [NS]},
            # Pod identity on every series, so the analysis selects the candidate's (or the primary's) pods
            # and never blends both by version label (rollout/analysis.py: FLAGGER, ARGO).
            "podTargetLabels": list(analysis.POD_TARGET_LABELS),
            "endpoints": endpoints,
        },
    }


def autoscaler(serving: ServingSettings, strategy: str) -> k8s.Manifest:
    s = serving
    target = (
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": APP}
        if strategy == "canary"
        else {"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout", "name": APP}
    )
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": meta(APP),
        "spec": {
            "scaleTargetRef": target,
            "minReplicas": s.min_replicas,
            "maxReplicas": s.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {"type": "Utilization", "averageUtilization": s.target_cpu_utilization},
                    },
                }
            ],
            "behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}},
        },
    }


def disruption_budget() -> k8s.Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(APP),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(WORKLOAD_LABEL)}},
    }


def model_metrics_configmap(metrics: CandidateMetrics | None) -> k8s.Manifest | None:
    """``model-metrics-<version>``: the candidate's offline evaluation next to what serves it (or None
    when model.metricsFile is not set; config validation already refused a missing or mismatched file)."""
    if metrics is None:
        return None
    name = f"model-metrics-{metrics.version}"
    metadata = meta(name, {VERSION_POD_LABEL: metrics.version})
    metadata["annotations"] = {"fraud-platform/source": metrics.path}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {"metrics.json": metrics.json},
    }
