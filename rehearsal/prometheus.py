"""A real Prometheus (the Debian package's binary) on a free loopback port, scraping given targets."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml

from fraudctl.lifetime import parent_death_signal
from serving.process import free_ports

log = logging.getLogger(__name__)


class PrometheusError(RuntimeError):
    """Prometheus is missing, did not start, or rejected a query."""


class PrometheusUnavailable(PrometheusError):
    """Prometheus stopped answering (exited, killed, or not listening): there is no data, not a bad value."""


def prometheus_binary() -> str:
    path = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if not path:
        raise PrometheusError("prometheus is not installed: run ./dev setup (it installs the Debian package)")
    return path


@dataclass(frozen=True)
class ScrapeTarget:
    """One metrics endpoint (host:port) and the labels Prometheus attaches to its series."""

    job: str
    address: str
    labels: Mapping[str, str]


def scrape_config(targets: list[ScrapeTarget], interval_seconds: float) -> dict[str, Any]:
    interval = f"{max(int(interval_seconds * 1000), 200)}ms"
    jobs: dict[str, list[ScrapeTarget]] = {}
    for target in targets:
        jobs.setdefault(target.job, []).append(target)
    return {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [
            {
                "job_name": job,
                "scrape_interval": interval,
                "scrape_timeout": interval,
                # The runtime labels its own series with model_version; keep its labels over ours.
                "honor_labels": True,
                "static_configs": [{"targets": [t.address], "labels": dict(t.labels)} for t in group],
            }
            for job, group in jobs.items()
        ],
    }


class PrometheusProcess:
    """Start with ``start()`` (or as a context manager); ``query`` runs an instant PromQL query."""

    def __init__(self, targets: list[ScrapeTarget], *, scrape_interval_seconds: float = 1.0) -> None:
        self.targets = targets
        self.scrape_interval_seconds = scrape_interval_seconds
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: Path | None = None
        self._log: Any = None
        self._client = httpx.Client(timeout=10.0)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> PrometheusProcess:
        try:
            self._start(timeout)
        except BaseException:  # a signal or a failed start: no process, port or folder left behind
            self.stop()
            raise
        return self

    def _start(self, timeout: float) -> None:
        binary = prometheus_binary()
        self._dir = Path(tempfile.mkdtemp(prefix="fraud-prometheus-"))
        config_path = self._dir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(scrape_config(self.targets, self.scrape_interval_seconds)))
        (self.port,) = free_ports(1)
        self._log = open(self._dir / "prometheus.log", "wb")  # noqa: SIM115 - closed in stop()
        self._proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={self._dir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=parent_death_signal(),  # SIGTERM when this process dies, even by SIGKILL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise PrometheusError(f"prometheus exited at start: {self.log_tail()}")
            try:
                if self._client.get(f"{self.url}/-/ready").status_code == 200:
                    log.debug("prometheus ready on %s: pid %d, its folder %s", self.url, self._proc.pid, self._dir)
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise PrometheusError(f"prometheus not ready after {timeout:.0f}s")

    def _unavailable(self, error: Exception) -> PrometheusUnavailable:
        exited = self._proc.poll() if self._proc is not None else None
        if self._proc is None:
            why = "it is not running"
        elif exited is not None and exited < 0:
            why = f"the process (pid {self._proc.pid}) was killed by {signal.Signals(-exited).name}"
        elif exited is not None:
            why = f"the process (pid {self._proc.pid}) exited with code {exited}"
        else:
            why = f"{type(error).__name__}: {error}"
        return PrometheusUnavailable(f"Prometheus on {self.url} stopped answering ({why})")

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One HTTP call to Prometheus; a dead or silent Prometheus is PrometheusUnavailable, never httpx's error."""
        try:
            return self._client.request(method, f"{self.url}{path}", **kwargs)
        except (httpx.TransportError, RuntimeError) as error:  # RuntimeError: the client was closed by stop()
            raise self._unavailable(error) from None

    def set_targets(self, targets: list[ScrapeTarget]) -> None:
        """Swap the scrape targets in place (a config reload), keeping all data gathered so far."""
        assert self._dir is not None
        self.targets = targets
        (self._dir / "prometheus.yml").write_text(yaml.safe_dump(scrape_config(targets, self.scrape_interval_seconds)))
        response = self._request("POST", "/-/reload")
        if response.status_code != 200:
            raise PrometheusError(f"reload refused: {response.status_code} {response.text}")
        self.wait_for_targets()

    def log_tail(self) -> str:
        if self._dir is None:
            return ""
        path = self._dir / "prometheus.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""

    def query(self, promql: str) -> float | None:
        """The single value of an instant query; None when the result is empty (no data).

        Raises PrometheusUnavailable when Prometheus does not answer (a caller may read that as no data) and
        PrometheusError when it refuses the query."""
        response = self._request("GET", "/api/v1/query", params={"query": promql})
        try:
            body = response.json()
        except ValueError:
            raise PrometheusError(f"query answered {response.status_code} without JSON: {promql}") from None
        if body.get("status") != "success":
            raise PrometheusError(f"query rejected: {body.get('error', response.text)}: {promql}")
        data = body["data"]
        if data["resultType"] == "scalar":
            value = float(data["result"][1])
        elif not data["result"]:
            return None
        else:
            value = float(data["result"][0]["value"][1])
        return None if math.isnan(value) else value

    def targets_up(self) -> int:
        addresses = "|".join(t.address for t in self.targets)  # '.' matching any char is harmless here
        value = self.query(f'sum(up{{instance=~"{addresses}"}})')
        return int(value or 0)

    def wait_for_targets(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.targets_up() >= len(self.targets):
                return
            time.sleep(0.2)
        raise PrometheusError(f"only {self.targets_up()} of {len(self.targets)} targets up after {timeout:.0f}s")

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGTERM)
                self._proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
                    self._proc.wait(timeout=10)
        self._proc = None
        self._client.close()
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None

    def __enter__(self) -> PrometheusProcess:
        return self.start() if self._proc is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
