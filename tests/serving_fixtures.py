"""Helpers shared by the serving tests (imported by tests/test_serving_*.py; fixtures live in those files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from serving.client import build_infer_request, parse_metrics
from serving.synthetic_model import FEATURE_NAMES, synthetic_transactions, train_synthetic_model

# Shared by the replicas in a test, as the Kubernetes Secret is shared by the pods of one Service.
SIGNING_KEY = "test-signing-key-0123456789abcdef"
MODEL_NAME = "fraud-detector"


def train_small_model(directory: Path, model_version: str = "v1") -> Path:
    """A tiny HistGradientBoosting pipeline on generated data, saved with model.artifact.save_fraud_model."""
    return train_synthetic_model(directory, model_version=model_version, rows=4000, max_iter=30)


def labelled_rows(count: int, seed: int, fraud_share: float = 0.3) -> tuple[Any, np.ndarray]:
    """Generated transactions with many frauds, so both decisions and all outcomes occur."""
    return synthetic_transactions(count, seed, fraud_share=fraud_share)


def infer_body(frame: Any) -> dict[str, Any]:
    return build_infer_request(frame, FEATURE_NAMES)


def post(url: str, body: Any, content_type: str = "application/json", **kwargs: Any) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(url, content=content, headers={"content-type": content_type}, timeout=30, **kwargs)


def scrape(server: Any) -> Any:
    return parse_metrics(httpx.get(server.metrics_url, timeout=10).text)


def outputs_of(response: httpx.Response) -> dict[str, list[Any]]:
    return {output["name"]: output["data"] for output in response.json()["outputs"]}
