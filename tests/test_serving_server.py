"""A real fraud server on loopback (``python -m serving.server``): what only a real process shows.

Every class of bad request gets a clean answer on REST (raw HTTP) and gRPC (a real gRPC client), a
third-party Open Inference Protocol client (tritonclient, HTTP with binary data and gRPC) works, metric
labels stay bounded, and the process helper's restart and stop leave nothing behind. The runtime's
behaviour itself is tested in process (test_serving_runtime.py)."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc import dataplane_pb2_grpc
from serving_fixtures import (
    JSON,
    MODEL_NAME,
    SIGNING_KEY,
    expected,
    infer_body,
    labelled_rows,
    outputs_of,
    post,
    scrape,
)

from model.artifact import FraudModel
from serving.feedback import PredictionSigner
from serving.process import MLServerProcess, free_ports
from serving.synthetic_model import FEATURE_NAMES

# One worker runs the whole module (./dev test uses --dist loadgroup), so the server starts once.
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("serving-server")]

MAX_ROWS = 64
MAX_BODY_BYTES = 256 * 1024


@pytest.fixture(scope="module")
def server(serving_model_dir: Path) -> Iterator[MLServerProcess]:
    """No version label configured: the server answers as the label stored in the model (v1)."""
    with MLServerProcess(
        serving_model_dir,
        signing_key=SIGNING_KEY,
        max_rows=MAX_ROWS,
        env={"FRAUD_MAX_BODY_BYTES": str(MAX_BODY_BYTES)},
    ) as process:
        yield process


def test_answers_match_the_model_and_the_served_version_is_listed_and_addressable(
    server: MLServerProcess, serving_reference: FraudModel
) -> None:
    frame, _ = labelled_rows(5, seed=1)
    scores, flags = expected(serving_reference, frame)
    for path in (f"/v2/models/{MODEL_NAME}/infer", f"/v2/models/{MODEL_NAME}/versions/v1/infer"):
        response = post(server.http_url + path, infer_body(frame))
        assert response.status_code == 200, response.text
        assert response.json()["model_version"] == "v1"
        got = outputs_of(response)
        np.testing.assert_allclose(got["fraud_probability"], scores, rtol=0, atol=1e-6)
        assert got["is_fraud"] == flags
    metadata = httpx.get(f"{server.http_url}/v2/models/{MODEL_NAME}", timeout=10).json()
    assert metadata["versions"] == ["v1"]
    assert [i["name"] for i in metadata["inputs"]] == FEATURE_NAMES
    other = post(f"{server.http_url}/v2/models/{MODEL_NAME}/versions/v9/infer", infer_body(frame))
    assert other.status_code == 404 and "version 'v9' is not served here" in other.json()["error"]


def _bad_requests() -> list[tuple[str, bytes, dict[str, str], int, str]]:
    frame, _ = labelled_rows(2, seed=40)
    good = infer_body(frame)
    good_bytes = json.dumps(good).encode()

    def edited(change: Any) -> bytes:
        body = json.loads(good_bytes)
        change(body)
        return json.dumps(body).encode()

    def set_data(index: int, data: Any, datatype: str | None = None) -> Any:
        def change(body: dict[str, Any]) -> None:
            body["inputs"][index]["data"] = data
            if datatype:
                body["inputs"][index]["datatype"] = datatype

        return change

    def rows(count: int) -> bytes:
        inputs = [{"name": n, "shape": [count], "datatype": "FP64", "data": [0.5] * count} for n in FEATURE_NAMES]
        return json.dumps({"inputs": inputs}).encode()

    gz = {"content-encoding": "gzip"}
    binary_head = edited(set_data(0, [])).replace(b'"data": []', b'"parameters": {"binary_data_size": 4096}')
    deep_data = edited(set_data(1, [0.5])).replace(b"[0.5]", b"[" * 1000 + b"0.5" + b"]" * 1000)
    # A 47 KiB request that inflates past the limit (issue 12: 48 MiB): refused before it is inflated whole.
    bomb = gzip.compress(b'{"inputs": [' + b" " * (60 * MAX_BODY_BYTES) + b"]}")
    return [
        ("missing field", edited(lambda b: b["inputs"].pop(3)), {}, 400, "missing input(s): V3"),
        ("extra field", edited(lambda b: b["inputs"].append({**b["inputs"][0], "name": "Merchant"})), {}, 400,
         "unexpected input(s): Merchant"),
        ("string value", edited(set_data(1, ["a", "b"])), {}, 400, "is not a number"),
        ("bool value", edited(set_data(1, [True, False])), {}, 400, "is not a number"),
        ("bytes datatype", edited(set_data(1, ["a", "b"], "BYTES")), {}, 400, "datatype BYTES"),
        ("unknown datatype", edited(set_data(1, [1, 2], "FLOAT")), {}, 422, "not a valid V2"),
        ("NaN", edited(set_data(2, [1.5, 2.5])).replace(b"[1.5, 2.5]", b"[NaN, 2.5]"), {}, 400, "malformed JSON"),
        ("infinity", edited(set_data(2, [1.5, 2.5])).replace(b"[1.5, 2.5]", b"[1e999, 2.5]"), {}, 400, "infinity"),
        ("row counts differ", edited(set_data(2, [1.0, 2.0, 3.0])), {}, 400, "data has 3"),
        ("empty batch", rows(0), {}, 400, "empty batch"),
        ("too many rows", rows(MAX_ROWS + 1), {}, 413, f"limit of {MAX_ROWS} rows"),
        ("body too large", b" " * (MAX_BODY_BYTES + 1) + good_bytes, {}, 413, "exceeds"),
        ("malformed JSON", good_bytes[:-7], {}, 400, "malformed JSON body at byte"),
        ("nested 100,000 deep", b"[" * 100_000 + b"]" * 100_000, {}, 400, "malformed JSON"),
        ("data nested 1,000 deep", deep_data, {}, 400, "input 'V1'"),
        ("wrong content type", good_bytes, {"content-type": "text/plain"}, 415, "Content-Type"),
        ("form content type", good_bytes, {"content-type": "application/x-www-form-urlencoded"}, 415, "Content-Type"),
        ("empty body", b"", {}, 400, "empty request body"),
        ("not a V2 request", b'{"rows": [[1, 2]]}', {}, 422, "inputs: Field required"),
        ("unknown output", edited(lambda b: b.update(outputs=[{"name": "predict"}])), {}, 400, "available outputs"),
        ("gzip request", gzip.compress(good_bytes), gz, 200, ""),
        ("gzip bomb", bomb, gz, 413, "after decompression"),
        ("gzip header, plain body", good_bytes, gz, 400, "not valid gzip"),
        ("truncated gzip", gzip.compress(good_bytes)[:-20], gz, 400, "gzip"),
        ("unsupported encoding", good_bytes, {"content-encoding": "br"}, 415, "Content-Encoding 'br'"),
        ("binary header past the body", good_bytes, {"inference-header-content-length": "999999"}, 400,
         "Inference-Header-Content-Length"),
        ("binary size past the body", binary_head, {"inference-header-content-length": str(len(binary_head))}, 400,
         "binary_data_size 4096 does not fit"),
    ]


BAD_REQUESTS = _bad_requests()


@pytest.mark.parametrize(
    ("case", "body", "headers", "status", "needle"), BAD_REQUESTS, ids=[case[0] for case in BAD_REQUESTS]
)
def test_every_bad_request_gets_a_clear_answer_and_the_server_keeps_serving(
    server: MLServerProcess, case: str, body: bytes, headers: dict[str, str], status: int, needle: str
) -> None:
    headers = {"content-type": JSON, **headers}
    response = httpx.post(server.infer_url, content=body, headers=headers, timeout=30)
    assert response.status_code == status, (case, response.text[:300])
    if status != 200:
        assert needle in response.json()["error"], (case, response.text[:300])
    frame, _ = labelled_rows(1, seed=41)
    assert post(server.infer_url, infer_body(frame)).status_code == 200


def test_feedback_bodies_are_bounded_after_decompression_and_parsed_safely(server: MLServerProcess) -> None:
    frame, _ = labelled_rows(1, seed=42)
    token = outputs_of(post(server.infer_url, infer_body(frame)))["prediction_id"][0]
    item = json.dumps({"prediction_id": token, "label": 1}).encode()
    gz = {"content-encoding": "gzip"}
    cases = [
        (gzip.compress(b"[" + b" " * (60 * MAX_BODY_BYTES) + b"]"), gz, 413, "after decompression"),
        (item, gz, 400, "not valid gzip"),
        (b"[" * 100_000 + b"]" * 100_000, {}, 400, "nested too deeply"),
        (gzip.compress(item), gz, 200, ""),
    ]
    for body, headers, status, needle in cases:
        response = httpx.post(server.feedback_url, content=body, headers={"content-type": JSON, **headers}, timeout=30)
        assert response.status_code == status, response.text[:300]
        assert needle in response.json().get("error", ""), response.text[:300]


def test_oversized_request_headers_get_431(server: MLServerProcess) -> None:
    head = (
        f"POST /v2/models/{MODEL_NAME}/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: {'a' * (1 << 20)}\r\n"
        "Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.config.http_port), timeout=30) as sock:
        sock.sendall(head)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"request headers exceed 65536 bytes" in answer
    frame, _ = labelled_rows(1, seed=43)
    assert post(server.infer_url, infer_body(frame)).status_code == 200


def test_unknown_model_names_are_404_without_new_metric_series(server: MLServerProcess) -> None:
    frame, _ = labelled_rows(1, seed=44)
    before = httpx.get(server.metrics_url, timeout=10).text
    for index in range(50):
        name = f"m{index}-" + "x" * 10_000
        response = post(f"{server.http_url}/v2/models/{name}/infer", infer_body(frame))
        assert response.status_code == 404, response.text[:200]
        assert len(response.text) < 500 and "is not served here; served: fraud-detector" in response.json()["error"]
    after = httpx.get(server.metrics_url, timeout=10).text
    assert "xxxxxxxxxx" not in after
    assert len(after) - len(before) < 4096  # counters move; no series appear per name


def _grpc_request(frame: Any, model: str = MODEL_NAME, raw: bool = False) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    for name in FEATURE_NAMES:
        values = frame[name].to_numpy(dtype=np.float64)
        tensor = request.inputs.add(name=name, datatype="FP64", shape=[len(values)])
        if raw:
            request.raw_input_contents.append(values.astype("<f8").tobytes())
        else:
            tensor.contents.fp64_contents.extend(values.tolist())
    return request


def test_grpc_answers_like_rest_and_counts_in_the_same_metrics(
    server: MLServerProcess, serving_reference: FraudModel
) -> None:
    frame, _ = labelled_rows(4, seed=45)
    scores, flags = expected(serving_reference, frame)
    before = scrape(server)
    with grpc.insecure_channel(f"127.0.0.1:{server.config.grpc_port}") as channel:
        stub = dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)
        typed = stub.ModelInfer(_grpc_request(frame), timeout=30)
        got = {o.name: o for o in typed.outputs}
        np.testing.assert_allclose(list(got["fraud_probability"].contents.fp64_contents), scores, atol=1e-6)
        assert list(got["is_fraud"].contents.bool_contents) == flags
        signer = PredictionSigner(SIGNING_KEY.encode())
        ids = [signer.verify(token.decode()) for token in got["prediction_id"].contents.bytes_contents]
        assert [t.is_fraud for t in ids] == flags and typed.model_version == "v1"
        raw = stub.ModelInfer(_grpc_request(frame, raw=True), timeout=30)
        assert np.frombuffer(raw.raw_output_contents[0], "<f8").tolist() == pytest.approx(scores.tolist(), abs=1e-6)

        missing = _grpc_request(frame)
        del missing.inputs[3]
        too_many, _ = labelled_rows(MAX_ROWS + 1, seed=46)
        garbage = channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
        cases = [
            (lambda: stub.ModelInfer(missing, timeout=30), grpc.StatusCode.INVALID_ARGUMENT, "missing input(s): V3"),
            (lambda: stub.ModelInfer(_grpc_request(too_many), timeout=30), grpc.StatusCode.RESOURCE_EXHAUSTED,
             f"limit of {MAX_ROWS} rows"),
            (lambda: stub.ModelInfer(_grpc_request(frame, model="x" * 10_000), timeout=30),
             grpc.StatusCode.NOT_FOUND, "is not served here"),
            (lambda: garbage(b"\xff\xfe not a protobuf message", timeout=30), grpc.StatusCode.INVALID_ARGUMENT,
             "not a valid inference.ModelInfer protobuf message"),
            (lambda: stub.ModelMetadata(pb.ModelMetadataRequest(name="nope"), timeout=30),
             grpc.StatusCode.NOT_FOUND, "nope"),
        ]
        for call, code, needle in cases:
            with pytest.raises(grpc.RpcError) as failed:
                call()
            assert failed.value.code() == code, failed.value.details()
            assert needle in failed.value.details()
        metadata = stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL_NAME), timeout=30)
        assert list(metadata.versions) == ["v1"]
    after = scrape(server)
    for code, count in (("200", 2), ("400", 1), ("413", 1)):
        label = {"model_version": "v1", "code": code}
        assert after.value("fraud_requests_total", **label) - before.value("fraud_requests_total", **label) == count


def test_tritonclient_http_with_binary_data_and_grpc_work(
    server: MLServerProcess, serving_reference: FraudModel
) -> None:
    frame, _ = labelled_rows(3, seed=47)
    scores, flags = expected(serving_reference, frame)
    rows = {name: frame[name].tolist() for name in FEATURE_NAMES}
    completed = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).with_name("triton_client.py")),
            f"127.0.0.1:{server.config.http_port}",
            f"127.0.0.1:{server.config.grpc_port}",
            json.dumps(rows),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout)
    signer = PredictionSigner(SIGNING_KEY.encode())
    for protocol, expected_refusal in (("http", "400"), ("grpc", "StatusCode.INVALID_ARGUMENT")):
        seen = report[protocol]
        assert seen["ready"] and seen["versions"] == ["v1"], seen
        for answer in seen["answers"]:  # HTTP: binary-data extension and plain JSON; gRPC: raw contents
            np.testing.assert_allclose(answer["fraud_probability"], scores, rtol=0, atol=1e-6)
            assert answer["is_fraud"] == flags
            assert [signer.verify(token).is_fraud for token in answer["prediction_ids"]] == flags
        assert seen["refused"]["status"] == expected_refusal, seen["refused"]
        assert "missing input(s): Time" in seen["refused"]["message"]


def test_image_healthcheck_follows_readiness(server: MLServerProcess) -> None:
    def healthcheck(port: int) -> int:
        env = {**os.environ, "MLSERVER_HTTP_PORT": str(port)}
        return subprocess.run([sys.executable, "-m", "serving.healthcheck"], env=env, capture_output=True).returncode

    assert healthcheck(server.config.http_port) == 0
    assert healthcheck(free_ports(1)[0]) == 1


def test_restart_with_a_fault_keeps_ports_and_stop_leaves_nothing(serving_model_dir: Path) -> None:
    frame, _ = labelled_rows(1, seed=52)
    process = MLServerProcess(serving_model_dir, version_label="v2")
    with process:
        assert post(process.infer_url, infer_body(frame)).status_code == 200
        url, first_pid = process.http_url, process.pid
        process.restart(env={"SIMULATE_ERROR": "true", "SIMULATE_ERROR_RATE": "1"})
        assert process.http_url == url and process.pid != first_pid
        assert [post(process.infer_url, infer_body(frame)).status_code for _ in range(3)] == [500, 500, 500]
        group, work_dir = process.pid, process.work_dir
    assert group is not None and work_dir is not None
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)
    assert not work_dir.exists()
    for port in (process.config.http_port, process.config.grpc_port, process.config.metrics_port):
        with socket.socket() as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is fine, a listener is not
            sock.bind(("127.0.0.1", port))
            sock.listen()
