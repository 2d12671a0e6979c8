"""The labelled-replay webhook service (ops/replay.py run from the project image) and its parameters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from infra import k8s
from infra.config import StackConfig
from infra.service.names import (
    ACTIVE_URL,
    CANARY_URL,
    NS,
    PREVIEW_URL,
    REPLAY,
    REPLAY_COMMAND,
    REPLAY_LABEL,
    REPLAY_PORT,
    WARMUP_FRAUD_MULTIPLE,
    meta,
    object_labels,
)


def replay_targets(config: StackConfig) -> list[str]:
    return [CANARY_URL] if config.strategy == "canary" else [PREVIEW_URL, ACTIVE_URL]


def replay_objects(config: StackConfig, image: Any) -> list[dict[str, Any]]:
    tmp_volume, tmp_mount = k8s.tmp_volume()
    pod_labels = {**object_labels(REPLAY), **REPLAY_LABEL}
    container = k8s.container(
        "replay",
        image,
        command=REPLAY_COMMAND,
        args=["serve", "--port", str(REPLAY_PORT), "--holdout", "scenario"],
        env=[
            {"name": "REPLAY_ALLOWED_TARGETS", "value": ",".join(replay_targets(config))},
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
        },
        volume_mounts=[tmp_mount],
    )
    deploy = k8s.deployment(
        REPLAY,
        NS,
        meta(REPLAY)["labels"],
        {"automountServiceAccountToken": False, "containers": [container], "volumes": [tmp_volume]},
        pod_labels=pod_labels,
    )
    svc = k8s.service(
        REPLAY,
        NS,
        {"app.kubernetes.io/name": REPLAY},
        [{"name": "http", "port": REPLAY_PORT, "targetPort": "http"}],
        obj_labels=object_labels(REPLAY),
    )
    return [deploy, svc]


def replay_parameters(config: StackConfig, target: str, *, warmup: bool = False) -> dict[str, str]:
    """Webhook metadata for the replay (strings, as Flagger's metadata map requires)."""
    a = config.analysis
    frauds = a.min_labelled_frauds * (WARMUP_FRAUD_MULTIPLE if warmup else 1)
    # A rollout webhook must finish within the interval it runs in; the warm-up may take longer.
    seconds = 300 if warmup else max(10, int(a.interval_seconds * 0.75))
    return {
        "target": target,
        "model": config.model.name,
        "minFrauds": str(frauds),
        "timeoutSeconds": str(seconds),
    }


def _webhook_timeout(params: Mapping[str, str]) -> str:
    return f"{int(float(params['timeoutSeconds'])) + 15}s"
