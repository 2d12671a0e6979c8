"""The rollout decision rule (rollout/decision.py): its statistics against known cases, its error rates by a
small seeded Monte-Carlo (tolerances from the binomial standard error), and every decision path."""

from __future__ import annotations

import math
import random
from statistics import NormalDist

import numpy as np
import pytest

from rollout.decision import (
    CHECKS,
    FAIL_CODE,
    AnalysisBatch,
    Decision,
    Design,
    Evidence,
    LabelledPair,
    SequentialAnalysis,
    Verdict,
    cell_index,
    log_likelihood_ratio,
    statistics,
)
from rollout.plan import ROLLED_BACK, cell_probabilities, independent_table, multinomial_draw, walk
from rollout.settings import AnalysisSettings

RECALL, PRECISION, RECALL_FLOOR, PRECISION_FLOOR = range(4)


def settings(**changes: object) -> AnalysisSettings:
    return AnalysisSettings.model_validate(changes)


def flags_from_scores(seed: int, n: int, *, separation: float, shift: float, noise: float) -> np.ndarray:
    """Generated scores: a shared latent per transaction plus each model's own noise, thresholded at 0.
    ``shift`` lowers the candidate's threshold; returns cell probabilities over the 8 cells."""
    rng = np.random.default_rng(seed)
    labels = rng.random(n) < 0.5
    latent = rng.normal(np.where(labels, separation, -separation), 1.0)
    stable = latent + rng.normal(0, noise, n) > 1.0
    candidate = latent + rng.normal(0, noise, n) > 1.0 - shift
    counts = np.bincount(4 * labels + 2 * stable + candidate, minlength=8).astype(float)
    frauds, legit = counts[4:] / counts[4:].sum(), counts[:4] / counts[:4].sum()
    return cell_probabilities(0.2, tuple(frauds), tuple(legit))


def pairs_from(counts: dict[tuple[bool, bool | None, bool | None], int]) -> list[LabelledPair]:
    return [LabelledPair(*key) for key, n in counts.items() for _ in range(n)]


def interval(rng: random.Random, n: int, *, rs: float, rc: float, fs: float, fc: float) -> list[LabelledPair]:
    pairs = []
    for _ in range(n):
        fraud = rng.random() < 0.2
        s, c = (rs, rc) if fraud else (fs, fc)
        pairs.append(LabelledPair(fraud, rng.random() < s, rng.random() < c))
    return pairs


# --- the statistics against known cases ----------------------------------------------------------------


def test_paired_recall_difference_and_variance_are_agresti_mins_matched_proportions() -> None:
    # 100 frauds: both caught 50, only the stable 12, only the candidate 8, neither 30.
    cells = np.zeros(8)
    cells[[cell_index(True, False, False), cell_index(True, False, True)]] = 30, 8
    cells[[cell_index(True, True, False), cell_index(True, True, True)]] = 12, 50
    cells[cell_index(False, False, False)] = 400
    difference, variance, candidate, reference = statistics(cells, Design.from_settings(settings()))
    assert difference[RECALL] == pytest.approx((8 - 12) / 100)
    assert (candidate[RECALL], reference[RECALL]) == pytest.approx((0.58, 0.62))
    # Agresti & Min (2005): each cell + 0.5, then var = [(p12 + p21) - (p12 - p21)^2] / n.
    n, p12, p21 = 102, 12.5 / 102, 8.5 / 102
    assert variance[RECALL] == pytest.approx(((p12 + p21) - (p12 - p21) ** 2) / n)
    assert difference[RECALL_FLOOR] == pytest.approx(0.58 - 0.60)
    # A margin of the smoothed table: one success and one failure added.
    assert variance[RECALL_FLOOR] == pytest.approx((59 / 102) * (1 - 59 / 102) / 102)


def test_precision_is_stated_at_the_replay_share_whatever_the_mix_that_arrived() -> None:
    design = Design.from_settings(settings(replayFraudShare=0.2))

    def precisions(frauds: int, legit: int) -> tuple[float, float]:
        # Candidate recall 0.8, FPR 0.05; stable recall 0.6, FPR 0.01 (independent of the counts).
        cells = np.zeros(8)
        cells[cell_index(True, True, True)] = 0.6 * 0.8 * frauds
        cells[cell_index(True, True, False)] = 0.6 * 0.2 * frauds
        cells[cell_index(True, False, True)] = 0.4 * 0.8 * frauds
        cells[cell_index(True, False, False)] = 0.4 * 0.2 * frauds
        cells[cell_index(False, True, True)] = 0.01 * 0.05 * legit
        cells[cell_index(False, True, False)] = 0.01 * 0.95 * legit
        cells[cell_index(False, False, True)] = 0.99 * 0.05 * legit
        cells[cell_index(False, False, False)] = 0.99 * 0.95 * legit
        _, _, candidate, reference = statistics(cells, design)
        return candidate[PRECISION], reference[PRECISION]

    expected = (0.2 * 0.8 / (0.2 * 0.8 + 0.8 * 0.05), 0.2 * 0.6 / (0.2 * 0.6 + 0.8 * 0.01))
    for frauds, legit in ((200, 800), (500, 500), (50, 5000)):  # 20 %, 50 %, 1 % frauds arrived
        assert precisions(frauds, legit) == pytest.approx(expected)


def test_delta_method_variance_matches_the_spread_of_the_estimate() -> None:
    design = Design.from_settings(settings())
    probabilities = cell_probabilities(0.2, independent_table(0.7, 0.6), independent_table(0.03, 0.05))
    rng = np.random.default_rng(5)
    tables = rng.multinomial(3000, probabilities, size=4000)
    difference, variance, _, _ = statistics(tables, design)
    for check in range(4):
        spread = difference[:, check].var()
        # The sample variance of 4000 draws is within ~2.2 % (sd = sqrt(2/3999)); the delta method within 10 %.
        assert variance[:, check].mean() == pytest.approx(spread, rel=0.10), CHECKS[check]


def test_the_log_likelihood_ratio_is_the_normal_one() -> None:
    for d, v, drop in ((-0.03, 0.0004, 0.1), (0.02, 0.001, 0.05), (-0.2, 0.01, 0.1)):
        normal = NormalDist(-drop, math.sqrt(v)).pdf(d) / NormalDist(0, math.sqrt(v)).pdf(d)
        assert log_likelihood_ratio(np.array(d), np.array(v), drop) == pytest.approx(math.log(normal))


def test_boundaries_follow_from_the_stated_error_rates() -> None:
    design = Design.from_settings(settings(falseRollbackRate=0.01, missRate=0.05, horizon=10, stepWeights=[5, 10, 50]))
    alpha = 0.01 / 4
    assert design.pass_boundary == pytest.approx(math.log(0.05 / (1 - alpha)))
    assert design.fail_boundary == pytest.approx(math.log((1 + 13 * 0.05 / (1 - alpha)) / alpha))
    looser = Design.from_settings(settings(falseRollbackRate=0.1, missRate=0.2))
    assert looser.fail_boundary < design.fail_boundary and looser.pass_boundary > design.pass_boundary


# --- error rates, measured -----------------------------------------------------------------------------

RUNS = 1500


def measured(points: np.ndarray, config: AnalysisSettings, pairs: int, seed: int) -> np.ndarray:
    design = Design.from_settings(config)
    result = walk(design, len(config.step_weights), multinomial_draw(lambda look: points, pairs, RUNS), RUNS,
                  np.random.default_rng(seed))  # fmt: skip
    return result.outcome


def tolerance(rate: float, runs: int = RUNS) -> float:
    """Three binomial standard errors of a rate measured over ``runs``."""
    return 3 * math.sqrt(rate * (1 - rate) / runs)


def test_halfway_between_the_hypotheses_a_check_is_gamblers_ruin() -> None:
    # At half the drop the log-likelihood ratio has no drift: a check meets its fail boundary A before its
    # pass boundary B with probability -B / (A - B), each boundary pushed out by the mean overshoot of a
    # step, 0.583 sigma for normal steps (Siegmund 1985), sigma = drop * sqrt(frauds per look / var).
    config = settings(horizon=1000, minLabelledFrauds=20, replayFraudShare=0.5)
    design = Design.from_settings(config)
    points = cell_probabilities(0.5, independent_table(0.6, 0.55), independent_table(0.02, 0.02))
    rng = np.random.default_rng(9)
    batch = AnalysisBatch(design, RUNS)
    first = np.zeros(RUNS)  # +1: failed first, -1: passed first
    for _ in range(400):
        cells = rng.multinomial(125, points, size=RUNS)
        batch.look(cells, np.zeros(RUNS), np.zeros(RUNS), np.full(RUNS, 125))
        first[(first == 0) & batch.failed[:, RECALL]] = 1
        first[(first == 0) & batch.passed[:, RECALL]] = -1
        if np.all(first != 0):
            break
    assert np.mean(first == 0) < 0.01
    overshoot = 0.583 * design.drop * math.sqrt(0.5 * 125 / (0.6 * 0.45 + 0.55 * 0.4 - 0.05**2))
    a, b = design.fail_boundary + overshoot, design.pass_boundary - overshoot
    expected = -b / (a - b)
    assert float(np.mean(first == 1)) == pytest.approx(expected, abs=tolerance(expected))


@pytest.mark.parametrize("alpha", [0.01, 0.2])
def test_a_candidate_as_good_as_the_stable_is_rolled_back_at_most_at_the_stated_rate(alpha: float) -> None:
    # Every check at its H0: the stable at the floors, the candidate the same model up to noise.
    config = settings(falseRollbackRate=alpha, minRecall=0.6, minPrecision=0.85)
    fpr = 0.2 * 0.6 * (1 / 0.85 - 1) / 0.8
    points = cell_probabilities(0.2, independent_table(0.6, 0.6), independent_table(fpr, fpr))
    outcome = measured(points, config, pairs=1000, seed=1)
    rolled_back = float(np.mean(outcome == ROLLED_BACK))
    assert rolled_back <= alpha + tolerance(alpha)


@pytest.mark.parametrize("metric", ["recall", "precision"])
def test_a_candidate_worse_by_the_drop_is_promoted_at_most_at_the_miss_rate(metric: str) -> None:
    config = settings(missRate=0.05, minDetectableDrop=0.1, minRecall=0.3, minPrecision=0.5)
    # The stable is well above the floors: only the comparison with the stable can catch the drop.
    if metric == "recall":
        points = cell_probabilities(0.2, independent_table(0.7, 0.6), independent_table(0.01, 0.01))
    else:
        fpr = 0.2 * 0.7 * (1 / 0.85 - 1) / 0.8  # stable precision 0.95 -> candidate 0.85 at 20 % frauds
        points = cell_probabilities(0.2, independent_table(0.7, 0.7), independent_table(0.0092, fpr))
    outcome = measured(points, config, pairs=1000, seed=2)
    promoted = float(np.mean(outcome != ROLLED_BACK))
    assert promoted <= 0.05 + tolerance(0.05)


def test_the_operating_characteristic_falls_with_the_size_of_the_drop() -> None:
    # Generated scores, correlated models: a lower candidate threshold trades precision for recall.
    config = settings(minRecall=0.1, minPrecision=0.3)
    rates = []
    for shift in (0.0, 0.3, 0.6, 1.0):
        points = flags_from_scores(7, 40_000, separation=1.2, shift=shift, noise=0.5)
        outcome = measured(points, config, pairs=600, seed=3)
        rates.append(float(np.mean(outcome == ROLLED_BACK)))
    assert rates[0] <= 0.01 + tolerance(0.01)
    assert rates == sorted(rates) and rates[-1] >= 0.95 - tolerance(0.95)


def test_a_fault_after_the_pass_is_caught_within_the_interval_it_appears() -> None:
    config = settings()
    design = Design.from_settings(config)
    healthy = cell_probabilities(0.2, independent_table(0.6, 0.8), independent_table(0.01, 0.01))
    # Inverted scores: most legitimate transactions flagged, most frauds passed.
    broken = cell_probabilities(0.2, independent_table(0.6, 0.2), independent_table(0.01, 0.95))
    fault_at = 6
    result = walk(design, 20, multinomial_draw(lambda look: healthy if look < fault_at else broken, 1000, RUNS),
                  RUNS, np.random.default_rng(4), max_looks=12)  # fmt: skip
    running = result.ended_at >= fault_at
    assert running.all()  # nothing ended early: 20 steps
    passed_before = (result.left_step_at[:, 0] > 0) & (result.left_step_at[:, 0] < fault_at)
    assert passed_before.mean() >= 0.9  # the fault meets checks that have passed and are watching
    caught = float(np.mean((result.outcome == ROLLED_BACK) & (result.ended_at == fault_at)))
    assert caught >= 0.99 - tolerance(0.99)


# --- one rollout, every path -----------------------------------------------------------------------------


def test_pairs_and_their_counts_decide_identically() -> None:
    rng = random.Random(11)
    by_pairs, by_counts = SequentialAnalysis(settings()), SequentialAnalysis(settings())
    for _ in range(4):
        pairs = interval(rng, 400, rs=0.6, rc=0.62, fs=0.02, fc=0.02)
        pairs += [LabelledPair(True, None, True), LabelledPair(False, True, None)]
        by_pairs.add(pairs[:100])
        by_pairs.add(pairs[100:])
        by_counts.add_evidence(Evidence.from_pairs(pairs))
        one = by_pairs.close_interval(primary_healthy=True)
        other = by_counts.close_interval(primary_healthy=True)
        assert one == other
    assert Evidence.from_pairs(pairs).sent == len(pairs)


def test_a_better_candidate_passes_and_says_why() -> None:
    rng = random.Random(1)
    analysis = SequentialAnalysis(settings())
    assert analysis.decision().verdict is Verdict.UNDECIDED and analysis.decision().looks == 0
    analysis.add(interval(rng, 1500, rs=0.3, rc=0.8, fs=0.001, fc=0.002))
    decision = analysis.close_interval(primary_healthy=True)
    assert decision.verdict is Verdict.PASS and decision.looks == 1 and not decision.final
    assert decision.reason.startswith("pass after 1 interval")
    assert [c.name for c in decision.checks] == list(CHECKS)
    recall = decision.checks[RECALL]
    assert recall.candidate > recall.reference and recall.statistic <= recall.pass_at
    payload = decision.to_json()
    assert payload["verdict"] == "pass" and payload["checks"][0]["name"] == "recall-vs-stable"
    assert analysis.decision() is decision


def test_too_few_labelled_frauds_decide_nothing() -> None:
    analysis = SequentialAnalysis(settings(minLabelledFrauds=50))
    analysis.add(pairs_from({(True, False, False): 40, (False, False, True): 200}))  # a terrible candidate
    decision = analysis.close_interval(primary_healthy=True)
    assert decision.verdict is Verdict.UNDECIDED
    assert all(c.verdict is Verdict.UNDECIDED and c.difference is None for c in decision.checks)
    assert "not enough evidence yet (40 labelled frauds)" in decision.reason
    analysis.add(pairs_from({(True, True, False): 20, (False, False, True): 100}))
    assert analysis.close_interval(primary_healthy=True).verdict is Verdict.FAIL


def test_a_worse_candidate_fails_at_once_and_fail_is_final() -> None:
    analysis = SequentialAnalysis(settings())
    analysis.add(pairs_from({(True, True, False): 60, (True, True, True): 40, (False, False, False): 400}))
    decision = analysis.close_interval(primary_healthy=True)
    assert decision.verdict is Verdict.FAIL and decision.final
    assert decision.reason.startswith("roll back: recall-vs-stable fail: candidate 0.400 vs stable 1.000")
    analysis.add(pairs_from({(True, True, True): 100, (False, False, False): 400}))  # however good it gets now
    assert analysis.close_interval(primary_healthy=True).verdict is Verdict.FAIL


def test_a_silent_primary_halts_without_counting_a_failure_and_the_rollout_resumes() -> None:
    rng = random.Random(3)
    analysis = SequentialAnalysis(settings())
    analysis.add(interval(rng, 1500, rs=0.3, rc=0.8, fs=0.001, fc=0.002))
    assert analysis.close_interval(primary_healthy=True).verdict is Verdict.PASS
    analysis.add([LabelledPair(i % 5 == 0, None, i % 5 == 0) for i in range(500)])
    halted = analysis.close_interval(primary_healthy=True)
    assert halted.verdict is Verdict.HALT and not halted.primary_healthy
    assert "the primary (stable) answered 0 of 500" in halted.reason and "no failure counted" in halted.reason
    assert all(c.verdict is not Verdict.FAIL for c in halted.checks)
    told = SequentialAnalysis(settings())
    told.add(interval(rng, 1500, rs=0.3, rc=0.8, fs=0.001, fc=0.002))
    assert told.close_interval(primary_healthy=False).verdict is Verdict.HALT  # Prometheus says so
    analysis.add(interval(rng, 1500, rs=0.3, rc=0.8, fs=0.001, fc=0.002))
    assert analysis.close_interval(primary_healthy=True).verdict is Verdict.PASS


def test_a_few_stable_errors_within_the_success_rate_do_not_halt() -> None:
    rng = random.Random(4)
    analysis = SequentialAnalysis(settings(minSuccessRate=99.0))
    pairs = interval(rng, 1500, rs=0.3, rc=0.8, fs=0.001, fc=0.002)
    analysis.add(pairs + [LabelledPair(False, None, False)] * 10)  # 0.7 % unanswered
    assert analysis.close_interval(primary_healthy=True).verdict is Verdict.PASS


def test_system_checks_and_a_silent_candidate_hold_a_pass_and_no_replay_never_advances() -> None:
    rng = random.Random(5)
    analysis = SequentialAnalysis(settings())
    analysis.add(interval(rng, 1500, rs=0.3, rc=0.8, fs=0.001, fc=0.002))
    held = analysis.close_interval(primary_healthy=True, system_ok=False)
    assert held.verdict is Verdict.UNDECIDED and "system checks" in held.reason
    analysis.add(interval(rng, 1500, rs=0.3, rc=0.8, fs=0.001, fc=0.002) + [LabelledPair(True, True, None)] * 100)
    held = analysis.close_interval(primary_healthy=True)
    assert held.verdict is Verdict.UNDECIDED and "the candidate did not answer" in held.reason
    nothing = analysis.close_interval(primary_healthy=True)  # no replay this interval
    assert nothing.verdict is Verdict.UNDECIDED and "no labelled pair" in nothing.reason
    analysis.add(interval(rng, 1500, rs=0.3, rc=0.8, fs=0.001, fc=0.002))
    assert analysis.close_interval(primary_healthy=True).verdict is Verdict.PASS


def test_the_horizon_forces_every_check_and_no_data_never_passes() -> None:
    rng = random.Random(6)
    analysis = SequentialAnalysis(settings(horizon=3, minLabelledFrauds=5))
    decisions = []
    for _ in range(3):  # equal models, little evidence: undecided until forced
        analysis.add(interval(rng, 60, rs=0.6, rc=0.6, fs=0.03, fc=0.03))
        decisions.append(analysis.close_interval(primary_healthy=True))
    assert [d.final for d in decisions] == [False, False, True]
    assert decisions[-1].verdict in (Verdict.PASS, Verdict.FAIL)
    assert all(c.verdict is not Verdict.UNDECIDED for c in decisions[-1].checks)
    starved = SequentialAnalysis(settings(horizon=2, minLabelledFrauds=50))
    for _ in range(2):
        starved.add(pairs_from({(True, True, True): 10, (False, False, False): 40}))
        last = starved.close_interval(primary_healthy=True)
    assert last.verdict is Verdict.FAIL and last.final and all(c.forced for c in last.checks)


def test_a_passed_check_watches_from_the_pass_boundary() -> None:
    config = settings()
    design = Design.from_settings(config)
    batch = AnalysisBatch(design, 1)
    good = np.zeros((1, 8))
    good[0, cell_index(True, False, True)] = 100
    good[0, cell_index(True, True, True)] = 100
    good[0, cell_index(False, False, False)] = 800
    for _ in range(5):  # lots of evidence for the candidate
        batch.look(good, np.zeros(1), np.zeros(1), np.full(1, 1000))
    worse = np.zeros((1, 8))
    worse[0, cell_index(True, True, False)] = 30
    worse[0, cell_index(True, True, True)] = 70
    worse[0, cell_index(False, False, False)] = 400
    verdict = batch.look(worse, np.zeros(1), np.zeros(1), np.full(1, 500))
    difference, variance, _, _ = statistics(worse[0], design)
    # The recall check restarts at B: the new interval alone, not five intervals of good news, decides.
    expected = design.pass_boundary + log_likelihood_ratio(difference[RECALL], variance[RECALL], design.drop)
    assert batch.statistic[0, RECALL] == pytest.approx(expected)
    assert expected >= design.fail_boundary and verdict[0] == FAIL_CODE


def test_bad_evidence_is_refused() -> None:
    with pytest.raises(ValueError, match="need 8 non-negative"):
        Evidence((1, 2, 3))
    with pytest.raises(ValueError, match="sent must count"):
        Evidence((1,) * 8, sent=3)
    assert isinstance(SequentialAnalysis(settings()).decision(), Decision)
