"""Rollout decisions: the candidate against the stable on the same labelled transactions, decided sequentially.

Every labelled replayed transaction is scored by both models (a :class:`LabelledPair`). Four checks judge the
candidate, each a sequential test of "no worse" (H0) against "worse by ``analysis.minDetectableDrop``" (H1):

* ``recall-vs-stable``: recall(candidate) - recall(stable) on the same frauds (paired).
* ``precision-vs-stable``: precision(candidate) - precision(stable) on the same transactions (paired), at the
  replay's fraud share ``analysis.replayFraudShare``.
* ``recall-floor``: recall(candidate) - ``analysis.minRecall``.
* ``precision-floor``: precision(candidate) at the replay's fraud share - ``analysis.minPrecision``.

Precision is computed from the two per-class rates, recall r = P(flag | fraud) and false-positive rate
f = P(flag | legitimate), at a stated fraud share pi: P = pi r / (pi r + (1 - pi) f). Neither rate depends
on how many frauds the replay holds, so the estimate does not move with the traffic mix; and since P is
increasing in r / f at every pi, whether the candidate's precision is below the stable's is the same
question at every fraud share (only the size of a difference is stated at pi).

Each check's statistic is the log-likelihood ratio of H1 to H0 for the normal approximation of its
estimate: L = -(delta * d + delta^2 / 2) / v, with d the estimated difference and v its variance (delta
method, on the 2x2 tables of both models' flags per class, each cell + 0.5 as Agresti & Min (2005) do for
matched proportions, so v never collapses to 0 on small or unanimous samples). Boundaries, from the
stack's error rates, split evenly over the four checks (alpha' = falseRollbackRate / 4, beta =
missRate): a check passes at L <= B = log(beta / (1 - alpha')) and fails at L >= A (Wald's SPRT
boundaries; A is raised above log(1 / alpha') for the watch below, see :class:`Design`).

* A check needs ``analysis.minLabelledFrauds`` labelled frauds before it decides anything.
* A check that passed keeps watching: its evidence restarts from L = B at every pass (a CUSUM with its
  floor at the pass boundary), so evidence for the candidate piles up to at most |B| and a fault that
  appears mid-rollout meets a fail boundary A - B away, not one behind all the good evidence so far.
* At the horizon (``analysis.horizon`` intervals with evidence) a check that has not passed is forced:
  pass when L <= 0, fail otherwise (fail also when it still lacks the minimum evidence: no data never
  passes).
* The primary is part of every decision: when the stable does not answer (more than
  ``100 - minSuccessRate`` % of the interval's pairs) or the caller says it is unhealthy, the verdict is
  HALT: no promotion, no weight change, no failure counted.

:class:`AnalysisBatch` runs the rule on many rollouts at once (numpy arrays); :class:`SequentialAnalysis` is
one rollout (a batch of one) with readable reasons. The Monte-Carlo of ``fraudctl analysis plan|simulate``
runs the same batch code, so the measured error rates are those of this rule.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np

from rollout.settings import AnalysisSettings

if TYPE_CHECKING:
    from rollout.plan import Plan

CHECKS = ("recall-vs-stable", "precision-vs-stable", "recall-floor", "precision-floor")
CHECK_DESCRIPTIONS = {
    "recall-vs-stable": "candidate recall minus the stable's, on the same labelled frauds",
    "precision-vs-stable": "candidate precision minus the stable's, on the same labelled transactions",
    "recall-floor": "candidate recall minus analysis.minRecall",
    "precision-floor": "candidate precision minus analysis.minPrecision",
}
# The 8 cells of the evidence: class (legitimate, fraud) x stable flagged x candidate flagged.
CELLS = 8
LEGIT, FRAUD = slice(0, 4), slice(4, 8)
AGRESTI_MIN = 0.5  # added to each cell of a 2x2 table for the variance only


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    UNDECIDED = "undecided"
    HALT = "halt"


_VERDICTS = (Verdict.UNDECIDED, Verdict.PASS, Verdict.FAIL, Verdict.HALT)  # batch codes 0..3
UNDECIDED_CODE, PASS_CODE, FAIL_CODE, HALT_CODE = range(4)


@dataclass(frozen=True)
class LabelledPair:
    """One labelled replayed transaction, scored by both models."""

    is_fraud: bool
    stable_flagged: bool | None  # None: the stable did not answer (error / timeout)
    candidate_flagged: bool | None  # None: the candidate did not answer


def cell_index(is_fraud: bool, stable_flagged: bool, candidate_flagged: bool) -> int:
    return 4 * int(is_fraud) + 2 * int(stable_flagged) + int(candidate_flagged)


@dataclass(frozen=True)
class Evidence:
    """Counts of labelled pairs: what the decision depends on (pairs reduce to these, exactly)."""

    cells: tuple[int, ...] = (0,) * CELLS  # both answered: see cell_index
    stable_missing: int = 0  # the stable did not answer
    candidate_missing: int = 0  # the candidate did not answer
    sent: int = 0  # every pair, answered or not

    def __post_init__(self) -> None:
        if len(self.cells) != CELLS or min(self.cells) < 0 or min(self.stable_missing, self.candidate_missing) < 0:
            raise ValueError(f"evidence: need {CELLS} non-negative cell counts, got {self.cells!r}")
        if self.sent < max(sum(self.cells), self.stable_missing, self.candidate_missing):
            raise ValueError("evidence: sent must count every pair")

    @classmethod
    def from_pairs(cls, pairs: Iterable[LabelledPair]) -> Evidence:
        cells = [0] * CELLS
        stable_missing = candidate_missing = sent = 0
        for pair in pairs:
            sent += 1
            stable_missing += pair.stable_flagged is None
            candidate_missing += pair.candidate_flagged is None
            if pair.stable_flagged is not None and pair.candidate_flagged is not None:
                cells[cell_index(pair.is_fraud, pair.stable_flagged, pair.candidate_flagged)] += 1
        return cls(tuple(cells), stable_missing, candidate_missing, sent)

    def __add__(self, other: Evidence) -> Evidence:
        return Evidence(
            tuple(a + b for a, b in zip(self.cells, other.cells, strict=True)),
            self.stable_missing + other.stable_missing,
            self.candidate_missing + other.candidate_missing,
            self.sent + other.sent,
        )

    @property
    def frauds(self) -> int:
        return sum(self.cells[FRAUD])

    @property
    def answered(self) -> int:
        return sum(self.cells)


@dataclass(frozen=True)
class Design:
    """The decision rule's constants, derived from the stack's analysis settings (nothing tuned).

    ``fail_boundary`` A: a check's false-fail probability is at most e^-A for its first test (Ville's
    inequality: the likelihood ratio is a martingale under H0) plus e^-(A - B) for each restart from B
    while it watches, of which there are fewer than ``max_looks``; A = log((1 + max_looks e^B) / alpha')
    keeps the sum at alpha'. ``pass_boundary`` B = log(beta / (1 - alpha')): Wald's, and by Ville's
    inequality under H1 a candidate worse by delta passes a check with probability at most e^B ~ beta.
    """

    drop: float
    false_rollback_rate: float
    miss_rate: float
    checks: int
    horizon: int
    max_looks: int
    min_frauds: int
    fraud_share: float
    min_recall: float
    min_precision: float
    max_missing_share: float

    @classmethod
    def from_settings(cls, settings: AnalysisSettings) -> Design:
        return cls(
            drop=settings.min_detectable_drop,
            false_rollback_rate=settings.false_rollback_rate,
            miss_rate=settings.miss_rate,
            checks=len(CHECKS),
            horizon=settings.horizon,
            max_looks=settings.horizon + len(settings.step_weights),
            min_frauds=settings.min_labelled_frauds,
            fraud_share=settings.replay_fraud_share,
            min_recall=settings.min_recall,
            min_precision=settings.min_precision,
            max_missing_share=1.0 - settings.min_success_rate / 100.0,
        )

    @property
    def alpha_per_check(self) -> float:
        return self.false_rollback_rate / self.checks

    @property
    def pass_boundary(self) -> float:
        return math.log(self.miss_rate / (1.0 - self.alpha_per_check))

    @property
    def fail_boundary(self) -> float:
        return math.log((1.0 + self.max_looks * math.exp(self.pass_boundary)) / self.alpha_per_check)

    def to_json(self) -> dict[str, Any]:
        return {
            "min_detectable_drop": self.drop,
            "false_rollback_rate": self.false_rollback_rate,
            "miss_rate": self.miss_rate,
            "alpha_per_check": self.alpha_per_check,
            "fail_boundary": round(self.fail_boundary, 4),
            "pass_boundary": round(self.pass_boundary, 4),
            "horizon_intervals": self.horizon,
            "max_looks": self.max_looks,
            "min_labelled_frauds": self.min_frauds,
            "replay_fraud_share": self.fraud_share,
            "min_recall": self.min_recall,
            "min_precision": self.min_precision,
        }


# ---------------------------------------------------------------------------------------------------
# The statistics, on arrays of cell counts (any leading shape): one code path for one rollout and for
# the Monte-Carlo's thousands.


def _rates(table: np.ndarray, pseudo: float) -> tuple[np.ndarray, ...]:
    """(n, stable rate, candidate rate, both rate) of a 2x2 table [s0c0, s0c1, s1c0, s1c1] (+ pseudo per cell)."""
    cells = table + pseudo
    n = cells.sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        stable = (cells[..., 2] + cells[..., 3]) / n
        candidate = (cells[..., 1] + cells[..., 3]) / n
        both = cells[..., 3] / n
    return n, stable, candidate, both


def _moments(table: np.ndarray) -> tuple[np.ndarray, ...]:
    """Variances and covariance of the two rate estimates, from the Agresti-Min smoothed table."""
    n, s, c, both = _rates(table, AGRESTI_MIN)
    return s * (1 - s) / n, c * (1 - c) / n, (both - s * c) / n


def _precision(recall: np.ndarray, fpr: np.ndarray, share: float) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return share * recall / (share * recall + (1 - share) * fpr)


def _precision_gradient(recall: np.ndarray, fpr: np.ndarray, share: float) -> tuple[np.ndarray, np.ndarray]:
    denominator = (share * recall + (1 - share) * fpr) ** 2
    scale = share * (1 - share) / denominator
    return scale * fpr, -scale * recall


def statistics(cells: np.ndarray, design: Design) -> tuple[np.ndarray, ...]:
    """Per check (last axis, in :data:`CHECKS` order): estimated difference, its variance, candidate value,
    reference value (the stable's or the floor). ``cells``: (..., 8) counts."""
    cells = np.asarray(cells, dtype=float)
    legit, frauds = cells[..., LEGIT], cells[..., FRAUD]
    share = design.fraud_share
    # Point estimates: raw rates; smoothed only where a raw one is undefined (no frauds / nothing flagged).
    _, r_s, r_c, _ = _rates(frauds, 0.0)
    _, f_s, f_c, _ = _rates(legit, 0.0)
    _, r_s_sm, r_c_sm, _ = _rates(frauds, AGRESTI_MIN)
    _, f_s_sm, f_c_sm, _ = _rates(legit, AGRESTI_MIN)
    r_s, r_c = np.where(np.isfinite(r_s), r_s, r_s_sm), np.where(np.isfinite(r_c), r_c, r_c_sm)
    f_s, f_c = np.where(np.isfinite(f_s), f_s, f_s_sm), np.where(np.isfinite(f_c), f_c, f_c_sm)
    p_s, p_c = _precision(r_s, f_s, share), _precision(r_c, f_c, share)
    p_s = np.where(np.isfinite(p_s), p_s, _precision(r_s_sm, f_s_sm, share))
    p_c = np.where(np.isfinite(p_c), p_c, _precision(r_c_sm, f_c_sm, share))
    # Variances: delta method on the smoothed tables (frauds and legitimate transactions are independent).
    var_rs, var_rc, cov_r = _moments(frauds)
    var_fs, var_fc, cov_f = _moments(legit)
    a_s, b_s = _precision_gradient(r_s_sm, f_s_sm, share)
    a_c, b_c = _precision_gradient(r_c_sm, f_c_sm, share)
    var_pc = a_c**2 * var_rc + b_c**2 * var_fc
    var_pair_p = var_pc + a_s**2 * var_rs + b_s**2 * var_fs - 2 * (a_c * a_s * cov_r + b_c * b_s * cov_f)
    floor_r = np.full_like(r_c, design.min_recall)
    floor_p = np.full_like(p_c, design.min_precision)
    difference = np.stack([r_c - r_s, p_c - p_s, r_c - floor_r, p_c - floor_p], axis=-1)
    variance = np.stack([var_rc + var_rs - 2 * cov_r, var_pair_p, var_rc, var_pc], axis=-1)
    candidate = np.stack([r_c, p_c, r_c, p_c], axis=-1)
    reference = np.stack([r_s, p_s, floor_r, floor_p], axis=-1)
    return difference, variance, candidate, reference


def log_likelihood_ratio(difference: np.ndarray, variance: np.ndarray, drop: float) -> np.ndarray:
    """log [N(d; -drop, v) / N(d; 0, v)]: evidence for "worse by drop" over "no worse"."""
    ratio: np.ndarray = -(drop * difference + drop * drop / 2.0) / variance
    return ratio


# ---------------------------------------------------------------------------------------------------
# The rule, for a batch of rollouts


@dataclass
class AnalysisBatch:
    """``size`` independent rollouts of one design, advanced one interval at a time (:meth:`look`)."""

    design: Design
    size: int = 1
    segment: np.ndarray = field(init=False)  # (size, checks, 8): each check's evidence since its last pass
    offset: np.ndarray = field(init=False)  # (size, checks): 0, or B after a pass
    passed: np.ndarray = field(init=False)
    failed: np.ndarray = field(init=False)
    forced: np.ndarray = field(init=False)  # decided at the horizon rather than by a boundary
    statistic: np.ndarray = field(init=False)
    evidence_looks: np.ndarray = field(init=False)
    looks: int = field(init=False, default=0)
    last: dict[str, np.ndarray] = field(init=False, default_factory=dict)

    def __post_init__(self) -> None:
        checks = self.design.checks
        self.segment = np.zeros((self.size, checks, CELLS))
        self.offset = np.zeros((self.size, checks))
        self.passed = np.zeros((self.size, checks), dtype=bool)
        self.failed = np.zeros((self.size, checks), dtype=bool)
        self.forced = np.zeros((self.size, checks), dtype=bool)
        self.statistic = np.zeros((self.size, checks))
        self.evidence_looks = np.zeros(self.size, dtype=int)

    def look(
        self,
        cells: np.ndarray,
        stable_missing: np.ndarray,
        candidate_missing: np.ndarray,
        sent: np.ndarray,
        *,
        primary_healthy: np.ndarray | bool = True,
        system_ok: np.ndarray | bool = True,
    ) -> np.ndarray:
        """Close one interval with its evidence ((size, 8) cells and per-rollout counts); verdict codes."""
        d = self.design
        cells = np.asarray(cells, dtype=float).reshape(self.size, CELLS)
        sent = np.asarray(sent, dtype=float).reshape(self.size)
        with np.errstate(invalid="ignore", divide="ignore"):
            stable_share = np.where(sent > 0, np.asarray(stable_missing).reshape(self.size) / sent, 0.0)
            candidate_share = np.where(sent > 0, np.asarray(candidate_missing).reshape(self.size) / sent, 0.0)
        primary_ok = np.asarray(primary_healthy, dtype=bool) & (stable_share <= d.max_missing_share)
        candidate_ok = candidate_share <= d.max_missing_share
        self.looks += 1
        answered = cells.sum(axis=1) > 0
        evidence_look = primary_ok & answered
        self.evidence_looks += evidence_look
        self.segment += cells[:, None, :]
        difference, variance, candidate, reference = statistics(self.segment, d)
        idx = np.arange(d.checks)
        difference, variance = difference[:, idx, idx], variance[:, idx, idx]
        candidate, reference = candidate[:, idx, idx], reference[:, idx, idx]
        frauds = self.segment[:, :, FRAUD].sum(axis=2)
        enough = frauds >= d.min_frauds
        with np.errstate(invalid="ignore", divide="ignore"):
            statistic = self.offset + log_likelihood_ratio(difference, variance, d.drop)
        statistic = np.where(enough, statistic, self.offset)
        open_ = ~self.failed
        fail_now = open_ & enough & (statistic >= d.fail_boundary)
        pass_now = open_ & enough & (statistic <= d.pass_boundary)
        # The horizon: a check that never passed is forced now (no data never passes).
        at_horizon = (evidence_look & (self.evidence_looks == d.horizon))[:, None]
        undecided = open_ & ~self.passed & ~fail_now & ~pass_now & at_horizon
        forced_fail = undecided & (~enough | (statistic > 0))
        forced_pass = undecided & ~forced_fail
        self.forced |= forced_fail | forced_pass
        self.failed |= fail_now | forced_fail
        newly_passed = pass_now | forced_pass
        self.passed |= newly_passed
        self.statistic = statistic
        self.last = {
            "difference": difference,
            "variance": variance,
            "candidate": candidate,
            "reference": reference,
            "frauds": frauds,
            "pairs": self.segment.sum(axis=2),
            "primary_ok": primary_ok,
            "candidate_ok": candidate_ok,
            "stable_share": stable_share,
            "candidate_share": candidate_share,
            "answered": answered,
        }
        # Restart each passing check's evidence from B: the watch never lags more than |B| behind.
        reset = newly_passed & ~self.failed
        self.segment[reset] = 0.0
        self.offset[reset] = d.pass_boundary
        any_failed = self.failed.any(axis=1)
        all_passed = self.passed.all(axis=1)
        verdict = np.full(self.size, UNDECIDED_CODE)
        # A pass needs this interval's evidence too: the watch ran (no data never advances a rollout).
        verdict[all_passed & np.asarray(system_ok, dtype=bool) & candidate_ok & answered] = PASS_CODE
        verdict[~primary_ok] = HALT_CODE
        verdict[any_failed] = FAIL_CODE
        return verdict

    @property
    def horizon_reached(self) -> np.ndarray:
        return self.evidence_looks >= self.design.horizon


# ---------------------------------------------------------------------------------------------------
# One rollout


@dataclass(frozen=True)
class CheckState:
    """One check after the latest look. ``statistic`` is the log-likelihood ratio (fail at ``fail_at``,
    pass at ``pass_at``); ``difference`` = ``candidate`` - ``reference`` with ``standard_error``; ``frauds``
    and ``pairs``: the evidence since the check last passed (all of it before its first pass)."""

    name: str
    verdict: Verdict
    statistic: float
    fail_at: float
    pass_at: float
    difference: float | None
    standard_error: float | None
    candidate: float | None
    reference: float | None
    frauds: int
    pairs: int
    forced: bool = False
    description: str = ""

    def describe(self) -> str:
        how = " at the horizon" if self.forced else ""
        if self.difference is None:
            if self.verdict is Verdict.FAIL:
                return f"{self.name} fail{how}: {self.frauds} labelled frauds, too few to decide (no data never passes)"
            if self.verdict is Verdict.PASS:
                return f"{self.name} pass (watching: {self.frauds} labelled frauds since it passed)"
            return f"{self.name} undecided: not enough evidence yet ({self.frauds} labelled frauds)"
        versus = "stable" if self.name.endswith("vs-stable") else "floor"
        return (
            f"{self.name} {self.verdict.value}{how}: candidate {self.candidate:.3f} vs {versus} {self.reference:.3f} "
            f"({self.difference:+.3f} ± {self.standard_error:.3f}; LLR {self.statistic:.2f}, fail ≥ "
            f"{self.fail_at:.2f}, pass ≤ {self.pass_at:.2f}; {self.frauds} frauds, {self.pairs} pairs)"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "verdict": self.verdict.value,
            "statistic": _rounded(self.statistic),
            "fail_at": _rounded(self.fail_at),
            "pass_at": _rounded(self.pass_at),
            "difference": _rounded(self.difference),
            "standard_error": _rounded(self.standard_error),
            "candidate": _rounded(self.candidate),
            "reference": _rounded(self.reference),
            "frauds": self.frauds,
            "pairs": self.pairs,
            "forced": self.forced,
            "description": self.description,
        }


@dataclass(frozen=True)
class Decision:
    """The analysis after a look. PASS: advance (or promote); FAIL: roll back now; UNDECIDED: hold the
    weight, count no failure; HALT: the primary is unhealthy, hold everything. ``final``: the statistics
    are done (FAIL, or the horizon reached: every check decided); the verdict then is PASS or FAIL unless
    the primary halts it or the system checks hold it."""

    verdict: Verdict
    reason: str
    checks: tuple[CheckState, ...]
    looks: int
    final: bool
    primary_healthy: bool = True

    def to_json(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict.value,
            "reason": self.reason,
            "looks": self.looks,
            "final": self.final,
            "primary_healthy": self.primary_healthy,
            "checks": [c.to_json() for c in self.checks],
        }


class SequentialAnalysis:
    """The analysis of one candidate's rollout: add labelled pairs as they arrive, close each interval."""

    def __init__(self, settings: AnalysisSettings, plan: Plan | None = None) -> None:
        self.settings = settings
        self.design = plan.design if plan is not None else Design.from_settings(settings)
        self._batch = AnalysisBatch(self.design, 1)
        self._pending = Evidence()
        self._decision = Decision(Verdict.UNDECIDED, "no interval closed yet", self._states(), 0, False)

    @property
    def looks(self) -> int:
        return self._batch.looks

    def add(self, pairs: Iterable[LabelledPair]) -> None:
        """Evidence of the current interval, as it arrives."""
        self._pending = self._pending + Evidence.from_pairs(pairs)

    def add_evidence(self, evidence: Evidence) -> None:
        """Counted evidence (what a service that tallies pairs holds); the same as adding the pairs."""
        self._pending = self._pending + evidence

    def close_interval(self, *, primary_healthy: bool, system_ok: bool | None = None) -> Decision:
        """Decide on everything so far. ``primary_healthy``: False when the caller knows the stable is failing
        (e.g. from Prometheus). ``system_ok``: False when the system checks (success rate, latency) failed or
        could not be evaluated, which holds a pass; None when the caller judges them elsewhere."""
        evidence, self._pending = self._pending, Evidence()
        batch = self._batch
        code = batch.look(
            np.array([evidence.cells]),
            np.array([evidence.stable_missing]),
            np.array([evidence.candidate_missing]),
            np.array([evidence.sent]),
            primary_healthy=np.array([primary_healthy]),
            system_ok=np.array([system_ok is not False]),
        )[0]
        verdict = _VERDICTS[code]
        checks = self._states()
        final = bool(batch.failed[0].any() or batch.horizon_reached[0])
        reason = self._reason(verdict, checks, evidence, primary_healthy, system_ok)
        self._decision = Decision(verdict, reason, checks, batch.looks, final, bool(batch.last["primary_ok"][0]))
        return self._decision

    def decision(self) -> Decision:
        """The latest decision, without a new look."""
        return self._decision

    def _states(self) -> tuple[CheckState, ...]:
        batch, d = self._batch, self.design
        last = batch.last
        states = []
        for k, name in enumerate(CHECKS):
            if batch.failed[0, k]:
                verdict = Verdict.FAIL
            elif batch.passed[0, k]:
                verdict = Verdict.PASS
            else:
                verdict = Verdict.UNDECIDED
            have = bool(last) and last["frauds"][0, k] >= d.min_frauds
            states.append(
                CheckState(
                    name=name,
                    verdict=verdict,
                    statistic=float(batch.statistic[0, k]),
                    fail_at=d.fail_boundary,
                    pass_at=d.pass_boundary,
                    difference=float(last["difference"][0, k]) if have else None,
                    standard_error=math.sqrt(float(last["variance"][0, k])) if have else None,
                    candidate=float(last["candidate"][0, k]) if have else None,
                    reference=float(last["reference"][0, k]) if have else None,
                    frauds=int(last["frauds"][0, k]) if last else 0,
                    pairs=int(last["pairs"][0, k]) if last else 0,
                    forced=bool(batch.forced[0, k]),
                    description=CHECK_DESCRIPTIONS[name],
                )
            )
        return tuple(states)

    def _reason(
        self,
        verdict: Verdict,
        checks: tuple[CheckState, ...],
        evidence: Evidence,
        primary_healthy: bool,
        system_ok: bool | None,
    ) -> str:
        last, d = self._batch.last, self.design
        if verdict is Verdict.FAIL:
            failed = [c for c in checks if c.verdict is Verdict.FAIL]
            return "roll back: " + "; ".join(c.describe() for c in failed)
        if verdict is Verdict.HALT:
            if not primary_healthy:
                why = "the caller reports the primary (stable) unhealthy"
            else:
                answered = evidence.sent - evidence.stable_missing
                why = (
                    f"the primary (stable) answered {answered} of {evidence.sent} replayed transactions "
                    f"({last['stable_share'][0]:.1%} unanswered, at most {d.max_missing_share:.1%} allowed)"
                )
            return f"halt: {why}; no promotion, no weight change, no failure counted"
        if verdict is Verdict.PASS:
            return f"pass after {self.looks} interval(s): " + "; ".join(c.describe() for c in checks)
        # Undecided: say what holds it.
        if not last["answered"][0]:
            return (
                f"hold: no labelled pair with both answers arrived in interval {self.looks} "
                f"({evidence.sent} sent); the replay must run every interval"
            )
        if not last["candidate_ok"][0]:
            return (
                f"hold: the candidate did not answer {last['candidate_share'][0]:.1%} of the replay (at most "
                f"{d.max_missing_share:.1%} allowed); the success-rate check counts the failure"
            )
        open_checks = [c for c in checks if c.verdict is Verdict.UNDECIDED]
        if not open_checks and system_ok is False:
            return "hold: every ML check passed but the system checks (success rate, latency) did not"
        return f"hold, not yet decided ({self.looks} of at most {d.horizon} intervals): " + "; ".join(
            c.describe() for c in open_checks
        )


def _rounded(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(value, 6)
