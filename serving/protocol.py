"""Names and limits of the fraud server's HTTP interface, shared by the runtime, client and settings.

Kept free of heavy imports so configuration code (e.g. the Kubernetes side) can use them cheaply.
"""

from __future__ import annotations

DEFAULT_MODEL_NAME = "fraud-detector"
FEEDBACK_PATH = "/feedback"
METRICS_PATH = "/metrics"
READY_PATH = "/v2/health/ready"

OUTPUT_PROBABILITY = "fraud_probability"  # FP64, P(fraud) per row
OUTPUT_IS_FRAUD = "is_fraud"  # BOOL, probability >= the model's stored threshold
OUTPUT_PREDICTION_ID = "prediction_id"  # BYTES, signed token for POST /feedback
OUTPUT_NAMES = (OUTPUT_PROBABILITY, OUTPUT_IS_FRAUD, OUTPUT_PREDICTION_ID)

DEFAULT_MAX_ROWS = 1024


def is_json_content_type(value: str) -> bool:
    """``application/json`` or a JSON-based media type (``application/<anything>+json``), parameters ignored."""
    media_type = value.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


def infer_path(model_name: str = DEFAULT_MODEL_NAME, version: str | None = None) -> str:
    """V2 inference path for a model (and optionally one of its versions)."""
    if version:
        return f"/v2/models/{model_name}/versions/{version}/infer"
    return f"/v2/models/{model_name}/infer"
