"""The plan of a rollout analysis, before anything rolls: what the stack's settings will decide, how often
wrongly, and how soon (``fraudctl analysis plan``; the rehearsal runs it first).

The figures are a Monte-Carlo of the rule itself (:class:`rollout.decision.AnalysisBatch`, the code every
rollout runs) walking the canary's steps as Flagger does: a PASS advances one step (or promotes after the
last), FAIL rolls back, UNDECIDED and HALT hold. Labelled pairs are drawn per interval (``replayRate`` x
``interval`` of them, a share ``replayFraudShare`` frauds) from a stated planning point:

* the stable sits at the floors (recall = ``minRecall``, precision at the replay's fraud share =
  ``minPrecision``), the least favourable place a candidate may be (a recall floor below 0.5 plans at 0.5,
  where a paired difference is noisiest; a precision floor too low to leave room for the drop plans at
  the lowest precision that does);
* healthy: the candidate is exactly as good (every check at its H0); recall drop / precision drop: the
  candidate is worse by ``minDetectableDrop`` in that metric (at H1);
* the two models' flags are independent given the label. Real models agree on most transactions, which
  makes paired differences less noisy: the plan is conservative, and ``fraudctl analysis simulate``
  measures the real models.

The seeded Monte-Carlo makes the plan a pure function of its inputs, so :func:`plan` keeps its recent answers
(the settings are frozen, the Plan immutable): a rehearsal plans before anything starts, and every rehearsal
of the same stack at the same interval would otherwise rerun the same seconds of Monte-Carlo. A configuration
whose planned error rates (truncation at the horizon included) exceed the stated ones cannot decide within its
steps: the plan names the keys and the smallest replay rate that would do (:meth:`Plan.problems`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rollout.decision import CELLS, FAIL_CODE, HALT_CODE, PASS_CODE, AnalysisBatch, Design
from rollout.settings import AnalysisSettings

PLAN_RUNS = 2000
PLAN_SEED = 20240201
# Outcome codes of a simulated rollout.
UNDECIDED_OUTCOME, PROMOTED, ROLLED_BACK, HALTED = range(4)
OUTCOMES = ("undecided", "promoted", "rolled_back", "halted")

# An interval's evidence for every run: cells (runs, 8), stable_missing, candidate_missing, sent (runs,).
IntervalDraw = Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]


class PlanError(ValueError):
    """The configuration cannot decide within its steps; ``problems`` name the keys."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("; ".join(problems))


def cell_probabilities(
    fraud_share: float, frauds: tuple[float, float, float, float], legit: tuple[float, float, float, float]
) -> np.ndarray:
    """The 8 cell probabilities from per-class 2x2 tables [s0c0, s0c1, s1c0, s1c1] (each summing to 1)."""
    table = np.concatenate([(1 - fraud_share) * np.asarray(legit, float), fraud_share * np.asarray(frauds, float)])
    probabilities: np.ndarray = table / table.sum()
    return probabilities


def independent_table(stable_rate: float, candidate_rate: float) -> tuple[float, float, float, float]:
    """A class's 2x2 table when the two models flag independently at these rates."""
    s, c = stable_rate, candidate_rate
    return ((1 - s) * (1 - c), (1 - s) * c, s * (1 - c), s * c)


def fpr_for_precision(precision: float, recall: float, fraud_share: float) -> float:
    """The false-positive rate at which a model of this recall has this precision at this fraud share."""
    precision = min(max(precision, 1e-6), 1 - 1e-9)
    return fraud_share * recall * (1 / precision - 1) / (1 - fraud_share)


def multinomial_draw(
    probabilities: np.ndarray | Callable[[int], np.ndarray], pairs: int, runs: int
) -> IntervalDraw:
    """Each interval: ``pairs`` labelled pairs per run, multinomial over the 8 cells (both models answer), with
    the same ``probabilities`` at every look or ``probabilities(look)``."""

    def draw(look: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        at_look = probabilities(look) if callable(probabilities) else probabilities
        cells = rng.multinomial(pairs, at_look, size=runs)
        zeros = np.zeros(runs)
        return cells, zeros, zeros, np.full(runs, float(pairs))

    return draw


@dataclass(frozen=True)
class Walk:
    """Simulated rollouts: outcome code per run, the look it ended at, and the look each step was left."""

    outcome: np.ndarray
    ended_at: np.ndarray  # look of promotion / rollback; max_looks for undecided / halted
    left_step_at: np.ndarray  # (runs, steps): look at which the run left step i (0: never)
    frauds: np.ndarray  # (runs, looks): labelled frauds per interval
    forced: np.ndarray  # (runs,): some check was decided at the horizon rather than by a boundary

    def rate(self, outcome: int) -> float:
        return float(np.mean(self.outcome == outcome))


def walk(
    design: Design,
    steps: int,
    draw: IntervalDraw,
    runs: int,
    rng: np.random.Generator,
    *,
    primary_healthy: Callable[[int], bool] = lambda look: True,
    max_looks: int | None = None,
) -> Walk:
    """Walk ``runs`` canary rollouts through ``steps`` weights with the analysis deciding each interval."""
    max_looks = max_looks or design.max_looks
    batch = AnalysisBatch(design, runs)
    position = np.zeros(runs, dtype=int)
    outcome = np.full(runs, UNDECIDED_OUTCOME)
    ended_at = np.full(runs, max_looks)
    left_step_at = np.zeros((runs, steps), dtype=int)
    frauds = np.zeros((runs, max_looks))
    for look in range(1, max_looks + 1):
        cells, stable_missing, candidate_missing, sent = draw(look, rng)
        frauds[:, look - 1] = cells[:, 4:].sum(axis=1)
        verdict = batch.look(
            cells, stable_missing, candidate_missing, sent, primary_healthy=primary_healthy(look), system_ok=True
        )
        running = outcome == UNDECIDED_OUTCOME
        running_or_halted = running | (outcome == HALTED)
        failed = running_or_halted & (verdict == FAIL_CODE)
        outcome[failed], ended_at[failed] = ROLLED_BACK, look
        advancing = running_or_halted & (verdict == PASS_CODE)
        left_step_at[advancing, position[advancing]] = look
        position[advancing] += 1
        promoted = advancing & (position >= steps)
        outcome[promoted], ended_at[promoted] = PROMOTED, look
        held = running_or_halted & ~failed & ~promoted
        outcome[held & (verdict == HALT_CODE)] = HALTED
        outcome[held & (verdict != HALT_CODE)] = UNDECIDED_OUTCOME
        if not np.any((outcome == UNDECIDED_OUTCOME) | (outcome == HALTED)):
            frauds = frauds[:, :look]
            break
    return Walk(outcome, ended_at, left_step_at, frauds, np.asarray(batch.forced.any(axis=1)))


@dataclass(frozen=True)
class StepPlan:
    weight: int
    expected_interval_left: float  # healthy: mean look at which the step is passed
    expected_seconds_left: float
    expected_labelled_frauds: float  # healthy: labelled frauds seen by then
    promote_healthy: float  # P(a healthy candidate gets past this step)
    catch_recall_drop: float  # P(rolled back by the end of this step), recall worse by the drop
    catch_precision_drop: float

    def to_json(self) -> dict[str, Any]:
        return {key: _number(value) for key, value in vars(self).items()}


@dataclass(frozen=True)
class Plan:
    settings: AnalysisSettings
    design: Design
    rps: float
    interval_seconds: float
    pairs_per_interval: int
    steps: tuple[StepPlan, ...]
    false_rollback: float  # P(roll back | healthy), truncation included
    miss_recall: float  # P(promote | recall worse by the drop)
    miss_precision: float
    forced_share: float  # healthy runs where some check was decided at the horizon
    seconds_to_promotion: float  # healthy: mean
    seconds_to_rollback: float  # the drops: mean of the two
    runs: int
    required_rps: float | None = None  # the smallest replay rate that meets the stated rates (when searched)
    assumptions: dict[str, float] = field(default_factory=dict)

    @property
    def expected_frauds_per_interval(self) -> float:
        return self.pairs_per_interval * self.settings.replay_fraud_share

    @property
    def meets_targets(self) -> bool:
        return planning_point(self.settings).problem is None and (
            self.false_rollback <= self.settings.false_rollback_rate
            and max(self.miss_recall, self.miss_precision) <= self.settings.miss_rate
        )

    def problems(self) -> list[str]:
        """Why this configuration cannot decide within its steps, naming the keys (empty when it can)."""
        point = planning_point(self.settings)
        if point.problem:
            return [point.problem]
        if self.meets_targets:
            return []
        s = self.settings
        need = f"; it needs a replay of at least {self.required_rps:.3g}/s" if self.required_rps else ""
        return [
            f"analysis.replayRate ({self.rps:g}/s) x analysis.interval ({self.interval_seconds:g} s) = "
            f"{self.pairs_per_interval} labelled pairs per interval ({self.expected_frauds_per_interval:.1f} frauds at "
            f"analysis.replayFraudShare {s.replay_fraud_share:g}) cannot decide within analysis.horizon "
            f"({s.horizon} intervals) at the stated error rates: planned false rollback {self.false_rollback:.3f} "
            f"(analysis.falseRollbackRate {s.false_rollback_rate:g}), planned miss "
            f"{max(self.miss_recall, self.miss_precision):.3f} (analysis.missRate {s.miss_rate:g}) for a drop of "
            f"analysis.minDetectableDrop {s.min_detectable_drop:g}{need}; raise the replay rate, the interval or "
            "the horizon, or state a larger drop or looser rates"
        ]

    def check(self) -> Plan:
        """This plan, or :class:`PlanError` naming the keys when it cannot decide within its steps."""
        problems = self.problems()
        if problems:
            raise PlanError(problems)
        return self

    def to_json(self) -> dict[str, Any]:
        return {
            "replay_rate_per_second": self.rps,
            "interval_seconds": self.interval_seconds,
            "pairs_per_interval": self.pairs_per_interval,
            "expected_labelled_frauds_per_interval": round(self.expected_frauds_per_interval, 2),
            "design": self.design.to_json(),
            "steps": [step.to_json() for step in self.steps],
            "promote_healthy": round(1 - self.false_rollback, 4),
            "false_rollback": round(self.false_rollback, 4),
            "catch_recall_drop": round(1 - self.miss_recall, 4),
            "catch_precision_drop": round(1 - self.miss_precision, 4),
            "forced_at_horizon_share": round(self.forced_share, 4),
            "expected_seconds_to_promotion": _number(self.seconds_to_promotion, 1),
            "expected_seconds_to_rollback": _number(self.seconds_to_rollback, 1),
            "meets_targets": self.meets_targets,
            "required_replay_rate_per_second": None if self.required_rps is None else round(self.required_rps, 3),
            "assumptions": dict(self.assumptions),  # a copy: a memoized plan is shared
            "monte_carlo_runs": self.runs,
            "problems": self.problems(),
        }


def _number(value: Any, digits: int = 4) -> Any:
    """JSON-safe: floats rounded, NaN (nothing to average) as null."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, digits)
    return value


@dataclass(frozen=True)
class PlanningPoint:
    """Where the plan puts the stable, and the worse candidates' rates (see the module docstring)."""

    recall: float
    precision: float  # at the replay's fraud share
    false_positive_rate: float
    worse_recall: float
    worse_false_positive_rate: float
    problem: str | None = None  # the configuration leaves no room for a drop of minDetectableDrop


def planning_point(settings: AnalysisSettings) -> PlanningPoint:
    """The stable at the floors; at recall 0.5 (the noisiest paired difference) when the recall floor is lower,
    and at the lowest precision a drop of ``minDetectableDrop`` can leave when the precision floor is lower."""
    share, drop = settings.replay_fraud_share, settings.min_detectable_drop
    recall = max(settings.min_recall, 0.5)
    flag_all = share * recall / (share * recall + (1 - share))  # precision when every legitimate one is flagged
    precision = min(max(settings.min_precision, flag_all + drop), 1.0)
    problem = None
    if flag_all + drop > 1.0:
        problem = (
            f"analysis.minDetectableDrop ({drop:g}): at analysis.replayFraudShare {share:g} a model with recall "
            f"{recall:g} keeps a precision of {flag_all:.3f} even flagging every legitimate transaction, so no "
            "candidate can be that much less precise; lower replayFraudShare or minDetectableDrop"
        )
    return PlanningPoint(
        recall=recall,
        precision=precision,
        false_positive_rate=fpr_for_precision(precision, recall, share),
        worse_recall=recall - drop,
        worse_false_positive_rate=min(fpr_for_precision(precision - drop, recall, share), 1.0),
        problem=problem,
    )


def planning_points(settings: AnalysisSettings) -> dict[str, np.ndarray]:
    """Cell probabilities of the plan's three candidates."""
    point, share = planning_point(settings), settings.replay_fraud_share
    recall, fpr = point.recall, point.false_positive_rate
    legit = independent_table(fpr, fpr)
    return {
        "healthy": cell_probabilities(share, independent_table(recall, recall), legit),
        "recall_drop": cell_probabilities(share, independent_table(recall, point.worse_recall), legit),
        "precision_drop": cell_probabilities(
            share, independent_table(recall, recall), independent_table(fpr, point.worse_false_positive_rate)
        ),
    }


def _evaluate(settings: AnalysisSettings, design: Design, pairs: int, runs: int, seed: int) -> dict[str, Walk]:
    steps = len(settings.step_weights)
    walks = {}
    for offset, (name, probabilities) in enumerate(planning_points(settings).items()):
        rng = np.random.default_rng([seed, offset])  # common random numbers across replay rates
        walks[name] = walk(design, steps, multinomial_draw(probabilities, pairs, runs), runs, rng)
    return walks


def pairs_per_interval(rps: float, interval_seconds: float) -> int:
    return max(1, round(rps * interval_seconds))


def _meets(settings: AnalysisSettings, walks: dict[str, Walk]) -> bool:
    return (
        walks["healthy"].rate(ROLLED_BACK) <= settings.false_rollback_rate
        and max(1 - walks[name].rate(ROLLED_BACK) for name in ("recall_drop", "precision_drop")) <= settings.miss_rate
    )


def required_rate(
    settings: AnalysisSettings,
    *,
    interval_seconds: float | None = None,
    runs: int = PLAN_RUNS,
    seed: int = PLAN_SEED,
    ceiling: float = 1e5,
) -> float | None:
    """The smallest replay rate (pairs/s, to 5 %) whose plan meets the stated error rates; None above ``ceiling``."""
    design = Design.from_settings(settings)
    interval = interval_seconds or settings.interval_seconds

    def meets(rps: float) -> bool:
        return _meets(settings, _evaluate(settings, design, pairs_per_interval(rps, interval), runs, seed))

    if not meets(ceiling):
        return None
    # Below this, the horizon cannot even hold the minimum evidence.
    low = settings.min_labelled_frauds / (settings.replay_fraud_share * interval * settings.horizon)
    high = ceiling
    while high / low > 1.05:
        middle = math.sqrt(low * high)
        if meets(middle):
            high = middle
        else:
            low = middle
    return high


@functools.lru_cache(maxsize=64)
def plan(
    settings: AnalysisSettings,
    rps: float | None = None,
    *,
    interval_seconds: float | None = None,
    runs: int = PLAN_RUNS,
    seed: int = PLAN_SEED,
    search: bool = True,
) -> Plan:
    """The plan at ``rps`` labelled pairs per second (default ``analysis.replayRate``) and intervals of
    ``interval_seconds`` (default ``analysis.interval``; a rehearsal compresses time). ``search``: when the
    targets are not met, also find the smallest replay rate that meets them. Memoized: the same inputs
    return the same (immutable) Plan; ``plan.__wrapped__`` computes afresh."""
    rps = settings.replay_rate if rps is None else rps
    interval = settings.interval_seconds if interval_seconds is None else interval_seconds
    if not (math.isfinite(rps) and rps > 0):
        raise ValueError(f"rps: must be a positive number of labelled pairs per second, got {rps!r}")
    if not (math.isfinite(interval) and interval > 0):
        raise ValueError(f"interval_seconds: must be a positive number, got {interval!r}")
    design = Design.from_settings(settings)
    pairs = pairs_per_interval(rps, interval)
    walks = _evaluate(settings, design, pairs, runs, seed)
    healthy = walks["healthy"]
    steps = []
    for index, weight in enumerate(settings.step_weights):
        left = healthy.left_step_at[:, index]
        passed = left > 0
        seen = np.cumsum(healthy.frauds, axis=1)
        frauds_by_then = [seen[run, look - 1] for run, look in enumerate(left) if look > 0]
        steps.append(
            StepPlan(
                weight=weight,
                expected_interval_left=float(left[passed].mean()) if passed.any() else math.nan,
                expected_seconds_left=float(left[passed].mean()) * interval if passed.any() else math.nan,
                expected_labelled_frauds=float(np.mean(frauds_by_then)) if frauds_by_then else 0.0,
                promote_healthy=float(passed.mean()),
                catch_recall_drop=_caught_by(walks["recall_drop"], index),
                catch_precision_drop=_caught_by(walks["precision_drop"], index),
            )
        )
    promoted = healthy.outcome == PROMOTED
    drops = [walks[name] for name in ("recall_drop", "precision_drop")]
    rollback_seconds = [
        float(w.ended_at[w.outcome == ROLLED_BACK].mean()) * interval for w in drops if w.rate(ROLLED_BACK)
    ]
    result = Plan(
        settings=settings,
        design=design,
        rps=rps,
        interval_seconds=interval,
        pairs_per_interval=pairs,
        steps=tuple(steps),
        false_rollback=healthy.rate(ROLLED_BACK),
        miss_recall=1 - walks["recall_drop"].rate(ROLLED_BACK),
        miss_precision=1 - walks["precision_drop"].rate(ROLLED_BACK),
        forced_share=float(healthy.forced.mean()),
        seconds_to_promotion=float(healthy.ended_at[promoted].mean()) * interval if promoted.any() else math.nan,
        seconds_to_rollback=float(np.mean(rollback_seconds)) if rollback_seconds else math.nan,
        runs=runs,
        assumptions=_assumptions(settings),
    )
    if search and not result.meets_targets and planning_point(settings).problem is None:
        from dataclasses import replace

        result = replace(result, required_rps=required_rate(settings, interval_seconds=interval, runs=runs, seed=seed))
    return result


def _caught_by(result: Walk, step: int) -> float:
    """P(rolled back while at or before ``step``): before leaving it (or never leaving it)."""
    left = result.left_step_at[:, step]
    rolled_back = result.outcome == ROLLED_BACK
    return float(np.mean(rolled_back & ((left == 0) | (result.ended_at <= left))))


def _assumptions(settings: AnalysisSettings) -> dict[str, float]:
    point = planning_point(settings)
    return {
        "stable_recall": point.recall,
        "stable_false_positive_rate": round(point.false_positive_rate, 6),
        "stable_precision_at_replay_share": round(point.precision, 6),
        "flags_independent_given_label": 1.0,
    }


__all__ = ["CELLS", "Plan", "PlanError", "StepPlan", "Walk", "plan", "required_rate", "walk"]
