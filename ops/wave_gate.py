"""The rollout wave gate (runs in the cluster, ``fraudctl wave-gate serve``): a region starts rolling out
a model version only after every region of the previous wave has promoted that same version.

The gate reads the version this region is about to roll out (its own target's pod label
``fraud-platform/model-version``) and, in every upstream region, whether that version is promoted:
Flagger: Canary phase Initialized/Succeeded with lastAppliedSpec == lastPromotedSpec and the
``-primary`` Deployment on that version; Argo Rollouts: Rollout Healthy, stableRS == currentPodHash,
template on that version. Anything unreadable holds the rollout (fails closed). Flagger calls it as a
``confirm-rollout`` webhook (``POST /gate``: 200 lets the canary start, anything else holds it);
Argo Rollouts reads ``GET /status`` as a web metric (``result.ready == true``). What the stack declares
for it (identities, Deployment, webhook) is infra/waves.py.

Served as an ASGI app (starlette) by uvicorn; SIGTERM (a pod being stopped) finishes the requests in flight,
then exits 0.
"""

from __future__ import annotations

import json
import logging
import signal
import socket
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Any

from ops.cluster import CANARIES, ROLLOUTS, Cluster, ClusterError

if TYPE_CHECKING:
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.responses import Response

log = logging.getLogger(__name__)

GATE_PORT = 8080
# The fraud service's names (infra/service): what is rolled out and where.
TARGET_NAMESPACE = "fraud"
TARGET_NAME = "fraud-detector"
VERSION_LABEL = "fraud-platform/model-version"
PROMOTED_CANARY_PHASES = ("Initialized", "Succeeded")


# ---------------------------------------------------------------------------------------------------
# Reading rollout state (pure functions over API objects)


def _template_version(obj: Mapping[str, Any] | None) -> str | None:
    template = ((obj or {}).get("spec") or {}).get("template") or {}
    return ((template.get("metadata") or {}).get("labels") or {}).get(VERSION_LABEL)


@dataclass(frozen=True)
class RegionState:
    region: str
    promoted: str | None  # the version fully promoted there (None: none, or a rollout in progress)
    phase: str
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"promoted_version": self.promoted, "phase": self.phase, "reason": self.reason}


def canary_state(region: str, canary: Mapping[str, Any], primary: Mapping[str, Any] | None) -> RegionState:
    status = canary.get("status") or {}
    phase = status.get("phase") or "Unknown"
    if phase not in PROMOTED_CANARY_PHASES:
        return RegionState(region, None, phase, f"canary is {phase}, not promoted")
    applied, promoted = status.get("lastAppliedSpec"), status.get("lastPromotedSpec")
    if applied and promoted and applied != promoted:
        return RegionState(region, None, phase, "the canary's current spec is not the promoted one yet")
    version = _template_version(primary)
    if version is None:
        return RegionState(region, None, phase, f"primary Deployment has no {VERSION_LABEL} label")
    return RegionState(region, version, phase, f"{version} promoted")


def rollout_state(region: str, rollout: Mapping[str, Any]) -> RegionState:
    status = rollout.get("status") or {}
    phase = status.get("phase") or "Unknown"
    if phase != "Healthy":
        return RegionState(region, None, phase, f"rollout is {phase}, not promoted")
    if not status.get("stableRS") or status.get("stableRS") != status.get("currentPodHash"):
        return RegionState(region, None, phase, "the rollout's current revision is not the stable one yet")
    version = _template_version(rollout)
    if version is None:
        return RegionState(region, None, phase, f"rollout template has no {VERSION_LABEL} label")
    return RegionState(region, version, phase, f"{version} promoted")


@dataclass(frozen=True)
class GateDecision:
    ready: bool
    version: str | None
    regions: tuple[RegionState, ...]
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "ready": self.ready,
            "version": self.version,
            "reason": self.reason,
            "regions": {r.region: r.to_json() for r in self.regions},
        }


def decide(version: str | None, upstream: Sequence[RegionState]) -> GateDecision:
    """Ready when every upstream region has promoted exactly ``version``."""
    if version is None:
        return GateDecision(False, None, tuple(upstream), f"this region's target has no {VERSION_LABEL} label")
    waiting = [r for r in upstream if r.promoted != version]
    if not waiting:
        names = ", ".join(r.region for r in upstream) or "no upstream region"
        return GateDecision(True, version, tuple(upstream), f"{version} is promoted in {names}")
    detail = "; ".join(f"{r.region}: {r.reason}" for r in waiting)
    return GateDecision(False, version, tuple(upstream), f"waiting for {version} to be promoted in {detail}")


# ---------------------------------------------------------------------------------------------------
# Reading it from clusters


@dataclass
class ClusterReader:
    """Reads rollout objects through one cluster's API."""

    cluster: Cluster
    strategy: str
    namespace: str = TARGET_NAMESPACE
    name: str = TARGET_NAME

    def target_version(self) -> str | None:
        """The version this cluster is rolling out (its target's template)."""
        if self.strategy == "canary":
            return _template_version(self.cluster.get_deployment(self.namespace, self.name))
        return _template_version(self.cluster.get_custom(ROLLOUTS, self.namespace, self.name))

    def state(self, region: str) -> RegionState:
        try:
            if self.strategy == "canary":
                canary = self.cluster.get_custom(CANARIES, self.namespace, self.name)
                primary = self.cluster.get_deployment(self.namespace, f"{self.name}-primary")
                return canary_state(region, canary, primary)
            return rollout_state(region, self.cluster.get_custom(ROLLOUTS, self.namespace, self.name))
        except ClusterError as exc:
            return RegionState(region, None, "Unknown", f"cannot read rollout state ({exc})")


@dataclass
class WaveGate:
    """The gate: this region's reader and one reader per upstream region; decisions cached briefly."""

    local: ClusterReader
    upstream: Mapping[str, ClusterReader]
    cache_seconds: float = 5.0
    _cached: tuple[float, GateDecision] | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def decide(self) -> GateDecision:
        with self._lock:
            now = time.monotonic()
            if self._cached and now - self._cached[0] < self.cache_seconds:
                return self._cached[1]
            try:
                version = self.local.target_version()
            except ClusterError as exc:
                decision = GateDecision(False, None, (), f"cannot read this region's target ({exc})")
            else:
                decision = decide(version, [reader.state(region) for region, reader in self.upstream.items()])
            self._cached = (now, decision)
            return decision

    def close(self) -> None:
        for reader in (self.local, *self.upstream.values()):
            reader.cluster.close()


# ---------------------------------------------------------------------------------------------------
# Serving it


def create_app(gate: WaveGate) -> Starlette:
    """``POST /gate`` (Flagger confirm-rollout: 200 ready, 403 held), ``GET /status`` (always 200, the
    decision as JSON for Argo Rollouts' web metric), ``GET /healthz``; anything else is a JSON error."""
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    async def confirm(request: Request) -> Response:
        body = await request.body()
        try:
            hook = json.loads(body)
        except ValueError:
            hook = None
        if not isinstance(hook, dict):
            return JSONResponse(
                {"error": "the body must be Flagger's webhook JSON object (name, namespace, phase, metadata)"}, 400
            )
        decision = await run_in_threadpool(gate.decide)  # reads clusters: blocking calls off the event loop
        log.info(
            "gate for %s/%s: %s: %s",
            hook.get("namespace", "?"),
            hook.get("name", "?"),
            "open" if decision.ready else "held",
            decision.reason,
        )
        # Flagger's confirm-rollout: any non-2xx answer holds the canary until its next interval.
        return JSONResponse(decision.to_json(), 200 if decision.ready else 403)

    async def status(request: Request) -> Response:
        # Always 200 with the decision: Argo Rollouts' web metric evaluates `result.ready`.
        return JSONResponse((await run_in_threadpool(gate.decide)).to_json())

    async def healthz(request: Request) -> Response:
        return JSONResponse({"ok": True})

    async def http_error(request: Request, exc: Exception) -> Response:
        code = exc.status_code if isinstance(exc, HTTPException) else 500
        hint = "use POST /gate, GET /status or GET /healthz"
        return JSONResponse({"error": f"{request.method} {request.url.path}: HTTP {code}; {hint}"}, code)

    return Starlette(
        routes=[
            Route("/gate", confirm, methods=["POST"]),
            Route("/status", status, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        exception_handlers={HTTPException: http_error},
    )


class _Terminated(Exception):
    """SIGTERM arrived; uvicorn has finished the requests in flight."""


def listen(host: str, port: int) -> socket.socket:
    """A listening socket (port 0: any free port); OSError when the address cannot be used."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def serve(gate: WaveGate, sock: socket.socket, *, graceful_seconds: int = 10) -> None:
    """Serve the gate on ``sock`` until SIGTERM or SIGINT (KeyboardInterrupt), finishing requests in flight.

    uvicorn handles both signals itself, shuts down gracefully, then raises the signal again against the
    handler that was installed before it (uvicorn/server.py ``capture_signals``): for SIGTERM that is ours,
    which turns it into a clean return instead of the default handler's kill.
    """
    import uvicorn

    def terminated(signum: int, frame: FrameType | None) -> None:
        raise _Terminated

    config = uvicorn.Config(
        create_app(gate),
        log_config=None,  # fraudctl's logging setup applies
        access_log=False,  # every decision is logged by the app itself
        lifespan="off",
        timeout_graceful_shutdown=graceful_seconds,
    )
    in_main_thread = threading.current_thread() is threading.main_thread()  # signals are the main thread's
    previous = signal.signal(signal.SIGTERM, terminated) if in_main_thread else None
    try:
        uvicorn.Server(config).run(sockets=[sock])
    except _Terminated:
        log.info("wave-gate: stopped (SIGTERM)")
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)
        sock.close()
