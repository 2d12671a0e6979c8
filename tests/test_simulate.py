"""The Monte-Carlo of rollout decisions (rollout/simulate.py) on a generated holdout, and the CLI's usage errors.
The real-data run (``fraudctl analysis simulate``) is the CLI's and the README's, not the suite's."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from fraudctl.cli import main
from rollout.plan import cell_probabilities
from rollout.settings import AnalysisSettings
from rollout.simulate import (
    SCENARIOS,
    ScoredHoldout,
    SimulationError,
    build_scenarios,
    flag_table,
    operating_characteristic,
    rates,
    simulate,
    threshold_for_precision,
    write_chart,
)

RUNS = 600


def tolerance(rate: float, runs: int = RUNS) -> float:
    return 3 * math.sqrt(rate * (1 - rate) / runs)


@pytest.fixture(scope="module")
def holdout() -> ScoredHoldout:
    """Generated scores: 2 % frauds; the candidate separates them better than the stable (as v2 does v1)."""
    rng = np.random.default_rng(42)
    n = 30_000
    labels = rng.random(n) < 0.02
    latent = rng.normal(np.where(labels, 4.0, 0.0), 1.0)
    stable = 1 / (1 + np.exp(-(latent + rng.normal(0, 1.5, n) - 3.5)))
    candidate = 1 / (1 + np.exp(-(latent + rng.normal(0, 0.5, n) - 3.0)))
    return ScoredHoldout(labels, stable, candidate, 0.5, 0.5)


def test_a_pair_draw_has_the_holdouts_own_frequencies(holdout: ScoredHoldout) -> None:
    stable = holdout.stable_scores >= 0.5
    candidate = holdout.candidate_scores >= 0.5
    table = flag_table(holdout.labels, stable, candidate, 0.2)
    s, c = stable[holdout.labels], candidate[holdout.labels]
    expected = [np.mean(~s & ~c), np.mean(~s & c), np.mean(s & ~c), np.mean(s & c)]
    assert table[4:] == pytest.approx(0.2 * np.array(expected))
    assert table.sum() == pytest.approx(1.0) and table[:4].sum() == pytest.approx(0.8)


def test_scenarios_are_built_as_defined(holdout: ScoredHoldout) -> None:
    from serving.faults import FaultInjector

    scenarios = build_scenarios(holdout, 0.2, subtle_drop=0.10)
    points = scenarios.operating_points
    assert points["candidate"]["recall"] > points["stable"]["recall"]
    # Subtle: the highest threshold whose precision is 10 points below the stable's (at the replay's share).
    target = rates(holdout.labels, holdout.stable_scores >= 0.5, 0.2)["precision_at_share"] - 0.10
    at = rates(holdout.labels, holdout.candidate_scores >= scenarios.subtle_threshold, 0.2)["precision_at_share"]
    above = holdout.candidate_scores[holdout.candidate_scores > scenarios.subtle_threshold].min()
    assert at <= target < rates(holdout.labels, holdout.candidate_scores >= above, 0.2)["precision_at_share"]
    assert points["subtle"]["precision_at_share"] == pytest.approx(at, abs=1e-6)
    # Broken: the degrade fault's inverted scores at the candidate's own threshold.
    degraded = FaultInjector.corrupt(holdout.candidate_scores) >= holdout.candidate_threshold
    assert scenarios.broken == pytest.approx(flag_table(holdout.labels, holdout.stable_scores >= 0.5, degraded, 0.2))
    assert points["broken"]["precision_at_share"] < 0.3


def test_threshold_search_refuses_an_unreachable_precision(holdout: ScoredHoldout) -> None:
    with pytest.raises(SimulationError, match="no threshold brings"):
        threshold_for_precision(holdout.labels, holdout.candidate_scores, -0.5, 0.2)
    with pytest.raises(SimulationError, match="both frauds and legitimate"):
        ScoredHoldout(np.zeros(5, dtype=bool), np.zeros(5), np.zeros(5), 0.5, 0.5)


def test_the_four_scenarios_end_as_the_rule_promises(holdout: ScoredHoldout) -> None:
    config = AnalysisSettings()
    result = simulate(config, holdout, runs=RUNS, seed=3, fault_at=2)
    rows = result["scenarios"]
    assert list(rows) == list(SCENARIOS)
    assert rows["healthy"]["promote_rate"] >= 0.99 - tolerance(0.99)
    assert rows["subtle"]["rollback_rate"] >= 0.95 - tolerance(0.95)
    assert rows["broken"]["rolled_back_within_one_interval"] >= 0.99 - tolerance(0.99)
    assert rows["primary-down"]["promote_rate"] == 0.0 and rows["primary-down"]["halt_rate"] == 1.0
    assert rows["primary-down"]["median_seconds_to_decision"] is None
    for row in rows.values():
        total = row["promote_rate"] + row["rollback_rate"] + row["halt_rate"] + row["undecided_rate"]
        assert total == pytest.approx(1.0)
        median = row["median_seconds_to_decision"]
        assert median is None or median >= config.interval_seconds
    # A healthy rollout needs one decisive interval per step at least; broken is decided when the fault lands.
    assert rows["healthy"]["median_seconds_to_decision"] >= len(config.step_weights) * config.interval_seconds
    assert rows["broken"]["median_seconds_to_decision"] == 2 * config.interval_seconds
    assert result["pairs_per_interval"] == round(config.replay_rate * config.interval_seconds)
    assert all(result["targets"].values())


def test_a_fault_after_the_last_interval_is_refused(holdout: ScoredHoldout) -> None:
    with pytest.raises(SimulationError, match="interval 14 is past the analysis' last one"):
        simulate(AnalysisSettings(), holdout, runs=10, fault_at=14)


def test_the_same_seed_gives_the_same_figures(holdout: ScoredHoldout) -> None:
    config = AnalysisSettings()
    one = simulate(config, holdout, runs=200, seed=8)
    other = simulate(config, holdout, runs=200, seed=8)
    assert one == other


def test_operating_characteristic_rises_with_the_drop_and_is_charted(holdout: ScoredHoldout, tmp_path: Path) -> None:
    config = AnalysisSettings()
    curve = operating_characteristic(config, holdout, runs=300, drops=(0.0, 0.05, 0.1, 0.2))
    drops = [p["precision_drop"] for p in curve]
    assert drops == sorted(drops)
    rollbacks = [p["rollback_rate"] for p in curve]
    assert rollbacks[0] <= 0.01 + tolerance(0.01, 300) and rollbacks[-1] >= 0.95 - tolerance(0.95, 300)
    result = simulate(config, holdout, runs=100)
    chart = write_chart(tmp_path / "oc" / "chart.png", curve, result, config)
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and chart.stat().st_size > 10_000
    assert [p.name for p in chart.parent.iterdir()] == ["chart.png"]  # written atomically, no leftovers


def test_a_stable_that_never_flags_makes_an_undefined_precision_a_clear_error() -> None:
    labels = np.array([True] * 10 + [False] * 90)
    scores = np.linspace(0, 1, 100)
    holdout = ScoredHoldout(labels, np.zeros(100), scores, 0.5, 0.5)
    with pytest.raises(SimulationError, match="flags nothing"):
        build_scenarios(holdout, 0.2)
    assert cell_probabilities(0.2, (1, 0, 0, 0), (1, 0, 0, 0)).sum() == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--runs", "0"], "--runs: must be 1 or more"),
        (["--fault-at", "0"], "--fault-at: must be interval 1 or later"),
        (["--fault-at", "14"], "--fault-at: must be at most 13"),
        (["--rps", "-2"], "--rps: must be a positive number"),
        (["--stack", "nope"], "known stacks are dev, multiregion"),
    ],
)
def test_simulate_usage_errors_exit_2_before_any_work(argv: list[str], message: str, capsys) -> None:
    assert main(["analysis", "simulate", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_simulate_on_a_dataset_that_cannot_be_had_is_one_line(fraud_home: Path, tmp_path: Path, capsys) -> None:
    missing = tmp_path / "nowhere" / "creditcard.csv"
    assert main(["analysis", "simulate", "--runs", "10", "--data", str(missing)]) == 2
    err = capsys.readouterr().err
    assert "fraudctl analysis:" in err and "Traceback" not in err
