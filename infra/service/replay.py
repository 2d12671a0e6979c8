"""The decision service's Deployment (ops/decision_service.py, run from the project image as
``python -m ops.replay serve``), its Service and access, and the replay parameters the controllers send it.

It keeps each rollout's evidence in memory, so it runs as exactly one pod, replaced (not surged) on change.
For blue-green it resolves the new and the stable ReplicaSet's pods by ``rollouts-pod-template-hash``
through the API server (the stable has no Service of its own once the active Service switched), so only
then it gets a ServiceAccount token and a Role to list pods in its namespace.
"""

from __future__ import annotations

import json
from typing import Any

import pulumi

from infra import charts, k8s
from infra.config import AnalysisSettings
from infra.service.names import (
    ACTIVE_URL,
    CANARY_URL,
    NS,
    PREVIEW_URL,
    PRIMARY_URL,
    REPLAY,
    REPLAY_COMMAND,
    REPLAY_LABEL,
    REPLAY_PORT,
    meta,
    object_labels,
)

ANALYSIS_ENV = "DECISION_ANALYSIS"
PROMETHEUS_ENV = "DECISION_PROMETHEUS_URL"
MODEL_ENV = "DECISION_MODEL"


def replay_targets(strategy: str) -> list[str]:
    """The Services the decision service may replay to (Argo's pods are found by hash, not by URL)."""
    return [PRIMARY_URL, CANARY_URL] if strategy == "canary" else [ACTIVE_URL, PREVIEW_URL]


def replay_seconds(analysis: AnalysisSettings) -> int:
    """How long one interval's replay may take: it must be done within the interval it runs in."""
    return max(10, int(analysis.interval_seconds * 0.75))


def interval_transactions(analysis: AnalysisSettings) -> int:
    """Labelled pairs replayed per interval: ``analysis.replayRate`` x ``analysis.interval``, as the plan
    (rollout/plan.py) sizes and judges them."""
    from rollout.plan import pairs_per_interval

    return pairs_per_interval(analysis.replay_rate, analysis.interval_seconds)


def replay_objects(
    analysis: AnalysisSettings, model_name: str, image: pulumi.Input[str], *, strategy: str
) -> list[k8s.Manifest]:
    """The decision service for ``strategy``, judging ``model_name``'s rollouts by ``analysis``."""
    blue_green = strategy != "canary"
    tmp_volume, tmp_mount = k8s.tmp_volume()
    pod_labels = {**object_labels(REPLAY), **REPLAY_LABEL}
    args = [
        "serve",
        "--port",
        str(REPLAY_PORT),
        "--holdout",
        "scenario",
        "--transactions",
        str(interval_transactions(analysis)),
    ]
    if blue_green:
        args.append("--kubernetes")
    container = k8s.container(
        "replay",
        image,
        command=REPLAY_COMMAND,
        args=args,
        env=[
            {"name": "REPLAY_ALLOWED_TARGETS", "value": ",".join(replay_targets(strategy))},
            {"name": ANALYSIS_ENV, "value": json.dumps(analysis.model_dump(by_alias=True, mode="json"))},
            {"name": PROMETHEUS_ENV, "value": charts.PROMETHEUS_URL},
            {"name": MODEL_ENV, "value": model_name},
            {"name": "FRAUD_HOME", "value": "/tmp/fraud"},
            {"name": "HOME", "value": "/tmp"},
        ],
        ports=[{"name": "http", "containerPort": REPLAY_PORT}],
        requests={"cpu": "100m", "memory": "512Mi"},
        limits={"cpu": "1", "memory": "1536Mi"},
        probes={
            # The holdout is built from the dataset at start-up (download on first start).
            "startupProbe": {
                "httpGet": {"path": "/healthz", "port": "http"},
                "periodSeconds": 5,
                "failureThreshold": 120,
            },
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": "http"}, "periodSeconds": 10},
            # After start-up: a hung service is restarted (the rollout it judged then starts its evidence again).
            "livenessProbe": {
                "httpGet": {"path": "/healthz", "port": "http"},
                "periodSeconds": 20,
                "failureThreshold": 3,
            },
        },
        volume_mounts=[tmp_mount],
    )
    pod_spec: dict[str, Any] = {"automountServiceAccountToken": blue_green, "containers": [container]}
    pod_spec["volumes"] = [tmp_volume]
    if blue_green:
        pod_spec["serviceAccountName"] = REPLAY
    deploy = k8s.deployment(REPLAY, NS, meta(REPLAY)["labels"], pod_spec, pod_labels=pod_labels)
    # One pod holds each rollout's evidence: never two at once.
    deploy["spec"]["strategy"] = {"type": "Recreate"}
    svc = k8s.service(
        REPLAY,
        NS,
        {"app.kubernetes.io/name": REPLAY},
        [{"name": "http", "port": REPLAY_PORT, "targetPort": "http"}],
        obj_labels=object_labels(REPLAY),
    )
    objects = [deploy, svc]
    if blue_green:
        objects += pod_reader_objects()
    return objects


def pod_reader_objects() -> list[k8s.Manifest]:
    """ServiceAccount, Role (get/list pods in the fraud namespace, nothing else) and RoleBinding."""
    account = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": meta(REPLAY),
        "automountServiceAccountToken": False,
    }
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": meta(REPLAY),
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": meta(REPLAY),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": REPLAY},
        "subjects": [{"kind": "ServiceAccount", "name": REPLAY, "namespace": NS}],
    }
    return [account, role, binding]


def replay_parameters(analysis: AnalysisSettings, model_name: str) -> dict[str, str]:
    """Replay overrides a controller sends with each interval (strings, as Flagger's metadata requires)."""
    return {
        "model": model_name,
        "transactions": str(interval_transactions(analysis)),
        "timeoutSeconds": str(replay_seconds(analysis)),
    }


def webhook_timeout(analysis: AnalysisSettings) -> str:
    """A Flagger webhook's timeout: the replay's time plus the look and the answer."""
    return f"{replay_seconds(analysis) + 15}s"
