"""The local rig: two real MLServer processes (stable and candidate), a real Prometheus scraping both, production
traffic between them, and the decision service's logic (ops/decision_service.py) replaying to both.

Prometheus attaches to each server's series the pod labels the cluster's ServiceMonitor carries
(``podTargetLabels``, rollout/analysis.py): canary: ``app_kubernetes_io_name`` = ``fraud-detector``
(the canary) or ``fraud-detector-primary``; blue-green: ``rollouts_pod_template_hash``. The checks and the
primary's health use the controllers' own selectors on them, so the rehearsal selects pods as the cluster does.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from ops.decision_service import DecisionService, HealthReading, PrometheusHealth, ReplayParameters, replay_sides
from ops.replay import Holdout, PairedResult
from rehearsal.engine import NAMESPACE, TARGET, CheckResult
from rehearsal.prometheus import PrometheusProcess, ScrapeTarget
from rehearsal.traffic import Backend, ProductionTraffic
from rollout import analysis
from rollout.settings import AnalysisSettings
from serving.process import MLServerProcess

log = logging.getLogger(__name__)


@dataclass
class RigModels:
    stable_uri: str
    stable_version: str
    candidate_uri: str
    candidate_version: str
    model_name: str = "fraud-detector"


def pod_template_hash(*parts: str) -> str:
    """A stand-in for Argo's ``rollouts-pod-template-hash`` (the cluster hashes the pod template)."""
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:10]


@dataclass
class LocalRig:
    models: RigModels
    settings: AnalysisSettings
    traffic: ProductionTraffic
    strategy: str = "canary"
    fault_mode: str | None = None
    scrape_interval: float = 1.0
    serving_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.strategy not in ("canary", "blue-green"):
            raise ValueError(f"strategy: must be canary or blue-green, got {self.strategy!r}")
        self.stable: MLServerProcess | None = None
        self.candidate: MLServerProcess | None = None
        self.prometheus: PrometheusProcess | None = None
        self._signing_key: str | None = None
        self.checks = analysis.analysis_checks(self.settings)
        self.identity = analysis.FLAGGER if self.strategy == "canary" else analysis.ARGO
        self.hashes = (
            pod_template_hash(self.models.stable_uri, self.models.stable_version),
            pod_template_hash(self.models.candidate_uri, self.models.candidate_version),
        )
        self.faulty_since: float | None = None
        self._replayed_at = 0.0  # when the last replay ended (its requests must be scraped before a query)
        self.started_pids: list[int] = []  # every process the rig started, for leftover checks
        self._retired: list[MLServerProcess] = []  # candidates replaced by a faulty one, stopped with the rig

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> LocalRig:
        log.info(
            "rehearse: starting MLServer %s (stable) and %s (candidate)",
            self.models.stable_version,
            self.models.candidate_version,
        )
        # Both servers boot side by side (most of a start is the interpreter importing the runtime), while
        # Prometheus starts; each is kept as soon as it is launched, so stop() finds it whatever happens next.
        self.stable = self._server(self.models.stable_uri, self.models.stable_version)
        self._signing_key = self.stable.signing_key
        self.candidate = self._server(self.models.candidate_uri, self.models.candidate_version)
        for server in (self.stable, self.candidate):
            server.start(wait=False)
            self.started_pids += [server.pid] if server.pid else []
        self.prometheus = PrometheusProcess(self._targets(), scrape_interval_seconds=self.scrape_interval)
        self.prometheus.start()
        self.started_pids += [self.prometheus.pid] if self.prometheus.pid else []
        self.stable.wait_ready()
        self.candidate.wait_ready()
        self.prometheus.wait_for_targets()
        log.info(f"rehearse: prometheus on {self.prometheus.url} scraping both servers every {self.scrape_interval:g}s")
        self.traffic.route(*self._backends())
        self.traffic.start()
        return self

    def _server(self, uri: str, version: str, env: dict[str, str | None] | None = None) -> MLServerProcess:
        options = dict(self.serving_options)
        merged_env = {**options.pop("env", {}), **(env or {})}
        return MLServerProcess(uri, version_label=version, signing_key=self._signing_key, env=merged_env, **options)

    def _pod_labels(self, role: str) -> dict[str, str]:
        """The labels the ServiceMonitor's podTargetLabels would put on this side's series."""
        stable_hash, candidate_hash = self.hashes
        value = self.identity.value(role, target=TARGET, candidate_hash=candidate_hash, stable_hash=stable_hash)
        return {"namespace": NAMESPACE, self.identity.label: value}

    def _targets(self) -> list[ScrapeTarget]:
        assert self.stable and self.candidate
        return [
            ScrapeTarget("fraud-model", _address(self.stable), self._pod_labels(analysis.PRIMARY)),
            ScrapeTarget("fraud-model", _address(self.candidate), self._pod_labels(analysis.CANDIDATE)),
        ]

    def stop(self) -> None:
        self.traffic.stop()
        for proc in [self.prometheus, self.candidate, self.stable, *self._retired]:
            if proc is not None:
                try:
                    proc.stop()
                except Exception as exc:  # keep stopping the rest
                    log.warning(f"rehearse: stop failed: {exc}")
        self.prometheus = self.candidate = self.stable = None
        self._retired.clear()

    def __enter__(self) -> LocalRig:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the decision service, wired to this rig -------------------------------------------------------
    def decisions(self, holdout: Holdout, replay: ReplayParameters, *, interval_seconds: float) -> DecisionService:
        """The decision service's logic with this rig's pods, Prometheus and tally (called in process)."""
        health = _RigHealth(self, PrometheusHealth("", self.settings, window_seconds=interval_seconds))

        def replayer(
            stable: Sequence[str], candidate: Sequence[str], data: Holdout, params: ReplayParameters, stop: Any
        ) -> PairedResult:
            result = replay_sides(stable, candidate, data, params, stop)
            self._replayed_at = time.monotonic()
            tally = self.traffic.tally
            tally.feedback_posted += result.stable.feedback_accepted + result.candidate.feedback_accepted
            tally.feedback_rejected += result.stable.feedback_refused + result.candidate.feedback_refused
            if self.faulty_since is not None:
                tally.replayed_to_faulty += result.candidate.answered
            return result

        return DecisionService(self.settings, holdout, replay=replay, health=health, resolver=self, replayer=replayer)

    def urls(self, namespace: str, pod_template_hash: str) -> list[str]:
        """Argo's pods by hash (the cluster asks the API server; here the two local servers)."""
        stable_hash, candidate_hash = self.hashes
        server = {stable_hash: self.stable, candidate_hash: self.candidate}.get(pod_template_hash)
        return [server.http_url] if server is not None and namespace == NAMESPACE else []

    # -- what the engine asks ----------------------------------------------------------------------
    def _backends(self) -> tuple[Backend, Backend]:
        assert self.stable and self.candidate
        return (
            Backend(self.models.stable_version, self.stable.http_url),
            Backend(self.models.candidate_version, self.candidate.http_url, faulty=self.faulty_since is not None),
        )

    def targets(self) -> tuple[str, str]:
        assert self.stable and self.candidate
        return self.stable.http_url, self.candidate.http_url

    def pod_hashes(self) -> tuple[str, str]:
        return self.hashes

    def set_weight(self, candidate_weight: int) -> None:
        self.traffic.set_weight(candidate_weight)

    def wait(self, seconds: float) -> None:
        time.sleep(seconds)

    def now(self) -> float:
        return time.time()

    def bad_answers(self) -> int:
        return self.traffic.tally.answered_while_faulty

    def inject_fault(self) -> float:
        """Roll the candidate to a faulty pod, as `SIMULATE_ERROR` set on it would: the new process is ready
        before traffic moves to it, so the fault shows in the model's answers, not as downtime. Returns when
        the fault reached traffic."""
        assert self.candidate and self.prometheus and self.fault_mode
        env = {"SIMULATE_ERROR": "true" if self.fault_mode == "error" else self.fault_mode}
        log.info(f"rehearse: injecting fault: SIMULATE_ERROR={env['SIMULATE_ERROR']} on the candidate")
        faulty = self._server(self.models.candidate_uri, self.models.candidate_version, env).start()
        if faulty.pid:
            self.started_pids.append(faulty.pid)
        old, self.candidate = self.candidate, faulty
        # Scraped before it takes traffic, as a cluster's Prometheus discovers a pod as it becomes ready.
        self.prometheus.set_targets(self._targets())
        self.faulty_since = time.time()
        self.traffic.route(*self._backends())
        # The old process stops with the rig: stopping it now would delay the interval the fault is judged in.
        self._retired.append(old)
        return self.faulty_since

    def _query(self, role: str, check: analysis.AnalysisCheck, window_seconds: float) -> tuple[float | None, str]:
        stable_hash, candidate_hash = self.hashes
        query = analysis.concrete_query(
            check,
            self.identity,
            role,
            window_seconds=window_seconds,
            target=TARGET,
            namespace=NAMESPACE,
            candidate_hash=candidate_hash,
            stable_hash=stable_hash,
        )
        if self.prometheus is None:
            return None, query
        # Prometheus gone is not a value: it ends the rehearsal with a report (rehearsal/run.py), never a pass.
        return self.prometheus.query(query), query

    def settle(self) -> None:
        """Wait until the last replay's requests were scraped (1.5 scrape intervals after it ended)."""
        time.sleep(max(0.0, self._replayed_at + self.scrape_interval * 1.5 - time.monotonic()))

    def system_checks(self, window_seconds: float) -> list[CheckResult]:
        self.settle()
        results = []
        for check in self.checks:
            value, query = self._query(analysis.CANDIDATE, check, window_seconds)
            if value == check.no_data_value:
                value = None
            results.append(
                CheckResult(
                    name=check.name,
                    value=value,
                    threshold=check.threshold,
                    direction=check.direction,
                    passed=analysis.passes(check, value),
                    query=query,
                )
            )
        return results

    def observe(self, window_seconds: float) -> dict[str, dict[str, float | None]]:
        observed: dict[str, dict[str, float | None]] = {}
        sides = ((analysis.PRIMARY, self.models.stable_version), (analysis.CANDIDATE, self.models.candidate_version))
        for role, version in sides:
            values: dict[str, float | None] = {}
            for check in self.checks:
                value, _ = self._query(role, check, window_seconds)
                values[check.name] = None if value == check.no_data_value else value
            observed[version] = values
        return observed


class _RigHealth:
    """The primary's health from the rig's Prometheus (its address is only known once it started)."""

    def __init__(self, rig: LocalRig, reader: PrometheusHealth) -> None:
        self.rig = rig
        self.reader = reader

    def read(self, selector: str) -> HealthReading:
        if self.rig.prometheus is None:
            return HealthReading(None, detail="no data: Prometheus is not running")
        self.reader.url = self.rig.prometheus.url
        self.rig.settle()
        return self.reader.read(selector)


def _address(server: MLServerProcess) -> str:
    return server.metrics_url.split("//", 1)[1].split("/", 1)[0]
