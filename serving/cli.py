"""``fraudctl serve`` and ``fraudctl bench serving``.

Progress and the server's state go to stderr (logging); bench results (JSON) to stdout. Bad flags are UsageErrors.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fraudctl.errors import UsageError
from serving.feedback import SIGNING_KEY_ENV

log = logging.getLogger(__name__)


def register(commands: Any, bench: Any) -> None:
    serve = commands.add_parser(
        "serve",
        help="serve a fraud model with MLServer (V2 inference, /feedback, metrics)",
        description="Run the fraud model server in the foreground until interrupted.",
    )
    serve.add_argument(
        "--model-uri",
        required=True,
        help="model directory, models:/fraud-detector@champion, models:/fraud-detector/<version> or runs:/...",
    )
    serve.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--port", type=int, default=8080, help="HTTP port (default 8080)")
    serve.add_argument("--metrics-port", type=int, default=8082, help="Prometheus /metrics port (default 8082)")
    serve.add_argument("--grpc-port", type=int, default=8081, help="gRPC port (default 8081)")
    serve.add_argument("--version", dest="version_label", help="model_version label (default: the model's own)")
    serve.add_argument("--max-batch-size", type=int, default=0, help="adaptive batching: requests per batch")
    serve.add_argument(
        "--max-batch-time", type=float, default=0.0, help="adaptive batching: seconds to wait for a batch to fill"
    )
    serve.add_argument("--max-rows", type=int, default=1024, help="rows allowed per request (default 1024)")
    serve.set_defaults(handler=_serve)

    serving_bench = bench.add_parser(
        "serving",
        help="measure serving latency/throughput against MLServer's MLflow runtime (JSON)",
        description="Start the real server, measure, print JSON on stdout (progress on stderr).",
    )
    serving_bench.add_argument("--model-uri", help="model to serve (default: local champion, else a synthetic one)")
    serving_bench.add_argument("--json", action="store_true", help="print JSON (the only output format)")
    serving_bench.add_argument("--requests", type=int, default=2000, help="sequential single-row requests")
    serving_bench.add_argument("--seconds", type=float, default=5.0, help="duration of each concurrency level")
    serving_bench.add_argument("--skip-mlflow", action="store_true", help="do not measure the MLflow runtime peer")
    serving_bench.add_argument(
        "--stack", default="dev", help="stack whose serving.maxBatchSize/maxBatchTime are measured (default dev)"
    )
    serving_bench.add_argument("--max-batch-size", type=int, default=None, help="override the stack's maxBatchSize")
    serving_bench.add_argument("--max-batch-time", type=float, default=None, help="override the stack's (seconds)")
    serving_bench.set_defaults(handler=_bench)


def _require_model_dir(uri: str, given: str) -> None:
    """A local model URI must be an existing folder; registry and remote URIs are checked when loaded."""
    if "://" not in uri and not uri.startswith(("models:", "runs:")) and not Path(uri).is_dir():
        raise UsageError(f"--model-uri {given!r}: no such model directory")


def _serve(args: argparse.Namespace) -> int:
    from serving.bench import local_tracking_uri
    from serving.settings import PROCESS_ENVIRONMENT, ServingConfig, ServingConfigError, write_mlserver_config

    try:
        config = ServingConfig(
            model_uri=args.model_uri,
            version_label=args.version_label,
            host=args.host,
            http_port=args.port,
            grpc_port=args.grpc_port,
            metrics_port=args.metrics_port,
            max_batch_size=args.max_batch_size,
            max_batch_time_seconds=args.max_batch_time,
            max_rows=args.max_rows,
        )
    except ServingConfigError as exc:
        raise UsageError(str(exc)) from None
    uri = config.resolved_model_uri()
    is_registry = uri.startswith(("models:", "runs:"))
    _require_model_dir(uri, args.model_uri)
    env = {**os.environ, **PROCESS_ENVIRONMENT}
    if is_registry and not env.get("MLFLOW_TRACKING_URI"):
        env["MLFLOW_TRACKING_URI"] = local_tracking_uri()
    if not env.get(SIGNING_KEY_ENV):
        env[SIGNING_KEY_ENV] = secrets.token_hex(32)
        log.warning(
            "fraudctl serve: %s is not set; using a random key, so prediction ids verify only on this process "
            "(set it to the same secret on every replica)",
            SIGNING_KEY_ENV,
        )
    previous = {sig: signal.signal(sig, _raise_stopped) for sig in _STOP_SIGNALS}
    try:
        with tempfile.TemporaryDirectory(prefix="fraud-serve-") as temp:
            folder = write_mlserver_config(Path(temp) / "config", config)
            process = None
            try:
                # Its own process group, so stopping it reaches anything it starts; signals reach it via us.
                process = subprocess.Popen(
                    [sys.executable, "-m", "serving.server", str(folder)], env=env, start_new_session=True
                )
                return _supervise(process, config)
            except (KeyboardInterrupt, _Stopped) as stop:
                if process is not None:
                    _stop_server(process)
                return 130 if isinstance(stop, KeyboardInterrupt) else 128 + stop.signum
            except BaseException:
                if process is not None:
                    _stop_server(process)
                raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


# SIGINT arrives as KeyboardInterrupt; these are turned into _Stopped. All of them stop the server and
# remove its temporary folder before fraudctl exits (128 + the signal number, as a shell reports it).
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def _raise_stopped(signum: int, frame: Any) -> None:
    raise _Stopped(signum)


def _stop_server(process: subprocess.Popen[bytes], grace_seconds: float = 15.0) -> None:
    """SIGTERM to the server's process group (MLServer stops gracefully), SIGKILL if it outlives the grace."""
    for sig in (signal.SIGINT, *_STOP_SIGNALS):
        signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C or SIGTERM must not cut the cleanup short
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace_seconds)
    except subprocess.TimeoutExpired:
        log.warning("fraudctl serve: the server did not stop within %.0f s; killing it", grace_seconds)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _supervise(process: subprocess.Popen[bytes], config: Any) -> int:
    import httpx

    host = "127.0.0.1" if config.host in ("0.0.0.0", "::") else config.host
    ready_url = f"http://{host}:{config.http_port}/v2/models/{config.model_name}/ready"
    ready = False
    while process.poll() is None:
        if not ready:
            try:
                ready = httpx.get(ready_url, timeout=1.0).status_code == 200
            except httpx.TransportError:
                ready = False
            if ready:
                log.info(
                    f"fraudctl serve: ready: http://{host}:{config.http_port}/v2/models/{config.model_name}/infer, "
                    f"POST /feedback, gRPC {host}:{config.grpc_port}, metrics http://{host}:{config.metrics_port}/metrics"
                )
        time.sleep(0.5)
    if not ready:
        log.error("fraudctl serve: the server exited before the model was ready (see its log above)")
        return 1
    return process.returncode


def _bench(args: argparse.Namespace) -> int:
    from infra.config import ConfigError, load_stack
    from serving.bench import run_bench
    from serving.settings import ServingConfig, ServingConfigError

    # Measure what the platform deploys: batching from the stack config unless overridden.
    try:
        stack_serving = load_stack(args.stack).serving
    except ConfigError as error:
        raise UsageError("; ".join(error.problems)) from None
    if args.max_batch_size is None:
        args.max_batch_size = stack_serving.max_batch_size
    if args.max_batch_time is None:
        args.max_batch_time = stack_serving.max_batch_time
    try:
        ServingConfig(
            model_uri=args.model_uri or "-",
            max_batch_size=args.max_batch_size,
            max_batch_time_seconds=args.max_batch_time,
        )
    except ServingConfigError as exc:
        raise UsageError(str(exc)) from None
    if args.requests < 1000:
        raise UsageError(f"--requests {args.requests}: use at least 1000 (a p99 needs them)")
    if not 1.0 <= args.seconds <= 600:
        raise UsageError(f"--seconds {args.seconds}: use 1..600")
    if args.model_uri:
        _require_model_dir(args.model_uri, args.model_uri)
    try:
        result = run_bench(
            args.model_uri,
            requests=args.requests,
            seconds=args.seconds,
            skip_mlflow=args.skip_mlflow,
            max_batch_size=args.max_batch_size,
            max_batch_time_seconds=args.max_batch_time,
        )
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    print(json.dumps(result, indent=2))
    return 0
