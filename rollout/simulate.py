"""Monte-Carlo of the rollout decision on the real models (``fraudctl analysis simulate``).

Streams of labelled pairs are drawn from the real holdout (February-March 2024, seen by neither model)
scored by the registered stable (v1) and candidate (v2) at their own thresholds: per interval, the
configured number of replayed transactions, a share ``replayFraudShare`` of them frauds, each drawn with
replacement from the holdout's frauds or legitimate transactions. The decision depends on a stream only
through the counts of (label, stable flag, candidate flag), so each interval is drawn as a multinomial
over those 8 cells with the holdout's own frequencies: the same distribution as drawing transactions one
by one, at numpy speed. The walk and the rule are those of every rollout (:func:`rollout.plan.walk`,
:class:`rollout.decision.AnalysisBatch`). Scenarios:

* ``healthy``: v1 -> v2 as registered.
* ``subtle``: v2 with its threshold lowered until its precision on the stream (at the replay's fraud
  share, on the same transactions) is ``subtle_drop`` (10 points) below the stable's.
* ``broken``: v2 with the ``degrade`` fault (scores inverted, serving/faults.py) from interval
  ``fault_at`` on; the share rolled back in that very interval is reported.
* ``primary-down``: the stable stops answering from interval ``fault_at`` on.
"""

from __future__ import annotations

import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fraudctl.files import write_bytes
from rollout.decision import CELLS, Design
from rollout.plan import (
    HALTED,
    OUTCOMES,
    PROMOTED,
    ROLLED_BACK,
    IntervalDraw,
    Walk,
    cell_probabilities,
    multinomial_draw,
    pairs_per_interval,
    walk,
)
from rollout.settings import AnalysisSettings

log = logging.getLogger(__name__)

SCENARIOS = ("healthy", "subtle", "broken", "primary-down")
SUBTLE_DROP = 0.10
CHUNK = 2000  # runs simulated at once (memory ~ runs x 4 checks x 8 cells)
TARGETS = {"healthy_promote": 0.99, "subtle_rollback": 0.95, "broken_rollback_within_interval": 0.99}


class SimulationError(ValueError):
    """The inputs cannot be simulated (e.g. a holdout without frauds)."""


@dataclass(frozen=True)
class ScoredHoldout:
    """The holdout's labels and both models' fraud probabilities and thresholds."""

    labels: np.ndarray
    stable_scores: np.ndarray
    candidate_scores: np.ndarray
    stable_threshold: float
    candidate_threshold: float

    def __post_init__(self) -> None:
        labels = np.asarray(self.labels).astype(bool)
        if not labels.any() or labels.all():
            raise SimulationError("the holdout needs both frauds and legitimate transactions")
        if not len(labels) == len(self.stable_scores) == len(self.candidate_scores):
            raise SimulationError("labels and scores must have the same length")


def flag_table(labels: np.ndarray, stable: np.ndarray, candidate: np.ndarray, fraud_share: float) -> np.ndarray:
    """Cell probabilities of one replayed pair: per class, the holdout's frequencies of both models' flags."""
    labels = np.asarray(labels, dtype=bool)
    tables = []
    for mask in (labels, ~labels):
        cell = 2 * np.asarray(stable, dtype=int)[mask] + np.asarray(candidate, dtype=int)[mask]
        tables.append(tuple(np.bincount(cell, minlength=4) / mask.sum()))
    return cell_probabilities(fraud_share, tables[0], tables[1])


def rates(labels: np.ndarray, flags: np.ndarray, fraud_share: float) -> dict[str, float]:
    labels = np.asarray(labels, dtype=bool)
    recall, fpr = float(flags[labels].mean()), float(flags[~labels].mean())
    denominator = fraud_share * recall + (1 - fraud_share) * fpr
    precision = fraud_share * recall / denominator if denominator > 0 else math.nan
    return {"recall": recall, "false_positive_rate": fpr, "precision_at_share": precision}


def _shown(values: dict[str, float]) -> dict[str, float]:
    return {key: round(value, 6) for key, value in values.items()}


def threshold_for_precision(labels: np.ndarray, scores: np.ndarray, target: float, fraud_share: float) -> float:
    """The highest threshold at which the model's precision (at ``fraud_share``) is at or below ``target``."""
    labels = np.asarray(labels, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    recall = np.cumsum(sorted_labels) / labels.sum()
    fpr = np.cumsum(~sorted_labels) / (~labels).sum()
    denominator = fraud_share * recall + (1 - fraud_share) * fpr
    precision = np.divide(fraud_share * recall, denominator, out=np.ones_like(recall), where=denominator > 0)
    # Flag everything scored >= sorted_scores[i]: only positions where the next score differs are real cuts.
    cut = np.append(sorted_scores[1:] != sorted_scores[:-1], True)
    below = np.flatnonzero(cut & (precision <= target))
    if below.size == 0:
        raise SimulationError(f"no threshold brings the candidate's precision down to {target:.3f}")
    return float(sorted_scores[below[0]])


@dataclass(frozen=True)
class Scenarios:
    """Per scenario, the cell probabilities before and after interval ``fault_at`` (None: unchanged)."""

    healthy: np.ndarray
    subtle: np.ndarray
    broken: np.ndarray
    operating_points: dict[str, dict[str, float]]
    subtle_threshold: float


def build_scenarios(holdout: ScoredHoldout, fraud_share: float, subtle_drop: float = SUBTLE_DROP) -> Scenarios:
    from serving.faults import FaultInjector

    labels = np.asarray(holdout.labels, dtype=bool)
    stable = holdout.stable_scores >= holdout.stable_threshold
    candidate = holdout.candidate_scores >= holdout.candidate_threshold
    stable_rates = rates(labels, stable, fraud_share)
    if not math.isfinite(stable_rates["precision_at_share"]):
        raise SimulationError("the stable model flags nothing on the holdout: its precision is undefined")
    target = stable_rates["precision_at_share"] - subtle_drop
    subtle_threshold = threshold_for_precision(labels, holdout.candidate_scores, target, fraud_share)
    subtle = holdout.candidate_scores >= subtle_threshold
    degraded = FaultInjector.corrupt(np.asarray(holdout.candidate_scores)) >= holdout.candidate_threshold
    return Scenarios(
        healthy=flag_table(labels, stable, candidate, fraud_share),
        subtle=flag_table(labels, stable, subtle, fraud_share),
        broken=flag_table(labels, stable, degraded, fraud_share),
        operating_points={
            "stable": _shown(stable_rates),
            "candidate": _shown(rates(labels, candidate, fraud_share)),
            "subtle": _shown(rates(labels, subtle, fraud_share) | {"threshold": subtle_threshold}),
            "broken": _shown(rates(labels, degraded, fraud_share)),
        },
        subtle_threshold=subtle_threshold,
    )


def scenario_draw(name: str, scenarios: Scenarios, pairs: int, runs: int, fault_at: int) -> IntervalDraw:
    """The interval draws of one scenario."""

    def draw(look: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        faulty = look >= fault_at
        probabilities = {
            "healthy": scenarios.healthy,
            "subtle": scenarios.subtle,
            "broken": scenarios.broken if faulty else scenarios.healthy,
            "primary-down": scenarios.healthy,
        }[name]
        cells = rng.multinomial(pairs, probabilities, size=runs)
        stable_missing = np.zeros(runs)
        if name == "primary-down" and faulty:
            cells = np.zeros((runs, CELLS), dtype=int)  # no pair has both answers: the stable is silent
            stable_missing = np.full(runs, float(pairs))
        return cells, stable_missing, np.zeros(runs), np.full(runs, float(pairs))

    return draw


@dataclass
class ScenarioResult:
    name: str
    outcomes: list[np.ndarray] = field(default_factory=list)
    ended_at: list[np.ndarray] = field(default_factory=list)

    def add(self, result: Walk) -> None:
        self.outcomes.append(result.outcome)
        self.ended_at.append(result.ended_at)

    def summary(self, interval_seconds: float, fault_at: int) -> dict[str, Any]:
        outcome, ended = np.concatenate(self.outcomes), np.concatenate(self.ended_at)
        decided = (outcome == PROMOTED) | (outcome == ROLLED_BACK)
        summary: dict[str, Any] = {
            "runs": int(outcome.size),
            "promote_rate": round(float(np.mean(outcome == PROMOTED)), 5),
            "rollback_rate": round(float(np.mean(outcome == ROLLED_BACK)), 5),
            "halt_rate": round(float(np.mean(outcome == HALTED)), 5),
            "undecided_rate": round(float(np.mean(outcome == OUTCOMES.index("undecided"))), 5),
            "median_seconds_to_decision": (
                float(np.median(ended[decided]) * interval_seconds) if decided.any() else None
            ),
        }
        if self.name == "broken":
            within = (outcome == ROLLED_BACK) & (ended == fault_at)
            summary["rolled_back_within_one_interval"] = round(float(np.mean(within)), 5)
        return summary


def simulate(
    settings: AnalysisSettings,
    holdout: ScoredHoldout,
    *,
    runs: int,
    seed: int = 0,
    fault_at: int = 2,
    rps: float | None = None,
    interval_seconds: float | None = None,
    subtle_drop: float = SUBTLE_DROP,
) -> dict[str, Any]:
    """Per scenario: promote / rollback / halt rates and the median time to a decision."""
    if runs < 1:
        raise SimulationError(f"runs: must be 1 or more, got {runs}")
    if fault_at < 1:
        raise SimulationError(f"fault_at: must be interval 1 or later, got {fault_at}")
    design = Design.from_settings(settings)
    if fault_at > design.max_looks:
        raise SimulationError(
            f"fault_at: interval {fault_at} is past the analysis' last one ({design.max_looks} = analysis.horizon "
            "+ the number of steps)"
        )
    rps = settings.replay_rate if rps is None else rps
    interval = settings.interval_seconds if interval_seconds is None else interval_seconds
    pairs = pairs_per_interval(rps, interval)
    scenarios = build_scenarios(holdout, settings.replay_fraud_share, subtle_drop)
    steps = len(settings.step_weights)
    results = {}
    for index, name in enumerate(SCENARIOS):
        result = ScenarioResult(name)
        rng = np.random.default_rng([seed, index])
        done = 0
        while done < runs:
            size = min(CHUNK, runs - done)
            draw = scenario_draw(name, scenarios, pairs, size, fault_at)
            result.add(walk(design, steps, draw, size, rng, max_looks=design.max_looks))
            done += size
            log.info(f"simulate: {name}: {done:,}/{runs:,} rollouts")
        results[name] = result.summary(interval, fault_at)
    return {
        "runs": runs,
        "seed": seed,
        "interval_seconds": interval,
        "replay_rate_per_second": rps,
        "pairs_per_interval": pairs,
        "replay_fraud_share": settings.replay_fraud_share,
        "fault_at_interval": fault_at,
        "subtle_precision_drop": subtle_drop,
        "design": design.to_json(),
        "operating_points": scenarios.operating_points,
        "scenarios": results,
        "targets": targets_met(results),
    }


def targets_met(results: dict[str, dict[str, Any]]) -> dict[str, bool]:
    return {
        "healthy_promoted_at_least_99pct": results["healthy"]["promote_rate"] >= TARGETS["healthy_promote"],
        "subtle_rolled_back_at_least_95pct": results["subtle"]["rollback_rate"] >= TARGETS["subtle_rollback"],
        "broken_rolled_back_within_one_interval_at_least_99pct": (
            results["broken"]["rolled_back_within_one_interval"] >= TARGETS["broken_rollback_within_interval"]
        ),
        "primary_down_never_promoted": results["primary-down"]["promote_rate"] == 0.0,
    }


def operating_characteristic(
    settings: AnalysisSettings,
    holdout: ScoredHoldout,
    *,
    runs: int,
    seed: int = 0,
    rps: float | None = None,
    interval_seconds: float | None = None,
    drops: tuple[float, ...] = (0.0, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2),
) -> list[dict[str, float]]:
    """P(roll back) and median decision time of the real candidate with its threshold lowered until its
    precision is ``drop`` below the stable's (0: as registered, when it is not already lower)."""
    design = Design.from_settings(settings)
    rps = settings.replay_rate if rps is None else rps
    interval = settings.interval_seconds if interval_seconds is None else interval_seconds
    pairs = pairs_per_interval(rps, interval)
    share = settings.replay_fraud_share
    labels = np.asarray(holdout.labels, dtype=bool)
    stable = holdout.stable_scores >= holdout.stable_threshold
    stable_precision = rates(labels, stable, share)["precision_at_share"]
    points = []
    for index, drop in enumerate(drops):
        threshold = min(
            holdout.candidate_threshold,
            threshold_for_precision(labels, holdout.candidate_scores, stable_precision - drop, share),
        )
        candidate = holdout.candidate_scores >= threshold
        probabilities = flag_table(labels, stable, candidate, share)
        measured = rates(labels, candidate, share)
        result = walk(
            design,
            len(settings.step_weights),
            multinomial_draw(probabilities, pairs, runs),
            runs,
            np.random.default_rng([seed, 100 + index]),
        )
        ended = result.ended_at[result.outcome != OUTCOMES.index("undecided")]
        points.append(
            {
                "precision_drop": round(stable_precision - measured["precision_at_share"], 4),
                "recall_change": round(measured["recall"] - rates(labels, stable, share)["recall"], 4),
                "rollback_rate": round(result.rate(ROLLED_BACK), 5),
                "median_seconds_to_decision": float(np.median(ended) * interval),
            }
        )
        log.info("simulate: operating characteristic %d/%d", index + 1, len(drops))
    return points


def write_chart(
    path: Path, characteristic: list[dict[str, float]], result: dict[str, Any], settings: AnalysisSettings
) -> Path:
    """The operating characteristic (P roll back vs the candidate's precision drop) and the scenarios."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    drops = [p["precision_drop"] for p in characteristic]
    left.plot(drops, [p["rollback_rate"] for p in characteristic], "o-", label="real v2, threshold lowered")
    left.axvline(settings.min_detectable_drop, color="grey", linestyle="--", label="minDetectableDrop")
    left.axhline(settings.false_rollback_rate, color="green", linestyle=":", label="falseRollbackRate")
    left.axhline(1 - settings.miss_rate, color="red", linestyle=":", label="1 - missRate")
    left.set_xlabel("candidate precision below the stable's (at the replay's fraud share)")
    left.set_ylabel("P(roll back)")
    left.set_ylim(-0.02, 1.02)
    left.set_title("Operating characteristic")
    left.legend(fontsize=8, loc="center right")
    names = list(result["scenarios"])
    bottom = np.zeros(len(names))
    for key, colour in (("promote_rate", "tab:green"), ("rollback_rate", "tab:red"), ("halt_rate", "tab:grey")):
        values = np.array([result["scenarios"][n][key] for n in names])
        right.bar(names, values, bottom=bottom, color=colour, label=key.removesuffix("_rate"))
        bottom += values
    right.set_ylim(0, 1.0)
    right.set_title(f"Scenarios ({result['runs']:,} rollouts each)")
    right.legend(fontsize=8, loc="lower right")
    figure.suptitle(
        f"interval {result['interval_seconds']:g} s, {result['pairs_per_interval']} labelled pairs per interval, "
        f"falseRollbackRate {settings.false_rollback_rate:g}, missRate {settings.miss_rate:g}",
        fontsize=9,
    )
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110)
    plt.close(figure)
    write_bytes(path, buffer.getvalue())
    return path


def load_holdout(config: Any, *, data_source: str | None = None, home: str | Path | None = None) -> ScoredHoldout:
    """The real holdout scored by the registered stable and candidate (trained and registered if needed,
    reused otherwise: model/lifecycle.py)."""
    from model.data import FEATURE_COLUMNS, LABEL_COLUMN
    from model.lifecycle import ensure_models
    from model.scenario import load_scenario

    scenario = load_scenario(data_source, home=home)
    versions = (config.model.stable_version, config.model.candidate_version)
    registered = ensure_models(versions=versions, scenario=scenario, home=home, gate=config.gate)
    holdout = scenario.holdout
    features = holdout[list(FEATURE_COLUMNS)]
    stable, candidate = registered[versions[0]], registered[versions[1]]
    assert stable.model is not None and candidate.model is not None
    log.info(f"simulate: scoring {len(holdout):,} holdout transactions with {versions[0]} and {versions[1]}")
    return ScoredHoldout(
        labels=holdout[LABEL_COLUMN].to_numpy().astype(bool),
        stable_scores=np.asarray(stable.model.fraud_probability(features), dtype=float),
        candidate_scores=np.asarray(candidate.model.fraud_probability(features), dtype=float),
        stable_threshold=stable.threshold,
        candidate_threshold=candidate.threshold,
    )
