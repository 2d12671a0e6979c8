"""The rollout decision service: paired labelled replay and a sequential verdict per rollout, answered to
Flagger's webhooks and Argo Rollouts' web metrics (docs/ROLLOUT.md, "Decision service"; docs/CONTRACTS.md).

Each interval a controller asks the service to replay labelled holdout transactions to BOTH the stable and
the candidate (``ops/replay.py``); the pairs feed one :class:`rollout.decision.SequentialAnalysis` per
rollout (Flagger: canary and revision checksum; Argo: rollout, new pod-template hash and phase), so a new
rollout starts fresh. The primary's health is part of every answer: its answers in the replay, and its
success rate in Prometheus (:func:`rollout.analysis.primary_health_check`). Prometheus unreachable or
without the primary's series is "no data": the rollout holds, never promotes.

Flagger (``POST /flagger/<hook>``, body = Flagger's webhook payload; its ``metadata`` carries ``stable``,
``candidate`` and optional replay overrides, all strings). Flagger treats any status above 202 as "no"
(fluxcd/flagger v1.40.0 ``pkg/controller/webhook.go``, ``callWebhook``):

* ``smoke`` (pre-rollout): one batch through the candidate's protocol; 200, or 502 naming what is broken.
* ``replay`` (pre-rollout at weight 0 and rollout each interval): one interval of paired replay and a look;
  200 whatever the verdict (a failure here would count a failed check; the rollback hook acts on FAIL).
* ``confirm-traffic-increase``, ``confirm-promotion``: 200 only on PASS; 403 otherwise (held: no weight
  change, no failed check).
* ``rollback``: 200 only on FAIL (Flagger rolls back at once); 403 otherwise. 403 for "no" follows
  Flagger's own load tester gates (``pkg/loadtester/server.go``, ``/gate/check``, ``/rollback/check``).

Argo Rollouts (``POST /argo/smoke``, ``POST /argo/decision``; body = the template's JSON): always 200 with
JSON, because the web provider turns any non-2xx into an Error measurement, never a Failed one
(argoproj/argo-rollouts v1.7.2 ``metricproviders/webmetric/webmetric.go``); the metric's conditions
(:data:`rollout.analysis.ARGO_SUCCESS_CONDITION` ...) read ``verdict`` / ``ok``.

Bad input is 400 with ``{"error": ...}``, never a traceback; an unknown path 404; a holdout still loading
503. ``GET /healthz`` (ready once the holdout is loaded), ``GET /rollouts`` (every rollout's latest
decision).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from fraudctl.errors import UsageError
from ops.replay import Holdout, PairedResult, ReplayError, holdout_loader, paired_replay, smoke
from rollout import analysis
from rollout.decision import Decision, SequentialAnalysis, Verdict
from rollout.settings import AnalysisSettings

if TYPE_CHECKING:
    from ops.cluster import Cluster

log = logging.getLogger(__name__)

ALLOWED_TARGETS_ENV = "REPLAY_ALLOWED_TARGETS"
ANALYSIS_ENV = "DECISION_ANALYSIS"  # the stack's analysis section as JSON (keys as in stack files)
PROMETHEUS_ENV = "DECISION_PROMETHEUS_URL"
MODEL_ENV = "DECISION_MODEL"
MAX_BODY_BYTES = 1 << 20
Answer = tuple[int, dict[str, Any]]  # an HTTP status and its JSON body
# Rollouts remembered at once; the oldest is forgotten first (a controller only ever asks about its latest).
MAX_ROLLOUTS = 32
APPROVED, HELD = 200, 403


class BadRequest(ValueError):
    """The request cannot be served as sent; the message says which field and what is allowed."""


# ---------------------------------------------------------------------------------------------------
# Inputs: replay parameters, targets, the primary's health


@dataclass(frozen=True)
class ReplayParameters:
    """One interval's replay: how many transactions (the plan's size), in what batches, within what time."""

    model: str = "fraud-detector"
    transactions: int = 2000
    batch_size: int = 32
    timeout_seconds: float = 45.0
    # The batches are spread over this share of the time budget (the rest is slack for slow answers).
    spread_share: float = 0.8

    _LIMITS = {"transactions": (1, 10_000_000), "batchSize": (1, 1_000), "timeoutSeconds": (1, 3_600)}

    def overridden(self, raw: Mapping[str, Any]) -> ReplayParameters:
        """These parameters with the overrides a webhook's metadata or a metric's body carries."""
        changes: dict[str, Any] = {}
        if "model" in raw:
            if not isinstance(raw["model"], str) or not raw["model"]:
                raise BadRequest(f"model: must be the served model's name, got {raw['model']!r}")
            changes["model"] = raw["model"]
        for key, (low, high) in self._LIMITS.items():
            if key not in raw:
                continue
            try:
                number = float(raw[key])
            except (TypeError, ValueError):
                raise BadRequest(f"{key}: must be a number in [{low:g}, {high:g}], got {raw[key]!r}") from None
            if not low <= number <= high:
                raise BadRequest(f"{key}: must be in [{low:g}, {high:g}], got {raw[key]!r}")
            attribute = {"batchSize": "batch_size", "timeoutSeconds": "timeout_seconds"}.get(key, key)
            changes[attribute] = number if key == "timeoutSeconds" else int(number)
        return replace(self, **changes)


class PodResolver(Protocol):
    """Base URLs of the ready model-server pods of one ReplicaSet (Argo: by ``rollouts-pod-template-hash``)."""

    def urls(self, namespace: str, pod_template_hash: str) -> list[str]: ...


@dataclass(frozen=True)
class HealthReading:
    """The primary's success rate as Prometheus sees it. ``healthy`` None: no data (or no Prometheus)."""

    healthy: bool | None
    value: float | None = None
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"healthy": self.healthy, "success_rate": self.value, "detail": self.detail}


class PrimaryHealth(Protocol):
    """Where the primary's health comes from besides the replay (Prometheus; the tests' scripted readings)."""

    def read(self, selector: str) -> HealthReading: ...


Replayer = Callable[[Sequence[str], Sequence[str], "Holdout", "ReplayParameters", Callable[[], bool]], PairedResult]


class PrometheusHealth:
    """Reads the primary's success rate (the shared PromQL of :func:`rollout.analysis.primary_health_check`)."""

    def __init__(self, url: str, settings: AnalysisSettings, *, window_seconds: float | None = None) -> None:
        self.url = url.rstrip("/")
        self.check = analysis.primary_health_check(settings)
        self.window_seconds = window_seconds

    def read(self, selector: str) -> HealthReading:
        import httpx

        window = analysis.prometheus_duration(self.window_seconds) if self.window_seconds else None
        query = analysis.render_query(self.check, selector, window)
        try:
            response = httpx.get(f"{self.url}/api/v1/query", params={"query": query}, timeout=10.0)
            body = response.json()
        except (httpx.HTTPError, ValueError) as exc:
            return HealthReading(
                None, detail=f"no data: Prometheus at {self.url} did not answer ({type(exc).__name__})"
            )
        if body.get("status") != "success":
            return HealthReading(None, detail=f"no data: Prometheus refused the query: {body.get('error', '')}"[:300])
        result = body["data"]["result"]
        value = float(result[0]["value"][1]) if result else None
        if value is None or value == self.check.no_data_value:
            return HealthReading(None, detail=f"no data: Prometheus holds no requests of the primary ({selector})")
        healthy = self.check.passes(value)
        op = ">=" if healthy else "<"
        return HealthReading(
            healthy, value, f"primary success rate {value:.2f}% {op} {self.check.threshold:g}% (Prometheus)"
        )


# ---------------------------------------------------------------------------------------------------
# One rollout's evidence and decision


@dataclass(frozen=True)
class RolloutKey:
    controller: str  # flagger | argo
    namespace: str
    name: str
    revision: str  # Flagger: the canary checksum; Argo: the new ReplicaSet's pod-template hash
    phase: str = ""  # Argo: pre | post (each analysis run judges afresh)

    def same_rollout(self, other: RolloutKey) -> bool:
        """The same canary or Rollout (perhaps another revision of it)."""
        return (self.controller, self.namespace, self.name) == (other.controller, other.namespace, other.name)

    def __str__(self) -> str:
        suffix = f"/{self.phase}" if self.phase else ""
        return f"{self.controller}:{self.namespace}/{self.name}@{self.revision}{suffix}"


@dataclass
class RolloutState:
    key: RolloutKey
    analysis: SequentialAnalysis
    decision: Decision | None = None
    primary: HealthReading = field(default_factory=lambda: HealthReading(None, detail="no interval yet"))
    last_replay: dict[str, Any] = field(default_factory=dict)
    intervals: int = 0
    created: float = field(default_factory=time.time)
    updated: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def primary_healthy(self) -> bool | None:
        """Prometheus' reading and the primary's answers in the replay; None: no data."""
        if self.primary.healthy is None:
            return None
        return self.primary.healthy and (self.decision is None or self.decision.primary_healthy)

    @staticmethod
    def empty_answer(key: RolloutKey) -> dict[str, Any]:
        return {
            "rollout": str(key),
            "verdict": Verdict.UNDECIDED.value,
            "reason": "no evidence yet: no interval replayed for this rollout",
            "final": False,
            "looks": 0,
            "primary_healthy": None,
            "primary": HealthReading(None, detail="no interval yet").to_json(),
            "replay": {},
        }

    def answer(self) -> dict[str, Any]:
        """Every answer's body: the verdict, why, the primary's health and the last replay's counts."""
        decision = self.decision
        if decision is None:
            return self.empty_answer(self.key)
        return {
            "rollout": str(self.key),
            "verdict": decision.verdict.value,
            "reason": decision.reason,
            "final": bool(decision.final),
            "looks": decision.looks,
            "primary_healthy": self.primary_healthy,
            "primary": self.primary.to_json(),
            "replay": self.last_replay,
            "decision": decision.to_json(),
        }


class DecisionService:
    """The decision logic behind the HTTP app, callable in process (the rehearsal engine calls it directly).

    ``flagger(hook, body)`` and ``argo(kind, body)`` return ``(status, json_body)`` exactly as served.
    """

    def __init__(
        self,
        settings: AnalysisSettings,
        holdout: Holdout | Callable[[], Holdout],
        *,
        replay: ReplayParameters | None = None,
        allowed_targets: Sequence[str] = (),
        health: PrimaryHealth | None = None,
        resolver: PodResolver | None = None,
        plan: Any = None,
        max_rollouts: int = MAX_ROLLOUTS,
        replayer: Replayer | None = None,
        smoker: Callable[[str, Holdout, str], dict[str, Any]] | None = None,
    ) -> None:
        self.settings = settings
        self.plan = plan
        self.replay = replay or ReplayParameters()
        self.allowed_targets = [t.rstrip("/") for t in allowed_targets if t]
        self.health = health
        self.resolver = resolver
        self.max_rollouts = max_rollouts
        self.replayer = replayer or replay_sides
        self.smoker = smoker or (lambda target, holdout, model: smoke(target, holdout, model=model))
        self._holdout = holdout if isinstance(holdout, Holdout) else None
        self._load = None if isinstance(holdout, Holdout) else holdout
        self.load_error = ""
        self._rollouts: OrderedDict[RolloutKey, RolloutState] = OrderedDict()
        self._lock = threading.Lock()
        self._stop = threading.Event()

    # -- lifecycle -----------------------------------------------------------------------------------
    @property
    def holdout(self) -> Holdout | None:
        return self._holdout

    def load(self) -> None:
        """Load the holdout (in the background at start-up); /healthz reports when it is ready."""
        if self._holdout is not None or self._load is None:
            return
        try:
            self._holdout = self._load()
            log.info("decision: holdout loaded (%d transactions)", len(self._holdout.transactions))
        except Exception as exc:  # reported by /healthz; the pod stays unready instead of crash-looping
            self.load_error = f"holdout failed to load: {type(exc).__name__}: {exc}"
            log.error("decision: %s", self.load_error)

    def stop(self) -> None:
        """Ask replays in flight to end at their next batch (shutdown)."""
        self._stop.set()

    def healthz(self) -> tuple[int, dict[str, Any]]:
        if self._holdout is None:
            return 503, {"error": self.load_error or "holdout is still loading"}
        return 200, {"ok": True, "transactions": len(self._holdout.transactions), "rollouts": len(self._rollouts)}

    def rollouts(self) -> tuple[int, dict[str, Any]]:
        with self._lock:
            states = list(self._rollouts.values())
        return 200, {"rollouts": [s.answer() for s in states]}

    def state(self, key: RolloutKey) -> RolloutState | None:
        with self._lock:
            return self._rollouts.get(key)

    def _state(self, key: RolloutKey) -> RolloutState:
        """The rollout's state; a new revision of the same rollout replaces the older ones."""
        with self._lock:
            state = self._rollouts.get(key)
            if state is None:
                for older in [k for k in self._rollouts if k.same_rollout(key) and k.revision != key.revision]:
                    del self._rollouts[older]
                state = RolloutState(key, SequentialAnalysis(self.settings, self.plan))
                self._rollouts[key] = state
                while len(self._rollouts) > self.max_rollouts:
                    self._rollouts.popitem(last=False)
                log.info("decision: new rollout %s", key)
            self._rollouts.move_to_end(key)
            return state

    # -- inputs --------------------------------------------------------------------------------------
    def _target(self, raw: Mapping[str, Any], key: str) -> str:
        value = raw.get(key)
        if not isinstance(value, str) or not value.startswith(("http://", "https://")):
            raise BadRequest(f"{key}: must be the http(s) base URL of a model server, got {value!r}")
        value = value.rstrip("/")
        if self.allowed_targets and value not in self.allowed_targets:
            raise BadRequest(f"{key}: {value!r} is not allowed here; allowed: {', '.join(self.allowed_targets)}")
        return value

    def _pods(self, namespace: str, pod_hash: str) -> list[str]:
        if self.resolver is None:
            raise BadRequest("this decision service has no Kubernetes access: it cannot resolve pod-template hashes")
        try:
            return self.resolver.urls(namespace, pod_hash)
        except Exception as exc:  # the API server refused or is unreachable: no pods known
            log.warning("decision: resolving pods of %s failed: %s", pod_hash, exc)
            return []

    def _ready_holdout(self) -> Holdout:
        if self._holdout is None:
            raise _Unavailable(self.load_error or "holdout is still loading")
        return self._holdout

    # -- one interval --------------------------------------------------------------------------------
    def interval(
        self,
        key: RolloutKey,
        stable: Sequence[str],
        candidate: Sequence[str],
        primary_selector: str,
        params: ReplayParameters,
    ) -> RolloutState:
        """Replay one interval to both sides, add the pairs, read the primary's health, take a look."""
        holdout = self._ready_holdout()
        state = self._state(key)
        with state.lock:
            result = self.replayer(stable, candidate, holdout, params, self._stop.is_set)
            state.analysis.add(result.pairs)
            state.last_replay = result.to_json()
            state.primary = self._primary_health(primary_selector, result)
            state.intervals += 1
            if state.primary.healthy is None and self.health is not None:
                # No data: no look is taken (the evidence stays for the next one) and the rollout holds.
                state.decision = _halt(state.decision, f"{state.primary.detail}; no promotion until it is back")
            else:
                decision = state.analysis.close_interval(primary_healthy=bool(state.primary.healthy))
                if state.primary.healthy is False and decision.verdict is Verdict.HALT:
                    decision = replace(decision, reason=f"{decision.reason} ({state.primary.detail})")
                state.decision = decision
            state.updated = time.time()
            log.info(
                "decision: %s interval %d: %s (%s); %d pairs, %d frauds; stable %s; candidate %s",
                key, state.intervals, state.decision.verdict.value, state.decision.reason, result.transactions,
                result.labelled_frauds, _side_summary(result.stable), _side_summary(result.candidate),
            )  # fmt: skip
            return state

    def _primary_health(self, selector: str, result: PairedResult) -> HealthReading:
        """Prometheus' reading of the primary; the replay's own answers are judged by the analysis itself."""
        if self.health is None:
            detail = "no Prometheus configured: the replay's answers only"
            if result.stable.down:
                detail += f"; the stable did not answer: {result.stable.error}"
            return HealthReading(not result.stable.down, detail=detail)
        reading = self.health.read(selector)
        if result.stable.down:
            reading = replace(reading, detail=f"{reading.detail}; the stable did not answer: {result.stable.error}")
        return reading

    # -- Flagger -------------------------------------------------------------------------------------
    def flagger(self, hook: str, body: Any) -> tuple[int, dict[str, Any]]:
        try:
            if hook not in analysis.FLAGGER_ENDPOINTS:
                raise _NotFound(f"unknown Flagger hook {hook!r}; hooks: {', '.join(analysis.FLAGGER_ENDPOINTS)}")
            payload = _flagger_payload(body)
            if hook == "smoke":
                return self._smoke(self._target(payload.metadata, "candidate"), payload.metadata, flagger=True)
            key = RolloutKey("flagger", payload.namespace, payload.name, payload.checksum)
            if hook == "replay":
                params = self.replay.overridden(payload.metadata)
                stable = self._target(payload.metadata, "stable")
                candidate = self._target(payload.metadata, "candidate")
                target = _string(payload.metadata, "target") if "target" in payload.metadata else payload.name
                selector = analysis.FLAGGER.selector(analysis.PRIMARY, target=target, namespace=payload.namespace)
                return 200, self.interval(key, [stable], [candidate], selector, params).answer()
            return self.confirm(key, hook)
        except (BadRequest, _Unavailable, _NotFound) as exc:
            return _error_answer(exc)

    def confirm(self, key: RolloutKey, hook: str) -> tuple[int, dict[str, Any]]:
        """A gate on the latest decision: confirm-* open only on PASS, rollback only on FAIL."""
        state = self.state(key)
        verdict = state.decision.verdict if state is not None and state.decision is not None else Verdict.UNDECIDED
        wanted = Verdict.FAIL if hook == "rollback" else Verdict.PASS
        body = state.answer() if state is not None else RolloutState.empty_answer(key)
        return (APPROVED if verdict is wanted else HELD), {**body, "hook": hook}

    # -- Argo Rollouts -------------------------------------------------------------------------------
    def argo(self, kind: str, body: Any) -> tuple[int, dict[str, Any]]:
        try:
            if kind not in analysis.ARGO_ENDPOINTS:
                raise _NotFound(f"unknown Argo endpoint {kind!r}; endpoints: {', '.join(analysis.ARGO_ENDPOINTS)}")
            raw = _object(body, "the analysis template's JSON body")
            unknown = sorted(set(raw) - _ARGO_KEYS)
            if unknown:
                raise BadRequest(f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_ARGO_KEYS))}")
            namespace = _string(raw, "namespace")
            if kind == "smoke":
                candidate_hash = _string(raw, "candidateHash")
                urls = self._pods(namespace, candidate_hash)
                if not urls:
                    return 200, {"ok": False, "error": f"no ready pod with {analysis.ARGO.pod_label}={candidate_hash}"}
                return self._smoke(urls[0], raw, flagger=False)
            return 200, self._argo_decision(raw, namespace).answer()
        except (BadRequest, _Unavailable, _NotFound) as exc:
            return _error_answer(exc)

    def _argo_decision(self, raw: Mapping[str, Any], namespace: str) -> RolloutState:
        phase = _string(raw, "phase")
        if phase not in analysis.ARGO_PHASES:
            raise BadRequest(f"phase: must be one of {', '.join(analysis.ARGO_PHASES)}, got {phase!r}")
        candidate_hash, stable_hash = _string(raw, "candidateHash"), _string(raw, "stableHash")
        key = RolloutKey("argo", namespace, _string(raw, "rollout"), candidate_hash, phase)
        params = self.replay.overridden({k: v for k, v in raw.items() if k in _REPLAY_KEYS})
        selector = analysis.ARGO.selector(analysis.PRIMARY, stable_hash=stable_hash, namespace=namespace)
        measurements = _optional_int(raw, "measurements")
        stable, candidate = self._pods(namespace, stable_hash), self._pods(namespace, candidate_hash)
        state = self.interval(key, stable, candidate, selector, params)
        with state.lock:
            decision = state.decision  # set by interval(): every interval decides or halts
            if measurements and state.intervals >= measurements and decision and decision.verdict is Verdict.UNDECIDED:
                # Argo would count an undecided last measurement as a success: pause for a person instead.
                why = f"the analysis run's {measurements} measurements ended before the analysis decided"
                state.decision = _halt(decision, f"{why} ({decision.reason})")
        return state

    # -- smoke ---------------------------------------------------------------------------------------
    def _smoke(self, target: str, raw: Mapping[str, Any], *, flagger: bool) -> tuple[int, dict[str, Any]]:
        holdout = self._ready_holdout()
        model = self.replay.overridden({"model": raw["model"]} if "model" in raw else {}).model
        try:
            return 200, self.smoker(target, holdout, model)
        except ReplayError as exc:
            # Flagger needs a non-2xx to fail a pre-rollout hook; Argo a 200 whose ``ok`` is false (Failed).
            return (502 if flagger else 200), {"ok": False, "target": target, "error": str(exc)}


_REPLAY_KEYS = ("model", "transactions", "batchSize", "timeoutSeconds")
_ARGO_KEYS = {"namespace", "rollout", "phase", "candidateHash", "stableHash", "measurements", *_REPLAY_KEYS}


class _Unavailable(RuntimeError):
    pass


class _NotFound(LookupError):
    pass


def _error_answer(exc: BadRequest | _Unavailable | _NotFound) -> tuple[int, dict[str, Any]]:
    """A hook's answer to a request it cannot serve: 400 as sent, 404 unknown endpoint, 503 a dependency down."""
    status = 400 if isinstance(exc, BadRequest) else 404 if isinstance(exc, _NotFound) else 503
    return status, {"error": str(exc)}


@dataclass(frozen=True)
class _FlaggerPayload:
    name: str
    namespace: str
    phase: str
    checksum: str
    metadata: dict[str, Any]


_FLAGGER_METADATA = {"stable", "candidate", "target", *_REPLAY_KEYS}


def _object(body: Any, what: str) -> dict[str, Any]:
    if not isinstance(body, Mapping):
        raise BadRequest(f"body must be a JSON object ({what})")
    return dict(body)


def _string(raw: Mapping[str, Any], key: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value or value.startswith("{{"):
        raise BadRequest(f"{key}: must be a non-empty string, got {value!r}")
    return value


def _optional_int(raw: Mapping[str, Any], key: str) -> int | None:
    if key not in raw:
        return None
    try:
        value = int(str(raw[key]))
    except ValueError:
        raise BadRequest(f"{key}: must be a whole number, got {raw[key]!r}") from None
    if value < 1:
        raise BadRequest(f"{key}: must be 1 or more, got {value}")
    return value


def _flagger_payload(body: Any) -> _FlaggerPayload:
    """Flagger's CanaryWebhookPayload (name, namespace, phase, checksum, metadata: map of strings)."""
    raw = _object(body, "Flagger's webhook payload: name, namespace, phase, checksum, metadata")
    metadata = raw.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        raise BadRequest(f"metadata: must be an object of strings, got {type(metadata).__name__}")
    unknown = sorted(set(metadata) - _FLAGGER_METADATA)
    if unknown:
        raise BadRequest(
            f"metadata: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(_FLAGGER_METADATA))}"
        )
    checksum = raw.get("checksum") or ""
    if not isinstance(checksum, str):
        raise BadRequest(f"checksum: must be a string, got {checksum!r}")
    return _FlaggerPayload(
        name=_string(raw, "name"),
        namespace=_string(raw, "namespace"),
        phase=str(raw.get("phase") or ""),
        checksum=checksum,
        metadata=dict(metadata),
    )


def _halt(previous: Decision | None, reason: str) -> Decision:
    """A hold the analysis did not take (no data, a run ending undecided), keeping what it said last."""
    if previous is None:
        return Decision(verdict=Verdict.HALT, reason=f"halt: {reason}", checks=(), looks=0, final=False)
    return replace(previous, verdict=Verdict.HALT, reason=f"halt: {reason}", final=False)


def replay_sides(
    stable: Sequence[str],
    candidate: Sequence[str],
    holdout: Holdout,
    params: ReplayParameters,
    should_stop: Callable[[], bool],
) -> PairedResult:
    return paired_replay(
        list(stable),
        list(candidate),
        holdout,
        model=params.model,
        transactions=params.transactions,
        batch_size=params.batch_size,
        timeout_seconds=params.timeout_seconds,
        spread_seconds=params.timeout_seconds * params.spread_share,
        should_stop=should_stop,
    )


def _side_summary(side: Any) -> str:
    return (
        f"{side.answered}/{side.requests} batches ok" if not side.error else f"{side.answered} answered, {side.error}"
    )


# ---------------------------------------------------------------------------------------------------
# Kubernetes: the pods of a ReplicaSet by pod-template hash (Argo Rollouts)


class KubePodResolver:
    """Ready model-server pods carrying ``rollouts-pod-template-hash=<hash>``, through the API server."""

    def __init__(self, cluster: Cluster, *, port: int, workload_selector: str) -> None:
        self.cluster = cluster
        self.port = port
        self.workload_selector = workload_selector

    def urls(self, namespace: str, pod_template_hash: str) -> list[str]:
        selector = f"{self.workload_selector},{analysis.ARGO.pod_label}={pod_template_hash}"
        urls = []
        for pod in self.cluster.list_pods(namespace, selector):
            status = pod.get("status", {})
            ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions", []))
            if ready and status.get("podIP") and not pod.get("metadata", {}).get("deletionTimestamp"):
                urls.append(f"http://{status['podIP']}:{self.port}")
        return sorted(urls)


# ---------------------------------------------------------------------------------------------------
# HTTP: a Starlette app served by uvicorn


def create_app(service: DecisionService) -> Any:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def body_of(request: Request) -> Any:
        data = await request.body()
        if len(data) > MAX_BODY_BYTES:
            raise BadRequest(f"body: larger than {MAX_BODY_BYTES} bytes")
        try:
            return json.loads(data or b"{}")
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadRequest(f"body: not JSON ({exc.__class__.__name__}: {exc})") from None

    def posted(decide: Callable[[str, Any], Answer], parameter: str) -> Callable[[Request], Awaitable[JSONResponse]]:
        """A controller's POST: the JSON body and the path parameter to ``decide``, run off the event loop
        (it replays for seconds)."""

        async def endpoint(request: Request) -> JSONResponse:
            try:
                body = await body_of(request)
            except BadRequest as exc:
                return JSONResponse({"error": str(exc)}, status_code=400)
            status, answer = await run_in_threadpool(decide, request.path_params[parameter], body)
            return JSONResponse(answer, status_code=status)

        return endpoint

    def read(report: Callable[[], Answer]) -> Callable[[Request], Awaitable[JSONResponse]]:
        async def endpoint(request: Request) -> JSONResponse:
            status, answer = report()
            return JSONResponse(answer, status_code=status)

        return endpoint

    async def not_found(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(
            {"error": f"no route {request.method} {request.url.path}; see docs/CONTRACTS.md (decision service)"},
            status_code=getattr(exc, "status_code", 404),
        )

    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("decision: unexpected error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": f"internal error: {type(exc).__name__}: {exc}"[:500]}, status_code=500)

    routes = [
        Route("/healthz", read(service.healthz), methods=["GET"]),
        Route("/rollouts", read(service.rollouts), methods=["GET"]),
        Route("/flagger/{hook}", posted(service.flagger, "hook"), methods=["POST"]),
        Route("/argo/{kind}", posted(service.argo, "kind"), methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found, Exception: server_error})


# ---------------------------------------------------------------------------------------------------
# Command line: ``python -m ops.replay serve`` (the image's command) or ``fraudctl replay serve``; the
# arguments are declared in ops/replay.py.


def settings_from_env() -> AnalysisSettings:
    """The stack's analysis section, as the Pulumi program wrote it into the Deployment's environment."""
    raw = os.environ.get(ANALYSIS_ENV, "{}")
    try:
        section = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ReplayError(f"{ANALYSIS_ENV}: not JSON ({exc})") from None
    settings, problems = AnalysisSettings.from_section("analysis", section)
    if settings is None:
        raise ReplayError(f"{ANALYSIS_ENV}: " + "; ".join(problems))
    return settings


def run_serve(args: argparse.Namespace) -> int:
    import uvicorn

    try:
        settings = settings_from_env()
    except ReplayError as exc:  # the Deployment's environment is the input here
        raise UsageError(str(exc)) from None
    allowed = [t.strip() for t in os.environ.get(ALLOWED_TARGETS_ENV, "").split(",") if t.strip()]
    prometheus = os.environ.get(PROMETHEUS_ENV, "")
    from rollout.plan import pairs_per_interval

    replay = ReplayParameters(
        model=os.environ.get(MODEL_ENV, "fraud-detector"),
        transactions=args.transactions or pairs_per_interval(settings.replay_rate, settings.interval_seconds),
        timeout_seconds=max(10.0, settings.interval_seconds * 0.75),
    )
    resolver = None
    if args.kubernetes:
        from ops.cluster import ClusterConfigError, connect
        from serving.settings import DEFAULT_HTTP_PORT

        try:
            cluster = connect(allow_in_cluster=True)  # the pod's service account (a kubeconfig elsewhere)
        except ClusterConfigError as exc:
            raise UsageError(f"--kubernetes: {exc}") from None
        resolver = KubePodResolver(
            cluster,
            port=DEFAULT_HTTP_PORT,
            workload_selector="fraud-platform/workload=model-server",
        )
    service = DecisionService(
        settings,
        holdout_loader(args.holdout, args.source),
        replay=replay,
        allowed_targets=allowed,
        health=PrometheusHealth(prometheus, settings) if prometheus else None,
        resolver=resolver,
    )
    threading.Thread(target=service.load, name="holdout", daemon=True).start()
    log.info(
        "decision: serving on %s:%d, targets %s, Prometheus %s",
        args.host, args.port, allowed or "any", prometheus or "none",
    )  # fmt: skip
    uvicorn.run(create_app(service), host=args.host, port=args.port, log_level="warning", access_log=False)
    service.stop()
    return 0
