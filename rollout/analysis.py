"""The rollout analysis, defined once: which checks gate a candidate, how they pick its pods, and how the
controllers reach the decision service.

Two kinds of evidence judge a candidate:

* **Model quality** is decided by the decision service (``ops/decision_service.py``): it replays labelled
  holdout transactions to the stable AND the candidate and runs the sequential paired analysis of
  ``rollout/decision.py`` on them. Flagger asks it through webhooks, Argo Rollouts through a ``web`` metric;
  the contract (paths, verdict field, Argo conditions) is at the bottom of this module.
* **System health** is PromQL on the runtime's own metrics: the candidate's success rate and p99 latency
  (:func:`analysis_checks`, run by every controller as metric checks) and the primary's success rate
  (:func:`primary_health_check`, read by the decision service: a failing primary halts the rollout).

A check's query is a template with two placeholders filled by whoever runs it: ``${selector}`` (label
matchers picking one side's pods) and ``${window}`` (the range rates look back over).

**Pods are picked by identity, never by version label** (issue 10 #4: a retrain proposed under the same
``model_version``, or the fault drill after a promotion, would blend primary and candidate). The
ServiceMonitor copies two pod labels onto every series (``podTargetLabels``; prometheus-operator turns
``app.kubernetes.io/name`` into ``app_kubernetes_io_name``, any character outside ``[a-zA-Z0-9_]`` becoming
``_``):

* Flagger copies the target Deployment to ``<target>-primary`` and renames its selector label's value to
  ``<target>-primary`` on the primary's pods (``makePrimaryLabels`` in fluxcd/flagger v1.40.0
  ``pkg/canary/util.go``, called from ``pkg/canary/deployment_controller.go``; the selector label is the
  first of ``-selector-labels``, default ``app,name,app.kubernetes.io/name``, found in the Deployment's
  selector, ``cmd/flagger/main.go``). Our Deployment selects on ``app.kubernetes.io/name`` only, so the
  canary's pods carry ``fraud-detector`` and the primary's ``fraud-detector-primary``; MetricTemplates get
  the target's name as ``{{ target }}`` (``MetricTemplateModel.TemplateFunctions``,
  ``pkg/apis/flagger/v1beta1/metric.go``).
* Argo Rollouts labels each ReplicaSet's pods with ``rollouts-pod-template-hash``; an analysis argument
  ``valueFrom.podTemplateHashValue: Latest`` is the new ReplicaSet's hash and ``Stable`` the stable one's
  (``BuildArgumentsForRolloutAnalysisRun``, argoproj/argo-rollouts v1.7.2 ``utils/analysis/factory.go``).

No data never passes: each query ends in ``or on() vector(<sentinel>)`` where the sentinel fails the
threshold (-1 below every ``min``, +Inf above every ``max``), ratios divide by a denominator filtered with
``> 0`` and NaN is dropped with ``>= 0``. Metric names come from :mod:`serving.metrics`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from string import Template
from typing import Any

from rollout.settings import AnalysisSettings
from serving.metrics import REQUEST_DURATION_SECONDS, REQUESTS_TOTAL

DIRECTIONS = ("min", "max")
# Values a query returns when it has no data: outside every allowed range.
NO_DATA_MIN = -1.0
NO_DATA_MAX = math.inf
CANDIDATE, PRIMARY = "candidate", "primary"
ROLES = (CANDIDATE, PRIMARY)
FLAGGER_WINDOW = "{{ interval }}"
_PLACEHOLDERS = ("selector", "window")
_METRIC_NAME = re.compile(r"\b(fraud_[a-z_]+)\b")
_NOT_A_LABEL_CHAR = re.compile(r"[^a-zA-Z0-9_]")


def series_label(pod_label: str) -> str:
    """The Prometheus label a pod label becomes through ServiceMonitor ``podTargetLabels``."""
    return _NOT_A_LABEL_CHAR.sub("_", pod_label)


@dataclass(frozen=True)
class PodIdentity:
    """How one controller tells the candidate's pods from the primary's in Prometheus series.

    ``candidate`` / ``primary`` / ``namespace`` are ``str.format`` templates over the controller's own
    placeholders (:meth:`selector` without values) or concrete values (the rehearsal, the tests).
    """

    controller: str
    pod_label: str
    candidate: str
    primary: str
    namespace: str
    placeholders: tuple[tuple[str, str], ...]

    @property
    def label(self) -> str:
        return series_label(self.pod_label)

    def value(self, role: str, **values: str) -> str:
        if role not in ROLES:
            raise ValueError(f"role: must be one of {', '.join(ROLES)}, got {role!r}")
        filled = {**dict(self.placeholders), **values}
        return (self.candidate if role == CANDIDATE else self.primary).format(**filled)

    def selector(self, role: str, **values: str) -> str:
        """Label matchers for one side; placeholders stay for the controller to fill unless given."""
        namespace = self.namespace.format(**{**dict(self.placeholders), **values})
        return f'namespace="{_escape(namespace)}",{self.label}="{_escape(self.value(role, **values))}"'


FLAGGER = PodIdentity(
    controller="flagger",
    pod_label="app.kubernetes.io/name",
    candidate="{target}",
    primary="{target}-primary",
    namespace="{namespace}",
    placeholders=(("target", "{{ target }}"), ("namespace", "{{ namespace }}")),
)
ARGO_CANDIDATE_ARG, ARGO_STABLE_ARG = "candidate_hash", "stable_hash"
ARGO = PodIdentity(
    controller="argo",
    pod_label="rollouts-pod-template-hash",
    candidate="{candidate_hash}",
    primary="{stable_hash}",
    namespace="{namespace}",
    placeholders=(
        ("candidate_hash", f"{{{{args.{ARGO_CANDIDATE_ARG}}}}}"),
        ("stable_hash", f"{{{{args.{ARGO_STABLE_ARG}}}}}"),
        ("namespace", "{{args.namespace}}"),
    ),
)
# What the ServiceMonitor must carry onto every series for both controllers' selectors.
POD_TARGET_LABELS = (FLAGGER.pod_label, ARGO.pod_label)


@dataclass(frozen=True)
class AnalysisCheck:
    """One system gate: ``query_template`` must return a value within ``threshold``.

    ``direction`` "min": pass when value >= threshold; "max": pass when value <= threshold.
    ``window_seconds``: how far back the query looks when the engine does not choose (Flagger uses
    ``{{ interval }}`` = the same value, set as the metric's ``interval``).
    """

    name: str
    query_template: str
    threshold: float
    direction: str
    description: str
    unit: str
    window_seconds: int
    metrics: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise ValueError(f"direction: {self.direction!r} is not allowed; use min or max")
        missing = [p for p in _PLACEHOLDERS if "${" + p + "}" not in self.query_template]
        if missing:
            raise ValueError(f"query_template of {self.name} lacks placeholder(s) {', '.join(missing)}")

    @property
    def window(self) -> str:
        return prometheus_duration(self.window_seconds)

    @property
    def no_data_value(self) -> float:
        return NO_DATA_MIN if self.direction == "min" else NO_DATA_MAX

    def passes(self, value: float) -> bool:
        """The engines' rule (Flagger thresholdRange, Argo successCondition); NaN never passes."""
        if math.isnan(value):
            return False
        return value >= self.threshold if self.direction == "min" else value <= self.threshold

    @property
    def condition(self) -> str:
        """Argo Rollouts successCondition for this check."""
        op = ">=" if self.direction == "min" else "<="
        return f"result[0] {op} {_number(self.threshold)}"


def prometheus_duration(seconds: float) -> str:
    """A Prometheus (and Go) duration: 600 -> "10m", 90 -> "90s", 2.5 -> "2500ms"."""
    if not seconds > 0 or math.isinf(seconds):
        raise ValueError(f"window: {seconds!r} must be a positive number of seconds")
    if not float(seconds).is_integer():
        return f"{round(seconds * 1000)}ms"
    seconds = int(seconds)
    if seconds % 3600 == 0:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0:
        return f"{seconds // 60}m"
    return f"{seconds}s"


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _success_rate_check(settings: AnalysisSettings, name: str, whose: str) -> AnalysisCheck:
    all_requests = f"sum(rate({REQUESTS_TOTAL}{{${{selector}}}}[${{window}}]))"
    ok_requests = f'sum(rate({REQUESTS_TOTAL}{{${{selector}},code!~"5.."}}[${{window}}]))'
    return AnalysisCheck(
        name=name,
        query_template=f"((100 * {ok_requests} / ({all_requests} > 0)) >= 0) or on() vector({_number(NO_DATA_MIN)})",
        threshold=settings.min_success_rate,
        direction="min",
        description=f"Share of the {whose}'s inference requests not answered with a 5xx, percent.",
        unit="percent",
        window_seconds=settings.interval_seconds,
        metrics=(REQUESTS_TOTAL,),
    )


def analysis_checks(settings: AnalysisSettings) -> list[AnalysisCheck]:
    """The candidate's system checks every controller runs, in a fixed order."""
    p99 = (
        f"1000 * histogram_quantile(0.99, sum by (le) "
        f"(rate({REQUEST_DURATION_SECONDS}_bucket{{${{selector}}}}[${{window}}])))"
    )
    return [
        _success_rate_check(settings, "success-rate", "candidate"),
        AnalysisCheck(
            name="latency-p99",
            query_template=f"(({p99}) >= 0) or on() vector({_number(NO_DATA_MAX)})",
            threshold=settings.max_latency_p99_ms,
            direction="max",
            description="99th percentile of the candidate's inference latency, milliseconds.",
            unit="ms",
            window_seconds=settings.interval_seconds,
            metrics=(f"{REQUEST_DURATION_SECONDS}_bucket",),
        ),
    ]


def primary_health_check(settings: AnalysisSettings) -> AnalysisCheck:
    """The primary's success rate, read by the decision service (a failing primary halts, never rolls back)."""
    return _success_rate_check(settings, "primary-success-rate", "primary")


def render_query(check: AnalysisCheck, selector: str, window: str | None = None) -> str:
    """The check's PromQL with ``selector`` (label matchers) and ``window`` (default: the check's own)."""
    return Template(check.query_template).substitute(selector=selector, window=window or check.window)


def concrete_query(
    check: AnalysisCheck, identity: PodIdentity, role: str, *, window_seconds: float | None = None, **values: str
) -> str:
    """Runnable PromQL of one check for one side, e.g. the rehearsal's against a local Prometheus.

    ``values`` fill the identity's placeholders (Flagger: ``target``, ``namespace``; Argo:
    ``candidate_hash``, ``stable_hash``, ``namespace``); ``window_seconds`` overrides the check's window.
    """
    window = prometheus_duration(window_seconds) if window_seconds is not None else None
    return render_query(check, identity.selector(role, **values), window)


def passes(check: AnalysisCheck, value: float | None) -> bool:
    """Whether a query result passes the check; no value (None, NaN) never passes."""
    return value is not None and check.passes(float(value))


def metric_names(query: str) -> set[str]:
    """Fraud metric names a query reads (for checking them against the runtime's exports)."""
    return set(_METRIC_NAME.findall(query))


# ---------------------------------------------------------------------------------------------------
# Flagger


def flagger_template_name(check: AnalysisCheck) -> str:
    return f"fraud-{check.name}"


def flagger_metric_templates(
    settings: AnalysisSettings, namespace: str, prometheus_url: str, labels: dict[str, str]
) -> list[dict[str, Any]]:
    """One Flagger MetricTemplate per system check, selecting the canary's pods (``{{ target }}``)."""
    return [
        {
            "apiVersion": "flagger.app/v1beta1",
            "kind": "MetricTemplate",
            "metadata": {
                "name": flagger_template_name(check),
                "namespace": namespace,
                "labels": dict(labels),
                "annotations": {"fraud-platform/description": check.description},
            },
            "spec": {
                "provider": {"type": "prometheus", "address": prometheus_url},
                "query": render_query(check, FLAGGER.selector(CANDIDATE), FLAGGER_WINDOW),
            },
        }
        for check in analysis_checks(settings)
    ]


def flagger_canary_metrics(settings: AnalysisSettings, namespace: str) -> list[dict[str, Any]]:
    """``spec.analysis.metrics`` of the Canary: each system check by template, threshold and window."""
    return [
        {
            "name": check.name,
            "templateRef": {"name": flagger_template_name(check), "namespace": namespace},
            "thresholdRange": {check.direction: check.threshold},
            "interval": check.window,
        }
        for check in analysis_checks(settings)
    ]


# ---------------------------------------------------------------------------------------------------
# Argo Rollouts

ARGO_PHASES = ("pre", "post")  # before and after the blue-green switch
ARGO_TEMPLATE = "fraud-analysis"  # the system checks before the switch
ARGO_POST_TEMPLATE = "fraud-analysis-post"  # the same checks after it


def argo_measurements(settings: AnalysisSettings, looks: int, phase: str = "pre") -> tuple[int, int]:
    """(count, failureLimit) of the system checks in one Argo analysis run of ``looks`` intervals.

    Before the switch no user reaches the new version, so the checks tolerate what Flagger does: it rolls
    back at ``threshold`` failed checks, so Argo may fail ``threshold - 1`` times. After the switch every
    request reaches it and the stable is still warm: the first failed check ends the run, which points the
    active Service back at once. The run measures once per interval for as long as the decision metric does.
    (argoproj/argo-rollouts v1.7.2 analysis/analysis.go: a metric is Failed once ``Failed > failureLimit``,
    ``assessMetricFailureInconclusiveOrError``; its first measurement waits ``initialDelay`` after the run
    started, ``generateMetricTasks``.)
    """
    if phase not in ARGO_PHASES:
        raise ValueError(f"phase: {phase!r} is not one of {', '.join(ARGO_PHASES)}")
    return looks, settings.threshold - 1 if phase == "pre" else 0


def argo_hash_args(namespace: str) -> list[dict[str, Any]]:
    """The analysis arguments naming both sides' pods (filled by the Rollout)."""
    return [
        {"name": ARGO_CANDIDATE_ARG},
        {"name": ARGO_STABLE_ARG},
        {"name": "namespace", "value": namespace},
    ]


def argo_rollout_hash_args() -> list[dict[str, Any]]:
    """The Rollout's side of :func:`argo_hash_args`: the new and the stable ReplicaSet's pod-template hash."""
    return [
        {"name": ARGO_CANDIDATE_ARG, "valueFrom": {"podTemplateHashValue": "Latest"}},
        {"name": ARGO_STABLE_ARG, "valueFrom": {"podTemplateHashValue": "Stable"}},
    ]


def argo_analysis_template(
    settings: AnalysisSettings,
    namespace: str,
    prometheus_url: str,
    labels: dict[str, str],
    *,
    looks: int,
    phase: str = "pre",
    initial_delay: str | None = None,
) -> dict[str, Any]:
    """The system-check AnalysisTemplate of one phase (before or after the switch), on the candidate's pods.

    ``initial_delay`` holds the first measurement back, e.g. until traffic reached the new pods.
    """
    count, failure_limit = argo_measurements(settings, looks, phase)
    metrics = []
    for check in analysis_checks(settings):
        metric: dict[str, Any] = {
            "name": check.name,
            "interval": prometheus_duration(settings.interval_seconds),
            "count": count,
            "failureLimit": failure_limit,
            "successCondition": check.condition,
            "provider": {
                "prometheus": {
                    "address": prometheus_url,
                    "query": render_query(check, ARGO.selector(CANDIDATE), check.window),
                }
            },
        }
        if initial_delay:
            metric["initialDelay"] = initial_delay
        metrics.append(metric)
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": {
            "name": ARGO_TEMPLATE if phase == "pre" else ARGO_POST_TEMPLATE,
            "namespace": namespace,
            "labels": dict(labels),
        },
        "spec": {"args": argo_hash_args(namespace), "metrics": metrics},
    }


# ---------------------------------------------------------------------------------------------------
# The decision service's contract (ops/decision_service.py serves it; docs/CONTRACTS.md describes it)

# Flagger webhook of ours -> (its type, the decision service endpoint it calls).
FLAGGER_HOOKS = {
    "smoke": ("pre-rollout", "smoke"),
    "warmup": ("pre-rollout", "replay"),
    "rollout": ("rollout", "replay"),
    "rollback": ("rollback", "rollback"),
    "confirm-traffic-increase": ("confirm-traffic-increase", "confirm-traffic-increase"),
    "confirm-promotion": ("confirm-promotion", "confirm-promotion"),
}
FLAGGER_ENDPOINTS = ("smoke", "replay", "rollback", "confirm-traffic-increase", "confirm-promotion")
# Argo's web provider: a non-2xx answer is an Error measurement, never Failed (metricproviders/webmetric/
# webmetric.go, Run), so the service always answers 200 with JSON and these conditions decide. With both
# conditions set, failureCondition true is Failed, neither true is Inconclusive, else Successful
# (utils/evaluate/evaluate.go, EvaluateResult). Not yet decided counts as a success (the run goes on;
# the analysis is forced to pass or fail at its last look, so the last measurement is never undecided);
# halt is neither: Inconclusive, which pauses the Rollout (rollout/analysis.go, setPauseOrAbort).
ARGO_SUCCESS_VERDICTS = ("pass", "undecided")
ARGO_FAILURE_VERDICTS = ("fail",)
ARGO_VERDICT_JSON_PATH = "{$.verdict}"
ARGO_SUCCESS_CONDITION = " || ".join(f'result == "{verdict}"' for verdict in ARGO_SUCCESS_VERDICTS)
ARGO_FAILURE_CONDITION = " || ".join(f'result == "{verdict}"' for verdict in ARGO_FAILURE_VERDICTS)
ARGO_SMOKE_JSON_PATH = "{$.ok}"
ARGO_SMOKE_CONDITION = "result == true"


def flagger_hook_path(endpoint: str) -> str:
    if endpoint not in FLAGGER_ENDPOINTS:
        raise ValueError(f"endpoint: must be one of {', '.join(FLAGGER_ENDPOINTS)}, got {endpoint!r}")
    return f"/flagger/{endpoint}"


ARGO_ENDPOINTS = ("smoke", "decision")


def argo_path(endpoint: str) -> str:
    if endpoint not in ARGO_ENDPOINTS:
        raise ValueError(f"endpoint: must be one of {', '.join(ARGO_ENDPOINTS)}, got {endpoint!r}")
    return f"/argo/{endpoint}"


def argo_web_metric(
    name: str,
    url: str,
    body: dict[str, Any],
    *,
    json_path: str,
    success: str,
    failure: str | None,
    timeout_seconds: int,
    **schedule: Any,
) -> dict[str, Any]:
    """An Argo ``web`` metric POSTing ``body`` (JSON, with ``{{args.*}}`` placeholders) to ``url``."""
    metric: dict[str, Any] = {"name": name, **schedule, "successCondition": success}
    if failure is not None:
        metric["failureCondition"] = failure
    metric["provider"] = {
        "web": {
            "url": url,
            "method": "POST",
            "headers": [{"key": "Content-Type", "value": "application/json"}],
            "body": json.dumps(body, sort_keys=True),
            "timeoutSeconds": timeout_seconds,
            "jsonPath": json_path,
        }
    }
    return metric
