"""Helpers shared by the serving tests (the session-scoped model fixtures live in tests/conftest.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from serving.client import build_infer_request, parse_metrics
from serving.synthetic_model import FEATURE_NAMES, synthetic_transactions, train_synthetic_model

# Shared by the replicas in a test, as the Kubernetes Secret is shared by the pods of one Service.
SIGNING_KEY = "test-signing-key-0123456789abcdef"
MODEL_NAME = "fraud-detector"
JSON = "application/json"


def train_small_model(directory: Path, model_version: str = "v1") -> Path:
    """The production pipeline (undersampled boosting) on generated data, few rounds; saved and compiled
    with model.artifact.save_fraud_model."""
    return train_synthetic_model(directory, model_version=model_version, rows=4000, max_iter=30)


def labelled_rows(count: int, seed: int, fraud_share: float = 0.3) -> tuple[Any, np.ndarray]:
    """Generated transactions with many frauds, so both decisions and all outcomes occur."""
    return synthetic_transactions(count, seed, fraud_share=fraud_share)


def expected(reference: Any, frame: Any) -> tuple[np.ndarray, list[bool]]:
    """What a served model must answer for ``frame``: the in-process model's scores and flags."""
    scores = np.asarray(reference.fraud_probability(frame))
    return scores, (scores >= reference.threshold).tolist()


def infer_body(frame: Any) -> dict[str, Any]:
    return build_infer_request(frame, FEATURE_NAMES)


def post(url: str, body: Any, content_type: str = JSON, **kwargs: Any) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    headers = {"content-type": content_type, **kwargs.pop("headers", {})}
    return httpx.post(url, content=content, headers=headers, timeout=30, **kwargs)


def scrape(server: Any) -> Any:
    return parse_metrics(httpx.get(server.metrics_url, timeout=10).text)


def outputs_of(response: httpx.Response) -> dict[str, list[Any]]:
    return {output["name"]: output["data"] for output in response.json()["outputs"]}


def run(coroutine_function: Callable[[], Awaitable[Any]]) -> Any:
    """Run an async test body on a fresh event loop (MLServer's runtimes are async) that is never made the
    thread's current loop. asyncio.run() unsets the main thread's loop when it ends, and code asking for the
    implicit loop afterwards fails: the Pulumi mocks of an offline render run later in the same xdist worker
    raised "There is no current event loop" (tests/test_verify.py, depending on how tests were distributed)."""
    with asyncio.Runner(loop_factory=asyncio.new_event_loop) as runner:
        return runner.run(coroutine_function())
