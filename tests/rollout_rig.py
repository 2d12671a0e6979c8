"""A scripted rig for the rollout engine: virtual time, scripted model behaviour, the real decision logic.

The engine (rehearsal/engine.py) and the decision service's logic (ops/decision_service.py, with the real
sequential analysis of rollout/decision.py) run unchanged; only what would be processes is scripted: the
paired replay's answers (drawn from stated recall / false-positive rates), the primary's health reading
and the candidate's system checks.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from ops.decision_service import DecisionService, HealthReading, ReplayParameters
from ops.replay import Holdout, PairedResult, SideCounts, Transaction
from rehearsal.engine import CheckResult, FaultPlan, RolloutEngine, RolloutOutcome
from rollout import analysis
from rollout.decision import LabelledPair
from rollout.settings import AnalysisSettings

HEALTHY = (0.80, 0.02)  # (recall, false-positive rate)
DEGRADED = (0.20, 0.98)  # serving/faults.py "degrade": scores inverted
STABLE_URL, CANDIDATE_URL = "http://stable.test", "http://candidate.test"
STABLE_HASH, CANDIDATE_HASH = "aaaaaaaaaa", "bbbbbbbbbb"


@dataclass
class Script:
    """How the parts behave; ``*_from``: the 1-based interval from which a condition holds (None: never)."""

    stable: tuple[float, float] = HEALTHY
    candidate: tuple[float, float] = HEALTHY
    faulty: tuple[float, float] = DEGRADED  # the candidate's rates once the fault is injected
    fault_errors: bool = False  # the fault makes the candidate answer 5xx (success-rate check fails)
    fault_slow: bool = False  # the fault makes the candidate slow (latency check fails)
    stable_down_from: int | None = None  # the stable stops answering
    prometheus_down_from: int | None = None  # Prometheus stops answering
    primary_unhealthy_from: int | None = None  # Prometheus reports the primary failing
    transactions: int = 600  # per interval
    fraud_share: float = 0.2
    production_rps: float = 10.0
    seed: int = 11


@dataclass
class ScriptedRig:
    script: Script
    interval: float
    settings: AnalysisSettings = field(default_factory=AnalysisSettings)
    clock: float = 1_000.0
    weight: int = 0
    fault_active: bool = False
    weights: list[int] = field(default_factory=list)
    bad: float = 0.0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.script.seed)
        self.started = self.clock

    @property
    def index(self) -> int:
        """The current interval, 1-based."""
        return int((self.clock - self.started) // self.interval) + 1

    def _from(self, start: int | None) -> bool:
        return start is not None and self.index >= start

    # -- Rig protocol --------------------------------------------------------------------------------
    def targets(self) -> tuple[str, str]:
        return STABLE_URL, CANDIDATE_URL

    def pod_hashes(self) -> tuple[str, str]:
        return STABLE_HASH, CANDIDATE_HASH

    def set_weight(self, candidate_weight: int) -> None:
        self.weight = candidate_weight
        self.weights.append(candidate_weight)

    def inject_fault(self) -> None:
        self.fault_active = True

    def wait(self, seconds: float) -> None:
        if self.fault_active:
            self.bad += self.script.production_rps * seconds * self.weight / 100
        self.clock += seconds

    def now(self) -> float:
        return self.clock

    def system_checks(self, window_seconds: float) -> list[CheckResult]:
        values = {"success-rate": 100.0, "latency-p99": 20.0}
        if self.fault_active and self.script.fault_errors:
            values["success-rate"] = 50.0
        if self.fault_active and self.script.fault_slow:
            values["latency-p99"] = 900.0
        prometheus_down = self._from(self.script.prometheus_down_from)
        results = []
        for check in analysis.analysis_checks(self.settings):
            value = None if prometheus_down else values[check.name]
            results.append(
                CheckResult(check.name, value, check.threshold, check.direction, analysis.passes(check, value))
            )
        return results

    def observe(self, window_seconds: float) -> dict[str, dict[str, float | None]]:
        return {}

    def bad_answers(self) -> int:
        return round(self.bad)

    # -- what the decision service's parts see -------------------------------------------------------
    def replay(self, stable: Sequence[str], candidate: Sequence[str], params: ReplayParameters) -> PairedResult:
        """One interval's paired answers, drawn from the scripted rates; also advances the clock a little."""
        s = self.script
        stable_down = self._from(s.stable_down_from) or not stable
        candidate_rates = s.faulty if self.fault_active and not (s.fault_errors or s.fault_slow) else s.candidate
        pairs = []
        for _ in range(min(s.transactions, params.transactions)):
            fraud = self.rng.random() < s.fraud_share
            stable_flag = None if stable_down else self._flag(s.stable, fraud)
            candidate_flag = self._flag(candidate_rates, fraud)
            if self.fault_active and s.fault_errors and self.rng.random() < 0.5:
                candidate_flag = None
            pairs.append(LabelledPair(fraud, stable_flag, candidate_flag))
        sides = (SideCounts(url=",".join(stable)), SideCounts(url=",".join(candidate)))
        flags_by_side = ([p.stable_flagged for p in pairs], [p.candidate_flagged for p in pairs])
        for side, flags in zip(sides, flags_by_side, strict=True):
            side.requests = max(1, len(flags) // 32)
            side.answered = sum(f is not None for f in flags)
            if side.answered == 0:
                side.error = "did not answer"
        self.wait(min(self.interval * 0.5, 1.0))
        return PairedResult(stable=sides[0], candidate=sides[1], pairs=pairs, seconds=1.0)

    def _flag(self, rates: tuple[float, float], fraud: bool) -> bool:
        recall, fpr = rates
        return self.rng.random() < (recall if fraud else fpr)

    def health(self, selector: str) -> HealthReading:
        if self._from(self.script.prometheus_down_from):
            return HealthReading(None, detail="no data: Prometheus at http://prometheus.test did not answer")
        if self._from(self.script.primary_unhealthy_from) or self._from(self.script.stable_down_from):
            return HealthReading(False, 40.0, "primary success rate 40.00% < 99% (Prometheus)")
        return HealthReading(True, 100.0, "primary success rate 100.00% >= 99% (Prometheus)")


class _Health:
    def __init__(self, read: Callable[[str], HealthReading]) -> None:
        self.read = read


def make_service(rig: ScriptedRig, settings: AnalysisSettings, transactions: int = 600) -> DecisionService:
    holdout = Holdout([Transaction({"x": 0.0}, 0)], ["x"])

    def replayer(stable: Sequence[str], candidate: Sequence[str], data: Holdout, params: ReplayParameters,
                 stop: Any) -> PairedResult:  # fmt: skip
        return rig.replay(stable, candidate, params)

    def urls(namespace: str, pod_hash: str) -> list[str]:
        if pod_hash == STABLE_HASH:
            return [STABLE_URL]
        return [CANDIDATE_URL] if pod_hash == CANDIDATE_HASH else []

    resolver = type("Resolver", (), {"urls": staticmethod(urls)})()
    return DecisionService(
        settings,
        holdout,
        replay=ReplayParameters(transactions=transactions, timeout_seconds=rig.interval),
        health=_Health(rig.health),
        resolver=resolver,
        replayer=replayer,
        smoker=lambda target, data, model: {"ok": True, "target": target, "model_version": "v2", "rows": 8},
    )


def rehearse(
    strategy: str,
    script: Script | None = None,
    *,
    fault: FaultPlan | None = None,
    interval: float = 60.0,
    **changes: Any,
) -> tuple[RolloutOutcome, ScriptedRig, DecisionService]:
    settings = AnalysisSettings(**changes)
    rig = ScriptedRig(script or Script(), interval, settings)
    service = make_service(rig, settings)
    engine = RolloutEngine(settings, rig, service, interval_seconds=interval, looks=settings.horizon, fault=fault)
    return engine.run(strategy), rig, service
