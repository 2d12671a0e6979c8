"""Fault injection on real servers (SIMULATE_ERROR) and the process helper's restart / cleanup."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from serving_fixtures import SIGNING_KEY, infer_body, labelled_rows, outputs_of, post, scrape, train_small_model

from model.artifact import FraudModel, load_fraud_model
from serving.process import MLServerProcess, ServerStartError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_small_model(tmp_path_factory.mktemp("fault-model") / "model")


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> FraudModel:
    return load_fraud_model(model_dir)


@pytest.fixture(scope="module")
def failing_server(model_dir: Path) -> Iterator[MLServerProcess]:
    with MLServerProcess(
        model_dir, version_label="v2", signing_key=SIGNING_KEY, env={"SIMULATE_ERROR": "true"}
    ) as server:
        yield server


@pytest.fixture(scope="module")
def degraded_server(model_dir: Path) -> Iterator[MLServerProcess]:
    with MLServerProcess(
        model_dir, version_label="v2", signing_key=SIGNING_KEY, env={"SIMULATE_ERROR": "degrade"}
    ) as server:
        yield server


def test_error_mode_fails_half_of_the_requests_with_500(failing_server: MLServerProcess) -> None:
    frame, _ = labelled_rows(3, seed=50)
    before = scrape(failing_server)
    statuses = []
    for _ in range(20):
        response = post(failing_server.infer_url, infer_body(frame))
        statuses.append(response.status_code)
        if response.status_code == 500:
            assert "simulated failure" in response.json()["error"]
    assert statuses.count(500) == 10 and statuses.count(200) == 10
    # Bad input is still a client error, not a simulated failure.
    assert post(failing_server.infer_url, {"inputs": []}).status_code == 400
    after = scrape(failing_server)
    for code, count in (("500", 10), ("200", 10), ("400", 1)):
        delta = after.value("fraud_requests_total", model_version="v2", code=code) - before.value(
            "fraud_requests_total", model_version="v2", code=code
        )
        assert delta == count, code


def test_degrade_mode_answers_but_precision_collapses(degraded_server: MLServerProcess, reference: FraudModel) -> None:
    frame, labels = labelled_rows(300, seed=51, fraud_share=0.1)
    response = post(degraded_server.infer_url, infer_body(frame))
    assert response.status_code == 200, response.text
    outputs = outputs_of(response)
    healthy = np.asarray(reference.fraud_probability(frame))
    np.testing.assert_allclose(outputs["fraud_probability"], 1.0 - healthy, rtol=0, atol=1e-12)

    def precision(flags: np.ndarray) -> float:
        return float(np.sum(flags & (labels == 1)) / max(np.sum(flags), 1))

    degraded_flags = np.asarray(outputs["is_fraud"])
    assert precision(healthy >= reference.threshold) > 0.8
    assert precision(degraded_flags) < 0.2
    # Ground truth fed back shows the collapse in the metrics the rollout analysis reads.
    before = scrape(degraded_server)
    body = [{"prediction_id": i, "label": int(y)} for i, y in zip(outputs["prediction_id"], labels, strict=True)]
    assert post(degraded_server.feedback_url, body).status_code == 200
    after = scrape(degraded_server)
    tp, fp = (
        after.value("fraud_feedback_total", model_version="v2", outcome=cell)
        - before.value("fraud_feedback_total", model_version="v2", outcome=cell)
        for cell in ("tp", "fp")
    )
    assert tp / (tp + fp) == pytest.approx(precision(degraded_flags))


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SIMULATE_ERROR": "sometimes"}, "SIMULATE_ERROR='sometimes' is not allowed"),
        ({"FEEDBACK_SIGNING_KEY": None}, "FEEDBACK_SIGNING_KEY is not set"),
        ({"FEEDBACK_SIGNING_KEY": "short"}, "at least 16 bytes"),
    ],
)
def test_misconfigured_server_fails_to_start_with_the_reason(model_dir: Path, env: dict, message: str) -> None:
    with pytest.raises(ServerStartError, match=message):
        MLServerProcess(model_dir, env=env, startup_timeout=60).start()


def test_restart_with_a_fault_keeps_ports_and_stop_leaves_nothing(model_dir: Path) -> None:
    frame, _ = labelled_rows(1, seed=52)
    server = MLServerProcess(model_dir, version_label="v2")
    with server:
        assert post(server.infer_url, infer_body(frame)).status_code == 200
        url, first_pid = server.http_url, server.pid
        server.restart(env={"SIMULATE_ERROR": "true", "SIMULATE_ERROR_RATE": "1"})
        assert server.http_url == url and server.pid != first_pid
        assert [post(server.infer_url, infer_body(frame)).status_code for _ in range(3)] == [500, 500, 500]
        group, work_dir = server.pid, server.work_dir
    assert group is not None and work_dir is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)
    assert not work_dir.exists()
    for port in (server.config.http_port, server.config.grpc_port, server.config.metrics_port):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine, a listener is not
            sock.bind(("127.0.0.1", port))
            sock.listen()
