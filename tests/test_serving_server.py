"""A real MLServer with the fraud runtime: inference, batching, metrics, feedback across replicas, bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from serving_fixtures import (
    MODEL_NAME,
    SIGNING_KEY,
    infer_body,
    labelled_rows,
    outputs_of,
    post,
    scrape,
    train_small_model,
)

from model.artifact import FraudModel, load_fraud_model
from serving.feedback import PredictionSigner
from serving.process import MLServerProcess, free_ports
from serving.synthetic_model import FEATURE_NAMES

pytestmark = pytest.mark.slow

BATCH_WAIT_SECONDS = 0.05
MAX_ROWS = 64
MAX_BODY_BYTES = 256 * 1024
JSON = "application/json"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_small_model(tmp_path_factory.mktemp("serving-model") / "model")


@pytest.fixture(scope="module")
def reference(model_dir: Path) -> FraudModel:
    return load_fraud_model(model_dir)


@pytest.fixture(scope="module")
def server_a(model_dir: Path) -> Iterator[MLServerProcess]:
    """Replica A serving version v1, with adaptive batching on."""
    with MLServerProcess(
        model_dir,
        version_label="v1",
        signing_key=SIGNING_KEY,
        max_batch_size=4,
        max_batch_time_seconds=BATCH_WAIT_SECONDS,
        max_rows=MAX_ROWS,
        env={"FRAUD_MAX_BODY_BYTES": str(MAX_BODY_BYTES)},
    ) as server:
        yield server


@pytest.fixture(scope="module")
def server_b(model_dir: Path) -> Iterator[MLServerProcess]:
    """Replica B of the same Service (same signing key), serving another version."""
    with MLServerProcess(model_dir, version_label="v2", signing_key=SIGNING_KEY) as server:
        yield server


def _expected(reference: FraudModel, frame: Any) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(reference.fraud_probability(frame))
    return scores, scores >= reference.threshold


def test_single_row_matches_the_model_in_process(server_a: MLServerProcess, reference: FraudModel) -> None:
    frame, _ = labelled_rows(1, seed=1)
    response = post(server_a.infer_url, infer_body(frame))
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model_name"] == MODEL_NAME and body["model_version"] == "v1"
    outputs = outputs_of(response)
    scores, flags = _expected(reference, frame)
    np.testing.assert_allclose(outputs["fraud_probability"], scores, rtol=0, atol=1e-12)
    assert outputs["is_fraud"] == flags.tolist()
    assert len(outputs["prediction_id"]) == 1


def test_batch_rows_match_and_prediction_ids_are_signed(server_a: MLServerProcess, reference: FraudModel) -> None:
    frame, _ = labelled_rows(MAX_ROWS, seed=2)
    response = post(server_a.infer_url, infer_body(frame))
    assert response.status_code == 200, response.text
    outputs = outputs_of(response)
    scores, flags = _expected(reference, frame)
    np.testing.assert_allclose(outputs["fraud_probability"], scores, rtol=0, atol=1e-12)
    assert outputs["is_fraud"] == flags.tolist()
    assert 0 < sum(flags) < len(flags)  # both decisions occur
    signer = PredictionSigner(SIGNING_KEY.encode())
    tokens = [signer.verify(token) for token in outputs["prediction_id"]]
    assert {t.model_version for t in tokens} == {"v1"}
    assert [t.is_fraud for t in tokens] == flags.tolist()
    assert abs(tokens[0].issued_at - time.time()) < 120


def test_adaptive_batching_keeps_concurrent_requests_apart(server_a: MLServerProcess, reference: FraudModel) -> None:
    # A lone request waits for its batch to fill until max_batch_time: the batcher is in the path.
    frame, _ = labelled_rows(1, seed=3)
    started = time.perf_counter()
    assert post(server_a.infer_url, infer_body(frame)).status_code == 200
    assert time.perf_counter() - started >= BATCH_WAIT_SECONDS * 0.9

    frames = [labelled_rows(size, seed=10 + size)[0] for size in (1, 2, 3, 4, 5, 6)]
    bodies: list[Any] = [infer_body(f) for f in frames]
    missing = infer_body(frames[0])
    missing["inputs"] = missing["inputs"][1:]
    wrong_type = infer_body(frames[1])
    wrong_type["inputs"][3]["data"] = ["high"] * 2
    bodies += [missing, wrong_type]
    before = scrape(server_a)
    with ThreadPoolExecutor(max_workers=len(bodies)) as pool:
        responses = list(pool.map(lambda body: post(server_a.infer_url, body), bodies))
    after = scrape(server_a)
    for frame, response in zip(frames, responses, strict=False):
        assert response.status_code == 200, response.text
        scores, flags = _expected(reference, frame)
        outputs = outputs_of(response)
        np.testing.assert_allclose(outputs["fraud_probability"], scores, rtol=0, atol=1e-12)
        assert outputs["is_fraud"] == flags.tolist()
        assert len(outputs["prediction_id"]) == len(frame)
    assert responses[-2].status_code == 400 and "missing input(s): Time" in responses[-2].json()["error"]
    assert responses[-1].status_code == 400 and "'high'" in responses[-1].json()["error"]

    def delta(code: str) -> float:
        return after.value("fraud_requests_total", model_version="v1", code=code) - before.value(
            "fraud_requests_total", model_version="v1", code=code
        )

    assert (delta("200"), delta("400")) == (6, 2)


def test_requested_outputs_are_the_ones_returned(server_a: MLServerProcess) -> None:
    frame, _ = labelled_rows(2, seed=4)
    body = {**infer_body(frame), "outputs": [{"name": "is_fraud"}, {"name": "fraud_probability"}]}
    response = post(server_a.infer_url, body)
    assert response.status_code == 200, response.text
    assert [o["name"] for o in response.json()["outputs"]] == ["is_fraud", "fraud_probability"]


def test_metrics_count_predictions_scores_requests_and_latency(server_a: MLServerProcess) -> None:
    before = scrape(server_a)
    frames = [labelled_rows(n, seed=20 + n)[0] for n in (5, 7)]
    decisions: list[bool] = []
    scores: list[float] = []
    for frame in frames:
        outputs = outputs_of(post(server_a.infer_url, infer_body(frame)))
        decisions += outputs["is_fraud"]
        scores += outputs["fraud_probability"]
    after = scrape(server_a)

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    fraud = sum(decisions)
    assert delta("fraud_predictions_total", model_version="v1", decision="fraud") == fraud
    assert delta("fraud_predictions_total", model_version="v1", decision="legit") == len(decisions) - fraud
    assert delta("fraud_score_count", model_version="v1") == len(scores)
    assert delta("fraud_score_bucket", model_version="v1", le="0.5") == sum(s <= 0.5 for s in scores)
    assert delta("fraud_score_sum", model_version="v1") == pytest.approx(sum(scores))
    assert delta("fraud_requests_total", model_version="v1", code="200") == 2
    assert delta("fraud_request_duration_seconds_count", model_version="v1") == 2
    # The adaptive batcher's wait is part of the latency the runtime reports.
    assert delta("fraud_request_duration_seconds_sum", model_version="v1") >= 2 * BATCH_WAIT_SECONDS * 0.9


def _predict(server: MLServerProcess, rows: int, seed: int) -> tuple[list[str], list[bool], np.ndarray]:
    """Predictions plus ground-truth labels chosen so every confusion cell occurs (the small model is
    almost always right on generated data): alternate labels within each decision."""
    frame, _ = labelled_rows(rows, seed=seed, fraud_share=0.5)
    outputs = outputs_of(post(server.infer_url, infer_body(frame)))
    seen = {True: 0, False: 0}
    labels = []
    for decided in outputs["is_fraud"]:
        labels.append(int(decided) if seen[decided] % 2 == 0 else 1 - int(decided))
        seen[decided] += 1
    return outputs["prediction_id"], outputs["is_fraud"], np.asarray(labels)


def _outcomes(decisions: list[bool], labels: np.ndarray) -> dict[str, int]:
    cells = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    for decided, label in zip(decisions, labels, strict=True):
        cells[("t" if decided == bool(label) else "f") + ("p" if decided else "n")] += 1
    return cells


def test_feedback_counts_outcomes_so_precision_and_recall_follow(server_a: MLServerProcess) -> None:
    ids, decisions, labels = _predict(server_a, 40, seed=30)
    expected = _outcomes(decisions, labels)
    assert all(expected.values())  # all four cells occur
    before = scrape(server_a)
    body = [{"prediction_id": i, "label": int(label)} for i, label in zip(ids, labels, strict=True)]
    response = post(server_a.feedback_url, body)
    assert response.status_code == 200, response.text
    assert response.json()["accepted"] == 40
    after = scrape(server_a)
    got = {
        cell: after.value("fraud_feedback_total", model_version="v1", outcome=cell)
        - before.value("fraud_feedback_total", model_version="v1", outcome=cell)
        for cell in expected
    }
    assert got == expected
    # What the rollout analysis computes in PromQL from these counters.
    assert got["tp"] / (got["tp"] + got["fp"]) == pytest.approx(expected["tp"] / (expected["tp"] + expected["fp"]))
    assert got["tp"] / (got["tp"] + got["fn"]) == pytest.approx(expected["tp"] / (expected["tp"] + expected["fn"]))


def test_feedback_refuses_repeats_forgeries_expired_and_malformed(server_a: MLServerProcess) -> None:
    ids, _, _ = _predict(server_a, 3, seed=31)
    url = server_a.feedback_url
    assert post(url, {"prediction_id": ids[0], "label": 1}).status_code == 200
    before = scrape(server_a)
    signer = PredictionSigner(SIGNING_KEY.encode())
    forged = PredictionSigner(b"attacker-key-0123456789").issue("v1", [True])[0]
    expired = signer.issue("v1", [True], issued_at=int(time.time()) - 3 * 86_400)[0]
    cases = [
        ({"prediction_id": ids[0], "label": 1}, "application/json", 409, "already counted"),
        ({"prediction_id": forged, "label": 1}, "application/json", 403, "signature does not verify"),
        ({"prediction_id": ids[1][:-2] + "AA", "label": 0}, "application/json", 403, "signature"),
        ({"prediction_id": "made-up", "label": 0}, "application/json", 400, "prediction_id"),
        ({"prediction_id": expired, "label": 1}, "application/json", 410, "feedback is accepted for"),
        ({"prediction_id": ids[1], "label": 3}, "application/json", 400, "label must be 0"),
        (b"{oops", "application/json", 400, "malformed JSON"),
        ({"prediction_id": ids[1], "label": 1}, "text/plain", 415, "Content-Type"),
        # One forged item refuses the whole list: the good item is not counted either.
        (
            [{"prediction_id": ids[1], "label": 1}, {"prediction_id": forged, "label": 0}],
            "application/json",
            403,
            "feedback item 1",
        ),
    ]
    for body, content_type, status, needle in cases:
        response = post(url, body, content_type)
        assert response.status_code == status, (body, response.text)
        assert needle in response.json()["error"], response.text
    after = scrape(server_a)
    for cell in ("tp", "fp", "tn", "fn"):
        assert after.value("fraud_feedback_total", outcome=cell) == before.value("fraud_feedback_total", outcome=cell)
    rejected = {
        reason: after.value("fraud_feedback_rejected_total", reason=reason)
        - before.value("fraud_feedback_rejected_total", reason=reason)
        for reason in ("repeat", "bad_signature", "expired", "malformed")
    }
    assert rejected == {"repeat": 1, "bad_signature": 3, "expired": 1, "malformed": 4}
    # The good item of the refused list is still countable.
    assert post(url, {"prediction_id": ids[1], "label": 1}).json()["accepted"] == 1


def test_feedback_on_another_replica_counts_under_the_predicting_version(
    server_a: MLServerProcess, server_b: MLServerProcess
) -> None:
    ids, decisions, labels = _predict(server_a, 12, seed=32)
    expected = _outcomes(decisions, labels)
    before_a, before_b = scrape(server_a), scrape(server_b)
    body = [{"prediction_id": i, "label": int(label)} for i, label in zip(ids, labels, strict=True)]
    response = post(server_b.feedback_url, body)
    assert response.status_code == 200, response.text
    assert {r["model_version"] for r in response.json()["results"]} == {"v1"}
    after_a, after_b = scrape(server_a), scrape(server_b)
    for cell, count in expected.items():
        assert (
            after_b.value("fraud_feedback_total", model_version="v1", outcome=cell)
            - before_b.value("fraud_feedback_total", model_version="v1", outcome=cell)
            == count
        )
        assert after_b.value("fraud_feedback_total", model_version="v2", outcome=cell) == before_b.value(
            "fraud_feedback_total", model_version="v2", outcome=cell
        )
        assert after_a.value("fraud_feedback_total", outcome=cell) == before_a.value(
            "fraud_feedback_total", outcome=cell
        )
    assert post(server_b.feedback_url, body[:1]).status_code == 409  # repeat on the replica that counted it
    forged = PredictionSigner(b"attacker-key-0123456789").issue("v1", [True])[0]
    assert post(server_b.feedback_url, {"prediction_id": forged, "label": 1}).status_code == 403


def _bad_bodies() -> list[tuple[str, bytes, str, int, str]]:
    frame, _ = labelled_rows(2, seed=40)
    good = infer_body(frame)

    def edited(change: Any) -> bytes:
        body = json.loads(json.dumps(good))
        change(body)
        return json.dumps(body).encode()

    def set_data(index: int, data: list[Any], datatype: str | None = None) -> Any:
        def change(body: dict[str, Any]) -> None:
            body["inputs"][index]["data"] = data
            if datatype:
                body["inputs"][index]["datatype"] = datatype

        return change

    def rows(count: int) -> bytes:
        return json.dumps(
            {
                "inputs": [
                    {"name": n, "shape": [count], "datatype": "FP64", "data": [0.5] * count} for n in FEATURE_NAMES
                ]
            }
        ).encode()

    good_text = json.dumps(good)
    return [
        ("missing field", edited(lambda b: b["inputs"].pop(3)), JSON, 400, "missing input(s): V3"),
        (
            "extra field",
            edited(
                lambda b: b["inputs"].append({"name": "Merchant", "shape": [2], "datatype": "FP64", "data": [1, 2]})
            ),
            JSON,
            400,
            "unexpected input(s): Merchant",
        ),
        ("string value", edited(set_data(1, ["a", "b"])), JSON, 400, "is not a number"),
        ("bool value", edited(set_data(1, [True, False])), JSON, 400, "is not a number"),
        ("bytes datatype", edited(set_data(1, ["a", "b"], "BYTES")), JSON, 400, "datatype BYTES"),
        ("unknown datatype", edited(set_data(1, [1, 2], "FLOAT")), JSON, 422, "not a valid V2"),
        ("NaN", edited(set_data(2, [1.5, 2.5])).replace(b"[1.5, 2.5]", b"[NaN, 2.5]"), JSON, 400, "malformed JSON"),
        ("infinity", edited(set_data(2, [1.5, 2.5])).replace(b"[1.5, 2.5]", b"[1e999, 2.5]"), JSON, 400, "infinity"),
        ("row counts differ", edited(set_data(2, [1.0, 2.0, 3.0])), JSON, 400, "data has 3"),
        ("empty batch", rows(0), JSON, 400, "empty batch"),
        ("too many rows", rows(MAX_ROWS + 1), JSON, 413, f"limit of {MAX_ROWS} rows"),
        ("body too large", b" " * (MAX_BODY_BYTES + 1) + good_text.encode(), JSON, 413, "exceeds"),
        ("malformed JSON", good_text[:-7].encode(), JSON, 400, "malformed JSON body at byte"),
        ("wrong content type", good_text.encode(), "text/plain", 415, "Content-Type"),
        ("form content type", good_text.encode(), "application/x-www-form-urlencoded", 415, "Content-Type"),
        ("empty body", b"", JSON, 400, "empty request body"),
        ("not a V2 request", b'{"rows": [[1, 2]]}', JSON, 422, "inputs: Field required"),
        ("unknown output", edited(lambda b: b.update(outputs=[{"name": "predict"}])), JSON, 400, "available outputs"),
    ]


BAD_BODIES = _bad_bodies()


@pytest.mark.parametrize(
    ("case", "body", "content_type", "status", "needle"), BAD_BODIES, ids=[case[0] for case in BAD_BODIES]
)
def test_bad_input_gets_a_clear_4xx_and_the_server_keeps_serving(
    server_a: MLServerProcess, case: str, body: bytes, content_type: str, status: int, needle: str
) -> None:
    response = post(server_a.infer_url, body, content_type)
    assert response.status_code == status, (case, response.text)
    assert needle in response.json()["error"], (case, response.text)
    frame, _ = labelled_rows(1, seed=41)
    assert post(server_a.infer_url, infer_body(frame)).status_code == 200


def test_image_healthcheck_follows_readiness(server_a: MLServerProcess) -> None:
    def healthcheck(port: int) -> int:
        env = {**os.environ, "MLSERVER_HTTP_PORT": str(port)}
        return subprocess.run([sys.executable, "-m", "serving.healthcheck"], env=env, capture_output=True).returncode

    assert healthcheck(server_a.config.http_port) == 0
    assert healthcheck(free_ports(1)[0]) == 1


def test_unknown_model_and_metadata(server_a: MLServerProcess) -> None:
    frame, _ = labelled_rows(1, seed=42)
    missing = post(f"{server_a.http_url}/v2/models/not-a-model/infer", infer_body(frame))
    assert missing.status_code == 404 and "not-a-model" in missing.json()["error"]
    metadata = httpx.get(f"{server_a.http_url}/v2/models/{MODEL_NAME}", timeout=10).json()
    assert [i["name"] for i in metadata["inputs"]] == FEATURE_NAMES
    assert [o["name"] for o in metadata["outputs"]] == ["fraud_probability", "is_fraud", "prediction_id"]
    by_version = post(f"{server_a.http_url}/v2/models/{MODEL_NAME}/versions/v1/infer", infer_body(frame))
    assert by_version.status_code == 200 and by_version.json()["model_version"] == "v1"
