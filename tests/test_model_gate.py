"""The offline gate: settings validation, metrics, decisions both ways, threshold choice, reports."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from model.gate import (
    GateSettings,
    GateSettingsError,
    ModelMetrics,
    decide,
    holdout_metrics,
    write_gate_report,
)
from model.train import TrainingError, choose_threshold


def metrics(version: str, *, precision: float, recall: float, auprc: float, frauds: int = 100) -> ModelMetrics:
    """Hand-made holdout figures (10,000 transactions) with consistent confusion counts and cost."""
    tp = round(recall * frauds)
    fp = round(tp / precision) - tp
    fn = frauds - tp
    return ModelMetrics(
        model_version=version, threshold=0.5, auprc=auprc, precision=tp / (tp + fp), recall=tp / frauds,
        tp=tp, fp=fp, tn=10_000 - frauds - fp, fn=fn, cost=fn * 150.0 + fp * 25.0, transactions=10_000, frauds=frauds,
    )  # fmt: skip


def failed(decision) -> set[str]:
    return {check.name for check in decision.checks if not check.passed}


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (dict(precision_band=2), "gate.precisionBand: must be in [0, 1], got 2"),
        (dict(min_recall_gain=-1.5), "gate.minRecallGain: must be in [-1, 1], got -1.5"),
        (dict(max_auprc_loss=float("nan")), "gate.maxAuprcLoss: must be in [0, 1], got nan"),
        (dict(cost_missed_fraud=-1.0), "gate.costMissedFraud: must be in [0, 1000000000], got -1"),
        (dict(cost_false_positive="25"), "gate.costFalsePositive: must be a number in [0, 1000000000], got '25'"),
        (dict(precision_band=True), "gate.precisionBand: must be a number in [0, 1], got True"),
    ],
)
def test_settings_errors_name_the_config_key(settings: dict, message: str) -> None:
    with pytest.raises(GateSettingsError) as caught:
        GateSettings(**settings)
    assert message in str(caught.value)


def test_settings_from_stack_config_keys() -> None:
    settings = GateSettings.from_config({"minRecallGain": 0.02, "precisionBand": 0.1, "costMissedFraud": 300})
    assert settings == GateSettings(min_recall_gain=0.02, precision_band=0.1, cost_missed_fraud=300)
    assert GateSettings.from_config(settings.to_config()) == settings
    with pytest.raises(GateSettingsError, match=r"gate\.recallGain: unknown key \(did you mean minRecallGain\?\)"):
        GateSettings.from_config({"recallGain": 0.1})


def test_holdout_metrics_counts_and_cost() -> None:
    labels = np.array([1, 1, 1, 0, 0, 0, 0, 0])
    scores = np.array([0.9, 0.6, 0.2, 0.7, 0.1, 0.1, 0.05, 0.3])
    m = holdout_metrics("v1", labels, scores, 0.5, GateSettings())
    assert (m.tp, m.fp, m.fn, m.tn) == (2, 1, 1, 4)
    assert m.precision == pytest.approx(2 / 3) and m.recall == pytest.approx(2 / 3)
    assert m.cost == 150.0 + 25.0
    assert 0 < m.auprc < 1
    json.dumps(m.to_json())  # the ConfigMap payload is plain JSON


def test_better_candidate_passes_with_reasons() -> None:
    decision = decide(
        metrics("v1", precision=0.80, recall=0.40, auprc=0.50),
        metrics("v2", precision=0.78, recall=0.70, auprc=0.72),
        GateSettings(),
    )
    assert decision.passed and failed(decision) == set()
    assert all(reason.startswith("PASS ") for reason in decision.reasons)
    assert "recall gain +0.3000" in decision.reasons[0]


@pytest.mark.parametrize(
    ("candidate", "settings", "expected_failures"),
    [
        # Worse in everything: a stale or broken candidate.
        (
            dict(precision=0.50, recall=0.30, auprc=0.35),
            GateSettings(),
            {"recall_gain", "precision_band", "auprc", "business_cost"},
        ),
        # More recall bought with a precision collapse beyond the band.
        (dict(precision=0.60, recall=0.45, auprc=0.55), GateSettings(), {"precision_band"}),
        # Same operating point, slightly worse ranking: no AUPRC loss is allowed by default...
        (dict(precision=0.80, recall=0.40, auprc=0.49), GateSettings(), {"auprc"}),
        # ...but a configured allowance accepts it.
        (dict(precision=0.80, recall=0.40, auprc=0.49), GateSettings(max_auprc_loss=0.02), set()),
        # A required recall gain the candidate does not reach.
        (dict(precision=0.80, recall=0.44, auprc=0.55), GateSettings(min_recall_gain=0.05), {"recall_gain"}),
        # Cost dominates: a small recall gain paid with many false positives at a high review cost.
        (dict(precision=0.76, recall=0.42, auprc=0.52), GateSettings(cost_false_positive=1000.0), {"business_cost"}),
    ],
)
def test_gate_rejects_with_the_failing_checks(candidate: dict, settings: GateSettings, expected_failures: set) -> None:
    baseline = metrics("v1", precision=0.80, recall=0.40, auprc=0.50)
    cand = metrics("v2", **candidate)
    if settings.cost_false_positive != 25.0:  # recompute cost under the configured prices
        baseline = holdout_metrics_like(baseline, settings)
        cand = holdout_metrics_like(cand, settings)
    decision = decide(baseline, cand, settings)
    assert failed(decision) == expected_failures
    assert decision.passed == (not expected_failures)
    for check in decision.checks:
        assert check.message.startswith("PASS " if check.passed else "FAIL ")


def holdout_metrics_like(m: ModelMetrics, settings: GateSettings) -> ModelMetrics:
    from dataclasses import replace

    return replace(m, cost=m.fn * settings.cost_missed_fraud + m.fp * settings.cost_false_positive)


def test_gate_on_scores_both_ways() -> None:
    """End to end on score vectors: a candidate that ranks frauds higher passes, a shuffled one fails."""
    rng = np.random.default_rng(0)
    labels = (rng.random(20_000) < 0.01).astype(int)
    baseline_scores = np.clip(rng.normal(0.2 + 0.3 * labels, 0.12), 0, 1)
    better_scores = np.clip(rng.normal(0.2 + 0.5 * labels, 0.10), 0, 1)
    settings = GateSettings()
    baseline = holdout_metrics("v1", labels, baseline_scores, 0.5, settings)
    better = holdout_metrics("v2", labels, better_scores, 0.5, settings)
    shuffled = holdout_metrics("v2", labels, rng.permutation(better_scores), 0.5, settings)
    assert decide(baseline, better, settings).passed
    rejected = decide(baseline, shuffled, settings)
    assert not rejected.passed and {"recall_gain", "auprc", "business_cost"} <= failed(rejected)


def test_threshold_minimises_business_cost() -> None:
    labels = np.array([1, 1, 0, 1, 0, 0, 0, 0, 0, 0])
    scores = np.array([0.95, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    choice = choose_threshold(labels, scores, cost_missed_fraud=150, cost_false_positive=25)
    # Flagging down to 0.7 catches all three frauds with one false positive: cost 25.
    assert choice.cost == 25 and choice.recall == 1 and choice.flagged == 4
    assert 0.6 < choice.threshold < 0.7
    # When a false positive costs more than a missed fraud, it stops before the legit one at 0.8.
    pricey = choose_threshold(labels, scores, cost_missed_fraud=150, cost_false_positive=400)
    assert 0.8 < pricey.threshold < 0.9 and pricey.cost == 150
    # Nothing worth flagging: the threshold sits above every score.
    none = choose_threshold([1, 0, 0], [0.1, 0.5, 0.6], cost_missed_fraud=1, cost_false_positive=100)
    assert none.flagged == 0 and 0.6 < none.threshold < 1
    with pytest.raises(TrainingError, match="no frauds"):
        choose_threshold(np.zeros(5), np.linspace(0, 1, 5), cost_missed_fraud=150, cost_false_positive=25)


def test_report_files_are_written_atomically_and_small(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random(3000) < 0.05).astype(int)
    scores_v1 = np.clip(rng.normal(0.3 + 0.3 * labels, 0.15), 0, 1)
    scores_v2 = np.clip(rng.normal(0.3 + 0.4 * labels, 0.15), 0, 1)
    settings = GateSettings()
    decision = decide(
        holdout_metrics("v1", labels, scores_v1, 0.5, settings),
        holdout_metrics("v2", labels, scores_v2, 0.5, settings, extra={"registry_version": "2"}),
        settings,
    )
    paths = write_gate_report(tmp_path, decision, labels, scores_v1, scores_v2)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["confusion_matrices.png", "pr_curves.png", "metrics-v1.json", "metrics-v2.json", "gate.json"]
    )
    for name in ("pr_curves", "confusion_matrices"):
        assert paths[name].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    v2 = json.loads(paths["metrics_v2"].read_text())
    assert v2["model_version"] == "v2" and v2["registry_version"] == "2"
    assert all(not isinstance(value, dict | list) for value in v2.values())  # flat: fits a ConfigMap
    gate = json.loads(paths["gate"].read_text())
    assert gate["passed"] == decision.passed and len(gate["reasons"]) == 4
    assert gate["settings"]["precisionBand"] == 0.05
    assert not math.isnan(v2["auprc"])
