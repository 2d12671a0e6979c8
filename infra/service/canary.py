"""Canary rollout (Flagger + Istio): the Canary, its webhooks, MetricTemplates and alerting."""

from __future__ import annotations

from typing import Any

from infra import charts, k8s, waves
from infra.config import Region, StackConfig
from infra.service.names import (
    ALERT_PROVIDER,
    ALERT_SECRET,
    APP,
    CANARY_URL,
    NS,
    PRIMARY_URL,
    REPLAY_URL,
    meta,
    object_labels,
)
from infra.service.replay import replay_parameters, webhook_timeout
from rollout import analysis
from serving.settings import DEFAULT_HTTP_PORT


def _hook(
    name: str, hook: str, *, timeout: str | None = None, metadata: dict[str, str] | None = None
) -> dict[str, Any]:
    kind, endpoint = analysis.FLAGGER_HOOKS[hook]
    webhook: dict[str, Any] = {"name": name, "type": kind, "url": f"{REPLAY_URL}{analysis.flagger_hook_path(endpoint)}"}
    if timeout:
        webhook["timeout"] = timeout
    if metadata:
        webhook["metadata"] = metadata
    return webhook


def flagger_webhooks(config: StackConfig, region: Region | None = None) -> list[dict[str, Any]]:
    """The decision service's hooks, in the order Flagger's scheduler meets them each interval
    (fluxcd/flagger v1.40.0 pkg/controller/scheduler.go, advanceCanary): rollback (200 on a decisive
    failure: roll back at once), then at weight 0 the pre-rollout hooks or else the rollout hook (one
    interval of paired replay and a look), then confirm-traffic-increase / confirm-promotion (200 only on
    a decisive pass; otherwise the weight is held and no failed check is counted)."""
    sides = {"stable": PRIMARY_URL, "candidate": CANARY_URL}
    interval = {**sides, **replay_parameters(config)}
    timeout = webhook_timeout(config)
    hooks: list[dict[str, Any]] = [
        _hook("smoke-test", "smoke", timeout="60s", metadata={"candidate": CANARY_URL, "model": config.model.name}),
        # At weight 0 Flagger runs the pre-rollout hooks every interval until traffic may increase: the
        # analysis' first looks replay before any user reaches the candidate.
        _hook("labelled-replay-warmup", "warmup", timeout=timeout, metadata=interval),
        _hook("labelled-replay", "rollout", timeout=timeout, metadata=interval),
        _hook("decision-rollback", "rollback"),
        _hook("decision-traffic-increase", "confirm-traffic-increase"),
        _hook("decision-promotion", "confirm-promotion"),
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
        "metrics": analysis.flagger_canary_metrics(a, NS),
        "webhooks": flagger_webhooks(config, region),
    }
    if config.alerts_enabled:
        spec_analysis["alerts"] = [
            {"name": "rollout", "severity": "info", "providerRef": {"name": ALERT_PROVIDER, "namespace": NS}}
        ]
    return {
        "apiVersion": "flagger.app/v1beta1",
        "kind": "Canary",
        "metadata": meta(APP),
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
        "metadata": meta(ALERT_PROVIDER),
        "spec": {
            "type": "slack",
            "channel": "fraud-rollouts",
            "username": "flagger",
            "secretRef": {"name": ALERT_SECRET},
        },
    }
    return [secret, provider]
