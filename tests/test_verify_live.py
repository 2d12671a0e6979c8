"""The runtime's part of verify's metric catalog against a live MLServer: exactly the families, types and
labels serving/metrics.py declares (which ``fraudctl verify`` checks every query against)."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from serving_fixtures import labelled_rows, train_small_model

from infra.verify.metrics import RUNTIME_SOURCE, catalog
from serving.client import FraudClient
from serving.process import MLServerProcess

pytestmark = pytest.mark.slow


def exported_fraud_series(text: str) -> dict[str, frozenset[str]]:
    """Every fraud_* series name a scrape shows, with the label names its samples carry."""
    found: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.startswith("fraud_"):
                found.setdefault(sample.name, set()).update(sample.labels)
    return {name: frozenset(labels) for name, labels in found.items()}


def test_a_live_mlserver_exports_exactly_the_runtime_catalog(tmp_path: Path) -> None:
    model_dir = train_small_model(tmp_path / "model", model_version="v2")
    server = MLServerProcess(model_dir, version_label="v2", signing_key="verify-live-test-signing-key-0123456789")
    server.start()
    try:
        frame, _labels = labelled_rows(4, seed=7)
        with FraudClient(server.http_url) as client:
            client.predict(frame)
        exported = exported_fraud_series(httpx.get(server.metrics_url, timeout=10).text)
    finally:
        server.stop()
    runtime = [family for family in catalog().families.values() if family.source == RUNTIME_SOURCE]
    declared = {series: labels for family in runtime for series, labels in family.series_names().items()}
    assert exported == declared
    assert {"fraud_requests_total", "fraud_request_duration_seconds_bucket", "fraud_feedback_total"} <= set(declared)
