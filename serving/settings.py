"""MLServer configuration for the fraud model: one place that turns deployment values into MLServer settings.

Two equivalent ways to configure a server, both from a validated :class:`ServingConfig`:

* files: :func:`write_mlserver_config` writes ``<dir>/settings.json`` and
  ``<dir>/<model_name>/model-settings.json``; run ``python -m serving.server <dir>`` (or ``mlserver start
  <dir>``) with :data:`PROCESS_ENVIRONMENT` in the environment.
* environment only: :func:`mlserver_environment` returns the ``MLSERVER_*`` / ``MLSERVER_MODEL_*`` variables
  (plus :data:`PROCESS_ENVIRONMENT`); run the server on a directory holding no ``model-settings.json``
  (the image's ``/opt/fraud/empty``) and MLServer builds the model settings from the environment. This
  suits a Kubernetes Deployment: the values go into the container's ``env``.

Mapping of the platform's values: ``maxBatchSize`` -> ``max_batch_size`` (MLServer ``max_batch_size``,
env ``MLSERVER_MODEL_MAX_BATCH_SIZE``); ``maxBatchTime`` -> ``max_batch_time_seconds`` (MLServer
``max_batch_time`` in seconds, env ``MLSERVER_MODEL_MAX_BATCH_TIME``). Adaptive batching is on when
max_batch_size > 1 and max_batch_time_seconds > 0.

Secrets never go through here: ``FEEDBACK_SIGNING_KEY`` (and ``MLFLOW_TRACKING_URI`` / artifact store
credentials for ``models:/`` URIs) come from the pod's environment. Production settings measured on 2 cores:
``parallel_workers: 0`` and ``OMP_NUM_THREADS=1`` (single-row p99 near 10 ms where MLServer's defaults,
one parallel worker and all cores per BLAS/OpenMP pool, gave 177 ms).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from fraudctl.files import write_json
from serving.feedback import DEFAULT_SEEN_CAPACITY, DEFAULT_TOKEN_TTL_SECONDS
from serving.protocol import DEFAULT_MAX_ROWS, DEFAULT_MODEL_NAME, METRICS_PATH

RUNTIME_IMPLEMENTATION = "serving.runtime.FraudRuntime"
# MLServer's stock MLflow runtime: the peer the benchmark compares against.
MLFLOW_RUNTIME_IMPLEMENTATION = "mlserver_mlflow.MLflowRuntime"
DEFAULT_HTTP_PORT = 8080
DEFAULT_GRPC_PORT = 8081
DEFAULT_METRICS_PORT = 8082
SETTINGS_FILENAME = "settings.json"
MODEL_SETTINGS_FILENAME = "model-settings.json"
# One thread per native pool: with parallel_workers 0 the event loop is the only caller, and on 2 cores
# extra OpenMP threads only contend with it.
PROCESS_ENVIRONMENT: dict[str, str] = {
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}
# Keys the fraud runtime reads from model-settings ``parameters.extra``.
EXTRA_KEYS = ("max_rows", "feedback_ttl_seconds", "feedback_seen_capacity")

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


def batching_problem(
    max_batch_size: int, max_batch_time_seconds: float, *, size_key: str = "max_batch_size"
) -> str | None:
    """MLServer batches only when both are set: a batch size above 1 with no wait time is silently unbatched.
    The one statement of that rule (the stack config's serving.maxBatchTime check reuses it)."""
    if max_batch_size > 1 and max_batch_time_seconds <= 0:
        return f"must be > 0 when {size_key} > 1 (MLServer ignores batching otherwise)"
    return None


class ServingConfigError(ValueError):
    """A serving setting has a value that is not allowed."""


@dataclass(frozen=True)
class ServingConfig:
    """Everything that differs between two fraud-model servers.

    ``model_uri``: local MLflow model directory, ``models:/<name>@<alias>``, ``models:/<name>/<version>``,
    ``runs:/...`` or a remote artifact URI. ``version_label``: the ``model_version`` label on metrics and
    in prediction ids (default: the label stored in the model's metadata); also MLServer's model version.
    """

    model_uri: str
    version_label: str | None = None
    model_name: str = DEFAULT_MODEL_NAME
    host: str = "0.0.0.0"
    http_port: int = DEFAULT_HTTP_PORT
    grpc_port: int = DEFAULT_GRPC_PORT
    metrics_port: int = DEFAULT_METRICS_PORT
    max_batch_size: int = 0
    max_batch_time_seconds: float = 0.0
    max_rows: int = DEFAULT_MAX_ROWS
    feedback_ttl_seconds: float = DEFAULT_TOKEN_TTL_SECONDS
    feedback_seen_capacity: int = DEFAULT_SEEN_CAPACITY
    implementation: str = RUNTIME_IMPLEMENTATION

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.model_uri, str) or not self.model_uri.strip():
            problems.append(
                "model_uri: must be a model directory or an MLflow URI such as models:/fraud-detector@champion"
            )
        if not _NAME_PATTERN.match(str(self.model_name)):
            problems.append(f"model_name: {self.model_name!r} must be 1-64 chars of letters, digits, '_', '.', '-'")
        if self.version_label is not None and not _NAME_PATTERN.match(str(self.version_label)):
            problems.append(
                f"version_label: {self.version_label!r} must be 1-64 chars of letters, digits, '_', '.', '-'"
            )
        ports = {"http_port": self.http_port, "grpc_port": self.grpc_port, "metrics_port": self.metrics_port}
        for name, port in ports.items():
            if type(port) is not int or not 1 <= port <= 65535:
                problems.append(f"{name}: {port!r} must be an integer port in 1..65535")
        if len(set(ports.values())) != len(ports):
            problems.append(f"ports must differ, got {ports}")
        if type(self.max_batch_size) is not int or not 0 <= self.max_batch_size <= 4096:
            problems.append(f"max_batch_size: {self.max_batch_size!r} must be an integer in 0..4096 (0 or 1 = off)")
        if not isinstance(self.max_batch_time_seconds, (int, float)) or not 0 <= self.max_batch_time_seconds <= 1:
            problems.append(
                f"max_batch_time_seconds: {self.max_batch_time_seconds!r} must be a number of seconds in [0, 1]"
            )
        elif isinstance(self.max_batch_size, int) and (
            problem := batching_problem(self.max_batch_size, self.max_batch_time_seconds)
        ):
            problems.append(f"max_batch_time_seconds: {problem}")
        if type(self.max_rows) is not int or not 1 <= self.max_rows <= 100_000:
            problems.append(f"max_rows: {self.max_rows!r} must be an integer in 1..100000")
        if not isinstance(self.feedback_ttl_seconds, (int, float)) or not self.feedback_ttl_seconds > 0:
            problems.append(f"feedback_ttl_seconds: {self.feedback_ttl_seconds!r} must be a positive number")
        if type(self.feedback_seen_capacity) is not int or self.feedback_seen_capacity < 1:
            problems.append(f"feedback_seen_capacity: {self.feedback_seen_capacity!r} must be a positive integer")
        if problems:
            raise ServingConfigError("; ".join(problems))

    @property
    def batching_enabled(self) -> bool:
        return self.max_batch_size > 1 and self.max_batch_time_seconds > 0

    def resolved_model_uri(self) -> str:
        """Local paths become absolute (MLServer resolves relative ones against the settings folder)."""
        parsed = urlparse(self.model_uri)
        if parsed.scheme in ("", "file") and not self.model_uri.startswith(("models:", "runs:")):
            return str(Path(parsed.path if parsed.scheme else self.model_uri).expanduser().resolve())
        return self.model_uri

    def extra(self) -> dict[str, Any]:
        return {
            "max_rows": self.max_rows,
            "feedback_ttl_seconds": self.feedback_ttl_seconds,
            "feedback_seen_capacity": self.feedback_seen_capacity,
        }

    def server_settings(self) -> dict[str, Any]:
        """Content of MLServer's settings.json."""
        return {
            "debug": False,
            "parallel_workers": 0,
            "host": self.host,
            "http_port": self.http_port,
            "grpc_port": self.grpc_port,
            "metrics_port": self.metrics_port,
            "metrics_endpoint": METRICS_PATH,
            "load_models_at_startup": True,
            # Answers are a few hundred bytes per row: compressing them costs more CPU than it saves.
            "gzip_enabled": False,
        }

    def model_settings(self) -> dict[str, Any]:
        """Content of MLServer's model-settings.json."""
        parameters: dict[str, Any] = {"uri": self.resolved_model_uri(), "extra": self.extra()}
        if self.version_label:
            parameters["version"] = self.version_label
        return {
            "name": self.model_name,
            "implementation": self.implementation,
            "max_batch_size": self.max_batch_size,
            "max_batch_time": float(self.max_batch_time_seconds),
            "parameters": parameters,
        }


def write_mlserver_config(directory: str | Path, config: ServingConfig) -> Path:
    """Write ``settings.json`` and ``<model_name>/model-settings.json`` under ``directory``; return it.

    Each file is replaced atomically. Start the server with ``python -m serving.server <directory>`` and
    :data:`PROCESS_ENVIRONMENT` (plus ``FEEDBACK_SIGNING_KEY``) in its environment.
    """
    root = Path(directory)
    write_json(root / config.model_name / MODEL_SETTINGS_FILENAME, config.model_settings())
    write_json(root / SETTINGS_FILENAME, config.server_settings())
    return root


def mlserver_environment(config: ServingConfig) -> dict[str, str]:
    """The same configuration as environment variables (MLServer's ``MLSERVER_*`` settings), pure.

    Use with a model repository directory that holds no model-settings.json; includes
    :data:`PROCESS_ENVIRONMENT`. Does not include ``FEEDBACK_SIGNING_KEY`` (a Secret).
    """
    server = config.server_settings()
    model = config.model_settings()
    env = {f"MLSERVER_{key.upper()}": _env_value(value) for key, value in server.items()}
    env.update(
        {
            "MLSERVER_MODEL_NAME": model["name"],
            "MLSERVER_MODEL_IMPLEMENTATION": model["implementation"],
            "MLSERVER_MODEL_MAX_BATCH_SIZE": str(model["max_batch_size"]),
            "MLSERVER_MODEL_MAX_BATCH_TIME": repr(model["max_batch_time"]),
            "MLSERVER_MODEL_URI": model["parameters"]["uri"],
            "MLSERVER_MODEL_EXTRA": json.dumps(model["parameters"]["extra"], sort_keys=True),
        }
    )
    if config.version_label:
        env["MLSERVER_MODEL_VERSION"] = config.version_label
    env.update(PROCESS_ENVIRONMENT)
    return env


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
