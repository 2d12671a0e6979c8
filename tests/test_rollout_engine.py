"""Every decision path of the rollout, in process: the engine walks Flagger's scheduler order or Argo Rollouts'
blue-green phases and asks the decision service's real logic (with the real sequential analysis) for every
answer; only the model servers, Prometheus and time are scripted (tests/rollout_rig.py)."""

from __future__ import annotations

import pytest
from rollout_rig import DEGRADED, HEALTHY, Script, rehearse

from rehearsal.engine import FaultPlan, RolloutOutcome, argo_measurement

INTERVAL = 60.0


def weights_of(outcome: RolloutOutcome) -> list[int]:
    return [step.weight for step in outcome.steps]


def never_promoted(outcome: RolloutOutcome) -> bool:
    return outcome.decision != "promoted" and all(step.action != "promote" for step in outcome.steps)


def test_canary_promotes_a_healthy_candidate_step_by_step() -> None:
    outcome, rig, _ = rehearse("canary")
    assert outcome.decision == "promoted", outcome.reason
    assert rig.weights == [5, 10, 50, 100]
    assert weights_of(outcome) == [0, 5, 10, 50]  # the weight each interval was analysed at
    assert [s.phase for s in outcome.steps] == ["pre-rollout", "canary", "canary", "canary"]
    assert all(step.failed_checks == 0 for step in outcome.steps)
    assert outcome.primary_healthy is True
    # The weight only ever moved on a 200 from confirm-traffic-increase / confirm-promotion.
    for step in outcome.steps:
        if step.action.startswith("advance"):
            assert step.hooks["confirm-traffic-increase"] == 200 and step.verdict == "pass"
    assert outcome.steps[-1].hooks["confirm-promotion"] == 200
    assert all(step.hooks["rollback"] == 403 for step in outcome.steps)


def test_undecided_holds_the_weight_without_counting_a_failure() -> None:
    # 60 pairs per interval: 12 labelled frauds, below minLabelledFrauds (20) at the first look.
    outcome, rig, _ = rehearse("canary", Script(transactions=60))
    first = outcome.steps[0]
    assert first.verdict == "undecided" and first.action == "hold" and first.weight == 0
    assert first.hooks["confirm-traffic-increase"] == 403 and first.failed_checks == 0
    held = [s for s in outcome.steps if s.action == "hold"]
    assert held and all(s.failed_checks == 0 for s in held)
    assert outcome.decision == "promoted", outcome.reason  # decided later, on more evidence
    assert rig.weights == [5, 10, 50, 100]


def test_a_degraded_candidate_is_rolled_back_within_one_interval_of_the_fault() -> None:
    outcome, rig, _ = rehearse("canary", fault=FaultPlan("degrade", at_step=3))
    assert outcome.decision == "rolled_back"
    assert outcome.reason.startswith("the decision service signalled a rollback: roll back:")
    faulty = [s for s in outcome.steps if s.fault_active]
    assert faulty[0].verdict == "fail"  # the interval the fault reached traffic
    assert len(faulty) <= 2 and faulty[-1].action == "rollback"
    assert outcome.seconds_to_rollback is not None and outcome.seconds_to_rollback <= INTERVAL
    assert rig.weight == 0 and all(s.failed_checks == 0 for s in outcome.steps)


@pytest.mark.parametrize(
    ("check", "script"),
    [
        ("recall-vs-stable", Script(candidate=(0.55, 0.02))),
        ("precision-vs-stable", Script(candidate=(0.80, 0.10))),
        ("recall-floor", Script(stable=(0.40, 0.02), candidate=(0.40, 0.02))),
        ("precision-floor", Script(stable=(0.80, 0.12), candidate=(0.80, 0.12))),
    ],
)
def test_each_ml_check_alone_rolls_back(check: str, script: Script) -> None:
    outcome, rig, service = rehearse("canary", script)
    assert outcome.decision == "rolled_back", outcome.reason
    assert f"{check} fail" in outcome.reason
    assert rig.weight == 0 and never_promoted(outcome)
    (state,) = [s for s in service._rollouts.values()]
    failed = {c.name for c in state.decision.checks if c.verdict.value == "fail"}
    assert check in failed


@pytest.mark.parametrize(
    ("check", "script"),
    [("success-rate", Script(fault_errors=True)), ("latency-p99", Script(fault_slow=True))],
)
def test_each_system_check_rolls_back_at_the_failed_checks_threshold(check: str, script: Script) -> None:
    outcome, rig, _ = rehearse("canary", script, fault=FaultPlan("error", at_step=3), threshold=2)
    assert outcome.decision == "rolled_back"
    assert outcome.reason == f"2 failed checks reached the threshold 2 (last: {check})"
    failing = [s for s in outcome.steps if s.action == "failed check"]
    assert len(failing) == 2 and all(not {c.name: c for c in s.checks}[check].passed for s in failing)
    assert rig.weight == 0


def test_a_failing_primary_halts_the_rollout_and_nothing_moves() -> None:
    outcome, rig, _ = rehearse("canary", Script(stable_down_from=2))
    assert outcome.decision == "halted"
    assert "primary" in outcome.reason and "no promotion, no weight change, no failure counted" in outcome.reason
    assert outcome.primary_healthy is False and never_promoted(outcome)
    halted = [s for s in outcome.steps if s.verdict == "halt"]
    assert len(halted) == 3 and {s.weight for s in halted} == {rig.weights[0]}  # held where it was
    assert all(s.failed_checks == 0 and s.hooks["rollback"] == 403 for s in halted)


def test_prometheus_unreachable_is_no_data_never_a_promotion() -> None:
    # At weight 0 no metric check runs: the decision holds on "no data" and the rehearsal ends halted.
    outcome, _, _ = rehearse("canary", Script(prometheus_down_from=1))
    assert outcome.decision == "halted" and never_promoted(outcome)
    assert all(s.verdict == "halt" and "no data" in s.reason for s in outcome.steps)
    assert outcome.primary_healthy is None
    # Past weight 0 the metric checks have no data too: Flagger counts failed checks and rolls back.
    outcome, rig, _ = rehearse("canary", Script(prometheus_down_from=3))
    assert outcome.decision == "rolled_back" and never_promoted(outcome)
    assert all(s.verdict == "halt" for s in outcome.steps[2:])
    assert rig.weight == 0


def test_blue_green_promotes_after_pre_and_post_promotion_analysis() -> None:
    outcome, rig, _ = rehearse("blue-green", horizon=4)
    assert outcome.decision == "promoted", outcome.reason
    phases = [s.phase for s in outcome.steps]
    # Before the switch the system checks begin an interval after the decision (the preview's traffic starts
    # with the first replay), so that run takes horizon + 1 intervals; after it, horizon intervals.
    assert phases.count("pre-promotion") == 5 and phases.count("post-promotion") == 4
    assert rig.weights == [100] and outcome.switched_at is not None and outcome.switched_back_at is None
    assert outcome.bad_answers_after_switch == 0


def test_blue_green_aborts_before_the_switch_and_the_active_service_never_moves() -> None:
    outcome, rig, _ = rehearse("blue-green", Script(candidate=DEGRADED), horizon=4)
    assert outcome.decision == "rolled_back" and "pre-promotion analysis failed" in outcome.reason
    assert rig.weights == [] and outcome.switched_at is None
    assert outcome.steps[-1].action == "abort" and outcome.steps[-1].verdict == "fail"


def test_blue_green_switches_back_within_one_interval_of_a_post_switch_fault() -> None:
    horizon = 4
    at_step = horizon + 3  # two intervals after the switch
    outcome, rig, _ = rehearse(
        "blue-green", Script(production_rps=10.0), fault=FaultPlan("degrade", at_step), horizon=horizon
    )
    assert outcome.decision == "rolled_back", outcome.reason
    assert "post-promotion analysis failed" in outcome.reason and "switched back" in outcome.reason
    assert rig.weights == [100, 0]
    assert outcome.fault_injected_at is not None and outcome.switched_back_at is not None
    assert outcome.switched_back_at - outcome.fault_injected_at <= INTERVAL
    # Bad answers served after the switch: production at 100 % while the fault was live, until the switch back.
    assert outcome.bad_answers_after_switch == round(10.0 * (outcome.switched_back_at - outcome.fault_injected_at))
    assert 0 < outcome.bad_answers_after_switch <= 10 * INTERVAL


def test_blue_green_switches_back_at_the_first_failed_system_check_after_the_switch() -> None:
    """A candidate that fails requests leaves the paired decision undecided (its non-answers hold it); before
    the switch the system checks tolerate threshold - 1 failures, after it none: every user is on it."""
    horizon = 4
    at_step = horizon + 2  # the first interval after the switch
    outcome, rig, _ = rehearse(
        "blue-green", Script(fault_errors=True), fault=FaultPlan("error", at_step), horizon=horizon, threshold=3
    )
    assert outcome.decision == "rolled_back", outcome.reason
    assert "system check(s) success-rate failed and after the switch none may" in outcome.reason
    assert rig.weights == [100, 0]
    failed = [s for s in outcome.steps if s.action == "abort"]
    assert len(failed) == 1 and failed[0].index == at_step and failed[0].phase == "post-promotion"
    assert outcome.switched_back_at is not None and outcome.fault_injected_at is not None
    assert outcome.switched_back_at - outcome.fault_injected_at <= INTERVAL


def test_blue_green_pauses_when_the_primary_fails() -> None:
    outcome, rig, _ = rehearse("blue-green", Script(stable_down_from=2), horizon=4)
    assert outcome.decision == "halted" and "inconclusive" in outcome.reason
    assert outcome.steps[-1].action == "pause" and outcome.steps[-1].verdict == "halt"
    assert rig.weights == [] and outcome.switched_at is None


def test_argo_measurement_phases_follow_the_web_provider_and_the_conditions() -> None:
    assert argo_measurement(200, {"verdict": "pass"}) == "Successful"
    assert argo_measurement(200, {"verdict": "undecided"}) == "Successful"
    assert argo_measurement(200, {"verdict": "fail"}) == "Failed"
    assert argo_measurement(200, {"verdict": "halt"}) == "Inconclusive"
    assert argo_measurement(400, {"error": "bad"}) == "Error"
    assert argo_measurement(502, {"verdict": "fail"}) == "Error"  # what issue 10 #6 was about


def test_healthy_script_is_what_a_healthy_candidate_looks_like() -> None:
    """The script itself: a candidate at the stable's rates is not rolled back by any check."""
    outcome, _, service = rehearse("canary", Script(stable=HEALTHY, candidate=HEALTHY, seed=5))
    (state,) = list(service._rollouts.values())
    assert outcome.decision == "promoted" and all(c.verdict.value == "pass" for c in state.decision.checks)
