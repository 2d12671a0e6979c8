"""The fraud serving metrics: names (the PromQL contract), labels, buckets and the live collectors.

Names are fixed by docs/CONTRACTS.md; the rollout analysis imports them from here instead of retyping
them. Precision and recall per version are computable in PromQL from the feedback counter, e.g.::

    sum by (model_version) (rate(fraud_feedback_total{outcome="tp"}[5m]))
      / sum by (model_version) (rate(fraud_feedback_total{outcome=~"tp|fp"}[5m]))

Collectors live in prometheus_client's default registry: that is what MLServer's metrics endpoint
exports when ``parallel_workers`` is 0 (the production setting, see serving.settings). MLServer's own
``mlserver.register`` only makes histograms labelled (model_name, model_version) and writes to a
separate registry, so it cannot express these counters.

``fraud_requests_total`` counts what the runtime handled (validation errors, simulated failures, answers).
Requests refused before the runtime sees them (malformed JSON, wrong Content-Type, body over the limit,
unknown model) appear in MLServer's ``rest_server_requests_total{path, status_code}``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram

PREDICTIONS_TOTAL = "fraud_predictions_total"
SCORE = "fraud_score"
FEEDBACK_TOTAL = "fraud_feedback_total"
FEEDBACK_REJECTED_TOTAL = "fraud_feedback_rejected_total"
REQUESTS_TOTAL = "fraud_requests_total"
REQUEST_DURATION_SECONDS = "fraud_request_duration_seconds"

# Logical name -> exposed metric name. Histograms are exposed as <name>_bucket / _sum / _count.
METRIC_NAMES: dict[str, str] = {
    "predictions_total": PREDICTIONS_TOTAL,
    "score": SCORE,
    "feedback_total": FEEDBACK_TOTAL,
    "feedback_rejected_total": FEEDBACK_REJECTED_TOTAL,
    "requests_total": REQUESTS_TOTAL,
    "request_duration_seconds": REQUEST_DURATION_SECONDS,
}

VERSION_LABEL = "model_version"
METRIC_LABELS: dict[str, tuple[str, ...]] = {
    PREDICTIONS_TOTAL: (VERSION_LABEL, "decision"),
    SCORE: (VERSION_LABEL,),
    FEEDBACK_TOTAL: (VERSION_LABEL, "outcome"),
    FEEDBACK_REJECTED_TOTAL: ("reason",),
    REQUESTS_TOTAL: (VERSION_LABEL, "code"),
    REQUEST_DURATION_SECONDS: (VERSION_LABEL,),
}
METRIC_TYPES: dict[str, str] = {
    PREDICTIONS_TOTAL: "counter",
    SCORE: "histogram",
    FEEDBACK_TOTAL: "counter",
    FEEDBACK_REJECTED_TOTAL: "counter",
    REQUESTS_TOTAL: "counter",
    REQUEST_DURATION_SECONDS: "histogram",
}

DECISIONS = ("fraud", "legit")
OUTCOMES = ("tp", "fp", "tn", "fn")
# Why a feedback item was refused: unparseable request or item, signature that does not verify (forged
# or from another key), token older than the TTL, already counted on this replica, seen-set full.
REJECT_REASONS = ("malformed", "bad_signature", "expired", "repeat", "capacity")

SCORE_BUCKETS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98, 0.99, 1.0)
DURATION_BUCKETS = (
    0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
)

_lock = threading.Lock()
_collectors: dict[tuple[int, str], Any] = {}


def _collector(registry: CollectorRegistry, name: str, description: str, **kwargs: Any) -> Any:
    """One collector per (registry, name): a model reload in the same process must reuse, not re-register."""
    key = (id(registry), name)
    with _lock:
        if key not in _collectors:
            kind = Histogram if METRIC_TYPES[name] == "histogram" else Counter
            _collectors[key] = kind(
                name, description, labelnames=list(METRIC_LABELS[name]), registry=registry, **kwargs
            )
        return _collectors[key]


def outcome(decision_is_fraud: bool, label: int) -> str:
    """Confusion-matrix cell of one labelled prediction."""
    if decision_is_fraud:
        return "tp" if label == 1 else "fp"
    return "fn" if label == 1 else "tn"


class ServingMetrics:
    """The runtime's view of the metrics for one served model version."""

    def __init__(self, model_version: str, registry: CollectorRegistry = REGISTRY) -> None:
        self.model_version = model_version
        self._predictions = _collector(registry, PREDICTIONS_TOTAL, "Predictions served, by decision.")
        self._score = _collector(
            registry, SCORE, "Fraud probability of each scored row.", buckets=SCORE_BUCKETS
        )
        self._feedback = _collector(
            registry, FEEDBACK_TOTAL, "Ground-truth feedback on earlier predictions, by confusion outcome."
        )
        self._rejected = _collector(registry, FEEDBACK_REJECTED_TOTAL, "Feedback items refused, by reason.")
        self._requests = _collector(
            registry, REQUESTS_TOTAL, "Inference requests handled by the runtime, by HTTP status code."
        )
        self._duration = _collector(
            registry,
            REQUEST_DURATION_SECONDS,
            "Inference latency seen by the runtime (validation to response).",
            buckets=DURATION_BUCKETS,
        )
        # Children are looked up once: labels() costs microseconds per call on the hot path.
        self._fraud = self._predictions.labels(model_version, "fraud")
        self._legit = self._predictions.labels(model_version, "legit")
        self._score_child = self._score.labels(model_version)
        self._duration_child = self._duration.labels(model_version)
        self._request_children: dict[int, Any] = {}
        # Create the series that PromQL ratios divide by, so they exist (at 0) before the first event;
        # 500 too, or increase() would miss the first burst of errors (it needs a sample before them).
        self.request_child(200)
        self.request_child(500)
        for name in OUTCOMES:
            self._feedback.labels(model_version, name)
        for reason in REJECT_REASONS:
            self._rejected.labels(reason)

    def request_child(self, status_code: int) -> Any:
        child = self._request_children.get(status_code)
        if child is None:
            child = self._requests.labels(self.model_version, str(status_code))
            self._request_children[status_code] = child
        return child

    def observe_request(self, status_code: int, seconds: float) -> None:
        self.request_child(status_code).inc()
        self._duration_child.observe(seconds)

    def observe_scores(self, scores: Iterable[float], fraud_rows: int, total_rows: int) -> None:
        if fraud_rows:
            self._fraud.inc(fraud_rows)
        if total_rows - fraud_rows:
            self._legit.inc(total_rows - fraud_rows)
        observe = self._score_child.observe
        for score in scores:
            observe(score)

    def observe_feedback(self, model_version: str, outcome_name: str) -> None:
        """Count feedback under the version that made the prediction (from its token), not this replica's."""
        self._feedback.labels(model_version, outcome_name).inc()

    def observe_rejected(self, reason: str, count: int = 1) -> None:
        self._rejected.labels(reason).inc(count)
