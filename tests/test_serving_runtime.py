"""The fraud runtime in process, the way MLServer tests its own runtimes: ``await model.load()`` then
``await model.predict(request)``. Scores, signed ids, compiled scoring and its fallback, adaptive batching,
metrics, feedback (also across replicas), fault injection and configuration errors."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from mlserver.batching import load_batching
from mlserver.context import model_context
from mlserver.errors import MLServerError
from mlserver.settings import ModelParameters, ModelSettings
from mlserver.types import InferenceRequest, InferenceResponse
from serving_fixtures import SIGNING_KEY, expected, infer_body, labelled_rows, run
from starlette.requests import Request

from model.artifact import FraudModel
from model.compiled import ONNX_FILENAME
from serving.client import parse_metrics
from serving.feedback import PredictionSigner
from serving.runtime import FraudRuntime
from serving.synthetic_model import FEATURE_NAMES
from serving.validation import RequestRejected

MAX_ROWS = 64


@pytest.fixture(autouse=True)
def signing_key(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("FEEDBACK_SIGNING_KEY", SIGNING_KEY)
    for name in ("FEEDBACK_SIGNING_KEY_PREVIOUS", "SIMULATE_ERROR", "SIMULATE_ERROR_RATE", "PROMETHEUS_MULTIPROC_DIR"):
        monkeypatch.delenv(name, raising=False)
    yield


async def loaded(
    model_dir: Path, version: str, *, batch: tuple[int, float] = (0, 0.0), **extra: Any
) -> FraudRuntime:
    settings = ModelSettings(
        name="fraud-detector",
        implementation=FraudRuntime,
        max_batch_size=batch[0],
        max_batch_time=batch[1],
        parameters=ModelParameters(uri=str(model_dir), version=version, extra={"max_rows": MAX_ROWS, **extra}),
    )
    runtime = FraudRuntime(settings)
    if batch[0] > 1:
        await load_batching(runtime)  # what MLServer's registry does on load
    runtime.ready = await runtime.load()
    return runtime


def request_of(frame: Any, **fields: Any) -> InferenceRequest:
    return InferenceRequest.model_validate({**infer_body(frame), **fields})


def outputs(response: InferenceResponse) -> dict[str, list[Any]]:
    return {o.name: list(o.data.root if hasattr(o.data, "root") else o.data) for o in response.outputs}


def metrics() -> Any:
    from prometheus_client import REGISTRY, generate_latest

    return parse_metrics(generate_latest(REGISTRY).decode())


def test_scores_match_the_model_and_prediction_ids_are_signed(
    serving_model_dir: Path, serving_reference: FraudModel
) -> None:
    async def scenario() -> None:
        runtime = await loaded(serving_model_dir, "rt-scores")
        assert runtime._scorer.path == "compiled ensemble (onnxruntime)", runtime._scorer.fallback_reason
        for rows, seed in ((1, 1), (MAX_ROWS, 2)):
            frame, _ = labelled_rows(rows, seed=seed)
            response = await runtime.predict(request_of(frame))
            assert (response.model_name, response.model_version) == ("fraud-detector", "rt-scores")
            got = outputs(response)
            scores, flags = expected(serving_reference, frame)
            np.testing.assert_allclose(got["fraud_probability"], scores, rtol=0, atol=1e-6)
            assert got["is_fraud"] == flags
            tokens = [PredictionSigner(SIGNING_KEY.encode()).verify(t) for t in got["prediction_id"]]
            assert [t.is_fraud for t in tokens] == flags and {t.model_version for t in tokens} == {"rt-scores"}
        assert 0 < sum(flags) < len(flags)  # both decisions occur in the batch

    run(scenario)


def test_without_a_usable_compiled_ensemble_scikit_learn_scores_and_says_why(
    serving_model_dir: Path, serving_reference: FraudModel, tmp_path: Path
) -> None:
    missing = shutil.copytree(serving_model_dir, tmp_path / "missing")
    (missing / "extra_files" / ONNX_FILENAME).unlink()
    tampered = shutil.copytree(serving_model_dir, tmp_path / "tampered")
    onnx = tampered / "extra_files" / ONNX_FILENAME
    onnx.write_bytes(onnx.read_bytes()[:-8] + b"\0" * 8)
    frame, _ = labelled_rows(20, seed=3)
    scores, flags = expected(serving_reference, frame)

    async def scenario() -> None:
        for model_dir, reason in ((missing, "is missing from the artifact"), (tampered, "sha256 does not match")):
            runtime = await loaded(model_dir, "rt-fallback")
            assert runtime._scorer.path.startswith("scikit-learn"), runtime._scorer.path
            assert reason in (runtime._scorer.fallback_reason or "")
            got = outputs(await runtime.predict(request_of(frame)))
            np.testing.assert_allclose(got["fraud_probability"], scores, rtol=0, atol=1e-12)
            assert got["is_fraud"] == flags

    run(scenario)


def test_adaptive_batching_keeps_concurrent_requests_apart(
    serving_model_dir: Path, serving_reference: FraudModel
) -> None:
    frames = [labelled_rows(size, seed=10 + size)[0] for size in (1, 2, 3, 4, 5, 6)]
    missing = infer_body(frames[0])
    missing["inputs"] = missing["inputs"][1:]
    wrong_type = infer_body(frames[1])
    wrong_type["inputs"][3]["data"] = ["high"] * 2

    async def scenario() -> list[Any]:
        import asyncio

        runtime = await loaded(serving_model_dir, "rt-batch", batch=(4, 0.05))
        requests = [request_of(f) for f in frames]
        requests += [InferenceRequest.model_validate(body) for body in (missing, wrong_type)]
        with model_context(runtime.settings):  # as MLServer's data plane calls predict
            return await asyncio.gather(*(runtime.predict(r) for r in requests), return_exceptions=True)

    before = metrics()
    answers = run(scenario)
    after = metrics()
    for frame, answer in zip(frames, answers, strict=False):
        assert isinstance(answer, InferenceResponse), answer
        scores, flags = expected(serving_reference, frame)
        got = outputs(answer)
        np.testing.assert_allclose(got["fraud_probability"], scores, rtol=0, atol=1e-6)
        assert got["is_fraud"] == flags and len(got["prediction_id"]) == len(frame)
    assert isinstance(answers[-2], RequestRejected) and "missing input(s): Time" in answers[-2].message
    assert isinstance(answers[-1], RequestRejected) and "'high'" in answers[-1].message

    def delta(code: str) -> float:
        return after.value("fraud_requests_total", model_version="rt-batch", code=code) - before.value(
            "fraud_requests_total", model_version="rt-batch", code=code
        )

    assert (delta("200"), delta("400")) == (6, 2)


def test_requested_outputs_metrics_and_metadata(serving_model_dir: Path) -> None:
    frames = [labelled_rows(n, seed=20 + n)[0] for n in (5, 7)]

    async def scenario() -> tuple[list[Any], Any]:
        runtime = await loaded(serving_model_dir, "rt-metrics")
        answers = [await runtime.predict(request_of(frame)) for frame in frames]
        wanted = [{"name": "is_fraud"}, {"name": "fraud_probability"}]
        only = await runtime.predict(request_of(frames[0], outputs=wanted))
        assert [o.name for o in only.outputs] == ["is_fraud", "fraud_probability"]
        return answers, await runtime.metadata()

    before = metrics()
    answers, metadata = run(scenario)
    after = metrics()
    assert metadata.versions == ["rt-metrics"]
    assert [i.name for i in metadata.inputs] == FEATURE_NAMES
    assert [o.name for o in metadata.outputs] == ["fraud_probability", "is_fraud", "prediction_id"]
    decisions = [d for a in answers for d in outputs(a)["is_fraud"]]
    scores = [s for a in answers for s in outputs(a)["fraud_probability"]]

    def delta(name: str, **labels: str) -> float:
        return after.value(name, model_version="rt-metrics", **labels) - before.value(
            name, model_version="rt-metrics", **labels
        )

    assert delta("fraud_predictions_total", decision="fraud") == sum(decisions) + sum(outputs(answers[0])["is_fraud"])
    assert delta("fraud_score_count") == len(scores) + 5
    assert delta("fraud_requests_total", code="200") == 3
    assert delta("fraud_request_duration_seconds_count") == 3


async def post_feedback(runtime: FraudRuntime, body: Any, content_type: str = "application/json") -> Any:
    """The custom handler called the way FastAPI calls it, with a real starlette Request."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    sent = False

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": raw, "more_body": False}

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/feedback",
        "headers": [(b"content-type", content_type.encode())],
        "query_string": b"",
    }
    response = await runtime.feedback(Request(scope, receive))
    return response.status_code, json.loads(response.body)


def _labels_for_every_outcome(decisions: list[bool]) -> list[int]:
    """Alternate labels within each decision, so tp, fp, tn and fn all occur."""
    seen = {True: 0, False: 0}
    labels = []
    for decided in decisions:
        labels.append(int(decided) if seen[decided] % 2 == 0 else 1 - int(decided))
        seen[decided] += 1
    return labels


def test_feedback_counts_outcomes_under_the_predicting_version_on_any_replica(serving_model_dir: Path) -> None:
    frame, _ = labelled_rows(40, seed=30, fraud_share=0.5)

    async def scenario() -> None:
        replica_a = await loaded(serving_model_dir, "rt-fb-a")
        replica_b = await loaded(serving_model_dir, "rt-fb-b")  # same key: another pod of the Service
        got = outputs(await replica_a.predict(request_of(frame)))
        labels = _labels_for_every_outcome(got["is_fraud"])
        cells = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
        for decided, label in zip(got["is_fraud"], labels, strict=True):
            cells[("t" if decided == bool(label) else "f") + ("p" if decided else "n")] += 1
        assert all(cells.values())
        before = metrics()
        body = [{"prediction_id": i, "label": y} for i, y in zip(got["prediction_id"], labels, strict=True)]
        status, answer = await post_feedback(replica_b, body)
        assert status == 200 and answer["accepted"] == 40, answer
        assert {r["model_version"] for r in answer["results"]} == {"rt-fb-a"}
        after = metrics()
        for cell, count in cells.items():
            counted = after.value("fraud_feedback_total", model_version="rt-fb-a", outcome=cell) - before.value(
                "fraud_feedback_total", model_version="rt-fb-a", outcome=cell
            )
            assert counted == count, cell
        assert (await post_feedback(replica_b, body[:1]))[0] == 409  # a repeat on the replica that counted it

    run(scenario)


def test_feedback_refuses_repeats_forgeries_expired_malformed_and_deep_nesting(serving_model_dir: Path) -> None:
    frame, _ = labelled_rows(3, seed=31)
    signer = PredictionSigner(SIGNING_KEY.encode())
    forged = PredictionSigner(b"attacker-key-0123456789").issue("v1", [True])[0]
    expired = signer.issue("v1", [True], issued_at=int(time.time()) - 3 * 86_400)[0]

    async def scenario() -> None:
        runtime = await loaded(serving_model_dir, "rt-fb-bad")
        ids = outputs(await runtime.predict(request_of(frame)))["prediction_id"]
        assert (await post_feedback(runtime, {"prediction_id": ids[0], "label": 1}))[0] == 200
        before = metrics()
        cases = [
            ({"prediction_id": ids[0], "label": 1}, "application/json", 409, "already counted"),
            ({"prediction_id": forged, "label": 1}, "application/json", 403, "signature does not verify"),
            ({"prediction_id": ids[1][:-2] + "AA", "label": 0}, "application/json", 403, "signature"),
            ({"prediction_id": "made-up", "label": 0}, "application/json", 400, "prediction_id"),
            ({"prediction_id": expired, "label": 1}, "application/json", 410, "feedback is accepted for"),
            ({"prediction_id": ids[1], "label": 3}, "application/json", 400, "label must be 0"),
            (b"{oops", "application/json", 400, "malformed JSON"),
            (b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "nested too deeply"),
            ({"prediction_id": ids[1], "label": 1}, "text/plain", 415, "Content-Type"),
            (
                [{"prediction_id": ids[1], "label": 1}, {"prediction_id": forged, "label": 0}],
                "application/json",
                403,
                "feedback item 1",
            ),
        ]
        for body, content_type, status, needle in cases:
            got_status, answer = await post_feedback(runtime, body, content_type)
            assert got_status == status, (str(body)[:80], answer)
            assert needle in answer["error"], answer
        after = metrics()
        rejected = {
            reason: after.value("fraud_feedback_rejected_total", reason=reason)
            - before.value("fraud_feedback_rejected_total", reason=reason)
            for reason in ("repeat", "bad_signature", "expired", "malformed")
        }
        assert rejected == {"repeat": 1, "bad_signature": 3, "expired": 1, "malformed": 5}
        # The good item of the refused list is still countable: nothing of a refused request was counted.
        assert (await post_feedback(runtime, {"prediction_id": ids[1], "label": 1}))[1]["accepted"] == 1

    run(scenario)


def test_error_fault_fails_an_exact_share_and_degrade_collapses_precision(
    serving_model_dir: Path, serving_reference: FraudModel, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame, labels = labelled_rows(300, seed=51, fraud_share=0.1)

    async def failing() -> list[int]:
        runtime = await loaded(serving_model_dir, "rt-fault-error")
        statuses = []
        for _ in range(20):
            try:
                await runtime.predict(request_of(frame.iloc[:3]))
                statuses.append(200)
            except MLServerError as exc:
                assert "simulated failure" in str(exc)
                statuses.append(exc.status_code)
        with pytest.raises(RequestRejected):  # bad input is still a client error, not a simulated failure
            await runtime.predict(InferenceRequest(inputs=[]))
        return statuses

    monkeypatch.setenv("SIMULATE_ERROR", "true")
    before = metrics()
    statuses = run(failing)
    after = metrics()
    assert statuses.count(500) == 10 and statuses.count(200) == 10
    for code, count in (("500", 10), ("200", 10), ("400", 1)):
        label = {"model_version": "rt-fault-error", "code": code}
        assert after.value("fraud_requests_total", **label) - before.value("fraud_requests_total", **label) == count

    async def degraded() -> dict[str, list[Any]]:
        runtime = await loaded(serving_model_dir, "rt-fault-degrade", max_rows=len(frame))
        return outputs(await runtime.predict(request_of(frame)))

    monkeypatch.setenv("SIMULATE_ERROR", "degrade")
    got = run(degraded)
    healthy = np.asarray(serving_reference.fraud_probability(frame))
    np.testing.assert_allclose(got["fraud_probability"], 1.0 - healthy, rtol=0, atol=1e-6)

    def precision(flags: np.ndarray) -> float:
        return float(np.sum(flags & (labels == 1)) / max(np.sum(flags), 1))

    assert precision(healthy >= serving_reference.threshold) > 0.8
    assert precision(np.asarray(got["is_fraud"])) < 0.2


@pytest.mark.parametrize(
    ("env", "extra", "message"),
    [
        ({"SIMULATE_ERROR": "sometimes"}, {}, "SIMULATE_ERROR='sometimes' is not allowed"),
        ({"FEEDBACK_SIGNING_KEY": None}, {}, "FEEDBACK_SIGNING_KEY is not set"),
        ({"FEEDBACK_SIGNING_KEY": "short"}, {}, "at least 16 bytes"),
        ({"PROMETHEUS_MULTIPROC_DIR": "/tmp"}, {}, "parallel_workers: 0"),
        ({}, {"batch_rows": 3}, "unknown key(s) batch_rows"),
        ({}, {"max_rows": 0}, "max_rows: must be a positive integer"),
    ],
)
def test_misconfiguration_fails_the_load_with_the_reason(
    serving_model_dir: Path, monkeypatch: pytest.MonkeyPatch, env: dict, extra: dict, message: str
) -> None:
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)")):
        run(lambda: loaded(serving_model_dir, "rt-misconfigured", **extra))
