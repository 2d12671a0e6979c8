"""The local rig: two real MLServer processes (stable and candidate), a real Prometheus scraping both,
and labelled traffic between them. It implements what the rollout engine asks for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rehearsal.engine import CheckResult
from rehearsal.prometheus import PrometheusProcess, ScrapeTarget
from rehearsal.traffic import Backend, LabelledTraffic
from rollout import analysis
from rollout.settings import AnalysisSettings
from serving.process import MLServerProcess

Log = Callable[[str], None]


@dataclass
class RigModels:
    stable_uri: str
    stable_version: str
    candidate_uri: str
    candidate_version: str
    model_name: str = "fraud-detector"


@dataclass
class LocalRig:
    models: RigModels
    settings: AnalysisSettings
    traffic: LabelledTraffic
    fault_mode: str | None = None
    scrape_interval: float = 1.0
    log: Log = field(default=lambda message: None)
    serving_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stable: MLServerProcess | None = None
        self.candidate: MLServerProcess | None = None
        self.prometheus: PrometheusProcess | None = None
        self._old_candidates: list[MLServerProcess] = []
        self._signing_key: str | None = None
        self.checks = analysis.rollout_checks(self.settings)
        self.faulty_since: float | None = None
        self.started_pids: list[int] = []  # every process the rig started, for leftover checks

    # -- lifecycle ---------------------------------------------------------------------------------
    def start(self) -> LocalRig:
        self.log(
            f"starting MLServer {self.models.stable_version} (stable) and {self.models.candidate_version} (candidate)"
        )
        self.stable = self._server(self.models.stable_uri, self.models.stable_version).start()
        self._signing_key = self.stable.signing_key
        self.candidate = self._server(self.models.candidate_uri, self.models.candidate_version).start()
        self.prometheus = PrometheusProcess(self._targets(), scrape_interval_seconds=self.scrape_interval).start()
        self.started_pids += [p for p in (self.stable.pid, self.candidate.pid, self.prometheus.pid) if p]
        self.prometheus.wait_for_targets()
        self.log(f"prometheus on {self.prometheus.url} scraping both servers every {self.scrape_interval:g}s")
        return self

    def _server(self, uri: str, version: str, env: dict[str, str | None] | None = None) -> MLServerProcess:
        options = dict(self.serving_options)
        merged_env = {**options.pop("env", {}), **(env or {})}
        return MLServerProcess(uri, version_label=version, signing_key=self._signing_key, env=merged_env, **options)

    def _targets(self) -> list[ScrapeTarget]:
        assert self.stable and self.candidate
        return [
            ScrapeTarget("fraud-model", self.stable.metrics_url.split("//", 1)[1].split("/", 1)[0], {"role": "stable"}),
            ScrapeTarget(
                "fraud-model", self.candidate.metrics_url.split("//", 1)[1].split("/", 1)[0], {"role": "candidate"}
            ),
        ]

    def stop(self) -> None:
        for proc in [self.prometheus, self.candidate, self.stable, *self._old_candidates]:
            if proc is not None:
                try:
                    proc.stop()
                except Exception as exc:  # keep stopping the rest
                    self.log(f"stop failed: {exc}")
        self.prometheus = self.candidate = self.stable = None
        self._old_candidates.clear()
        self.traffic.close()

    def __enter__(self) -> LocalRig:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what the engine asks ----------------------------------------------------------------------
    def _backends(self) -> tuple[Backend, Backend]:
        assert self.stable and self.candidate
        return (
            Backend(self.models.stable_version, self.stable.http_url),
            Backend(self.models.candidate_version, self.candidate.http_url, faulty=self.faulty_since is not None),
        )

    def send_traffic(self, seconds: float, candidate_weight: int, *, preview_only: bool = False) -> None:
        stable, candidate = self._backends()
        # Production traffic follows the weight (blue-green preview: all of it stays on the active
        # Service); the labelled replay goes straight to the candidate while it is being judged.
        routes = [(stable, 100.0 - candidate_weight), (candidate, float(candidate_weight))]
        replay_to = candidate if (preview_only or 0 < candidate_weight < 100) else None
        if seconds > 0:
            self.traffic.run(seconds, routes, feedback_to=[stable, candidate], replay_to=replay_to)

    def inject_fault(self) -> None:
        """Roll the candidate to a faulty pod, as `SIMULATE_ERROR` set on the canary would: the new process
        is ready before traffic moves to it, so the fault shows in the model's answers, not as downtime."""
        assert self.candidate and self.prometheus and self.fault_mode
        env = {"SIMULATE_ERROR": "true" if self.fault_mode == "error" else self.fault_mode}
        self.log(f"injecting fault: SIMULATE_ERROR={env['SIMULATE_ERROR']} on the candidate")
        faulty = self._server(self.models.candidate_uri, self.models.candidate_version, env).start()
        if faulty.pid:
            self.started_pids.append(faulty.pid)
        old, self.candidate = self.candidate, faulty
        self.prometheus.set_targets(self._targets())
        old.stop()
        self.faulty_since = time.time()

    def _results(self, version: str, window_seconds: float) -> list[CheckResult]:
        assert self.prometheus
        results = []
        for check in self.checks:
            query = analysis.concrete_query(check, version=version, window_seconds=window_seconds)
            value = self.prometheus.query(query)
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

    def evaluate(self, window_seconds: float) -> list[CheckResult]:
        time.sleep(self.scrape_interval * 1.5)  # let the last samples of the interval be scraped
        return self._results(self.models.candidate_version, window_seconds)

    def observe(self, window_seconds: float) -> dict[str, dict[str, float | None]]:
        return {
            version: {r.name: r.value for r in self._results(version, window_seconds)}
            for version in (self.models.stable_version, self.models.candidate_version)
        }
