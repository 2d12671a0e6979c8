"""Serving pieces that need no server: tokens, ledger, validation, faults, settings, metrics, client, image."""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest
from mlserver.repository.load import load_model_settings
from mlserver.settings import ModelParameters, ModelSettings, Settings
from mlserver.types import InferenceRequest
from prometheus_client import CollectorRegistry, generate_latest
from serving_fixtures import SIGNING_KEY

from fraudctl.cli import main as fraudctl_main
from serving.client import build_feedback, build_infer_request, parse_infer_response, parse_metrics
from serving.faults import FaultConfigError, FaultInjector
from serving.feedback import (
    FeedbackItem,
    FeedbackLedger,
    FeedbackRejected,
    PredictionSigner,
    SigningKeyError,
    parse_feedback_body,
)
from serving.metrics import METRIC_LABELS, METRIC_NAMES, ServingMetrics, outcome
from serving.settings import (
    PROCESS_ENVIRONMENT,
    RUNTIME_IMPLEMENTATION,
    ServingConfig,
    ServingConfigError,
    mlserver_environment,
    write_mlserver_config,
)
from serving.synthetic_model import FEATURE_NAMES
from serving.validation import RequestRejected, features_from_request, requested_outputs

ROOT = Path(__file__).resolve().parents[1]
KEY = SIGNING_KEY.encode()


# -- prediction ids ----------------------------------------------------------------------------------
def test_token_round_trip_keeps_version_decision_and_time() -> None:
    signer = PredictionSigner(KEY)
    tokens = signer.issue("v7", [True, False, True], issued_at=1_700_000_000)
    assert len(set(tokens)) == 3  # a random nonce per row, so repeats are detectable
    decoded = [signer.verify(token) for token in tokens]
    assert [t.is_fraud for t in decoded] == [True, False, True]
    assert {t.model_version for t in decoded} == {"v7"}
    assert {t.issued_at for t in decoded} == {1_700_000_000}


def test_forged_tampered_and_garbage_tokens_are_refused() -> None:
    signer = PredictionSigner(KEY)
    token = signer.issue("v1", [False])[0]
    other = PredictionSigner(b"another-key-0123456789").issue("v1", [True])[0]
    with pytest.raises(PermissionError):
        signer.verify(other)
    # Flip the decision bit in the payload: the MAC no longer matches.
    import base64

    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    raw[1] ^= 1
    tampered = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    with pytest.raises(PermissionError):
        signer.verify(tampered)
    for garbage in ["", "not base64!!", "abc", 42, None, "A" * 500]:
        with pytest.raises(ValueError):
            signer.verify(garbage)


def test_previous_key_still_verifies_during_rotation() -> None:
    old = PredictionSigner(b"old-key-0123456789abcdef")
    token = old.issue("v1", [True])[0]
    rotated = PredictionSigner.from_environment(
        {
            "FEEDBACK_SIGNING_KEY": "new-key-0123456789abcdef",
            "FEEDBACK_SIGNING_KEY_PREVIOUS": "old-key-0123456789abcdef",
        }
    )
    assert rotated.verify(token).is_fraud
    assert rotated.verify(rotated.issue("v1", [False])[0]).is_fraud is False


@pytest.mark.parametrize("env", [{}, {"FEEDBACK_SIGNING_KEY": ""}, {"FEEDBACK_SIGNING_KEY": "short"}])
def test_signing_key_missing_or_short_is_a_clear_error(env: dict[str, str]) -> None:
    with pytest.raises(SigningKeyError, match="FEEDBACK_SIGNING_KEY"):
        PredictionSigner.from_environment(env)


# -- feedback ledger ---------------------------------------------------------------------------------
class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _ledger(clock: Clock, ttl: float = 3600, capacity: int = 100) -> tuple[PredictionSigner, FeedbackLedger]:
    signer = PredictionSigner(KEY)
    return signer, FeedbackLedger(signer, ttl_seconds=ttl, capacity=capacity, clock=clock)


def test_ledger_counts_outcomes_and_refuses_repeats() -> None:
    clock = Clock(1_700_000_000)
    signer, ledger = _ledger(clock)
    tokens = signer.issue("v1", [True, True, False, False], issued_at=int(clock.now))
    counted = ledger.apply([FeedbackItem(t, label) for t, label in zip(tokens, [1, 0, 0, 1], strict=True)])
    assert [c.outcome for c in counted] == ["tp", "fp", "tn", "fn"]
    assert {c.model_version for c in counted} == {"v1"}
    with pytest.raises(FeedbackRejected) as refused:
        ledger.apply([FeedbackItem(tokens[0], 1)])
    assert refused.value.status_code == 409 and refused.value.reason == "repeat"
    # The same id twice in one request is a repeat too, and nothing of that request is counted.
    fresh = signer.issue("v1", [True], issued_at=int(clock.now))[0]
    with pytest.raises(FeedbackRejected) as twice:
        ledger.apply([FeedbackItem(fresh, 1), FeedbackItem(fresh, 1)])
    assert twice.value.status_code == 409
    assert len(ledger.apply([FeedbackItem(fresh, 1)])) == 1


def test_ledger_is_all_or_nothing_and_reports_the_worst_reason() -> None:
    clock = Clock(1_700_000_000)
    signer, ledger = _ledger(clock)
    good = signer.issue("v1", [True], issued_at=int(clock.now))[0]
    forged = PredictionSigner(b"attacker-key-0123456789").issue("v1", [True])[0]
    with pytest.raises(FeedbackRejected) as refused:
        ledger.apply([FeedbackItem(good, 1), FeedbackItem(forged, 1)])
    assert refused.value.status_code == 403
    assert [r.as_dict()["index"] for r in refused.value.rejections] == [1]
    assert "nothing was counted" in refused.value.message
    assert len(ledger.seen) == 0
    assert ledger.apply([FeedbackItem(good, 1)])[0].outcome == "tp"


def test_ledger_expires_tokens_and_frees_the_seen_set() -> None:
    clock = Clock(1_700_000_000)
    signer, ledger = _ledger(clock, ttl=60, capacity=2)
    first, second, third = signer.issue("v1", [False, False, False], issued_at=int(clock.now))
    ledger.apply([FeedbackItem(first, 0), FeedbackItem(second, 0)])
    with pytest.raises(FeedbackRejected) as full:
        ledger.apply([FeedbackItem(third, 0)])
    assert full.value.status_code == 503 and full.value.reason == "capacity"
    clock.now += 62
    with pytest.raises(FeedbackRejected) as expired:
        ledger.apply([FeedbackItem(first, 0)])  # expired, never counted twice
    assert expired.value.status_code == 410
    assert len(ledger.seen) == 0  # purged once past their expiry
    newer = signer.issue("v1", [True], issued_at=int(clock.now))[0]
    assert ledger.apply([FeedbackItem(newer, 1)])[0].outcome == "tp"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "malformed JSON"),
        (b"[]", "empty list"),
        (b'{"prediction_id": "x"}', "missing label"),
        (b'{"prediction_id": "x", "label": 1, "extra": 2}', "unexpected extra"),
        (b'{"prediction_id": "x", "label": true}', "label must be 0"),
        (b'{"prediction_id": "x", "label": "1"}', "label must be 0"),
        (b'{"prediction_id": "x", "label": 2}', "label must be 0"),
        (b'{"prediction_id": 5, "label": 1}', "prediction_id must be"),
        (b'"just a string"', "must be an object"),
        (json.dumps([{"prediction_id": "x", "label": 1}] * 1001).encode(), "at most 1000"),
    ],
)
def test_feedback_body_problems_are_named(body: bytes, needle: str) -> None:
    with pytest.raises(FeedbackRejected) as refused:
        parse_feedback_body(body)
    assert refused.value.status_code == 400
    assert needle in json.dumps(refused.value.body())


# -- request validation ------------------------------------------------------------------------------
def _request(columns: dict[str, list], datatype: str = "FP64", **extra: object) -> InferenceRequest:
    inputs = [
        {"name": name, "shape": [len(values)], "datatype": datatype, "data": values} for name, values in columns.items()
    ]
    return InferenceRequest.model_validate({"inputs": inputs, **extra})


def _columns(rows: int = 2) -> dict[str, list]:
    return {name: [float(i + j) for j in range(rows)] for i, name in enumerate(FEATURE_NAMES)}


def test_features_come_back_in_model_order_whatever_the_input_order() -> None:
    columns = _columns(3)
    shuffled = dict(reversed(list(columns.items())))
    matrix = features_from_request(_request(shuffled), FEATURE_NAMES)
    assert matrix.shape == (3, 30)
    np.testing.assert_array_equal(matrix[:, 0], columns["Time"])
    np.testing.assert_array_equal(matrix[:, -1], columns["Amount"])
    nested = _request({name: [[v] for v in values] for name, values in columns.items()})
    for request_input in nested.inputs:
        request_input.shape = [3, 1]
    np.testing.assert_array_equal(features_from_request(nested, FEATURE_NAMES), matrix)


def _with(column: str, values: list) -> dict[str, list]:
    columns = _columns(2)
    columns[column] = values
    return columns


@pytest.mark.parametrize(
    ("columns", "status", "needle"),
    [
        ({k: v for k, v in _columns().items() if k != "V3"}, 400, "missing input(s): V3"),
        ({**_columns(), "Merchant": [1.0, 2.0]}, 400, "unexpected input(s): Merchant"),
        (_with("V1", ["a", "b"]), 400, "is not a number"),
        (_with("V1", [True, 1.0]), 400, "is not a number"),
        (_with("V1", [None, 1.0]), 400, "is not a number"),
        (_with("V2", [math.nan, 1.0]), 400, "non-finite"),
        (_with("V2", [1.0, math.inf]), 400, "non-finite"),
        (_with("V2", [1.0, 2.0, 3.0]), 400, "data has 3"),
        ({name: [] for name in FEATURE_NAMES}, 400, "empty batch"),
        ({name: [0.0] * 65 for name in FEATURE_NAMES}, 413, "exceeds the limit of 64"),
    ],
)
def test_bad_requests_are_refused_with_what_is_allowed(columns: dict, status: int, needle: str) -> None:
    request = _request(columns)
    if "data has 3" in needle:
        request.inputs[2].shape = [2]
    with pytest.raises(RequestRejected) as refused:
        features_from_request(request, FEATURE_NAMES, max_rows=64)
    assert refused.value.status_code == status
    assert needle in refused.value.message


def test_wrong_datatype_shape_duplicates_row_counts_and_outputs_are_refused() -> None:
    with pytest.raises(RequestRejected, match="datatype BYTES is not allowed"):
        features_from_request(_request(_columns(), datatype="BYTES"), FEATURE_NAMES)
    bad_shape = _request(_columns())
    bad_shape.inputs[0].shape = [1, 2]
    with pytest.raises(RequestRejected, match=re.escape("use [n] or [n, 1]")):
        features_from_request(bad_shape, FEATURE_NAMES)
    duplicated = _request(_columns())
    duplicated.inputs.append(duplicated.inputs[0])
    with pytest.raises(RequestRejected, match="more than once"):
        features_from_request(duplicated, FEATURE_NAMES)
    uneven = _columns()
    uneven["Amount"] = [1.0]
    with pytest.raises(RequestRejected, match="different numbers of rows"):
        features_from_request(_request(uneven), FEATURE_NAMES)
    with pytest.raises(RequestRejected, match="available outputs"):
        requested_outputs(_request(_columns(), outputs=[{"name": "predict"}]))
    assert requested_outputs(_request(_columns(), outputs=[{"name": "is_fraud"}])) == ["is_fraud"]


# -- fault injection ---------------------------------------------------------------------------------
def test_fault_modes_parse_and_fail_an_exact_share() -> None:
    assert FaultInjector.from_environment({}).mode == "none"
    assert FaultInjector.from_environment({"SIMULATE_ERROR": "false"}).active is False
    assert FaultInjector.from_environment({"SIMULATE_ERROR": "degrade"}).corrupts_scores
    errors = FaultInjector.from_environment({"SIMULATE_ERROR": "TRUE", "SIMULATE_ERROR_RATE": "0.25"})
    outcomes = [errors.should_fail() for _ in range(100)]
    assert sum(outcomes) == 25 and outcomes[:4] == [False, False, False, True]
    half = FaultInjector.from_environment({"SIMULATE_ERROR": "true"})
    assert [half.should_fail() for _ in range(4)] == [False, True, False, True]
    np.testing.assert_allclose(FaultInjector.corrupt(np.array([0.1, 0.9])), [0.9, 0.1])
    for env in ({"SIMULATE_ERROR": "sometimes"}, {"SIMULATE_ERROR": "true", "SIMULATE_ERROR_RATE": "1.5"}):
        with pytest.raises(FaultConfigError, match="not allowed"):
            FaultInjector.from_environment(env)


# -- settings ----------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # MLServer itself reads settings with parse_file
def test_config_files_are_what_mlserver_reads(tmp_path: Path) -> None:
    config = ServingConfig(
        model_uri=str(tmp_path / "model"),
        version_label="v2",
        http_port=9000,
        grpc_port=9001,
        metrics_port=9002,
        max_batch_size=16,
        max_batch_time_seconds=0.004,
        max_rows=500,
    )
    root = write_mlserver_config(tmp_path / "cfg", config)
    settings = Settings.parse_file(str(root / "settings.json"))
    assert (settings.http_port, settings.grpc_port, settings.metrics_port) == (9000, 9001, 9002)
    assert settings.parallel_workers == 0 and settings.debug is False
    model = load_model_settings(str(root / "fraud-detector" / "model-settings.json"))
    assert model.implementation_ == RUNTIME_IMPLEMENTATION
    assert (model.max_batch_size, model.max_batch_time) == (16, 0.004)
    assert model.parameters.uri == str(tmp_path / "model") and model.parameters.version == "v2"
    assert model.parameters.extra["max_rows"] == 500
    assert not list(root.rglob(".*"))  # no temp files left behind


def test_environment_config_is_what_mlserver_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    config = ServingConfig(
        model_uri="models:/fraud-detector@champion", max_batch_size=8, max_batch_time_seconds=0.01, metrics_port=9100
    )
    env = mlserver_environment(config)
    assert {k: env[k] for k in PROCESS_ENVIRONMENT} == PROCESS_ENVIRONMENT
    assert "FEEDBACK_SIGNING_KEY" not in env and "MLSERVER_MODEL_VERSION" not in env
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    settings = Settings()
    assert settings.metrics_port == 9100 and settings.parallel_workers == 0 and settings.debug is False
    model = ModelSettings()
    parameters = ModelParameters()
    assert model.name == "fraud-detector" and model.implementation_ == RUNTIME_IMPLEMENTATION
    assert (model.max_batch_size, model.max_batch_time) == (8, 0.01)
    assert parameters.uri == "models:/fraud-detector@champion"
    assert parameters.extra["max_rows"] == config.max_rows


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"model_uri": ""}, "model_uri"),
        ({"version_label": "v 1"}, "version_label"),
        ({"http_port": 70000}, "http_port"),
        ({"http_port": 8082}, "ports must differ"),
        ({"max_batch_size": 8}, "must be > 0 when max_batch_size > 1"),
        ({"max_batch_time_seconds": 5}, "max_batch_time_seconds"),
        ({"max_rows": 0}, "max_rows"),
    ],
)
def test_bad_serving_settings_say_what_is_allowed(fields: dict, needle: str) -> None:
    with pytest.raises(ServingConfigError, match=re.escape(needle)):
        ServingConfig(**{"model_uri": "/m", **fields})


# -- metrics -----------------------------------------------------------------------------------------
def test_metric_names_labels_and_series_exist_before_traffic() -> None:
    registry = CollectorRegistry()
    metrics = ServingMetrics("v3", registry)
    text = generate_latest(registry).decode()
    samples = parse_metrics(text)
    for name in METRIC_NAMES.values():
        assert re.search(rf"^# TYPE {name} (counter|histogram)$", text, re.M), name
    assert samples.value("fraud_feedback_total", model_version="v3", outcome="fp") == 0.0
    assert len(samples.series("fraud_feedback_rejected_total")) == 5
    metrics.observe_scores([0.1, 0.95, 0.5], fraud_rows=1, total_rows=3)
    metrics.observe_request(200, 0.002)
    metrics.observe_feedback("v1", "tp")
    samples = parse_metrics(generate_latest(registry).decode())
    assert samples.value("fraud_predictions_total", model_version="v3", decision="fraud") == 1
    assert samples.value("fraud_predictions_total", model_version="v3", decision="legit") == 2
    assert samples.value("fraud_score_bucket", model_version="v3", le="0.5") == 2
    assert samples.value("fraud_request_duration_seconds_count", model_version="v3") == 1
    assert samples.value("fraud_feedback_total", model_version="v1", outcome="tp") == 1
    for name, labels in METRIC_LABELS.items():
        assert all(set(series_labels) - {"le"} == set(labels) for series_labels, _ in samples.series(name)), name
    assert [outcome(True, 1), outcome(True, 0), outcome(False, 0), outcome(False, 1)] == ["tp", "fp", "tn", "fn"]


# -- client helpers ----------------------------------------------------------------------------------
def test_client_builds_the_same_request_from_frames_mappings_and_records() -> None:
    import pandas as pd

    frame = pd.DataFrame([[float(i * 30 + j) for j in range(30)] for i in range(2)], columns=FEATURE_NAMES)
    from_frame = build_infer_request(frame, FEATURE_NAMES)
    from_columns = build_infer_request({name: frame[name].tolist() for name in FEATURE_NAMES}, FEATURE_NAMES)
    from_records = build_infer_request(frame.to_dict(orient="records"), FEATURE_NAMES)
    assert from_frame == from_columns == from_records
    assert [i["name"] for i in from_frame["inputs"]] == FEATURE_NAMES
    with pytest.raises(ValueError, match="JSON has no NaN"):
        build_infer_request(frame.assign(V1=[1.0, math.nan]), FEATURE_NAMES)
    with pytest.raises(ValueError, match="lack column"):
        build_infer_request(frame.drop(columns="V9"), FEATURE_NAMES)
    response = {
        "model_name": "fraud-detector",
        "model_version": "v1",
        "outputs": [
            {"name": "fraud_probability", "data": [0.2, 0.9]},
            {"name": "is_fraud", "data": [False, True]},
            {"name": "prediction_id", "data": ["a", "b"]},
        ],
    }
    parsed = parse_infer_response(response)
    assert parsed.decisions == [False, True] and parsed.prediction_ids == ["a", "b"]
    assert build_feedback(["a", "b"], [0, 1]) == [
        {"prediction_id": "a", "label": 0},
        {"prediction_id": "b", "label": 1},
    ]
    assert build_feedback("a", 1) == {"prediction_id": "a", "label": 1}
    with pytest.raises(ValueError):
        build_feedback(["a"], [0, 1])


# -- HTTP guards (the launcher's handler and body limit) ---------------------------------------------
def test_http_guards_give_clear_4xx() -> None:
    from fastapi import FastAPI
    from fastapi.testclient import TestClient

    from serving.server import install_http_guards

    app = FastAPI()

    @app.post("/infer")
    async def infer(payload: InferenceRequest) -> dict:
        data = payload.inputs[0].data
        assert list(data.root if hasattr(data, "root") else data) in ([1.0], [2.5])
        return {"inputs": len(payload.inputs)}

    install_http_guards(app, max_body_bytes=2048)
    client = TestClient(app)
    ok = {"inputs": [{"name": "a", "shape": [1], "datatype": "FP64", "data": [1.0]}]}
    assert client.post("/infer", json=ok).json() == {"inputs": 1}
    cases = [
        (b'{"inputs": [', "application/json", 400, "malformed JSON body at byte"),
        (json.dumps(ok).encode(), "text/plain", 415, "Content-Type"),
        (b"", "application/json", 400, "empty request body"),
        (b'{"inputs": 3}', "application/json", 422, "not a valid V2 inference request"),
        (b"x" * 4096, "application/json", 413, "exceeds 2048 bytes"),
    ]
    for body, content_type, status, needle in cases:
        response = client.post("/infer", content=body, headers={"content-type": content_type})
        assert response.status_code == status, (body[:20], response.text)
        assert needle in response.json()["error"]

    def chunks():  # no Content-Length: the limit still holds
        for _ in range(4):
            yield b"x" * 1024

    chunked = client.post("/infer", content=chunks(), headers={"content-type": "application/json"})
    assert chunked.status_code == 413
    import gzip
    import struct

    encoded = [
        (gzip.compress(json.dumps(ok).encode()), {"content-encoding": "gzip"}, 200, None),
        (gzip.compress(b" " * 100_000), {"content-encoding": "gzip"}, 413, "after decompression"),
        (json.dumps(ok).encode(), {"content-encoding": "gzip"}, 400, "not valid gzip"),
        (json.dumps(ok).encode(), {"content-encoding": "deflate"}, 415, "Content-Encoding 'deflate'"),
    ]
    # The binary-data extension: the JSON part names the tensor's size, its bytes follow.
    head = json.dumps(
        {"inputs": [{"name": "a", "shape": [1], "datatype": "FP64", "parameters": {"binary_data_size": 8}}]}
    ).encode()
    binary = {"content-type": "application/octet-stream", "inference-header-content-length": str(len(head))}
    encoded += [
        (head + struct.pack("<d", 2.5), binary, 200, None),
        (head + b"\0" * 4, binary, 400, "binary_data_size 8 does not fit the 4 bytes left"),
        (head + b"\0" * 12, binary, 400, "4 bytes after the last input's tensor"),
    ]
    for body, headers, status, needle in encoded:
        response = client.post("/infer", content=body, headers={"content-type": "application/json", **headers})
        assert response.status_code == status, (headers, response.text)
        assert needle is None or needle in response.json()["error"]
    assert client.post("/infer", content=head + struct.pack("<d", 2.5), headers=binary).json() == {"inputs": 1}
    small = client.post("/infer", content=iter([json.dumps(ok).encode()]), headers={"content-type": "application/json"})
    assert small.status_code == 200


def test_grpc_codes_mean_what_the_rest_statuses_mean() -> None:
    import grpc

    from serving.grpc_service import grpc_code

    assert [grpc_code(status) for status in (400, 404, 413, 415, 422, 500, 503, 418, 502)] == [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.INTERNAL,
    ]


# -- CLI ---------------------------------------------------------------------------------------------
def test_cli_refuses_bad_flags_with_exit_code_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fraudctl_main(["serve", "--model-uri", str(tmp_path / "absent")]) == 2
    assert "no such model directory" in capsys.readouterr().err
    assert fraudctl_main(["serve", "--model-uri", str(tmp_path), "--port", "8082"]) == 2
    assert "ports must differ" in capsys.readouterr().err
    assert fraudctl_main(["bench", "serving", "--requests", "10"]) == 2
    assert "at least 1000" in capsys.readouterr().err
    assert fraudctl_main(["bench", "serving", "--max-batch-size", "8", "--max-batch-time", "0"]) == 2
    assert "max_batch_time_seconds" in capsys.readouterr().err


# -- images ------------------------------------------------------------------------------------------
ROLES = {"serving": "serving", "tools": "tools", "mlflow": "mlflow-server"}  # Dockerfile target -> lock


def _dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions per build stage (key "" holds the global ARGs before the first FROM)."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: dict[str, list[tuple[str, str]]] = {"": []}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            current = rest.split(" AS ")[-1].strip() if " AS " in rest else rest
            stages[current] = [("FROM", rest.split(" AS ")[0].strip())]
            continue
        stages[current].append((keyword.upper(), rest.strip()))
    return stages


def _lock(name: str) -> dict[str, str]:
    """name -> version of a hash-locked requirement file, checking every entry carries a sha256."""
    text = (ROOT / name).read_text()
    entries = re.split(r"\n(?=[A-Za-z0-9])", text.strip())
    pins = {}
    for entry in entries:
        if entry.startswith("#"):
            continue
        head = entry.split()[0]
        package, _, version = head.partition("==")
        assert version and "--hash=sha256:" in entry, f"{name}: {head} is not pinned with a hash"
        pins[package.lower().replace("_", "-").replace(".", "-")] = version
    return pins


def test_one_lean_pinned_non_root_image_per_role() -> None:
    stages = _dockerfile_stages()
    base_arg = next(rest for k, rest in stages[""] if k == "ARG" and rest.startswith("PYTHON_IMAGE="))
    assert re.fullmatch(r"PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", base_arg), base_arg
    assert stages["base"][0] == ("FROM", "${PYTHON_IMAGE}")
    everything = _lock("requirements.lock")
    for target, role in ROLES.items():
        instructions = stages[target]
        assert instructions[0] == ("FROM", "base"), target
        run = " ".join(rest for k, rest in instructions if k == "RUN")
        assert f"pip install --require-hashes --no-deps -r /opt/fraud/build/requirements-{role}.lock" in run
        keywords = [k for k, _ in instructions]
        users = [rest for k, rest in instructions if k == "USER"]
        assert users and users[-1].split(":")[0] not in ("root", "0"), target
        assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k in ("RUN", "COPY")), target
        # Each role's lock: every pin hashed, the same versions as the full lock, and its extra's packages.
        pins = _lock(f"requirements-{role}.lock")
        assert {name: everything.get(name) for name in pins} == pins, role
        declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"][role]
        for requirement in declared:
            name = re.split(r"[=<>\[ ]", requirement, maxsplit=1)[0].lower().replace("_", "-").replace(".", "-")
            assert name in pins, (role, name)
    serving_pins = _lock("requirements-serving.lock")
    for absent in ("mlflow", "psycopg2-binary", "matplotlib", "flask", "gunicorn", "sqlalchemy", "alembic"):
        assert absent not in serving_pins, absent
    assert {"mlflow", "psycopg2-binary"} <= set(_lock("requirements-mlflow-server.lock"))
    assert "matplotlib" in _lock("requirements-tools.lock")


def test_serving_image_is_configured_like_the_measured_server() -> None:
    instructions = _dockerfile_stages()["serving"]
    exposed = {int(p) for k, rest in instructions if k == "EXPOSE" for p in rest.split()}
    defaults = ServingConfig(model_uri="/m")
    assert exposed == {defaults.http_port, defaults.grpc_port, defaults.metrics_port}
    healthcheck = next(rest for k, rest in instructions if k == "HEALTHCHECK")
    assert "serving.healthcheck" in healthcheck
    from serving.healthcheck import READY_PATH

    assert READY_PATH == "/v2/health/ready"
    env = " ".join(rest for k, rest in instructions if k == "ENV")
    for key, value in PROCESS_ENVIRONMENT.items():
        assert f"{key}={value}" in env, key
    assert "MLSERVER_PARALLEL_WORKERS=0" in env
    entrypoint = json.loads(next(rest for k, rest in instructions if k == "ENTRYPOINT"))
    assert entrypoint == ["python", "-m", "serving.server"]
    copied = {rest.split()[0] for k, rest in instructions if k == "COPY"}
    assert copied == {"requirements-serving.lock", "model/", "serving/", "fraudctl/"}
    # The build context sends what any target copies, and nothing else.
    ignore = (ROOT / "Dockerfile.dockerignore").read_text().split()
    allowed = {entry.lstrip("!") for entry in ignore[ignore.index("*") + 1 :] if entry.startswith("!")}
    every_copy = {rest.split()[0] for stage in _dockerfile_stages().values() for k, rest in stage if k == "COPY"}
    assert every_copy <= allowed, every_copy - allowed


def test_the_serving_image_holds_every_package_its_modules_import(tmp_path: Path) -> None:
    """Every module of the packages the serving image copies imports with those packages alone: a fresh
    interpreter sees only them (the project's other packages are blocked), as the image does."""
    copied = sorted(
        rest.split()[0].rstrip("/")
        for k, rest in _dockerfile_stages()["serving"]
        if k == "COPY" and rest.split()[0].endswith("/")
    )
    for package in copied:
        (tmp_path / package).symlink_to(ROOT / package)
    others = sorted({p.parent.name for p in ROOT.glob("*/__init__.py")} - set(copied))
    modules = sorted(
        ".".join(path.relative_to(ROOT).with_suffix("").parts)
        for package in copied
        for path in (ROOT / package).glob("*.py")
        if path.name != "__main__.py"
    )
    code = (
        "import importlib, sys\n"
        f"for name in {others!r}: sys.modules[name] = None\n"
        f"for module in {modules!r}: importlib.import_module(module)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert others and "serving.server" in modules and "serving.runtime" in modules
