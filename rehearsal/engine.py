"""The rollout walk, as Flagger (canary) or Argo Rollouts (blue-green) would do it, on a rig.

The engine decides nothing itself: each interval it asks the decision service (``ops/decision_service.py``,
the very code the cluster runs, called in process) exactly what the controller would ask, in the
controller's order, and acts on the answers as the controller does. The rig gives it targets, production
traffic at a weight, a fault to inject and the candidate's system checks from Prometheus.

Flagger (fluxcd/flagger v1.40.0 ``pkg/controller/scheduler.go``, ``advanceCanary``; hooks in
``scheduler_hooks.go``), each interval: rollback hooks (200: roll back at once); the failed-checks
threshold; at weight 0 the pre-rollout hooks, else the analysis (rollout hook, then the metric checks; a
failure counts a failed check and ends the interval); ``confirm-traffic-increase`` (non-2xx: hold; it is
asked even at the last step weight, ``nextStepWeight`` returning the rest to 100); then ``runCanary``
advances the weight or, at the last step, asks ``confirm-promotion`` (non-2xx: WaitingPromotion, held)
and promotes.

Argo Rollouts blue-green (argoproj/argo-rollouts v1.7.2): the pre-promotion AnalysisRun (smoke once, the
decision metric every interval for ``looks`` measurements, the system checks after one interval's delay)
must succeed before the active Service switches; a metric fails when its failures exceed failureLimit and
ends the run (``analysis/analysis.go``, ``assessMetricStatus``), which aborts the Rollout; Inconclusive
pauses it (``rollout/analysis.go``, ``setPauseOrAbort``); more than ``consecutiveErrorLimit`` (4) errors in
a row is an Error, which also aborts. After the switch the post-promotion run judges again with the previous
version still warm; an abort points the active Service back at it at once.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from rollout import analysis
from rollout.settings import AnalysisSettings

TARGET = "fraud-detector"  # the rehearsal's Flagger target / Argo Rollout name
NAMESPACE = "fraud"
# Argo Rollouts' default consecutiveErrorLimit (utils/defaults/defaults.go, DefaultConsecutiveErrorLimit).
ARGO_CONSECUTIVE_ERROR_LIMIT = 4
# A rehearsal ends as "halted" after this many intervals in a row held on HALT (a cluster would hold until
# someone acts; the rehearsal shows the hold and stops).
HALT_INTERVALS = 3


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
    phase: str  # pre-rollout | canary | pre-promotion | post-promotion
    weight: int
    started: float
    ended: float
    checks: list[CheckResult]
    failed_checks: int
    fault_active: bool
    observations: dict[str, dict[str, float | None]] = field(default_factory=dict)
    verdict: str = ""  # the decision service's verdict after this interval
    reason: str = ""
    looks: int = 0
    primary_healthy: bool | None = None
    action: str = ""  # what the controller did: hold, advance, promote, rollback, switch, abort, pause ...
    hooks: dict[str, int] = field(default_factory=dict)  # hook or measurement -> HTTP status

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)


@dataclass
class RolloutOutcome:
    strategy: str
    decision: str  # promoted | rolled_back | halted
    reason: str
    steps: list[StepRecord]
    started: float
    ended: float
    fault_injected_at: float | None = None
    rolled_back_at: float | None = None
    primary_healthy: bool | None = None
    switched_at: float | None = None  # blue-green: the active Service moved to the candidate
    switched_back_at: float | None = None  # blue-green: ... and back to the stable after an abort
    bad_answers_after_switch: int | None = None  # production answers of a faulty candidate after the switch

    @property
    def seconds_to_rollback(self) -> float | None:
        if self.decision != "rolled_back" or self.rolled_back_at is None:
            return None
        start = self.fault_injected_at if self.fault_injected_at is not None else self.started
        return round(self.rolled_back_at - start, 2)

    def decision_log(self) -> list[dict[str, Any]]:
        """Per interval: what the decision service said and what the controller did."""
        return [
            {
                "index": s.index,
                "verdict": s.verdict,
                "reason": s.reason,
                "looks": s.looks,
                "action": s.action,
                "primary_healthy": s.primary_healthy,
                "hooks": s.hooks,
            }
            for s in self.steps
        ]

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["seconds_to_rollback"] = self.seconds_to_rollback
        return data


class Rig(Protocol):
    """What the engine drives: real servers, traffic and Prometheus in the rehearsal; a script in tests."""

    def targets(self) -> tuple[str, str]:
        """(stable, candidate) base URLs, as Flagger's primary and canary Services."""
        ...

    def pod_hashes(self) -> tuple[str, str]:
        """(stable, candidate) pod-template hashes, as Argo Rollouts' Stable and Latest."""
        ...

    def set_weight(self, candidate_weight: int) -> None:
        """Production traffic's share for the candidate from now on (0: all to the stable)."""
        ...

    def inject_fault(self) -> float:
        """Make the candidate faulty; returns when the fault reached traffic (on the rig's clock)."""
        ...

    def wait(self, seconds: float) -> None:
        """Let time pass (production traffic keeps flowing)."""
        ...

    def now(self) -> float: ...

    def system_checks(self, window_seconds: float) -> list[CheckResult]:
        """The candidate's system checks (rollout.analysis.analysis_checks) over the last window."""
        ...

    def observe(self, window_seconds: float) -> dict[str, dict[str, float | None]]:
        """Per version, the system checks' values (for the report's charts)."""
        ...

    def bad_answers(self) -> int:
        """Production requests a faulty candidate answered so far (user impact)."""
        ...


class Decisions(Protocol):
    """The decision service's logic (ops.decision_service.DecisionService)."""

    def flagger(self, hook: str, body: Any) -> tuple[int, dict[str, Any]]: ...

    def argo(self, kind: str, body: Any) -> tuple[int, dict[str, Any]]: ...


@dataclass(frozen=True)
class FaultPlan:
    mode: str | None = None  # error | degrade
    at_step: int = 1  # 1-based analysis interval at which the candidate turns faulty


Progress = Callable[[StepRecord, int], None]


@dataclass
class _CanaryState:
    """What Flagger keeps in the Canary's status between intervals."""

    weight: int = 0
    failed: int = 0
    waiting_promotion: bool = False
    halted: int = 0  # intervals in a row the decision was HALT
    failing: list[str] = field(default_factory=list)  # what failed last
    body: dict[str, Any] = field(default_factory=dict)  # the decision service's last answer


def argo_measurement(status: int, body: Mapping[str, Any]) -> str:
    """The phase Argo Rollouts gives our decision metric's measurement: Error on a non-2xx answer
    (metricproviders/webmetric/webmetric.go), else failureCondition first, neither condition Inconclusive,
    else Successful (utils/evaluate/evaluate.go) on the verdict sets the conditions are written from."""
    if not 200 <= status < 300 or not isinstance(body.get("verdict"), str):
        return "Error"
    verdict = body["verdict"]
    if verdict in analysis.ARGO_FAILURE_VERDICTS:
        return "Failed"
    if verdict in analysis.ARGO_SUCCESS_VERDICTS:
        return "Successful"
    return "Inconclusive"


# The fastest labelled replay the rehearsal sizes itself to (pairs per second to both local servers); a plan that
# needs more is refused before any process starts.
MAX_LOCAL_REPLAY_RATE = 400.0


@dataclass(frozen=True)
class RehearsalPlan:
    """The stack's analysis planned at the rehearsal's interval, with the replay the plan sized, and why."""

    plan: Any  # rollout.plan.Plan
    note: str  # one line for the log: what was sized and why

    @property
    def pairs_per_interval(self) -> int:
        return int(self.plan.pairs_per_interval)


def plan_rehearsal(settings: AnalysisSettings, interval_seconds: float) -> RehearsalPlan:
    """The stack's analysis planned at the rehearsal's interval (rollout/plan.py), before anything starts.

    When the stack's ``replayRate`` cannot decide within the horizon at this interval, the local replay is
    sized to the plan's required rate (the analysis' error rates are what matter, the rate is a local
    cost); when no rate up to :data:`MAX_LOCAL_REPLAY_RATE` would do, the rehearsal is refused (UsageError,
    exit 2) with the plan's reason, naming the keys.
    """
    from fraudctl.errors import UsageError
    from rollout import plan as rollout_plan

    first = rollout_plan.plan(settings, interval_seconds=interval_seconds)
    if first.meets_targets:
        return RehearsalPlan(first, f"plan: {first.pairs_per_interval} labelled pairs per interval decide in time")
    required = first.required_rps
    if required is None or required > MAX_LOCAL_REPLAY_RATE:
        limit = f"more than the rehearsal's {MAX_LOCAL_REPLAY_RATE:g}/s" if required else "no replay rate"
        raise UsageError(
            f"the analysis cannot decide at --interval {interval_seconds:g} ({limit} would do): "
            + "; ".join(first.problems())
        )
    sized = rollout_plan.plan(settings, required, interval_seconds=interval_seconds, search=False)
    note = (
        f"plan: analysis.replayRate {settings.replay_rate:g}/s cannot decide at a {interval_seconds:g} s interval; "
        f"the local replay is sized to {required:.3g}/s ({sized.pairs_per_interval} pairs per interval)"
    )
    return RehearsalPlan(sized, note)


class RolloutEngine:
    def __init__(
        self,
        settings: AnalysisSettings,
        rig: Rig,
        decisions: Decisions,
        *,
        interval_seconds: float,
        looks: int,
        fault: FaultPlan | None = None,
        progress: Progress | None = None,
        revision: str = "rehearsal",
        max_intervals: int | None = None,
    ) -> None:
        self.settings = settings
        self.rig = rig
        self.decisions = decisions
        self.interval = interval_seconds
        self.looks = looks
        self.fault = fault or FaultPlan()
        self.progress = progress or (lambda step, total: None)
        self.revision = revision
        # Flagger holds an undecided or halted canary for as long as it takes; the rehearsal stops.
        self.max_intervals = max_intervals or looks + len(settings.step_weights) + settings.threshold + 2
        self._steps: list[StepRecord] = []
        self._fault_at: float | None = None
        self._primary_healthy: bool | None = None
        self._switched_at: float | None = None
        self._switched_back_at: float | None = None
        self._bad_at_switch: int | None = None

    # -- one interval --------------------------------------------------------------------------------
    def _begin(self) -> tuple[int, float]:
        index = len(self._steps) + 1
        if self.fault.mode and index == self.fault.at_step and self._fault_at is None:
            self._fault_at = self.rig.inject_fault()
        return index, self.rig.now()

    def _record(self, index: int, started: float, phase: str, weight: int, **fields: Any) -> StepRecord:
        body = fields.pop("body", None) or {}
        record = StepRecord(
            index=index,
            phase=phase,
            weight=weight,
            started=started,
            ended=self.rig.now(),
            checks=fields.pop("checks", []),
            failed_checks=fields.pop("failed", 0),
            fault_active=self._fault_at is not None,
            observations=self.rig.observe(self.interval),
            verdict=str(body.get("verdict", "")),
            reason=str(body.get("reason", "")),
            looks=int(body.get("looks") or 0),
            primary_healthy=body.get("primary_healthy"),
            **fields,
        )
        if "primary_healthy" in body:
            self._primary_healthy = body["primary_healthy"]
        self._steps.append(record)
        return record

    def _finish_interval(self, started: float) -> None:
        self.rig.wait(max(0.0, started + self.interval - self.rig.now()))

    def run(self, strategy: str) -> RolloutOutcome:
        started = self.rig.now()
        if strategy == "canary":
            decision, reason = self._canary()
        elif strategy == "blue-green":
            decision, reason = self._blue_green()
        else:
            raise ValueError(f"strategy: must be canary or blue-green, got {strategy!r}")
        ended = self.rig.now()
        bad = None
        if self._bad_at_switch is not None:
            bad = self.rig.bad_answers() - self._bad_at_switch
        return RolloutOutcome(
            strategy=strategy,
            decision=decision,
            reason=reason,
            steps=self._steps,
            started=started,
            ended=ended,
            fault_injected_at=self._fault_at,
            rolled_back_at=ended if decision == "rolled_back" else None,
            primary_healthy=self._primary_healthy,
            switched_at=self._switched_at,
            switched_back_at=self._switched_back_at,
            bad_answers_after_switch=bad,
        )

    # -- Flagger -------------------------------------------------------------------------------------
    def _flagger(self, hook: str, phase: str = "Progressing") -> tuple[int, dict[str, Any]]:
        endpoint = analysis.FLAGGER_HOOKS[hook][1]
        metadata: dict[str, str] = {}
        if endpoint in ("smoke", "replay"):
            stable, candidate = self.rig.targets()
            metadata = {"candidate": candidate} if endpoint == "smoke" else {"stable": stable, "candidate": candidate}
        payload = {
            "name": TARGET,
            "namespace": NAMESPACE,
            "phase": phase,
            "checksum": self.revision,
            "metadata": metadata,
        }
        return self.decisions.flagger(endpoint, payload)

    def _canary(self) -> tuple[str, str]:
        weights = list(self.settings.step_weights)
        state = _CanaryState()
        total = self.looks + len(weights)
        while len(self._steps) < self.max_intervals:
            index, started = self._begin()
            hooks: dict[str, int] = {}
            weight = state.weight  # the weight this interval is analysed at
            action, checks, phase, end = self._canary_interval(state, weights, hooks)
            step = self._record(
                index, started, phase, weight, checks=checks, failed=state.failed, body=state.body,
                action=action, hooks=hooks,
            )  # fmt: skip
            self.progress(step, total)
            if end is not None:
                return end
            self._finish_interval(started)
        reason = state.body.get("reason", "") or "no decision"
        return "halted", f"no decision within {self.max_intervals} intervals: {reason}"

    def _canary_interval(
        self, state: _CanaryState, weights: list[int], hooks: dict[str, int]
    ) -> tuple[str, list[CheckResult], str, tuple[str, str] | None]:
        """One pass of Flagger's advanceCanary: (action, checks, phase, the end or None)."""
        phase = "pre-rollout" if state.weight == 0 else "canary"
        # 1. rollback hooks
        status, answer = self._flagger("rollback", "WaitingPromotion" if state.waiting_promotion else "Progressing")
        hooks["rollback"] = status
        if status == 200:
            state.body = answer
            self._route_back()
            return (
                "rollback",
                [],
                phase,
                ("rolled_back", f"the decision service signalled a rollback: {answer['reason']}"),
            )
        # 2. failed-checks threshold
        if state.failed >= self.settings.threshold:
            self._route_back()
            reason = (
                f"{state.failed} failed checks reached the threshold {self.settings.threshold} "
                f"(last: {', '.join(state.failing)})"
            )
            return "rollback", [], phase, ("rolled_back", reason)
        # 3. pre-rollout hooks at weight 0, else the analysis: rollout hook, then the metric checks
        checks: list[CheckResult] = []
        if state.weight == 0:
            status, answer = self._flagger("smoke")
            hooks["smoke"] = status
            if status == 200:
                status, state.body = self._flagger("warmup")
                hooks["replay"] = status
            else:
                state.body = {"reason": f"smoke test failed: {answer.get('error', status)}"}
        else:
            status, state.body = self._flagger("rollout")
            hooks["replay"] = status
            if status == 200:
                checks = self.rig.system_checks(self.interval)
        if status != 200 or not all(c.passed for c in checks):
            state.failed += 1
            state.failing = [c.name for c in checks if not c.passed] or [f"{phase} hook answered {status}"]
            return "failed check", checks, phase, None
        state.halted = state.halted + 1 if state.body.get("verdict") == "halt" else 0
        # 4. confirm-traffic-increase (not asked while waiting for promotion)
        if not state.waiting_promotion:
            status, state.body = self._flagger("confirm-traffic-increase")
            hooks["confirm-traffic-increase"] = status
            if status != 200:
                return "hold", checks, phase, self._held(state)
        # 5. advance, or promote at the last step weight
        if state.weight < weights[-1]:
            state.weight = next(w for w in weights if w > state.weight)
            self.rig.set_weight(state.weight)
            return f"advance to {state.weight}%", checks, phase, None
        status, state.body = self._flagger("confirm-promotion")
        hooks["confirm-promotion"] = status
        if status != 200:
            state.waiting_promotion = True
            return "waiting for promotion", checks, phase, self._held(state)
        self.rig.set_weight(100)
        return "promote", checks, phase, ("promoted", f"{state.body['reason']}; promoted after the steps {weights}")

    @staticmethod
    def _held(state: _CanaryState) -> tuple[str, str] | None:
        if state.halted >= HALT_INTERVALS:
            return "halted", f"held {state.halted} intervals in a row: {state.body.get('reason', '')}"
        return None

    def _route_back(self) -> None:
        self.rig.set_weight(0)

    # -- Argo Rollouts blue-green --------------------------------------------------------------------
    def _blue_green(self) -> tuple[str, str]:
        total = 2 * (self.looks + 1)
        outcome, reason = self._argo_run("pre", total)
        if outcome != "Successful":
            return ("halted" if outcome == "Inconclusive" else "rolled_back"), (
                f"pre-promotion analysis {outcome.lower()}: {reason}; the active Service never switched"
            )
        self.rig.set_weight(100)
        self._switched_at = self.rig.now()
        self._bad_at_switch = self.rig.bad_answers()
        outcome, reason = self._argo_run("post", total)
        if outcome == "Successful":
            return "promoted", f"pre- and post-promotion analysis passed: {reason}"
        if outcome == "Inconclusive":
            # A paused Rollout keeps the active Service where it is until someone acts.
            return "halted", f"post-promotion analysis inconclusive: {reason}; paused on the new version"
        self.rig.set_weight(0)
        self._switched_back_at = self.rig.now()
        return "rolled_back", f"post-promotion analysis {outcome.lower()}: {reason}; switched back to the stable"

    def _argo(self, kind: str, phase: str) -> tuple[int, dict[str, Any]]:
        stable_hash, candidate_hash = self.rig.pod_hashes()
        body = {"namespace": NAMESPACE, "candidateHash": candidate_hash}
        if kind == "decision":
            body |= {"rollout": TARGET, "phase": phase, "stableHash": stable_hash}
        return self.decisions.argo(kind, body)

    def _argo_run(self, phase: str, total: int) -> tuple[str, str]:
        """One AnalysisRun (smoke before the switch, decision, system checks): its phase and why."""
        weight = 100 if phase == "post" else 0
        step_phase = f"{phase}-promotion"
        decisions_taken = errors = system_taken = 0
        failed: dict[str, int] = {}
        _count, failure_limit = analysis.argo_measurements(self.settings, self.looks, phase)
        reason = ""
        for tick in range(1, self.looks + 2):
            index, started = self._begin()
            hooks: dict[str, int] = {}
            body: dict[str, Any] = {}
            checks: list[CheckResult] = []
            run_phase = ""
            if phase == "pre" and tick == 1:
                status, smoke = self._argo("smoke", phase)
                hooks["smoke"] = status
                if status != 200 or smoke.get("ok") is not True:
                    run_phase, reason = "Failed", f"smoke test failed: {smoke.get('error', status)}"
            if not run_phase and decisions_taken < self.looks:
                status, body = self._argo("decision", phase)
                hooks["decision"] = status
                measurement = argo_measurement(status, body)
                errors = errors + 1 if measurement == "Error" else 0
                decisions_taken += measurement != "Error"
                reason = str(body.get("reason") or body.get("error") or reason)
                if measurement in ("Failed", "Inconclusive"):
                    run_phase = measurement
                elif errors > ARGO_CONSECUTIVE_ERROR_LIMIT:
                    run_phase, reason = "Error", f"{errors} decision measurements in a row were errors: {reason}"
            if not run_phase and (tick > 1 or phase == "post") and system_taken < self.looks:
                # The system checks measure one interval in (initialDelay): Argo's first measurement covers the
                # first interval (v1.7.2 analysis/analysis.go, generateMetricTasks: StartedAt + initialDelay).
                # Before the switch the rig's first interval only starts the preview's traffic, so its checks
                # begin with the second; after it every request has reached the new pods.
                checks = self.rig.system_checks(self.interval)
                system_taken += 1
                for check in checks:
                    failed[check.name] = failed.get(check.name, 0) + (not check.passed)
                bad = [name for name, count in failed.items() if count > failure_limit]
                if bad:
                    allowed = f"more than {failure_limit}x" if failure_limit else "and after the switch none may"
                    run_phase, reason = "Failed", f"system check(s) {', '.join(bad)} failed {allowed}"
            if not run_phase and decisions_taken >= self.looks and system_taken >= self.looks:
                run_phase = "Successful"
            action = {"Failed": "abort", "Error": "abort", "Inconclusive": "pause"}.get(run_phase, "measure")
            if run_phase == "Successful":
                action = "switch" if phase == "pre" else "promote"
            step = self._record(
                index, started, step_phase, weight, checks=checks, failed=sum(failed.values()), body=body,
                action=action, hooks=hooks,
            )  # fmt: skip
            self.progress(step, total)
            if run_phase:
                return run_phase, reason
            self._finish_interval(started)
        return "Error", f"the analysis run did not complete within {self.looks + 1} intervals"
