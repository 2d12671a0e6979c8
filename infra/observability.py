"""Monitoring of the fraud service: Prometheus alert rules and the Grafana dashboard, as plain builders.

Queries use the metric names the serving runtime exports (imported from :mod:`serving.metrics`) and
thresholds from the same ``analysis`` settings the rollout gates on, so an alert fires on what would also
have stopped a rollout. The few series that come from elsewhere are listed in :data:`EXTERNAL_METRICS`
with who exports them.
"""

from __future__ import annotations

import json
from typing import Any

from rollout.analysis import prometheus_duration
from rollout.settings import AnalysisSettings
from serving.metrics import (
    FEEDBACK_REJECTED_TOTAL,
    FEEDBACK_TOTAL,
    PREDICTIONS_TOTAL,
    REQUEST_DURATION_SECONDS,
    REQUESTS_TOTAL,
    VERSION_LABEL,
)

# Flagger's traffic weight: flagger v1.40.0 pkg/metrics/recorder.go labels flagger_canary_weight by
# workload (the Canary's targetRef name for the canary, <name>-primary for the primary) and namespace, and the
# chart's ServiceMonitor (templates/servicemonitor.yaml, honorLabels false) moves that namespace to
# exported_namespace: the scrape's own namespace label is Flagger's, flagger-system.


def canary_weight(namespace: str, workload: str) -> str:
    """The canary's traffic weight (percent) of the Canary that targets Deployment ``namespace/workload``."""
    return f'flagger_canary_weight{{exported_namespace="{namespace}",workload="{workload}"}}'


# Series not exported by the fraud runtime, and who exports them.
EXTERNAL_METRICS = {
    "up": "Prometheus, per scrape target",
    "flagger_canary_weight": "Flagger controller (canary traffic weight, percent)",
    "istio_requests_total": "Istio sidecar of each serving pod (Envoy stats, scraped via the metrics Service)",
}
DASHBOARD_UID = "fraud-model-rollout"
DASHBOARD_FILE = "fraud-model-rollout.json"
# How far back alert rules look; long enough that a few slow or failed requests do not page anyone.
ALERT_WINDOW = "5m"
QUALITY_WINDOW = "1h"


def _rate(metric: str, matchers: str, window: str, by: str = VERSION_LABEL) -> str:
    return f"sum by ({by}) (rate({metric}{{{matchers}}}[{window}]))"


def alert_rules(
    analysis: AnalysisSettings, *, strategy: str, namespace: str, metrics_job: str, workload: str
) -> list[dict[str, Any]]:
    """Alerting rules for the fraud service (for PrometheusRule ``spec.groups[].rules``), at the thresholds of
    the rollout ``analysis``; the canary's traffic check only with ``strategy`` canary."""
    a = analysis
    ns = f'namespace="{namespace}"'
    w, q = ALERT_WINDOW, QUALITY_WINDOW
    errors = _rate(REQUESTS_TOTAL, f'{ns},code=~"5.."', w)
    requests = _rate(REQUESTS_TOTAL, ns, w)
    p99 = (
        f"1000 * histogram_quantile(0.99, sum by ({VERSION_LABEL}, le) "
        f"(rate({REQUEST_DURATION_SECONDS}_bucket{{{ns}}}[{w}])))"
    )

    def feedback(outcomes: str) -> str:
        return f'sum by ({VERSION_LABEL}) (increase({FEEDBACK_TOTAL}{{{ns},outcome=~"{outcomes}"}}[{q}]))'

    share = a.replay_fraud_share
    recall = f"({feedback('tp')} / ({feedback('tp|fn')} > 0))"
    false_positive_rate = f"({feedback('fp')} / ({feedback('fp|tn')} > 0))"
    precision_at_share = f"{share:g} * {recall} / ({share:g} * {recall} + {1 - share:g} * {false_positive_rate})"
    scrape = f'up{{{ns},job="{metrics_job}",endpoint="http-metrics"}}'
    rules: list[dict[str, Any]] = [
        {
            "alert": "FraudModelDown",
            "expr": f"sum({scrape}) == 0 or absent({scrape})",
            "for": "2m",
            "labels": {"severity": "critical"},
            "annotations": {
                "summary": "No fraud model server is up",
                "description": f"Prometheus cannot scrape any pod behind {namespace}/{metrics_job}: "
                "the fraud model is not serving.",
            },
        },
        {
            "alert": "FraudModelErrorRate",
            "expr": f"100 * {errors} / ({requests} > 0) > {100 - a.min_success_rate:g}",
            "for": "5m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "Fraud model {{ $labels.model_version }} answers too many requests with 5xx",
                "description": '{{ $value | printf "%.2f" }}% of requests failed over '
                + w
                + f" (the rollout gate allows {100 - a.min_success_rate:g}%).",
            },
        },
        {
            "alert": "FraudModelLatencyP99",
            "expr": f"{p99} > {a.max_latency_p99_ms:g}",
            "for": "10m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "Fraud model {{ $labels.model_version }} p99 latency is high",
                "description": 'p99 latency is {{ $value | printf "%.0f" }} ms over '
                + w
                + f" (the rollout gate allows {a.max_latency_p99_ms:g} ms).",
            },
        },
        {
            # Precision at the stated fraud share (analysis.replayFraudShare), from the labelled recall and
            # false-positive rate: the decision's floor (rollout/decision.py), which the mix of labelled
            # feedback (replay vs production) does not move.
            "alert": "FraudModelPrecisionDrop",
            "expr": (
                f"({precision_at_share}) < {a.min_precision:g}"
                f" and on({VERSION_LABEL}) {feedback('tp|fn')} >= {a.min_labelled_frauds}"
            ),
            "for": "15m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "Fraud model {{ $labels.model_version }} precision dropped",
                "description": f"Precision at a {a.replay_fraud_share:g} fraud share, from labelled feedback over "
                + q
                + ' is {{ $value | printf "%.3f" }}'
                + f" (the rollout's floor is {a.min_precision:g}).",
            },
        },
        {
            "alert": "FraudFeedbackForged",
            "expr": f'sum(rate({FEEDBACK_REJECTED_TOTAL}{{{ns},reason="bad_signature"}}[{w}])) > 0.1',
            "for": "10m",
            "labels": {"severity": "warning"},
            "annotations": {
                "summary": "Feedback with invalid signatures keeps arriving",
                "description": "Someone posts prediction ids the service never issued (or with a rotated key): "
                '{{ $value | printf "%.2f" }}/s.',
            },
        },
    ]
    if strategy == "canary":
        # Mesh traffic only, and without the replay (it calls the canary directly by design).
        mesh = (
            f'reporter="destination",destination_workload_namespace="{namespace}",source_workload!="{workload}-replay"'
        )
        canary = f'sum(rate(istio_requests_total{{{mesh},destination_workload="{workload}"}}[{w}]))'
        both = f'sum(rate(istio_requests_total{{{mesh},destination_workload=~"{workload}|{workload}-primary"}}[{w}]))'
        weight = f"max({canary_weight(namespace, workload)})"
        rules.append(
            {
                "alert": "FraudRolloutTrafficImbalance",
                "expr": f"abs(100 * {canary} / ({both} > 0) - on() {weight}) > 15 and on() {weight} > 0",
                "for": "5m",
                "labels": {"severity": "warning"},
                "annotations": {
                    "summary": "Canary traffic share does not follow the Flagger weight",
                    "description": 'The canary receives a share of mesh traffic {{ $value | printf "%.0f" }} '
                    "points away from its weight: the analysis is judging traffic it does not get.",
                },
            }
        )
    return rules


def prometheus_rule(
    analysis: AnalysisSettings,
    *,
    strategy: str,
    name: str,
    namespace: str,
    metrics_job: str,
    workload: str,
    labels: dict[str, str],
) -> dict[str, Any]:
    rules = alert_rules(
        analysis,
        strategy=strategy,
        namespace=namespace,
        metrics_job=metrics_job,
        workload=workload,
    )
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "spec": {"groups": [{"name": "fraud-model", "rules": rules}]},
    }


# ---------------------------------------------------------------------------------------------------
# Grafana


def _panel(
    ident: int, title: str, targets: list[tuple[str, str]], unit: str, x: int, y: int, **extra: Any
) -> dict[str, Any]:
    return {
        "id": ident,
        "type": "timeseries",
        "title": title,
        "datasource": {"type": "prometheus", "uid": "${datasource}"},
        "gridPos": {"h": 8, "w": 12, "x": x, "y": y},
        "fieldConfig": {"defaults": {"unit": unit, **extra}, "overrides": []},
        "targets": [
            {"refId": chr(ord("A") + i), "expr": expr, "legendFormat": legend, "range": True}
            for i, (expr, legend) in enumerate(targets)
        ],
    }


def dashboard(analysis: AnalysisSettings, *, namespace: str, workload: str) -> dict[str, Any]:
    """Traffic, success rate, latency, precision/recall per model version, and the canary weight of the
    Canary that targets ``workload``."""
    ns = f'namespace="{namespace}"'
    window = "1m"
    quality = prometheus_duration(analysis.feedback_window_seconds)

    def feedback(outcomes: str) -> str:
        return f'sum by ({VERSION_LABEL}) (increase({FEEDBACK_TOTAL}{{{ns},outcome=~"{outcomes}"}}[{quality}]))'

    legend = "{{" + VERSION_LABEL + "}}"
    ok_matchers = f'{ns},code!~"5.."'
    fraud_matchers = f'{ns},decision="fraud"'
    panels = [
        _panel(1, "Requests per second by model version", [(_rate(REQUESTS_TOTAL, ns, window), legend)], "reqps", 0, 0),
        _panel(
            2,
            "Success rate (non-5xx) by model version",
            [
                (
                    f"100 * {_rate(REQUESTS_TOTAL, ok_matchers, window)} / ({_rate(REQUESTS_TOTAL, ns, window)} > 0)",
                    legend,
                )
            ],
            "percent",
            12,
            0,
            min=90,
            max=100,
        ),
        _panel(
            3,
            "Latency p50 / p99 by model version",
            [
                (
                    f"1000 * histogram_quantile({q}, sum by ({VERSION_LABEL}, le) "
                    f"(rate({REQUEST_DURATION_SECONDS}_bucket{{{ns}}}[{window}])))",
                    f"p{int(q * 100)} {legend}",
                )
                for q in (0.5, 0.99)
            ],
            "ms",
            0,
            8,
        ),
        _panel(
            4,
            "Canary weight (Flagger)",
            [(canary_weight(namespace, workload), "canary weight")],
            "percent",
            12,
            8,
            min=0,
            max=100,
        ),
        _panel(
            5,
            f"Precision and recall on labelled feedback ({quality}) by model version",
            [
                (f"{feedback('tp')} / ({feedback('tp|fp')} > 0)", f"precision {legend}"),
                (f"{feedback('tp')} / ({feedback('tp|fn')} > 0)", f"recall {legend}"),
            ],
            "percentunit",
            0,
            16,
            min=0,
            max=1,
        ),
        _panel(
            6,
            "Flagged share and labelled frauds by model version",
            [
                (
                    f"{_rate(PREDICTIONS_TOTAL, fraud_matchers, window)}"
                    f" / ({_rate(PREDICTIONS_TOTAL, ns, window)} > 0)",
                    f"flagged share {legend}",
                ),
                (feedback("tp|fn"), f"labelled frauds {legend}"),
            ],
            "short",
            12,
            16,
        ),
        _panel(
            7,
            "Feedback refused by reason",
            [(_rate(FEEDBACK_REJECTED_TOTAL, ns, window, by="reason"), "{{reason}}")],
            "reqps",
            0,
            24,
        ),
    ]
    return {
        "uid": DASHBOARD_UID,
        "title": "Fraud model rollout",
        "tags": ["fraud", "mlserver", "rollout"],
        "timezone": "utc",
        "schemaVersion": 39,
        "version": 1,
        "refresh": "30s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Prometheus"},
            ]
        },
        "panels": panels,
    }


def dashboard_queries(board: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in board["panels"] for target in panel["targets"]]


def dashboard_configmap(
    analysis: AnalysisSettings, *, name: str, namespace: str, workload: str, labels: dict[str, str], label: str
) -> dict[str, Any]:
    """The dashboard as a ConfigMap Grafana's sidecar picks up (``<label>: "1"``)."""
    board = dashboard(analysis, namespace=namespace, workload=workload)
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": {**labels, label: "1"}},
        "data": {DASHBOARD_FILE: json.dumps(board, indent=1, sort_keys=True)},
    }
