"""The rollout analysis, defined once: which checks gate a candidate model, their PromQL and thresholds.

Flagger (MetricTemplates + Canary metrics), Argo Rollouts (AnalysisTemplate) and the local rehearsal all
render their queries from :func:`analysis_checks`, so the three cannot drift apart. A check's query is a
template with two placeholders, filled by whoever runs it:

* ``${selector}``: label matchers picking the candidate's series. Flagger: :data:`FLAGGER_SELECTOR`
  (``{{ namespace }}`` and ``{{ variables.candidate_version }}``, filled by Flagger's Go templates);
  Argo Rollouts: :data:`ARGO_SELECTOR` (``{{args.candidate_version}}``); the rehearsal:
  ``candidate_selector("v2")`` = ``model_version="v2"``.
* ``${window}``: the range the rates look back over. Flagger: ``{{ interval }}`` (the metric's
  ``interval``); everyone else the check's own window as a Prometheus duration.

No data is a failed check, never a pass. Each query ends in ``or on() vector(<sentinel>)`` where the
sentinel fails the threshold (-1 below every ``min``, +Inf above every ``max``), ratios divide by a
denominator filtered with ``> 0`` (no traffic gives an empty result, not 0/0), and NaN is dropped with
``>= 0``. Precision and recall are gated on the Wilson score lower bound (one-sided, at
``analysis.confidence``) of the candidate's labelled feedback, and only count once at least
``analysis.minLabelledFrauds`` labelled frauds arrived in the window, so a few lucky answers cannot
promote a model.

Metric names come from :mod:`serving.metrics`, the runtime that exports them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from statistics import NormalDist
from string import Template
from typing import Any

from rollout.settings import AnalysisSettings
from serving.metrics import FEEDBACK_TOTAL, REQUEST_DURATION_SECONDS, REQUESTS_TOTAL, VERSION_LABEL

DIRECTIONS = ("min", "max")
# Values a query returns when it has no (or not enough) data: outside every allowed range.
NO_DATA_MIN = -1.0
NO_DATA_MAX = math.inf
FLAGGER_SELECTOR = f'namespace="{{{{ namespace }}}}",{VERSION_LABEL}="{{{{ variables.candidate_version }}}}"'
FLAGGER_WINDOW = "{{ interval }}"
ARGO_CANDIDATE_ARG = "candidate_version"
ARGO_SELECTOR = f'namespace="{{{{args.namespace}}}}",{VERSION_LABEL}="{{{{args.{ARGO_CANDIDATE_ARG}}}}}"'
FLAGGER_VARIABLE = "candidate_version"
_PLACEHOLDERS = ("selector", "window")
_METRIC_NAME = re.compile(r"\b(fraud_[a-z_]+)\b")


@dataclass(frozen=True)
class AnalysisCheck:
    """One gate on the candidate: ``query_template`` must return a value within ``threshold``.

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


def candidate_selector(version: str, **labels: str) -> str:
    """Concrete matchers for one version, e.g. ``model_version="v2"`` (the rehearsal's selector)."""
    matchers = {**labels, VERSION_LABEL: version}
    return ",".join(f'{name}="{_escape(value)}"' for name, value in matchers.items())


def z_score(confidence: float) -> float:
    """One-sided normal quantile: the lower bound holds with probability ``confidence``."""
    if not 0.5 <= confidence < 1.0:
        raise ValueError(f"confidence: {confidence!r} must be in [0.5, 1)")
    return NormalDist().inv_cdf(confidence)


def wilson_lower_bound(successes: float, trials: float, confidence: float) -> float:
    """Wilson score interval lower bound, the same formula the PromQL computes (NaN when trials is 0)."""
    if trials <= 0:
        return math.nan
    z = z_score(confidence)
    failures = trials - successes
    return (successes + z * z / 2 - z * math.sqrt(successes * failures / trials + z * z / 4)) / (trials + z * z)


def _number(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def _increase(outcomes: str) -> str:
    return f'sum(increase({FEEDBACK_TOTAL}{{${{selector}},outcome=~"{outcomes}"}}[${{window}}]))'


def _wilson_promql(successes: str, failures: str, trials: str, z: float) -> str:
    # Wilson lower bound with p = s/n multiplied through by n: (s + z²/2 - z·sqrt(s·f/n + z²/4)) / (n + z²).
    z2 = z * z
    return (
        f"({successes} + {z2 / 2:.6f} - {z:.6f} * sqrt({successes} * {failures} / {trials} + {z2 / 4:.6f}))"
        f" / ({trials} + {z2:.6f})"
    )


def _gated_min(value: str, guard: str) -> str:
    """``value`` when it is a number and ``guard`` holds, else the failing sentinel."""
    return f"(({value}) >= 0 and on() ({guard})) or on() vector({_number(NO_DATA_MIN)})"


def analysis_checks(settings: AnalysisSettings) -> list[AnalysisCheck]:
    """The checks every engine runs, in a fixed order, from the stack's analysis settings."""
    z = z_score(settings.confidence)
    request_window = settings.interval_seconds
    feedback_window = settings.feedback_window_seconds
    tp, fp, fn = _increase("tp"), _increase("fp"), _increase("fn")
    flagged, frauds = _increase("tp|fp"), _increase("tp|fn")
    enough_frauds = f"{frauds} >= {settings.min_labelled_frauds}"
    all_requests = f"sum(rate({REQUESTS_TOTAL}{{${{selector}}}}[${{window}}]))"
    ok_requests = f'sum(rate({REQUESTS_TOTAL}{{${{selector}},code!~"5.."}}[${{window}}]))'
    p99 = (
        f"1000 * histogram_quantile(0.99, sum by (le) "
        f"(rate({REQUEST_DURATION_SECONDS}_bucket{{${{selector}}}}[${{window}}])))"
    )
    checks = [
        AnalysisCheck(
            name="success-rate",
            query_template=(
                f"((100 * {ok_requests} / ({all_requests} > 0)) >= 0) or on() vector({_number(NO_DATA_MIN)})"
            ),
            threshold=settings.min_success_rate,
            direction="min",
            description="Share of the candidate's inference requests not answered with a 5xx, percent.",
            unit="percent",
            window_seconds=request_window,
            metrics=(REQUESTS_TOTAL,),
        ),
        AnalysisCheck(
            name="latency-p99",
            query_template=f"(({p99}) >= 0) or on() vector({_number(NO_DATA_MAX)})",
            threshold=settings.max_latency_p99_ms,
            direction="max",
            description="99th percentile of the candidate's inference latency, milliseconds.",
            unit="ms",
            window_seconds=request_window,
            metrics=(f"{REQUEST_DURATION_SECONDS}_bucket",),
        ),
        AnalysisCheck(
            name="precision",
            query_template=_gated_min(_wilson_promql(tp, fp, flagged, z), enough_frauds),
            threshold=settings.min_precision,
            direction="min",
            description=(
                f"Wilson lower bound ({settings.confidence:g}, one-sided) of the candidate's precision on labelled "
                f"feedback; needs {settings.min_labelled_frauds} labelled frauds in the window."
            ),
            unit="ratio",
            window_seconds=feedback_window,
            metrics=(FEEDBACK_TOTAL,),
        ),
        AnalysisCheck(
            name="recall",
            query_template=_gated_min(_wilson_promql(tp, fn, frauds, z), enough_frauds),
            threshold=settings.min_recall,
            direction="min",
            description=(
                f"Wilson lower bound ({settings.confidence:g}, one-sided) of the candidate's recall on labelled "
                f"feedback; needs {settings.min_labelled_frauds} labelled frauds in the window."
            ),
            unit="ratio",
            window_seconds=feedback_window,
            metrics=(FEEDBACK_TOTAL,),
        ),
    ]
    return checks


def render_query(check: AnalysisCheck, selector: str, window: str | None = None) -> str:
    """The check's PromQL with ``selector`` (label matchers) and ``window`` (default: the check's own)."""
    return Template(check.query_template).substitute(selector=selector, window=window or check.window)


def concrete_queries(settings: AnalysisSettings, version: str, **labels: str) -> dict[str, str]:
    """Check name -> runnable PromQL for one candidate version (what the rehearsal evaluates)."""
    selector = candidate_selector(version, **labels)
    return {check.name: render_query(check, selector) for check in analysis_checks(settings)}


def rollout_checks(settings: AnalysisSettings) -> list[AnalysisCheck]:
    """Same as :func:`analysis_checks` (the name the rehearsal uses)."""
    return analysis_checks(settings)


def concrete_query(check: AnalysisCheck, *, version: str, window_seconds: float | None = None, **labels: str) -> str:
    """Runnable PromQL of one check for one version, e.g. for the rehearsal against a local Prometheus.

    ``window_seconds`` overrides the check's own window (a rehearsal compresses time); ``labels`` add
    matchers (e.g. ``namespace="fraud"``).
    """
    window = prometheus_duration(window_seconds) if window_seconds is not None else None
    return render_query(check, candidate_selector(version, **labels), window)


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
    """One Flagger MetricTemplate per check."""
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
                "query": render_query(check, FLAGGER_SELECTOR, FLAGGER_WINDOW),
            },
        }
        for check in analysis_checks(settings)
    ]


def flagger_canary_metrics(settings: AnalysisSettings, namespace: str, candidate_version: str) -> list[dict[str, Any]]:
    """``spec.analysis.metrics`` of the Canary: each check by template, threshold and window."""
    return [
        {
            "name": check.name,
            "templateRef": {"name": flagger_template_name(check), "namespace": namespace},
            "templateVariables": {FLAGGER_VARIABLE: candidate_version},
            "thresholdRange": {check.direction: check.threshold},
            "interval": check.window,
        }
        for check in analysis_checks(settings)
    ]


# ---------------------------------------------------------------------------------------------------
# Argo Rollouts

ARGO_TEMPLATE = "fraud-analysis"


def argo_measurements(settings: AnalysisSettings) -> tuple[int, int]:
    """(count, failureLimit) so an Argo run is as strict as Flagger's canary.

    Flagger rolls back at ``threshold`` failed checks and needs one passing check per step weight;
    Argo fails a metric when failures exceed failureLimit, so it may fail ``threshold - 1`` times and
    measures often enough that the remaining measurements are at least one per step weight.
    """
    failure_limit = settings.threshold - 1
    return len(settings.step_weights) + failure_limit, failure_limit


def argo_analysis_template(
    settings: AnalysisSettings,
    namespace: str,
    prometheus_url: str,
    labels: dict[str, str],
    *,
    initial_delay: str | None = None,
) -> dict[str, Any]:
    """The AnalysisTemplate used before and after promotion (args: candidate_version, namespace).

    ``initial_delay`` holds the first measurement back, e.g. until the labelled replay has run once.
    """
    count, failure_limit = argo_measurements(settings)
    metrics = []
    for check in analysis_checks(settings):
        metric: dict[str, Any] = {
            "name": check.name,
            "interval": prometheus_duration(settings.interval_seconds),
            "count": count,
            "failureLimit": failure_limit,
            "successCondition": check.condition,
            "provider": {
                "prometheus": {"address": prometheus_url, "query": render_query(check, ARGO_SELECTOR, check.window)}
            },
        }
        if initial_delay:
            metric["initialDelay"] = initial_delay
        metrics.append(metric)
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": {"name": ARGO_TEMPLATE, "namespace": namespace, "labels": dict(labels)},
        "spec": {
            "args": [{"name": ARGO_CANDIDATE_ARG}, {"name": "namespace", "value": namespace}],
            "metrics": metrics,
        },
    }
