"""Production traffic of the rehearsal: unlabelled requests at a steady rate, split between the stable and the
candidate by the rollout's weight, from a background thread while the engine walks the rollout.

Labels do not come with production traffic (they arrive days later); the labelled evidence is the decision
service's paired replay (ops/replay.py). What production traffic shows is the system side (success rate,
latency in Prometheus) and the user impact: every answer a faulty candidate gave is counted.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from serving.client import build_infer_request, infer_path


@dataclass
class Backend:
    """One model server as traffic sees it."""

    version: str
    url: str
    faulty: bool = False


@dataclass
class TrafficTally:
    requests: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    served: dict[str, int] = field(default_factory=dict)
    answered_while_faulty: int = 0  # production requests a faulty candidate answered (user impact)
    replayed_to_faulty: int = 0  # labelled replay a faulty candidate answered (the decision service's)
    feedback_posted: int = 0  # labels the replay posted (both sides)
    feedback_rejected: int = 0

    def add_failure(self, version: str) -> None:
        self.failed[version] = self.failed.get(version, 0) + 1


class ProductionTraffic:
    """Requests at ``rate`` per second, each to the candidate with probability weight/100, else the stable."""

    def __init__(
        self,
        feature_names: Sequence[str],
        rows: Sequence[Sequence[float]],
        *,
        model_name: str,
        rate: float = 10.0,
        seed: int = 7,
    ) -> None:
        if not rows:
            raise ValueError("no holdout rows to send")
        if not rate > 0:
            raise ValueError(f"rate: must be positive, got {rate!r}")
        self.feature_names = list(feature_names)
        self.rows = rows
        self.model_name = model_name
        self.rate = rate
        self.tally = TrafficTally()
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._weight = 0
        self._stable: Backend | None = None
        self._candidate: Backend | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._client = httpx.Client(timeout=5.0)

    def route(self, stable: Backend, candidate: Backend) -> None:
        """Where requests go from now on (a new candidate process after a fault, for instance)."""
        with self._lock:
            self._stable, self._candidate = stable, candidate

    def set_weight(self, candidate_weight: int) -> None:
        if not 0 <= candidate_weight <= 100:
            raise ValueError(f"candidate_weight: must be in [0, 100], got {candidate_weight}")
        with self._lock:
            self._weight = candidate_weight

    def start(self) -> ProductionTraffic:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="production-traffic", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None
        self._client.close()

    def _run(self) -> None:
        period = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            with self._lock:
                stable, candidate, weight = self._stable, self._candidate, self._weight
            if stable is not None and candidate is not None:
                backend = candidate if self._rng.random() * 100 < weight else stable
                self._send(backend, self.rows[self._rng.randrange(len(self.rows))])
            next_at += period
            # Behind schedule (a slow answer): skip the missed slots rather than burst to catch up.
            next_at = max(next_at, time.monotonic())
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def _send(self, backend: Backend, row: Sequence[float]) -> None:
        tally = self.tally
        tally.requests += 1
        if backend.faulty:
            tally.answered_while_faulty += 1
        try:
            response = self._client.post(
                backend.url + infer_path(self.model_name),
                json=build_infer_request([dict(zip(self.feature_names, row, strict=True))], self.feature_names),
            )
        except httpx.HTTPError:
            tally.add_failure(backend.version)
            return
        if response.status_code >= 400:
            tally.add_failure(backend.version)
            return
        tally.served[backend.version] = tally.served.get(backend.version, 0) + 1
