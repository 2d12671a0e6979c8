"""Run a real fraud-model MLServer as a subprocess on free loopback ports (tests, rehearsal, benchmark).

    with MLServerProcess(model_dir, version_label="v2", env={"SIMULATE_ERROR": "true"}) as server:
        FraudClient(server.http_url).predict(rows)
        scrape_metrics(server.metrics_url)

The server runs in its own process group and ``stop()`` terminates the whole group (SIGTERM, then SIGKILL
after a grace period), so nothing is left behind. ``restart(env=...)`` keeps ports and signing key (e.g.
to restart a candidate with a fault). Give two processes the same ``signing_key`` to act as replicas of
one Service for feedback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

from fraudctl.lifetime import parent_death_signal
from serving.faults import MODE_ENV, RATE_ENV
from serving.feedback import PREVIOUS_SIGNING_KEY_ENV, SIGNING_KEY_ENV
from serving.protocol import FEEDBACK_PATH, METRICS_PATH, infer_path
from serving.settings import (
    PROCESS_ENVIRONMENT,
    ServingConfig,
    mlserver_environment,
    write_mlserver_config,
)

LOOPBACK = "127.0.0.1"
COMMANDS = ("serving", "mlserver")
_PROJECT_ROOT = Path(__file__).resolve().parents[1]
# Inherited variables that would silently change the server under test.
_SCRUBBED_PREFIXES = ("MLSERVER_",)
_SCRUBBED = {MODE_ENV, RATE_ENV, SIGNING_KEY_ENV, PREVIOUS_SIGNING_KEY_ENV, "PROMETHEUS_MULTIPROC_DIR"}

log = logging.getLogger(__name__)


class ServerStartError(RuntimeError):
    """The server exited or did not become ready; the message carries the end of its log."""


def free_ports(count: int, host: str = LOOPBACK) -> list[int]:
    """Distinct ports that were free a moment ago (bound together, so they cannot repeat)."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class MLServerProcess:
    """A real MLServer serving one fraud model; use as a context manager or call start()/stop().

    ``command``: ``"serving"`` runs ``python -m serving.server`` (``mlserver start`` plus clear 4xx for
    bodies FastAPI refuses), ``"mlserver"`` runs the stock ``mlserver start``. ``config_via``: ``"files"``
    (settings.json + model-settings.json) or ``"environment"`` (MLSERVER_* variables only). ``env``:
    extra environment for the server (e.g. ``SIMULATE_ERROR``); a ``None`` value removes a variable.
    Remaining keyword arguments are ServingConfig fields (max_batch_size, max_rows, implementation, ...).
    """

    def __init__(
        self,
        model_uri: str | Path,
        *,
        version_label: str | None = None,
        env: Mapping[str, str | None] | None = None,
        signing_key: str | None = None,
        command: str = "serving",
        config_via: str = "files",
        ports: tuple[int, int, int] | None = None,
        work_dir: str | Path | None = None,
        startup_timeout: float = 120.0,
        **config_fields: Any,
    ) -> None:
        if command not in COMMANDS:
            raise ValueError(f"command: {command!r} is not allowed; use one of {', '.join(COMMANDS)}")
        if config_via not in ("files", "environment"):
            raise ValueError(f"config_via: {config_via!r} is not allowed; use 'files' or 'environment'")
        http_port, grpc_port, metrics_port = ports or free_ports(3)
        self.config = ServingConfig(
            model_uri=str(model_uri),
            version_label=version_label,
            host=LOOPBACK,
            http_port=http_port,
            grpc_port=grpc_port,
            metrics_port=metrics_port,
            **config_fields,
        )
        self.env_overrides: dict[str, str | None] = dict(env or {})
        self.signing_key = signing_key or os.environ.get(SIGNING_KEY_ENV) or secrets.token_hex(32)
        self.command = command
        self.config_via = config_via
        self.startup_timeout = startup_timeout
        self._given_work_dir = Path(work_dir) if work_dir else None
        self.work_dir: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    # -- addresses ---------------------------------------------------------------------------------
    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.config.http_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{LOOPBACK}:{self.config.metrics_port}{METRICS_PATH}"

    @property
    def infer_url(self) -> str:
        return self.http_url + infer_path(self.config.model_name)

    @property
    def feedback_url(self) -> str:
        return self.http_url + FEEDBACK_PATH

    @property
    def ready_url(self) -> str:
        return f"{self.http_url}/v2/models/{self.config.model_name}/ready"

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    @property
    def log_path(self) -> Path | None:
        return self.work_dir / "mlserver.log" if self.work_dir else None

    def log_text(self) -> str:
        path = self.log_path
        return path.read_text(errors="replace") if path and path.exists() else ""

    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    # -- lifecycle ---------------------------------------------------------------------------------
    def environment(self) -> dict[str, str]:
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in _SCRUBBED and not key.startswith(_SCRUBBED_PREFIXES)
        }
        if self.config_via == "environment":
            env.update(mlserver_environment(self.config))
        else:
            env.update(PROCESS_ENVIRONMENT)
        env[SIGNING_KEY_ENV] = self.signing_key
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_PROJECT_ROOT), env.get("PYTHONPATH")]))
        for key, value in self.env_overrides.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def _argv(self, folder: Path) -> list[str]:
        if self.command == "serving":
            return [sys.executable, "-m", "serving.server", str(folder)]
        mlserver = Path(sys.executable).with_name("mlserver")
        return [str(mlserver) if mlserver.exists() else shutil.which("mlserver") or "mlserver", "start", str(folder)]

    def start(self, *, wait: bool = True) -> MLServerProcess:
        """Launch the server and wait until it answers (``wait=False``: launch only, then call ``wait_ready``;
        several servers launched first boot side by side, and each is still started from this thread, whose
        end the kernel's parent-death signal is tied to)."""
        if self.running():
            return self
        if self._given_work_dir:
            self._given_work_dir.mkdir(parents=True, exist_ok=True)
            self.work_dir = self._given_work_dir
        else:
            self.work_dir = Path(tempfile.mkdtemp(prefix="fraud-mlserver-"))
        if self.config_via == "files":
            folder = write_mlserver_config(self.work_dir / "config", self.config)
        else:
            folder = self.work_dir / "empty"
            folder.mkdir(exist_ok=True)
        self._log = open(self.work_dir / "mlserver.log", "ab")  # noqa: SIM115 - closed in stop()
        self._process = subprocess.Popen(
            self._argv(folder),
            cwd=self.work_dir,
            env=self.environment(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=parent_death_signal(),  # SIGTERM when this process dies, even by SIGKILL
        )
        return self.wait_ready() if wait else self

    def wait_ready(self) -> MLServerProcess:
        """Wait until the launched server answers; a server that exits or stays unready is stopped and raises
        ServerStartError with the end of its log (anything else, e.g. an interruption, stops it as well)."""
        assert self._process is not None and self.work_dir is not None, "start() it first"
        try:
            self._wait_ready()
        except ServerStartError as exc:
            text = self.log_text()
            self.stop()
            cause = _last_error(text)
            raise ServerStartError(
                f"{self._describe()} {exc}{': ' + cause if cause else ''}; last log lines:\n{_tail(text)}"
            ) from None
        except BaseException:
            self.stop()
            raise
        log.debug("%s ready: pid %d, its log %s", self._describe(), self._process.pid, self.work_dir / "mlserver.log")
        return self

    def _describe(self) -> str:
        return f"MLServer ({self.command}, model {self.config.model_uri!r}, port {self.config.http_port})"

    def _wait_ready(self) -> None:
        import httpx

        deadline = time.monotonic() + self.startup_timeout
        with httpx.Client(timeout=2.0) as client:
            while True:
                assert self._process is not None
                if self._process.poll() is not None:
                    raise ServerStartError(f"exited with code {self._process.returncode}")
                try:
                    if (
                        client.get(self.ready_url).status_code == 200
                        and client.get(self.metrics_url).status_code == 200
                    ):
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise ServerStartError(f"not ready after {self.startup_timeout:.0f} s")
                time.sleep(0.1)

    def stop(self, grace_seconds: float = 15.0) -> None:
        """Terminate the server's whole process group and remove its temporary work dir."""
        process = self._process
        if process is not None:
            group = process.pid  # start_new_session: the group id is the leader's pid
            _signal_group(group, signal.SIGTERM)
            try:
                process.wait(timeout=grace_seconds)
            except subprocess.TimeoutExpired:
                _signal_group(group, signal.SIGKILL)
                process.wait(timeout=grace_seconds)
            # Anything the server forked and left behind goes too.
            _signal_group(group, signal.SIGKILL)
            self._process = None
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.work_dir is not None and self._given_work_dir is None:
            shutil.rmtree(self.work_dir, ignore_errors=True)
            self.work_dir = None

    def restart(self, env: Mapping[str, str | None] | None = None) -> MLServerProcess:
        """Stop and start again on the same ports with the same key, applying ``env`` on top."""
        self.stop()
        self.env_overrides.update(env or {})
        return self.start()

    def __enter__(self) -> MLServerProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _signal_group(group: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(group, sig)


def _last_error(log: str) -> str | None:
    """The last ``SomeError: message`` line of a traceback in the log, if any."""
    matches = re.findall(r"^(?:[A-Za-z_][\w.]*)?(?:Error|Exception): .+$", log, re.M)
    return matches[-1] if matches else None


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])
