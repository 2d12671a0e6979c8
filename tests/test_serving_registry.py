"""Serving straight from the MLflow registry (sqlite store in tmp): stock ``mlserver start`` configured by
environment only, and ``fraudctl serve`` end to end until SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from mlflow_support import mlflow_store_kept
from serving_fixtures import SIGNING_KEY, infer_body, labelled_rows, outputs_of, post, scrape

from model.artifact import log_fraud_model
from serving.process import MLServerProcess, free_ports
from serving.synthetic_model import FEATURE_NAMES, train_synthetic_estimator

# One worker runs the whole module (./dev test uses --dist loadgroup): the registry is built once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serving-registry")]

REGISTERED = "fraud-detector"


@dataclass(frozen=True)
class Registry:
    tracking_uri: str
    estimator: object
    threshold: float

    def env(self) -> dict[str, str]:
        """Both URIs, given explicitly: the server must not inherit another store from this process."""
        return {"MLFLOW_TRACKING_URI": self.tracking_uri, "MLFLOW_REGISTRY_URI": self.tracking_uri}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    import mlflow
    from mlflow import MlflowClient

    root = tmp_path_factory.mktemp("registry")
    tracking_uri = f"sqlite:///{root / 'mlflow.db'}"
    estimator, threshold = train_synthetic_estimator(3000, seed=3, max_iter=20)
    # The fluent API logs to the process-wide store: point tracking and registry here, then put both back (the
    # environment too: set_tracking_uri exports it, and a later registry of this worker would go there).
    with mlflow_store_kept():
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        experiment = mlflow.create_experiment("serving-tests", artifact_location=str(root / "artifacts"))
        with mlflow.start_run(experiment_id=experiment):
            info = log_fraud_model(
                estimator,
                threshold=threshold,
                model_version="v7",
                feature_names=FEATURE_NAMES,
                registered_model_name=REGISTERED,
            )
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        client.set_registered_model_alias(REGISTERED, "champion", info.registered_model_version)
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
        env=registry.env(),
    ) as server:
        response = post(server.infer_url, infer_body(frame))
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == "v7"  # the label stored with the model
        outputs = outputs_of(response)
        scores, flags = _expected(registry, frame)
        np.testing.assert_allclose(outputs["fraud_probability"], scores, rtol=0, atol=1e-6)
        assert outputs["is_fraud"] == flags
        assert scrape(server).value("fraud_score_count", model_version="v7") == 20
        # Under plain `mlserver start`, bodies FastAPI refuses still get a 4xx (its own 422).
        assert post(server.infer_url, b'{"inputs": [').status_code == 422
        assert post(server.infer_url, {"inputs": []}).status_code == 400  # the runtime's own checks


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine, a listener is not
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_fraudctl_serve_runs_a_registry_version_until_sigterm_and_leaves_nothing(
    registry: Registry, tmp_path: Path
) -> None:
    ports = free_ports(3)
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, **registry.env(), "FEEDBACK_SIGNING_KEY": SIGNING_KEY, "TMPDIR": str(scratch)}
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                str(Path(sys.executable).with_name("fraudctl")),
                "serve",
                "--model-uri",
                f"models:/{REGISTERED}/1",
                "--host",
                "127.0.0.1",
                "--port",
                str(ports[0]),
                "--grpc-port",
                str(ports[1]),
                "--metrics-port",
                str(ports[2]),
                "--version",
                "champion-v7",
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        url = f"http://127.0.0.1:{ports[0]}"
        deadline = time.monotonic() + 120
        # fraudctl serve announces readiness once the model answers on its ready endpoint.
        while f"fraudctl serve: ready: {url}" not in log_path.read_text():
            assert process.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.2)
        frame, _ = labelled_rows(3, seed=61)
        response = post(f"{url}/v2/models/{REGISTERED}/versions/champion-v7/infer", infer_body(frame))
        assert response.status_code == 200 and response.json()["model_version"] == "champion-v7"
        metrics = httpx.get(f"http://127.0.0.1:{ports[2]}/metrics", timeout=5).text
        assert 'fraud_score_count{model_version="champion-v7"} 3.0' in metrics
        assert list(scratch.iterdir()), "the server's settings and the downloaded model live under TMPDIR"
        process.send_signal(signal.SIGTERM)  # what Kubernetes, systemd or `kill` send
        assert process.wait(timeout=60) == 128 + signal.SIGTERM, log_path.read_text()
        assert "Traceback" not in log_path.read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    leftover = subprocess.run(["pgrep", "-f", f"serving.server .*{scratch}"], capture_output=True, text=True)
    assert leftover.stdout == "", leftover.stdout  # the server child is gone too
    assert [port for port in ports if not _port_is_free(port)] == []
    assert list(scratch.iterdir()) == []  # temporary settings and model copies removed
