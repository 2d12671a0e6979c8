"""Names, labels and in-cluster URLs of the fraud service (one region), shared by its object builders.

Canary: the Deployment ``fraud-detector`` is Flagger's target; Flagger creates ``fraud-detector-primary``
(the serving copy) and the Services ``fraud-detector`` (apex, routed by an Istio VirtualService),
``-primary`` and ``-canary``. Blue-green: the Rollout ``fraud-detector`` with the active Service
``fraud-detector`` and the preview Service ``fraud-detector-preview``. ``fraud-detector-replay`` runs the
rollout decision service (ops/decision_service.py) that both controllers call. In both, every model-server pod
carries :data:`WORKLOAD_LABEL`, which the PodDisruptionBudget, the NetworkPolicies and the headless
metrics Service select, so each pod is scraped exactly once whatever the rollout does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infra import charts, k8s
from serving.settings import DEFAULT_HTTP_PORT

NS = charts.FRAUD_NAMESPACE
APP = "fraud-detector"
COMPONENT = "serving"
PREVIEW = f"{APP}-preview"
CANARY_SERVICE = f"{APP}-canary"
METRICS_SERVICE = f"{APP}-metrics"
SERVICE_ACCOUNT = APP
SIGNING_SECRET = "fraud-feedback-signing"
SIGNING_SECRET_KEY = "key"
REPLAY = f"{APP}-replay"
REPLAY_PORT = 8080
ALERT_PROVIDER = "fraud-rollout-alerts"
ALERT_SECRET = "fraud-rollout-alerts"
RULES = "fraud-model"
DASHBOARD = "fraud-model-dashboard"
WORKLOAD_LABEL = {"fraud-platform/workload": "model-server"}
REPLAY_LABEL = {"fraud-platform/workload": "replay"}
VERSION_POD_LABEL = "fraud-platform/model-version"
# The image's entry point is `python -m serving.server`; this folder has no model-settings.json, so
# MLServer builds the model from the MLSERVER_MODEL_* environment (serving/settings.py).
SERVER_ARGS = ["/opt/fraud/empty"]
# The decision service (ops/decision_service.py) runs from the project image in the replay Deployment.
REPLAY_COMMAND = ["python", "-m", "ops.replay"]
HEALTH_READY = "/v2/health/ready"
HEALTH_LIVE = "/v2/health/live"


def _url(service: str, port: int) -> str:
    return f"http://{service}.{NS}.svc.cluster.local:{port}"


CANARY_URL = _url(CANARY_SERVICE, DEFAULT_HTTP_PORT)
PRIMARY_URL = _url(f"{APP}-primary", DEFAULT_HTTP_PORT)
PREVIEW_URL = _url(PREVIEW, DEFAULT_HTTP_PORT)
ACTIVE_URL = _url(APP, DEFAULT_HTTP_PORT)
REPLAY_URL = _url(REPLAY, REPLAY_PORT)


def object_labels(name: str, **extra: str) -> dict[str, str]:
    return k8s.labels(name, COMPONENT, **extra)


def meta(name: str, kind_labels: Mapping[str, str] | None = None) -> dict[str, Any]:
    return {"name": name, "namespace": NS, "labels": {**object_labels(name), **(kind_labels or {})}}
