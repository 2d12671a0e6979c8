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
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

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
    """Reads rollout objects through one cluster's API (a KubeClient)."""

    client: Any
    strategy: str
    namespace: str = TARGET_NAMESPACE
    name: str = TARGET_NAME

    def _path(self, kind: str, name: str) -> str:
        ns = self.namespace
        return {
            "canary": f"/apis/flagger.app/v1beta1/namespaces/{ns}/canaries/{name}",
            "rollout": f"/apis/argoproj.io/v1alpha1/namespaces/{ns}/rollouts/{name}",
            "deployment": f"/apis/apps/v1/namespaces/{ns}/deployments/{name}",
        }[kind]

    def target_version(self) -> str | None:
        """The version this cluster is rolling out (its target's template)."""
        kind = "deployment" if self.strategy == "canary" else "rollout"
        return _template_version(self.client.get(self._path(kind, self.name)))

    def state(self, region: str) -> RegionState:
        from ops.kube import KubeError

        try:
            if self.strategy == "canary":
                canary = self.client.get(self._path("canary", self.name))
                primary = self.client.get(self._path("deployment", f"{self.name}-primary"))
                return canary_state(region, canary, primary)
            return rollout_state(region, self.client.get(self._path("rollout", self.name)))
        except KubeError as exc:
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
        from ops.kube import KubeError

        with self._lock:
            now = time.monotonic()
            if self._cached and now - self._cached[0] < self.cache_seconds:
                return self._cached[1]
            try:
                version = self.local.target_version()
            except KubeError as exc:
                decision = GateDecision(False, None, (), f"cannot read this region's target ({exc})")
            else:
                decision = decide(version, [reader.state(region) for region, reader in self.upstream.items()])
            self._cached = (now, decision)
            return decision


def serve(gate: WaveGate, host: str, port: int, *, log: Any = None) -> Any:
    """An HTTP server for the gate (call ``serve_forever`` on the result)."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        server_version = "fraud-wave-gate"

        def _send(self, status: int, payload: Mapping[str, Any]) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._send(200, {"ok": True})
            elif self.path.split("?")[0] == "/status":
                # Always 200 with the decision: Argo Rollouts' web metric evaluates `result.ready`.
                self._send(200, gate.decide().to_json())
            else:
                self._send(404, {"error": f"no such path {self.path}; use POST /gate, GET /status or /healthz"})

        def do_POST(self) -> None:
            if self.path.split("?")[0] != "/gate":
                self._send(404, {"error": f"no such path {self.path}; use POST /gate"})
                return
            length = int(self.headers.get("Content-Length") or 0)
            payload = self.rfile.read(length) if length else b""
            try:
                hook = json.loads(payload or b"{}")
            except json.JSONDecodeError:
                self._send(400, {"error": "body must be Flagger's webhook JSON"})
                return
            decision = gate.decide()
            if log:
                who = f"{hook.get('namespace', '?')}/{hook.get('name', '?')}" if isinstance(hook, dict) else "?"
                log(f"gate for {who}: {'open' if decision.ready else 'closed'}: {decision.reason}")
            # Flagger's confirm-rollout: any non-2xx answer holds the canary until the next interval.
            self._send(200 if decision.ready else 403, decision.to_json())

        def log_message(self, fmt: str, *args: Any) -> None:
            return

    return ThreadingHTTPServer((host, port), Handler)
