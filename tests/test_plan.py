"""The analysis plan (rollout/plan.py) and ``fraudctl analysis plan``: what a stack's settings decide, and the
refusal of a configuration that cannot decide within its steps."""

from __future__ import annotations

import json
import math
from itertools import pairwise

import pytest

from fraudctl.cli import main
from rollout.plan import PlanError, fpr_for_precision, plan, planning_point, planning_points
from rollout.settings import AnalysisSettings

RUNS = 600  # the plan's Monte-Carlo, smaller than the CLI's for speed


def settings(**changes: object) -> AnalysisSettings:
    return AnalysisSettings.model_validate(changes)


def tolerance(rate: float, runs: int = RUNS) -> float:
    return 3 * math.sqrt(rate * (1 - rate) / runs)


def test_the_planning_point_sits_at_the_floors_and_the_drops_are_the_stated_size() -> None:
    config = settings(minRecall=0.6, minPrecision=0.85, replayFraudShare=0.2, minDetectableDrop=0.1)
    points = planning_points(config)

    def rates(cells, model):  # model 0: stable, 1: candidate
        legit, frauds = cells[:4] / cells[:4].sum(), cells[4:] / cells[4:].sum()
        pick = (2, 3) if model == 0 else (1, 3)
        recall, fpr = sum(frauds[i] for i in pick), sum(legit[i] for i in pick)
        return recall, 0.2 * recall / (0.2 * recall + 0.8 * fpr)

    assert rates(points["healthy"], 0) == pytest.approx((0.6, 0.85))
    assert rates(points["healthy"], 1) == pytest.approx((0.6, 0.85))
    assert rates(points["recall_drop"], 1)[0] == pytest.approx(0.5)
    assert rates(points["precision_drop"], 1) == pytest.approx((0.6, 0.75))
    assert fpr_for_precision(0.85, 0.6, 0.2) == pytest.approx(0.2 * 0.6 * (1 / 0.85 - 1) / 0.8)


def test_the_dev_stack_plan_meets_its_stated_rates_step_by_step() -> None:
    config = settings()
    result = plan(config, runs=RUNS)
    assert result.pairs_per_interval == round(config.replay_rate * config.interval_seconds)
    assert result.expected_frauds_per_interval == pytest.approx(result.pairs_per_interval * config.replay_fraud_share)
    assert result.meets_targets and result.problems() == [] and result.check() is result
    assert result.false_rollback <= config.false_rollback_rate
    assert max(result.miss_recall, result.miss_precision) <= config.miss_rate
    assert [s.weight for s in result.steps] == list(config.step_weights)
    # Steps are passed in order, one interval apart at least, with evidence piling up; catches only grow.
    lefts = [s.expected_interval_left for s in result.steps]
    assert all(b - a >= 1 - 1e-9 for a, b in pairwise(lefts))
    frauds = [s.expected_labelled_frauds for s in result.steps]
    assert frauds == sorted(frauds) and frauds[0] >= config.min_labelled_frauds
    catches = [s.catch_precision_drop for s in result.steps]
    assert catches == sorted(catches) and result.steps[-1].promote_healthy == pytest.approx(1 - result.false_rollback)
    assert result.seconds_to_rollback < result.seconds_to_promotion
    payload = result.to_json()
    assert payload["meets_targets"] and payload["design"]["fail_boundary"] > 0 > payload["design"]["pass_boundary"]


def test_the_plan_is_a_pure_function_of_its_inputs_and_is_computed_once_for_them() -> None:
    config = settings()
    first = plan(config, 5.0, runs=RUNS, search=False)
    # Computed afresh (the memo bypassed), the same inputs give the same plan.
    assert plan.__wrapped__(config, 5.0, runs=RUNS, search=False).to_json() == first.to_json()
    # Asked again, with equal settings built anew, the memoized plan is returned as it is.
    assert plan(settings(), 5.0, runs=RUNS, search=False) is first
    assert plan(settings(), 6.0, runs=RUNS, search=False) is not first


def test_a_replay_too_thin_to_decide_is_refused_naming_the_keys_and_the_rate_that_would_do() -> None:
    config = settings(interval=10)
    thin = plan(config, 2.0, runs=RUNS)  # 20 pairs, 4 frauds per interval: 40 by the horizon
    assert not thin.meets_targets
    [problem] = thin.problems()
    for key in ("analysis.replayRate", "analysis.interval", "analysis.horizon", "analysis.falseRollbackRate"):
        assert key in problem
    assert thin.required_rps is not None and f"at least {thin.required_rps:.3g}/s" in problem
    with pytest.raises(PlanError) as info:
        thin.check()
    assert info.value.problems == [problem]
    enough = plan(config, thin.required_rps, runs=RUNS)
    assert enough.meets_targets
    assert not plan(config, thin.required_rps / 1.3, runs=RUNS, search=False).meets_targets


def test_a_drop_that_cannot_exist_at_the_replay_share_is_refused_for_that_reason() -> None:
    # At 90 % frauds a model catching every fraud is 0.9 precise even flagging everything: no 15-point drop.
    config = settings(replayFraudShare=0.9, minRecall=1.0, minDetectableDrop=0.15)
    result = plan(config, runs=RUNS)
    [problem] = result.problems()
    assert problem.startswith("analysis.minDetectableDrop (0.15): at analysis.replayFraudShare 0.9")
    assert not result.meets_targets and result.required_rps is None


def test_low_floors_plan_where_the_checks_are_hardest() -> None:
    point = planning_point(settings(minRecall=0.0, minPrecision=0.0, replayFraudShare=0.2, minDetectableDrop=0.1))
    assert point.recall == 0.5  # 2 r (1 - r), the paired variance, is largest there
    flag_all = 0.2 * 0.5 / (0.2 * 0.5 + 0.8)
    assert point.precision == pytest.approx(flag_all + 0.1) and point.worse_false_positive_rate == pytest.approx(1.0)


def test_a_horizon_that_cannot_hold_the_minimum_evidence_never_passes() -> None:
    config = settings(interval=10, horizon=2, minLabelledFrauds=100)
    starved = plan(config, 1.0, runs=RUNS, search=False)  # 2 frauds per interval
    assert starved.false_rollback == 1.0 and starved.forced_share == 1.0


def test_a_longer_horizon_needs_a_thinner_replay() -> None:
    short = plan(settings(horizon=5), 1.0, runs=300).required_rps
    long = plan(settings(horizon=20), 1.0, runs=300).required_rps
    assert short is not None and long is not None and long < short


def test_bad_plan_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="rps: must be a positive number"):
        plan(settings(), 0.0)
    with pytest.raises(ValueError, match="interval_seconds: must be a positive number"):
        plan(settings(), 1.0, interval_seconds=math.nan)


# --- the CLI ---------------------------------------------------------------------------------------------


def test_plan_command_prints_the_plan_and_exits_0_when_it_can_decide(capsys) -> None:
    assert main(["analysis", "plan", "--stack", "dev"]) == 0
    out = capsys.readouterr().out
    assert "1200 pairs per interval" in out and "P(healthy past)" in out and "promote a healthy candidate" in out
    assert main(["analysis", "plan", "--stack", "dev", "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert payload["stack"] == "dev" and payload["meets_targets"] and len(payload["steps"]) == 3


def test_plan_command_exits_2_naming_the_keys_when_it_cannot_decide(capsys) -> None:
    assert main(["analysis", "plan", "--stack", "dev", "--rps", "1", "--interval", "3", "--runs", "300"]) == 2
    captured = capsys.readouterr()
    assert "3 pairs per interval" in captured.out
    assert captured.err.startswith("fraudctl analysis: analysis.replayRate (1/s) x analysis.interval (3 s)")
    assert "needs a replay of at least" in captured.err and "Traceback" not in captured.err
    argv = ["analysis", "plan", "--rps", "0.5", "--interval", "10", "--runs", "200", "--json"]
    assert main(argv) == 2
    payload = json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert not payload["meets_targets"] and payload["steps"][0]["expected_seconds_left"] is None
    assert payload["problems"] and payload["required_replay_rate_per_second"] > 0.5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--rps", "-1"], "--rps: must be a positive number"),
        (["--rps", "nan"], "--rps: must be a positive number"),
        (["--interval", "0"], "--interval: must be a positive number"),
        (["--stack", "nope"], "known stacks are dev, multiregion"),
        (["--runs", "5"], "--runs: must be 100 or more"),
    ],
)
def test_plan_command_usage_errors_exit_2(argv: list[str], message: str, capsys) -> None:
    assert main(["analysis", "plan", *argv]) == 2
    assert message in capsys.readouterr().err
