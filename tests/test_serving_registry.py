"""Serving straight from the MLflow registry (sqlite store in tmp): stock ``mlserver start`` configured by
environment only, and ``fraudctl serve`` end to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from serving_fixtures import SIGNING_KEY, infer_body, labelled_rows, outputs_of, post, scrape

from model.artifact import log_fraud_model
from serving.process import MLServerProcess, free_ports
from serving.synthetic_model import FEATURE_NAMES, train_synthetic_estimator

pytestmark = pytest.mark.slow

REGISTERED = "fraud-detector"


@dataclass(frozen=True)
class Registry:
    tracking_uri: str
    estimator: object
    threshold: float


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    import mlflow
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("registry")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    previous = mlflow.get_tracking_uri()
    estimator, threshold = train_synthetic_estimator(3000, seed=3, max_iter=20)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        experiment = mlflow.create_experiment("serving-tests", artifact_location=str(root / "artifacts"))
        with mlflow.start_run(experiment_id=experiment):
            info = log_fraud_model(
                estimator,
                threshold=threshold,
                model_version="v7",
                feature_names=FEATURE_NAMES,
                registered_model_name=REGISTERED,
            )
        client = MlflowClient(tracking_uri=tracking_uri)
        client.set_registered_model_alias(REGISTERED, "champion", info.registered_model_version)
    finally:
        mlflow.set_tracking_uri(previous)
    yield Registry(tracking_uri, estimator, threshold)


def _expected(registry: Registry, frame: object) -> tuple[np.ndarray, list[bool]]:
    scores = registry.estimator.predict_proba(frame)[:, 1]  # type: ignore[attr-defined]
    return scores, (scores >= registry.threshold).tolist()


def test_stock_mlserver_serves_the_champion_alias_from_environment_config(registry: Registry) -> None:
    frame, _ = labelled_rows(20, seed=60)
    with MLServerProcess(
        f"models:/{REGISTERED}@champion",
        command="mlserver",
        config_via="environment",
        signing_key=SIGNING_KEY,
        env={"MLFLOW_TRACKING_URI": registry.tracking_uri},
    ) as server:
        response = post(server.infer_url, infer_body(frame))
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == "v7"  # the label stored with the model
        outputs = outputs_of(response)
        scores, flags = _expected(registry, frame)
        np.testing.assert_allclose(outputs["fraud_probability"], scores, rtol=0, atol=1e-12)
        assert outputs["is_fraud"] == flags
        metrics = scrape(server)
        assert metrics.value("fraud_score_count", model_version="v7") == 20
        # Under plain `mlserver start`, bodies FastAPI refuses still get a 4xx (its own 422).
        malformed = post(server.infer_url, b'{"inputs": [')
        assert malformed.status_code == 422
        assert post(server.infer_url, {"inputs": []}).status_code == 400  # the runtime's own checks


def test_fraudctl_serve_runs_a_registry_version_until_interrupted(registry: Registry, tmp_path: Path) -> None:
    http_port, grpc_port, metrics_port = free_ports(3)
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": registry.tracking_uri,
        "FEEDBACK_SIGNING_KEY": SIGNING_KEY,
    }
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        [
            str(Path(sys.executable).with_name("fraudctl")),
            "serve",
            "--model-uri",
            f"models:/{REGISTERED}/1",
            "--host",
            "127.0.0.1",
            "--port",
            str(http_port),
            "--grpc-port",
            str(grpc_port),
            "--metrics-port",
            str(metrics_port),
            "--version",
            "champion-v7",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{http_port}"
        deadline = time.monotonic() + 90
        # fraudctl serve announces readiness once the model answers on its ready endpoint.
        while f"fraudctl serve: ready: {url}" not in (tmp_path / "serve.log").read_text():
            assert process.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            time.sleep(0.2)
        assert httpx.get(f"{url}/v2/models/{REGISTERED}/ready", timeout=5).status_code == 200
        frame, _ = labelled_rows(3, seed=61)
        response = post(f"{url}/v2/models/{REGISTERED}/infer", infer_body(frame))
        assert response.status_code == 200 and response.json()["model_version"] == "champion-v7"
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
        assert 'fraud_score_count{model_version="champion-v7"} 3.0' in metrics
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=30) == 130
        with pytest.raises(ProcessLookupError):
            os.killpg(process.pid, 0)  # the server it started is gone too
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()
