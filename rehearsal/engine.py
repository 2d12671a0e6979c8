"""The rollout walk, as Flagger (canary) or Argo Rollouts (blue-green) would do it, on local processes.

The engine knows nothing of processes or HTTP: it asks a ``Rig`` to send traffic at a weight, to inject
a fault, and to evaluate the shared analysis checks (``rollout.analysis``) against a real Prometheus.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from rollout.settings import AnalysisSettings


@dataclass(frozen=True)
class CheckResult:
    name: str
    value: float | None
    threshold: float
    direction: str  # "min": value must be >= threshold; "max": value must be <= threshold
    passed: bool
    query: str = ""

    def describe(self) -> str:
        shown = "no data" if self.value is None else f"{self.value:.4g}"
        op = ">=" if self.direction == "min" else "<="
        return f"{self.name} {shown} {op} {self.threshold:g} {'ok' if self.passed else 'FAIL'}"


@dataclass
class StepRecord:
    index: int
    phase: str  # canary | pre-promotion | post-promotion
    weight: int
    started: float
    ended: float
    checks: list[CheckResult]
    failed_checks: int
    fault_active: bool
    observations: dict[str, dict[str, float | None]] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


@dataclass
class RolloutOutcome:
    strategy: str
    decision: str  # promoted | rolled_back
    reason: str
    steps: list[StepRecord]
    started: float
    ended: float
    fault_injected_at: float | None = None
    rolled_back_at: float | None = None

    @property
    def seconds_to_rollback(self) -> float | None:
        if self.decision != "rolled_back" or self.rolled_back_at is None:
            return None
        start = self.fault_injected_at if self.fault_injected_at is not None else self.started
        return round(self.rolled_back_at - start, 2)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seconds_to_rollback"] = self.seconds_to_rollback
        return data


class Rig(Protocol):
    """What the engine drives: real servers, traffic and Prometheus in the rehearsal."""

    def send_traffic(self, seconds: float, candidate_weight: int, *, preview_only: bool = False) -> None: ...

    def inject_fault(self) -> None: ...

    def evaluate(self, window_seconds: float) -> list[CheckResult]: ...

    def observe(self, window_seconds: float) -> dict[str, dict[str, float | None]]: ...


@dataclass(frozen=True)
class FaultPlan:
    mode: str | None = None  # error | degrade
    at_step: int = 1  # 1-based analysis step at which the candidate turns faulty


Progress = Callable[[StepRecord, int], None]


class RolloutEngine:
    def __init__(
        self,
        analysis: AnalysisSettings,
        rig: Rig,
        *,
        interval_seconds: float,
        fault: FaultPlan | None = None,
        progress: Progress | None = None,
    ) -> None:
        self.analysis = analysis
        self.rig = rig
        self.interval = interval_seconds
        self.fault = fault or FaultPlan()
        self.progress = progress or (lambda step, total: None)
        self._steps: list[StepRecord] = []
        self._fault_at: float | None = None

    def _analyse(self, phase: str, weight: int, failed: int, *, preview_only: bool = False) -> StepRecord:
        index = len(self._steps) + 1
        if self.fault.mode and index == self.fault.at_step and self._fault_at is None:
            self.rig.inject_fault()
            self._fault_at = time.time()
        started = time.time()
        self.rig.send_traffic(self.interval, weight, preview_only=preview_only)
        # Window = the interval just sent; a check with no samples in it fails (never passes on no data).
        checks = self.rig.evaluate(self.interval)
        failed_now = failed + (0 if all(c.passed for c in checks) else 1)
        record = StepRecord(
            index=index,
            phase=phase,
            weight=weight,
            started=started,
            ended=time.time(),
            checks=checks,
            failed_checks=failed_now,
            fault_active=self._fault_at is not None,
            observations=self.rig.observe(self.interval),
        )
        self._steps.append(record)
        return record

    def run(self, strategy: str) -> RolloutOutcome:
        started = time.time()
        if strategy == "canary":
            decision, reason = self._canary()
        elif strategy == "blue-green":
            decision, reason = self._blue_green()
        else:
            raise ValueError(f"strategy: must be canary or blue-green, got {strategy!r}")
        ended = time.time()
        return RolloutOutcome(
            strategy=strategy,
            decision=decision,
            reason=reason,
            steps=self._steps,
            started=started,
            ended=ended,
            fault_injected_at=self._fault_at,
            rolled_back_at=ended if decision == "rolled_back" else None,
        )

    def _canary(self) -> tuple[str, str]:
        """Flagger: advance a step when every check passes; count a failure otherwise; roll back at threshold."""
        weights = self.analysis.step_weights
        failed, position = 0, 0
        total = len(weights)
        while position < total:
            record = self._analyse("canary", weights[position], failed)
            failed = record.failed_checks
            self.progress(record, total)
            if record.passed:
                position += 1
            elif failed >= self.analysis.threshold:
                self.rig.send_traffic(0, 0)  # route everything back to the primary
                bad = ", ".join(c.name for c in record.checks if not c.passed)
                return "rolled_back", f"{failed} failed checks reached the threshold {self.analysis.threshold} ({bad})"
        return "promoted", f"all {total} steps passed ({', '.join(f'{w}%' for w in weights)})"

    def _blue_green(self) -> tuple[str, str]:
        """Argo Rollouts: preview + pre-promotion analysis, switch, post-promotion analysis, abort on failure."""
        runs = len(self.analysis.step_weights)
        total = 2 * runs
        failed = 0
        for _ in range(runs):
            record = self._analyse("pre-promotion", 0, failed, preview_only=True)
            failed = record.failed_checks
            self.progress(record, total)
            if failed >= self.analysis.threshold:
                return "rolled_back", "pre-promotion analysis failed: aborted before the switch, active unchanged"
        failed = 0
        for _ in range(runs):
            record = self._analyse("post-promotion", 100, failed)
            failed = record.failed_checks
            self.progress(record, total)
            if failed >= self.analysis.threshold:
                self.rig.send_traffic(0, 0)  # the old ReplicaSet is kept for scaleDownDelay: switch back
                return (
                    "rolled_back",
                    "post-promotion analysis failed: aborted, active switched back to the stable model",
                )
        return "promoted", f"pre- and post-promotion analysis passed ({runs} runs each)"
