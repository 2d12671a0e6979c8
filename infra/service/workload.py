"""The model server: namespace, pod template, Deployment (Flagger's target), Services, autoscaling,
disruption budget, metrics scraping and the published evaluation metrics."""

from __future__ import annotations

from typing import Any

from infra import k8s
from infra.config import StackConfig
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
from serving.feedback import SIGNING_KEY_ENV
from serving.settings import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    DEFAULT_METRICS_PORT,
    METRICS_PATH,
    ServingConfig,
    mlserver_environment,
)


def namespace_object(config: StackConfig) -> dict[str, Any]:
    """The fraud namespace: in the mesh when Istio is on (then Pod Security can only warn: istio-init
    needs NET_ADMIN), else restricted."""
    mesh = config.enabled("istio")
    obj = k8s.namespace(NS, mesh=mesh, pod_security=None if mesh else "restricted")
    obj["metadata"]["labels"]["pod-security.kubernetes.io/warn"] = "restricted"
    return obj


def serving_config(config: StackConfig) -> ServingConfig:
    return ServingConfig(
        model_uri=config.model.target_uri,
        version_label=config.model.target_version,
        model_name=config.model.name,
        host="0.0.0.0",
        http_port=DEFAULT_HTTP_PORT,
        grpc_port=DEFAULT_GRPC_PORT,
        metrics_port=DEFAULT_METRICS_PORT,
        max_batch_size=config.serving.max_batch_size,
        max_batch_time_seconds=config.serving.max_batch_time,
    )


def serving_env(config: StackConfig) -> list[dict[str, Any]]:
    """MLServer settings from serving.settings (parallel workers 0, OMP_NUM_THREADS=1, adaptive batching,
    the version label), the shared signing key from its Secret, MLflow access, and the drill's fault."""
    values = mlserver_environment(serving_config(config))
    values["HOME"] = "/tmp"
    uri = config.model.target_uri
    if config.enabled("mlflow") and uri.startswith(("models:/", "runs:/")):
        from infra.mlflow import TRACKING_URL

        values["MLFLOW_TRACKING_URI"] = TRACKING_URL
    if config.serving.simulate_error != "false":
        values[MODE_ENV] = config.serving.simulate_error
    env = [{"name": name, "value": value} for name, value in sorted(values.items())]
    env.append(k8s.secret_env(SIGNING_KEY_ENV, SIGNING_SECRET, SIGNING_SECRET_KEY))
    return env


def _probe(path: str, **timing: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "http"}, "timeoutSeconds": 2, **timing}


def pod_template(config: StackConfig, image: Any) -> dict[str, Any]:
    s = config.serving
    tmp_volume, tmp_mount = k8s.tmp_volume()
    pod_labels = {
        **object_labels(APP),
        **WORKLOAD_LABEL,
        VERSION_POD_LABEL: config.model.target_version,
    }
    selector = {"app.kubernetes.io/name": APP}
    revision_label = "pod-template-hash" if config.strategy == "canary" else "rollouts-pod-template-hash"
    container = k8s.container(
        "mlserver",
        image,
        args=SERVER_ARGS,
        env=serving_env(config),
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
        volume_mounts=[tmp_mount],
    )
    return {
        "metadata": {
            "labels": pod_labels,
            "annotations": {
                "fraud-platform/model-uri": config.model.target_uri,
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
            "volumes": [tmp_volume],
        },
    }


def service_account() -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(SERVICE_ACCOUNT),
        "automountServiceAccountToken": False,
    }


def signing_secret(key: Any) -> dict[str, Any]:
    """The feedback signing key, one for all replicas of every version (tokens verify anywhere)."""
    return k8s.secret(SIGNING_SECRET, NS, {SIGNING_SECRET_KEY: key}, obj_labels=object_labels(SIGNING_SECRET))


def deployment(config: StackConfig, image: Any) -> dict[str, Any]:
    """Flagger's target. No ``replicas``: the HPA owns the count and Flagger scales this copy to zero
    once a version is promoted, so declaring one would fight both."""
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(APP),
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": APP}},
            "revisionHistoryLimit": 5,
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}},
            "template": pod_template(config, image),
        },
    }


def _serving_ports() -> list[dict[str, Any]]:
    return [
        {"name": "http", "port": DEFAULT_HTTP_PORT, "targetPort": "http"},
        {"name": "grpc", "port": DEFAULT_GRPC_PORT, "targetPort": "grpc"},
    ]


def blue_green_services() -> list[dict[str, Any]]:
    """Active and preview Services; Argo Rollouts adds the pod-template-hash to each selector."""
    return [
        k8s.service(name, NS, {"app.kubernetes.io/name": APP}, _serving_ports(), obj_labels=object_labels(name))
        for name in (APP, PREVIEW)
    ]


def metrics_service(config: StackConfig) -> dict[str, Any]:
    """Headless, selecting every model-server pod once (primary, canary, active, preview alike)."""
    ports = [{"name": "http-metrics", "port": DEFAULT_METRICS_PORT, "targetPort": "http-metrics"}]
    if config.enabled("istio"):
        ports.append({"name": "http-envoy-prom", "port": 15090, "targetPort": 15090})
    svc = k8s.service(METRICS_SERVICE, NS, WORKLOAD_LABEL, ports, obj_labels=object_labels(METRICS_SERVICE))
    svc["spec"]["clusterIP"] = "None"
    return svc


def service_monitor(config: StackConfig) -> dict[str, Any]:
    endpoints = [{"port": "http-metrics", "path": METRICS_PATH, "interval": "15s"}]
    if config.enabled("istio"):
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


def autoscaler(config: StackConfig) -> dict[str, Any]:
    s = config.serving
    target = (
        {"apiVersion": "apps/v1", "kind": "Deployment", "name": APP}
        if config.strategy == "canary"
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


def disruption_budget() -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": meta(APP),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(WORKLOAD_LABEL)}},
    }


def model_metrics_configmap(config: StackConfig) -> dict[str, Any] | None:
    """``model-metrics-<version>``: the candidate's offline evaluation next to what serves it (or None
    when model.metricsFile is not set; config validation already refused a missing or mismatched file)."""
    if not config.model.metrics_json:
        return None
    version = config.model.candidate_version
    name = f"model-metrics-{version}"
    metadata = meta(name, {VERSION_POD_LABEL: version})
    metadata["annotations"] = {"fraud-platform/source": config.model.metrics_file}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {"metrics.json": config.model.metrics_json},
    }
