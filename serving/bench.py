"""``fraudctl bench serving``: measure the fraud server for real and print JSON.

Starts the real server (``python -m serving.server``, production settings) on loopback and measures:
single-row latency over sequential requests (p50/p99), throughput and p99 with 4 and 16 concurrent
clients, the same model's in-process predict (the floor), the scoring backends side by side
(``compiled_backends``: scikit-learn, the compiled ONNX Runtime graph serving uses, treelite's GTIL and
skl2onnx's float32 conversion, each with its largest difference from scikit-learn), and the same model
served in the same run by MLServer's stock MLflow runtime (``mlserver_mlflow.MLflowRuntime`` under
``mlserver start``), the usual way MLflow models are served. The servers run one at a time so they never
share the 2 cores. The load generator is a raw asyncio HTTP/1.1 client on keep-alive connections with
pre-encoded requests, so client cost stays small; it still shares the machine with the server, which the
JSON reports as ``client``. ``load_average`` (before and after) tells whether other work shared the
machine: figures taken under load are worse than the server's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

REGISTERED_MODEL = "fraud-detector"
DEFAULT_ALIAS = "champion"
# Issue 12's targets, on the 2-core machine.
TARGETS = {"p99_ms_at_most": 3.0, "rps_c4_at_least": 1000.0, "p99_ms_c16_at_most": 20.0}

log = logging.getLogger(__name__)


def local_tracking_uri() -> str:
    """The platform's local MLflow store: sqlite at ``$FRAUD_HOME/mlflow.db`` (docs/CONTRACTS.md)."""
    from model.paths import fraud_home

    return f"sqlite:///{fraud_home() / 'mlflow.db'}"


@dataclass(frozen=True)
class BenchModel:
    path: Path
    source: str


def resolve_model(model_uri: str | None, work_dir: Path) -> BenchModel:
    """A local copy of the model to serve: ``model_uri`` if given, else the locally registered champion,
    else a quick model trained on generated data."""
    if model_uri and Path(model_uri).exists():
        return BenchModel(Path(model_uri).resolve(), model_uri)
    if model_uri is None:
        from model.paths import fraud_home

        if not (fraud_home() / "mlflow.db").exists():
            return _synthetic(work_dir, "no local registry at $FRAUD_HOME/mlflow.db")
        model_uri = f"models:/{REGISTERED_MODEL}@{DEFAULT_ALIAS}"
        explicit = False
    else:
        explicit = True
    tracking_uri = os.environ.get("MLFLOW_TRACKING_URI") or local_tracking_uri()
    try:
        import mlflow
        from mlflow.artifacts import download_artifacts

        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        local = download_artifacts(artifact_uri=model_uri, dst_path=str(work_dir / "registry-model"))
    except Exception as exc:
        if explicit:
            raise ValueError(f"--model-uri {model_uri!r}: cannot be downloaded from {tracking_uri} ({exc})") from exc
        return _synthetic(work_dir, f"{model_uri} not found in {tracking_uri}")
    return BenchModel(Path(local), f"{model_uri} ({tracking_uri})")


def _synthetic(work_dir: Path, why: str) -> BenchModel:
    from serving.synthetic_model import train_synthetic_model

    log.info(f"bench serving: {why}; training a quick model on generated data")
    path = train_synthetic_model(work_dir / "synthetic-model", rows=20_000, max_iter=100)
    return BenchModel(path, "synthetic (HistGradientBoosting on 20,000 generated rows)")


def bench_rows(feature_names: Sequence[str], count: int, seed: int = 7) -> np.ndarray:
    from serving.synthetic_model import synthetic_transactions

    frame, _ = synthetic_transactions(count, seed, fraud_share=0.1)
    return frame[list(feature_names)].to_numpy(dtype=np.float64)


def fraud_request_body(row: np.ndarray, feature_names: Sequence[str]) -> bytes:
    inputs = [
        {"name": name, "shape": [1], "datatype": "FP64", "data": [float(value)]}
        for name, value in zip(feature_names, row, strict=True)
    ]
    return json.dumps({"inputs": inputs}).encode()


def mlflow_request_body(row: np.ndarray, feature_names: Sequence[str]) -> bytes:
    """The same row for MLServer's MLflow runtime: pandas content type, so pyfunc gets a DataFrame."""
    inputs = [
        {"name": name, "shape": [1], "datatype": "FP64", "data": [float(value)]}
        for name, value in zip(feature_names, row, strict=True)
    ]
    return json.dumps({"parameters": {"content_type": "pd"}, "inputs": inputs}).encode()


class RawHTTPConnection:
    """Minimal HTTP/1.1 keep-alive client: pre-encoded POSTs, Content-Length responses."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def encode(self, path: str, body: bytes) -> bytes:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def send(self, raw_request: bytes) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        self.writer.write(raw_request)
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = None
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        if length is None:
            raise RuntimeError("response without Content-Length (chunked answers are not supported)")
        return status, await self.reader.readexactly(length)

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await self.writer.wait_closed()


def _percentiles(seconds: Sequence[float]) -> dict[str, float]:
    values = np.asarray(seconds) * 1000.0
    return {
        "p50_ms": round(float(np.percentile(values, 50)), 3),
        "p90_ms": round(float(np.percentile(values, 90)), 3),
        "p99_ms": round(float(np.percentile(values, 99)), 3),
        "max_ms": round(float(values.max()), 3),
    }


async def _sequential(url: str, path: str, bodies: list[bytes], requests: int, warmup: int) -> dict[str, Any]:
    parsed = urlparse(url)
    connection = RawHTTPConnection(parsed.hostname or "127.0.0.1", parsed.port or 80)
    await connection.open()
    raw = [connection.encode(path, body) for body in bodies]
    errors = 0
    try:
        for i in range(warmup):
            await connection.send(raw[i % len(raw)])
        latencies = []
        clock = time.perf_counter
        for i in range(requests):
            started = clock()
            status, _ = await connection.send(raw[i % len(raw)])
            latencies.append(clock() - started)
            errors += status != 200
    finally:
        await connection.close()
    return {**_percentiles(latencies), "requests": requests, "errors": errors}


async def _concurrent(url: str, path: str, bodies: list[bytes], clients: int, seconds: float) -> dict[str, Any]:
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or 80
    connections = [RawHTTPConnection(host, port) for _ in range(clients)]
    await asyncio.gather(*(c.open() for c in connections))
    raw = [connections[0].encode(path, body) for body in bodies]
    latencies: list[float] = []
    errors = 0
    stop_at = 0.0

    async def client(index: int, connection: RawHTTPConnection) -> None:
        nonlocal errors
        i = index
        clock = time.perf_counter
        while clock() < stop_at:
            started = clock()
            status, _ = await connection.send(raw[i % len(raw)])
            latencies.append(clock() - started)
            errors += status != 200
            i += clients

    try:
        # Short warm-up at this concurrency, then the measured window.
        stop_at = time.perf_counter() + 0.5
        await asyncio.gather(*(client(i, c) for i, c in enumerate(connections)))
        latencies.clear()
        errors = 0
        started = time.perf_counter()
        stop_at = started + seconds
        await asyncio.gather(*(client(i, c) for i, c in enumerate(connections)))
        elapsed = time.perf_counter() - started
    finally:
        await asyncio.gather(*(c.close() for c in connections))
    return {
        "clients": clients,
        "rps": round(len(latencies) / elapsed, 1),
        "requests": len(latencies),
        "errors": errors,
        **_percentiles(latencies),
    }


def _inprocess(score: Callable[[], Any], iterations: int) -> dict[str, float]:
    for _ in range(50):
        score()
    latencies = []
    clock = time.perf_counter
    for _ in range(iterations):
        started = clock()
        score()
        latencies.append(clock() - started)
    return _percentiles(latencies)


def _check_answer(url: str, path: str, body: bytes) -> None:
    import httpx

    response = httpx.post(url + path, content=body, headers={"content-type": "application/json"}, timeout=10)
    if response.status_code != 200:
        raise RuntimeError(f"{url}{path} answered {response.status_code}: {response.text[:300]}")


def run_bench(
    model_uri: str | None = None,
    *,
    requests: int = 2000,
    seconds: float = 5.0,
    mlflow_requests: int = 1000,
    skip_mlflow: bool = False,
    max_batch_size: int = 0,
    max_batch_time_seconds: float = 0.0,
) -> dict[str, Any]:
    """Measure and return the figures (see module docstring)."""
    if requests < 1000:
        raise ValueError(f"requests: {requests} is too few for a p99; use at least 1000")
    from threadpoolctl import threadpool_limits

    from model.artifact import load_fraud_model
    from serving.process import MLServerProcess
    from serving.runtime import FraudScorer
    from serving.settings import MLFLOW_RUNTIME_IMPLEMENTATION

    try:
        import uvloop

        uvloop.install()
    except ImportError:  # the standard loop only costs the client a little more
        pass
    result: dict[str, Any] = {"cores": os.cpu_count(), "load_average_before": _load_average()}
    with tempfile.TemporaryDirectory(prefix="fraud-bench-") as temp:
        work = Path(temp)
        chosen = resolve_model(model_uri, work)
        model = load_fraud_model(chosen.path)
        features = list(model.feature_names)
        rows = bench_rows(features, 512)
        result["model"] = {
            "source": chosen.source,
            "model_version": model.model_version,
            "estimator": type(model.estimator).__name__,
            "features": len(features),
        }

        log.info("bench serving: in-process predict (1 thread)")
        with threadpool_limits(1):
            scorer = FraudScorer(model)
            one_row = rows[:1]
            fast = _inprocess(lambda: scorer.probabilities(one_row), 3000)
            import pandas as pd

            frame = pd.DataFrame(one_row, columns=features)
            via_frame = _inprocess(lambda: model.fraud_probability(frame), 300)
            log.info("bench serving: scoring backends side by side")
            result["compiled_backends"] = compare_backends(model, rows)
        result["inproc_p50_ms"] = fast["p50_ms"]
        result["inproc_p99_ms"] = fast["p99_ms"]
        result["inproc_dataframe_p50_ms"] = via_frame["p50_ms"]
        result["inproc_scoring_path"] = scorer.path
        if scorer.fallback_reason:
            result["inproc_fallback_reason"] = scorer.fallback_reason

        bodies = [fraud_request_body(row, features) for row in rows]
        path = "/v2/models/fraud-detector/infer"
        log.info("bench serving: starting the fraud runtime server")
        with MLServerProcess(
            chosen.path, max_batch_size=max_batch_size, max_batch_time_seconds=max_batch_time_seconds
        ) as server:
            _check_answer(server.http_url, path, bodies[0])
            log.info(f"bench serving: sequential single-row latency, {requests} requests")
            sequential = asyncio.run(_sequential(server.http_url, path, bodies, requests, warmup=300))
            log.info(f"bench serving: throughput, 4 clients, {seconds:.0f} s")
            c4 = asyncio.run(_concurrent(server.http_url, path, bodies, 4, seconds))
            log.info(f"bench serving: throughput, 16 clients, {seconds:.0f} s")
            c16 = asyncio.run(_concurrent(server.http_url, path, bodies, 16, seconds))
        result.update({k: sequential[k] for k in ("p50_ms", "p90_ms", "p99_ms", "max_ms")})
        result["sequential_requests"] = sequential["requests"]
        result["rps_c4"] = c4["rps"]
        result["rps_c16"] = c16["rps"]
        result["p99_ms_c4"] = c4["p99_ms"]
        result["p99_ms_c16"] = c16["p99_ms"]
        result["errors"] = sequential["errors"] + c4["errors"] + c16["errors"]
        result["settings"] = {
            "parallel_workers": 0,
            "OMP_NUM_THREADS": 1,
            "max_batch_size": max_batch_size,
            "max_batch_time_seconds": max_batch_time_seconds,
        }

        if not skip_mlflow:
            mlflow_bodies = [mlflow_request_body(row, features) for row in rows]
            log.info("bench serving: starting MLServer's stock MLflow runtime on the same model")
            with MLServerProcess(
                chosen.path, command="mlserver", implementation=MLFLOW_RUNTIME_IMPLEMENTATION
            ) as peer:
                _check_answer(peer.http_url, path, mlflow_bodies[0])
                log.info(f"bench serving: MLflow runtime sequential latency, {mlflow_requests} requests")
                peer_seq = asyncio.run(_sequential(peer.http_url, path, mlflow_bodies, mlflow_requests, 200))
                log.info(f"bench serving: MLflow runtime throughput, 4 clients, {seconds:.0f} s")
                peer_c4 = asyncio.run(_concurrent(peer.http_url, path, mlflow_bodies, 4, seconds))
            result["mlflow_runtime_p50_ms"] = peer_seq["p50_ms"]
            result["mlflow_runtime_p99_ms"] = peer_seq["p99_ms"]
            result["mlflow_runtime_rps_c4"] = peer_c4["rps"]
            result["mlflow_runtime_errors"] = peer_seq["errors"] + peer_c4["errors"]
    result["client"] = "raw asyncio HTTP/1.1 keep-alive (uvloop), same machine as the server"
    result["load_average_after"] = _load_average()
    result["targets"] = TARGETS
    result["meets_targets"] = bool(
        result["p99_ms"] <= TARGETS["p99_ms_at_most"]
        and result["rps_c4"] >= TARGETS["rps_c4_at_least"]
        and result["p99_ms_c16"] <= TARGETS["p99_ms_c16_at_most"]
    )
    return result


def _load_average() -> list[float]:
    """1, 5 and 15 minute load averages: more than ~0.5 means other work shared the 2 cores."""
    return [round(value, 2) for value in os.getloadavg()]


def compare_backends(model: Any, rows: np.ndarray) -> dict[str, Any]:
    """Each scoring backend on the same rows: single-row and 64-row latency, and its largest difference
    from scikit-learn (with the decisions that differ at the model's threshold). Backends whose package is
    not installed are listed with the reason."""
    from model.compiled import CompiledScorer, CompileError, build_onnx, ensemble_parts, reference_probabilities

    reference = reference_probabilities(model.estimator, rows)
    try:
        parts = ensemble_parts(model.estimator)
    except CompileError as exc:
        return {"not_compiled": str(exc)}
    candidates: dict[str, Callable[[], Callable[[np.ndarray], np.ndarray]]] = {
        "scikit-learn": lambda: lambda matrix: reference_probabilities(model.estimator, matrix),
        "onnxruntime (float64 TreeEnsemble, serving)": lambda: CompiledScorer(parts, build_onnx(parts)).probabilities,
        "treelite gtil (float64)": lambda: _treelite_scorer(parts),
        "skl2onnx float32 TreeEnsembleClassifier": lambda: _skl2onnx_scorer(parts),
    }
    figures: dict[str, Any] = {}
    for name, make in candidates.items():
        try:
            score = make()
        except ImportError as exc:
            figures[name] = {"skipped": f"not installed ({exc.name})"}
            continue
        scores = score(rows)
        single = _inprocess(lambda score=score: score(rows[:1]), 300 if name == "scikit-learn" else 2000)
        batch = _inprocess(lambda score=score: score(rows[:64]), 50 if name == "scikit-learn" else 300)
        figures[name] = {
            "row_p50_ms": single["p50_ms"],
            "row_p99_ms": single["p99_ms"],
            "rows64_p50_ms": batch["p50_ms"],
            "max_abs_diff": float(np.max(np.abs(scores - reference))),
            "decisions_differ": int(np.sum((scores >= model.threshold) != (reference >= model.threshold))),
            "rows_compared": len(rows),
        }
    return figures


def _corrected_mean(parts: Any, sampled: np.ndarray) -> np.ndarray:
    rates = np.asarray(parts.legit_rates, dtype=np.float64)
    return (rates * sampled / (rates * sampled - sampled + 1.0)).mean(axis=1)


def _treelite_scorer(parts: Any) -> Callable[[np.ndarray], np.ndarray]:
    """The same ensemble as one treelite model (one target per member), scored by its GTIL interpreter."""
    import treelite
    from treelite.model_builder import Metadata, ModelBuilder, PostProcessorFunc, TreeAnnotation

    trees = [(target, predictor) for target, member in enumerate(parts.members) for (predictor,) in member._predictors]
    builder = ModelBuilder(
        threshold_type="float64",
        leaf_output_type="float64",
        metadata=Metadata(
            num_feature=int(parts.members[0].n_features_in_),
            task_type="kBinaryClf",
            average_tree_output=False,
            num_target=len(parts.members),
            num_class=[1] * len(parts.members),
            leaf_vector_shape=(1, 1),
        ),
        tree_annotation=TreeAnnotation(
            num_tree=len(trees), target_id=[target for target, _ in trees], class_id=[0] * len(trees)
        ),
        postprocessor=PostProcessorFunc("sigmoid"),
        base_scores=[float(value) for value in parts.baselines],
    )
    for _, predictor in trees:
        builder.start_tree()
        for key, node in enumerate(predictor.nodes):
            builder.start_node(key)
            if node["is_leaf"]:
                builder.leaf(float(node["value"]))
            else:
                builder.numerical_test(
                    int(node["feature_idx"]),
                    float(node["num_threshold"]),
                    default_left=bool(node["missing_go_to_left"]),
                    opname="<=",
                    left_child_key=int(node["left"]),
                    right_child_key=int(node["right"]),
                )
            builder.end_node()
        builder.end_tree()
    compiled = builder.commit()
    members = len(parts.members)

    def score(matrix: np.ndarray) -> np.ndarray:
        sampled = treelite.gtil.predict(compiled, parts.features(matrix), nthread=1).reshape(len(matrix), members)
        return _corrected_mean(parts, sampled)

    return score


def _skl2onnx_scorer(parts: Any) -> Callable[[np.ndarray], np.ndarray]:
    """skl2onnx's own conversion of each member (float32 TreeEnsembleClassifier), one session per member."""
    from skl2onnx import to_onnx

    from model.compiled import import_onnxruntime

    onnxruntime = import_onnxruntime()
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    example = np.zeros((1, int(parts.members[0].n_features_in_)), dtype=np.float32)
    sessions = [
        onnxruntime.InferenceSession(
            to_onnx(member, example, options={"zipmap": False}).SerializeToString(),
            options,
            providers=["CPUExecutionProvider"],
        )
        for member in parts.members
    ]

    def score(matrix: np.ndarray) -> np.ndarray:
        values = parts.features(matrix).astype(np.float32)
        sampled = np.column_stack(
            [session.run(["probabilities"], {"X": values})[0][:, 1].astype(np.float64) for session in sessions]
        )
        return _corrected_mean(parts, sampled)

    return score
