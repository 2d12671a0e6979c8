"""Canary rollout (Flagger + Istio): the Canary, its webhooks, MetricTemplates and alerting."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pulumi

from infra import charts, k8s, waves
from infra.config import AnalysisSettings, Region
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


def flagger_webhooks(
    settings: AnalysisSettings, model_name: str, upstream: Sequence[Region] = ()
) -> list[dict[str, Any]]:
    """The decision service's hooks, in the order Flagger's scheduler meets them each interval
    (fluxcd/flagger v1.40.0 pkg/controller/scheduler.go, advanceCanary): rollback (200 on a decisive
    failure: roll back at once), then at weight 0 the pre-rollout hooks or else the rollout hook (one
    interval of paired replay and a look), then confirm-traffic-increase / confirm-promotion (200 only on
    a decisive pass; otherwise the weight is held and no failed check is counted). ``upstream``: the regions
    of the previous rollout wave, which promote first."""
    sides = {"stable": PRIMARY_URL, "candidate": CANARY_URL}
    interval = {**sides, **replay_parameters(settings, model_name)}
    timeout = webhook_timeout(settings)
    hooks: list[dict[str, Any]] = [
        _hook("smoke-test", "smoke", timeout="60s", metadata={"candidate": CANARY_URL, "model": model_name}),
        # At weight 0 Flagger runs the pre-rollout hooks every interval until traffic may increase: the
        # analysis' first looks replay before any user reaches the candidate.
        _hook("labelled-replay-warmup", "warmup", timeout=timeout, metadata=interval),
        _hook("labelled-replay", "rollout", timeout=timeout, metadata=interval),
        _hook("decision-rollback", "rollback"),
        _hook("decision-traffic-increase", "confirm-traffic-increase"),
        _hook("decision-promotion", "confirm-promotion"),
    ]
    wave = waves.confirm_rollout_webhook(upstream)
    if wave is not None:
        # Rollout waves: this region's canary starts only once the previous wave promoted.
        hooks.insert(0, wave)
    if settings.manual_promotion:
        # Open with the load tester's gate API (docs/ROLLOUT.md); closed by default.
        hooks.append(
            {"name": "manual-promotion", "type": "confirm-promotion", "url": f"{charts.LOADTESTER_URL}gate/check"}
        )
    return hooks


def canary(
    settings: AnalysisSettings, model_name: str, *, alerts: bool, upstream: Sequence[Region] = ()
) -> k8s.Manifest:
    """The Canary of ``model_name``'s model server, judged by ``settings``; ``alerts``: Flagger posts its events
    to the alert webhook (alert_objects); ``upstream``: the previous rollout wave's regions."""
    spec_analysis: dict[str, Any] = {
        "interval": analysis.prometheus_duration(settings.interval_seconds),
        "threshold": settings.threshold,
        "stepWeights": list(settings.step_weights),
        "metrics": analysis.flagger_canary_metrics(settings, NS),
        "webhooks": flagger_webhooks(settings, model_name, upstream),
    }
    if alerts:
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


def flagger_metric_templates(settings: AnalysisSettings) -> list[k8s.Manifest]:
    return analysis.flagger_metric_templates(settings, NS, charts.PROMETHEUS_URL, object_labels("analysis"))


def alert_objects(webhook_url: pulumi.Input[str]) -> list[k8s.Manifest]:
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
