"""Rollout waves across regions: a region starts rolling out a model version only after every region of
the previous wave has promoted that same version.

Mechanism (per region):

* A region that a later wave waits on runs a read-only identity, ServiceAccount ``fraud-wave-reader``
  with a ClusterRole that may only ``get`` the rollout objects by name, and a long-lived token Secret.
* A region that waits (wave > first) runs the wave gate (ops/wave_gate.py, ``fraudctl wave-gate serve``; Deployment and
  Service ``fraud-wave-gate`` in namespace ``fraud-waves``), with a kubeconfig Secret built by Pulumi
  from each upstream region's ``apiServer`` and reader token. Flagger calls it as a ``confirm-rollout``
  webhook (``POST /gate``: 200 lets the canary start, anything else holds it and Flagger asks again
  next interval); Argo Rollouts reads ``GET /status`` as a web metric (``result.ready == true``).
* The gate reads the version this region is about to roll out (its own target's pod label
  ``fraud-platform/model-version``) and, in every upstream region, whether that version is promoted:
  Flagger: Canary phase Initialized/Succeeded with lastAppliedSpec == lastPromotedSpec and the
  ``-primary`` Deployment on that version; Argo Rollouts: Rollout Healthy, stableRS == currentPodHash,
  template on that version. Anything unreadable holds the rollout (fails closed).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from infra.config import Region
from ops.wave_gate import GATE_PORT, TARGET_NAME, TARGET_NAMESPACE

if TYPE_CHECKING:
    import pulumi

    from infra import k8s

NAMESPACE = "fraud-waves"
GATE = "fraud-wave-gate"
READER = "fraud-wave-reader"
READER_TOKEN = f"{READER}-token"
UPSTREAMS_SECRET = "fraud-wave-upstreams"
UPSTREAMS_MOUNT = "/etc/fraud-waves"
GATE_URL = f"http://{GATE}.{NAMESPACE}.svc.cluster.local:{GATE_PORT}"


# ---------------------------------------------------------------------------------------------------
# What the stack declares


def confirm_rollout_webhook(upstream: Sequence[Region]) -> dict[str, Any] | None:
    """The Flagger webhook that holds a region's canary until the ``upstream`` regions (the previous wave)
    promoted (None: the first wave)."""
    if not upstream:
        return None
    return {"name": "rollout-wave", "type": "confirm-rollout", "url": f"{GATE_URL}/gate", "timeout": "15s"}


def argo_wave_metric(upstream: Sequence[Region], interval_seconds: int = 60) -> dict[str, Any] | None:
    """An Argo Rollouts analysis metric that passes once the ``upstream`` regions (the previous wave) promoted
    (None: the first wave). Retries for a day: a later wave legitimately waits as long as the earlier one takes."""
    if not upstream:
        return None
    return {
        "name": "rollout-wave",
        "interval": f"{interval_seconds}s",
        "count": 1,
        "failureLimit": 0,
        "inconclusiveLimit": 0,
        "consecutiveErrorLimit": 86400 // interval_seconds,
        "successCondition": "result.ready == true",
        "provider": {"web": {"url": f"{GATE_URL}/status", "jsonPath": "{$}", "timeoutSeconds": 15}},
    }


def reader_rules() -> list[dict[str, Any]]:
    names = [TARGET_NAME, f"{TARGET_NAME}-primary"]
    return [
        {"apiGroups": ["flagger.app"], "resources": ["canaries"], "verbs": ["get"], "resourceNames": names},
        {"apiGroups": ["argoproj.io"], "resources": ["rollouts"], "verbs": ["get"], "resourceNames": names},
        {"apiGroups": ["apps"], "resources": ["deployments"], "verbs": ["get"], "resourceNames": names},
    ]


def _rbac(account: str) -> list[k8s.Manifest]:
    from infra import k8s

    obj_labels = k8s.labels(account, "rollout-waves")
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": account, "namespace": NAMESPACE, "labels": obj_labels},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": account, "labels": obj_labels},
            "rules": reader_rules(),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": account, "labels": obj_labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": account},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": NAMESPACE}],
        },
    ]


def reader_objects() -> list[k8s.Manifest]:
    """In a region a later wave waits on: the read-only identity and its token."""
    from infra import k8s

    token = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": READER_TOKEN,
            "namespace": NAMESPACE,
            "labels": k8s.labels(READER_TOKEN, "rollout-waves"),
            "annotations": {"kubernetes.io/service-account.name": READER},
        },
        "type": "kubernetes.io/service-account-token",
    }
    return [*_rbac(READER), token]


def upstream_kubeconfig(upstreams: Sequence[tuple[Region, Mapping[str, str] | None]]) -> str:
    """A kubeconfig with one context per upstream region, from its apiServer and reader token Secret data
    (base64 values, as the API returns them)."""
    clusters, users, contexts = [], [], []
    for region, data in upstreams:
        data = data or {}
        token = base64.b64decode(data.get("token", "")).decode() if data.get("token") else ""
        cluster: dict[str, Any] = {"server": region.api_server}
        if data.get("ca.crt"):
            cluster["certificate-authority-data"] = data["ca.crt"]
        clusters.append({"name": region.name, "cluster": cluster})
        users.append({"name": region.name, "user": {"token": token}})
        contexts.append(
            {
                "name": region.name,
                "context": {"cluster": region.name, "user": region.name, "namespace": TARGET_NAMESPACE},
            }
        )
    doc: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": clusters,
        "users": users,
        "contexts": contexts,
    }
    if contexts:
        doc["current-context"] = contexts[0]["name"]
    return json.dumps(doc, indent=2)


def gate_objects(
    region: Region, upstream: Sequence[Region], image: pulumi.Input[str], *, strategy: str
) -> list[k8s.Manifest]:
    """In a region that waits on the ``upstream`` regions: the gate's identity, Deployment and Service (the
    kubeconfig Secret aside); ``strategy`` says which rollout objects it reads."""
    from infra import k8s

    tmp_volume, tmp_mount = k8s.tmp_volume()
    obj_labels = k8s.labels(GATE, "rollout-waves", **{"fraud-platform/region": region.name})
    selector = {"app.kubernetes.io/name": GATE}
    args = [
        "wave-gate",
        "serve",
        "--port",
        str(GATE_PORT),
        "--strategy",
        strategy,
        "--kubeconfig",
        f"{UPSTREAMS_MOUNT}/config",
        *[part for r in upstream for part in ("--upstream", r.name)],
    ]
    container = k8s.container(
        "wave-gate",
        image,
        command=["fraudctl"],
        args=args,
        ports=[{"name": "http", "containerPort": GATE_PORT}],
        requests={"cpu": "10m", "memory": "128Mi"},
        limits={"cpu": "200m", "memory": "256Mi"},
        probes={
            "readinessProbe": {"httpGet": {"path": "/healthz", "port": GATE_PORT}, "periodSeconds": 10},
            "livenessProbe": {"httpGet": {"path": "/healthz", "port": GATE_PORT}, "periodSeconds": 30},
        },
        volume_mounts=[{"name": "upstreams", "mountPath": UPSTREAMS_MOUNT, "readOnly": True}, tmp_mount],
    )
    container["env"] = [{"name": "HOME", "value": "/tmp"}]
    deployment = k8s.deployment(
        GATE,
        NAMESPACE,
        obj_labels,
        {
            "serviceAccountName": GATE,
            # It reads this region's own rollout target through the API server (its ClusterRole).
            "automountServiceAccountToken": True,
            "containers": [container],
            "volumes": [{"name": "upstreams", "secret": {"secretName": UPSTREAMS_SECRET}}, tmp_volume],
        },
    )
    service = k8s.service(
        GATE, NAMESPACE, selector, [{"name": "http", "port": GATE_PORT, "targetPort": GATE_PORT}], obj_labels=obj_labels
    )
    return [*_rbac(GATE), deployment, service]
