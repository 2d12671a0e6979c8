"""Blue-green rollout (Argo Rollouts): the Rollout, its Services and AnalysisTemplates."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from infra import charts, waves
from infra.config import Region, StackConfig
from infra.service.names import (
    ACTIVE_URL,
    APP,
    NS,
    PREVIEW,
    PREVIEW_URL,
    REPLAY_URL,
    meta,
    object_labels,
)
from infra.service.replay import replay_parameters
from infra.service.workload import pod_template
from rollout import analysis

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
        "metadata": meta(APP),
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
