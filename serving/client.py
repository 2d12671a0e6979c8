"""Talk to the fraud server: build V2 requests from rows, parse answers, send feedback, read metrics.

    client = FraudClient("http://127.0.0.1:8080")
    result = client.predict(frame)                       # pandas DataFrame, {column: values} or [row dicts]
    client.feedback(result.prediction_ids, labels)       # ground truth for those predictions
    samples = scrape_metrics("http://127.0.0.1:8082/metrics")
    samples.value("fraud_feedback_total", model_version="v1", outcome="tp")
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from serving.protocol import (
    DEFAULT_MODEL_NAME,
    FEEDBACK_PATH,
    OUTPUT_IS_FRAUD,
    OUTPUT_PREDICTION_ID,
    OUTPUT_PROBABILITY,
    infer_path,
)

JSON_HEADERS = {"content-type": "application/json"}


class ServingHTTPError(Exception):
    """The server answered with a non-2xx status; ``message`` is its ``error`` text."""

    def __init__(self, status_code: int, message: str, body: Any = None) -> None:
        super().__init__(f"HTTP {status_code}: {message}")
        self.status_code = status_code
        self.message = message
        self.body = body


def _columns(rows: Any, feature_names: Sequence[str] | None) -> dict[str, list[float]]:
    """Column lists from a DataFrame, a {column: values} mapping or a sequence of row mappings."""
    if hasattr(rows, "columns") and hasattr(rows, "to_numpy"):  # pandas DataFrame
        names = list(feature_names) if feature_names is not None else [str(c) for c in rows.columns]
        missing = [name for name in names if name not in rows.columns]
        if missing:
            raise ValueError(f"rows lack column(s) {', '.join(missing)}")
        return {name: rows[name].to_numpy(dtype="float64").tolist() for name in names}
    if isinstance(rows, Mapping):
        names = list(feature_names) if feature_names is not None else list(rows)
        missing = [name for name in names if name not in rows]
        if missing:
            raise ValueError(f"rows lack column(s) {', '.join(missing)}")
        return {name: [float(v) for v in rows[name]] for name in names}
    records = list(rows)
    if not records:
        raise ValueError("no rows to send")
    names = list(feature_names) if feature_names is not None else list(records[0])
    columns: dict[str, list[float]] = {name: [] for name in names}
    for index, record in enumerate(records):
        for name in names:
            if name not in record:
                raise ValueError(f"row {index} lacks column {name!r}")
            columns[name].append(float(record[name]))
    return columns


def build_infer_request(
    rows: Any,
    feature_names: Sequence[str] | None = None,
    *,
    request_id: str | None = None,
    outputs: Sequence[str] | None = None,
) -> dict[str, Any]:
    """A V2 inference request body with one FP64 input per feature (column order = ``feature_names``)."""
    columns = _columns(rows, feature_names)
    lengths = {len(values) for values in columns.values()}
    if len(lengths) > 1:
        raise ValueError(f"columns have different lengths: {sorted(lengths)}")
    for name, values in columns.items():
        bad = next((i for i, v in enumerate(values) if not math.isfinite(v)), None)
        if bad is not None:
            raise ValueError(f"column {name!r} row {bad}: {values[bad]} cannot be sent (JSON has no NaN/inf)")
    request: dict[str, Any] = {
        "inputs": [
            {"name": name, "shape": [len(values)], "datatype": "FP64", "data": values}
            for name, values in columns.items()
        ]
    }
    if request_id is not None:
        request["id"] = request_id
    if outputs is not None:
        request["outputs"] = [{"name": name} for name in outputs]
    return request


@dataclass(frozen=True)
class PredictionRow:
    fraud_probability: float
    is_fraud: bool
    prediction_id: str


@dataclass(frozen=True)
class InferResult:
    model_name: str
    model_version: str | None
    rows: list[PredictionRow]
    request_id: str | None = None

    @property
    def probabilities(self) -> list[float]:
        return [row.fraud_probability for row in self.rows]

    @property
    def decisions(self) -> list[bool]:
        return [row.is_fraud for row in self.rows]

    @property
    def prediction_ids(self) -> list[str]:
        return [row.prediction_id for row in self.rows]


def parse_infer_response(body: Mapping[str, Any]) -> InferResult:
    """Rows of a full fraud-runtime response (all three outputs)."""
    outputs = {output["name"]: output["data"] for output in body.get("outputs", [])}
    missing = [name for name in (OUTPUT_PROBABILITY, OUTPUT_IS_FRAUD, OUTPUT_PREDICTION_ID) if name not in outputs]
    if missing:
        raise ValueError(f"response lacks output(s) {', '.join(missing)}")
    rows = [
        PredictionRow(float(p), bool(d), str(t))
        for p, d, t in zip(
            outputs[OUTPUT_PROBABILITY], outputs[OUTPUT_IS_FRAUD], outputs[OUTPUT_PREDICTION_ID], strict=True
        )
    ]
    return InferResult(body.get("model_name", ""), body.get("model_version"), rows, body.get("id"))


def build_feedback(prediction_ids: str | Sequence[str], labels: int | Sequence[int]) -> Any:
    """``{"prediction_id", "label"}`` for one id, or a list of them for several."""
    if isinstance(prediction_ids, str):
        if not isinstance(labels, int):
            raise ValueError("one prediction id takes one label (0 or 1)")
        return {"prediction_id": prediction_ids, "label": int(labels)}
    if isinstance(labels, int):
        raise ValueError("several prediction ids need a sequence of labels")
    ids, values = list(prediction_ids), [int(v) for v in labels]
    if len(ids) != len(values):
        raise ValueError(f"{len(ids)} prediction ids but {len(values)} labels")
    return [{"prediction_id": i, "label": v} for i, v in zip(ids, values, strict=True)]


@dataclass(frozen=True)
class FeedbackResult:
    accepted: int
    results: list[dict[str, str]]


def _raise_for_status(response: Any) -> Any:
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        message = body.get("error") if isinstance(body, dict) and "error" in body else response.text
        raise ServingHTTPError(response.status_code, str(message), body)
    return body


class FraudClient:
    """Synchronous client (httpx, keep-alive) for one fraud server."""

    def __init__(self, base_url: str, model_name: str = DEFAULT_MODEL_NAME, *, timeout: float = 10.0) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def ready(self) -> bool:
        import httpx

        try:
            return self._http.get(f"/v2/models/{self.model_name}/ready").status_code == 200
        except httpx.TransportError:
            return False

    def predict(self, rows: Any, feature_names: Sequence[str] | None = None) -> InferResult:
        body = build_infer_request(rows, feature_names)
        return parse_infer_response(self.post_json(infer_path(self.model_name), body))

    def feedback(self, prediction_ids: str | Sequence[str], labels: int | Sequence[int]) -> FeedbackResult:
        body = self.post_json(FEEDBACK_PATH, build_feedback(prediction_ids, labels))
        return FeedbackResult(int(body["accepted"]), list(body["results"]))

    def post_json(self, path: str, body: Any) -> Any:
        """POST ``body`` as JSON; return the decoded answer or raise ServingHTTPError."""
        response = self._http.post(path, content=json.dumps(body, allow_nan=False), headers=JSON_HEADERS)
        return _raise_for_status(response)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FraudClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncFraudClient:
    """Asynchronous twin of FraudClient (httpx.AsyncClient), for concurrent traffic."""

    def __init__(self, base_url: str, model_name: str = DEFAULT_MODEL_NAME, *, timeout: float = 10.0) -> None:
        import httpx

        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout)

    async def predict(self, rows: Any, feature_names: Sequence[str] | None = None) -> InferResult:
        body = build_infer_request(rows, feature_names)
        return parse_infer_response(await self.post_json(infer_path(self.model_name), body))

    async def feedback(self, prediction_ids: str | Sequence[str], labels: int | Sequence[int]) -> FeedbackResult:
        body = await self.post_json(FEEDBACK_PATH, build_feedback(prediction_ids, labels))
        return FeedbackResult(int(body["accepted"]), list(body["results"]))

    async def post_json(self, path: str, body: Any) -> Any:
        response = await self._http.post(path, content=json.dumps(body, allow_nan=False), headers=JSON_HEADERS)
        return _raise_for_status(response)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncFraudClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


@dataclass(frozen=True)
class MetricSamples:
    """Samples of one /metrics scrape, queryable by name and labels."""

    samples: list[tuple[str, dict[str, str], float]]

    def value(self, name: str, **labels: str) -> float:
        """Sum of the samples named ``name`` whose labels include ``labels`` (0.0 when none match)."""
        return sum(
            value
            for sample_name, sample_labels, value in self.samples
            if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
        )

    def series(self, name: str) -> list[tuple[dict[str, str], float]]:
        return [(labels, value) for sample_name, labels, value in self.samples if sample_name == name]


def parse_metrics(text: str) -> MetricSamples:
    from prometheus_client.parser import text_string_to_metric_families

    samples = [
        (sample.name, dict(sample.labels), float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]
    return MetricSamples(samples)


def scrape_metrics(metrics_url: str, timeout: float = 5.0) -> MetricSamples:
    import httpx

    response = httpx.get(metrics_url, timeout=timeout)
    response.raise_for_status()
    return parse_metrics(response.text)
