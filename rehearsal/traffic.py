"""Labelled holdout traffic, split between two model servers by weight, with feedback posted back.

Feedback for each prediction goes to a server chosen at random, not necessarily the one that answered,
as behind a Kubernetes Service with several replicas; the signed prediction id carries the version.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import httpx

from serving.client import build_feedback, build_infer_request, infer_path, parse_infer_response


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
    replayed_to_faulty: int = 0  # labelled replay a faulty candidate answered (the load tester's)
    feedback_posted: int = 0
    feedback_rejected: int = 0

    def add_failure(self, version: str) -> None:
        self.failed[version] = self.failed.get(version, 0) + 1


class LabelledTraffic:
    """Replays holdout rows (features, label) with a chosen share of frauds, deterministically seeded."""

    def __init__(
        self,
        feature_names: Sequence[str],
        rows: Sequence[Sequence[float]],
        labels: Sequence[int],
        *,
        model_name: str,
        fraud_share: float = 0.2,
        seed: int = 7,
    ) -> None:
        if not rows:
            raise ValueError("no holdout rows to replay")
        self.feature_names = list(feature_names)
        self.model_name = model_name
        self._frauds = [i for i, y in enumerate(labels) if y == 1]
        self._legit = [i for i, y in enumerate(labels) if y == 0]
        if not self._frauds or not self._legit:
            raise ValueError("the holdout needs both frauds and legitimate transactions")
        self.rows, self.labels = rows, labels
        self.fraud_share = fraud_share
        self._rng = random.Random(seed)
        self._client = httpx.Client(timeout=5.0)
        self.tally = TrafficTally()

    def _next_row(self) -> int:
        pool = self._frauds if self._rng.random() < self.fraud_share else self._legit
        return pool[self._rng.randrange(len(pool))]

    def run(
        self,
        seconds: float,
        routes: Sequence[tuple[Backend, float]],
        feedback_to: Sequence[Backend],
        *,
        replay_to: Backend | None = None,
    ) -> None:
        """Send requests for ``seconds``: production traffic drawn by weight (weights sum to 100) and, with
        ``replay_to``, as much labelled replay sent straight to that backend, as Flagger's load tester
        webhook does to the canary so that a 5% step still gets enough labelled frauds to judge."""
        deadline = time.monotonic() + seconds
        backends = [b for b, _ in routes]
        weights = [w for _, w in routes]
        while time.monotonic() < deadline:
            backend = self._rng.choices(backends, weights=weights)[0]
            self._send(backend, self._next_row(), feedback_to)
            if replay_to is not None:
                self._send(replay_to, self._next_row(), feedback_to, replay=True)

    def _send(self, backend: Backend, index: int, feedback_to: Sequence[Backend], *, replay: bool = False) -> None:
        self.tally.requests += 1
        if backend.faulty:
            if replay:
                self.tally.replayed_to_faulty += 1
            else:
                self.tally.answered_while_faulty += 1
        try:
            response = self._client.post(
                backend.url + infer_path(self.model_name),
                json=build_infer_request(
                    [dict(zip(self.feature_names, self.rows[index], strict=True))], self.feature_names
                ),
            )
        except httpx.HTTPError:
            self.tally.add_failure(backend.version)
            return
        if response.status_code >= 500:
            self.tally.add_failure(backend.version)
            return
        if response.status_code != 200:
            raise RuntimeError(f"{backend.version} refused a replayed request: {response.status_code} {response.text}")
        self.tally.served[backend.version] = self.tally.served.get(backend.version, 0) + 1
        (prediction,) = parse_infer_response(response.json()).rows
        target = self._rng.choice(list(feedback_to))
        try:
            fb = self._client.post(
                f"{target.url}/feedback", json=build_feedback(prediction.prediction_id, int(self.labels[index]))
            )
        except httpx.HTTPError:
            self.tally.feedback_rejected += 1
            return
        if fb.status_code == 200:
            self.tally.feedback_posted += 1
        else:
            self.tally.feedback_rejected += 1

    def close(self) -> None:
        self._client.close()
