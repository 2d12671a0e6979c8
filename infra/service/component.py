"""The fraud-detection service in one region: MLServer, its rollout (Flagger canary or Argo Rollouts
blue-green, by ``strategy``), the rollout decision service, network policies and monitoring.

Every Kubernetes object is built by a plain function of the stack config in this package's modules
(tests call them directly); :class:`FraudModelService` only declares them, each custom resource after the
Helm release that installs its CRD. What rolls out is ``model.target`` (the candidate by default): the
workload declares that version; Flagger or Argo Rollouts keep the previous one serving until the decision
service (ops/decision_service.py) and the system checks (rollout/analysis.py) have passed it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pulumi

from infra import charts, k8s, observability
from infra.config import Region, StackConfig
from infra.service.bluegreen import argo_templates, argo_wave_template, rollout
from infra.service.canary import alert_objects, canary, flagger_metric_templates
from infra.service.names import (
    ACTIVE_URL,
    APP,
    DASHBOARD,
    METRICS_SERVICE,
    NS,
    REPLAY_URL,
    RULES,
    object_labels,
)
from infra.service.network import network_policies
from infra.service.replay import replay_objects
from infra.service.workload import (
    autoscaler,
    blue_green_services,
    deployment,
    disruption_budget,
    metrics_service,
    model_metrics_configmap,
    namespace_object,
    service_account,
    service_monitor,
    signing_secret,
)


@dataclass(frozen=True)
class ServiceObjects:
    """The objects of one region's fraud service, grouped by the CRDs they need."""

    builtin: list[dict[str, Any]]
    # platform component key(s) whose CRDs must exist first -> objects
    custom: list[tuple[tuple[str, ...], dict[str, Any]]] = field(default_factory=list)


def service_objects(
    config: StackConfig,
    image: Any,
    signing_key: Any,
    alert_webhook_url: Any = None,
    region: Region | None = None,
) -> ServiceObjects:
    """Every object except the namespace, for the stack's strategy (tests render these directly)."""
    builtin = [service_account(), signing_secret(signing_key), metrics_service(config), autoscaler(config)]
    builtin += [disruption_budget(), *network_policies(config), *replay_objects(config, image)]
    metrics_map = model_metrics_configmap(config)
    if metrics_map is not None:
        builtin.append(metrics_map)
    builtin.append(
        observability.dashboard_configmap(
            config,
            name=DASHBOARD,
            namespace=NS,
            canary_name=APP,
            labels=object_labels(DASHBOARD),
            label=charts.GRAFANA_DASHBOARD_LABEL,
        )
    )
    monitoring = ("monitoring",)
    custom: list[tuple[tuple[str, ...], dict[str, Any]]] = [
        (monitoring, service_monitor(config)),
        (
            monitoring,
            observability.prometheus_rule(
                config,
                name=RULES,
                namespace=NS,
                metrics_job=METRICS_SERVICE,
                workload=APP,
                canary_name=APP,
                labels=object_labels(RULES),
            ),
        ),
    ]
    if config.strategy == "canary":
        builtin.insert(0, deployment(config, image))
        flagger = ("flagger",)
        custom += [(flagger, t) for t in flagger_metric_templates(config)]
        if config.alerts_enabled and alert_webhook_url is not None:
            secret, provider = alert_objects(alert_webhook_url)
            builtin.append(secret)
            custom.append((flagger, provider))
        # Flagger writes Istio VirtualServices and DestinationRules for the Canary: Istio's CRDs too.
        custom.append((("flagger", "istio"), canary(config, region)))
    else:
        builtin += blue_green_services()
        argo = ("argoRollouts",)
        custom += [(argo, t) for t in argo_templates(config)]
        wave_template = argo_wave_template(config, region)
        if wave_template is not None:
            custom.append((argo, wave_template))
        custom.append((argo, rollout(config, image, region)))
    return ServiceObjects(builtin=builtin, custom=custom)


@dataclass(frozen=True)
class FraudModelServiceArgs:
    config: StackConfig
    region: Region
    provider: pulumi.ProviderResource
    image: Any
    # Platform component key -> the resources its custom resources must wait for (RegionStack.crds_ready).
    crds: Mapping[str, Sequence[pulumi.Resource]]
    depends_on: tuple[pulumi.Resource, ...] = ()
    # The cluster's own provider, for what must never be written to a GitOps folder (Secrets) and what
    # they need first (the namespace). None: the same as ``provider``.
    cluster_provider: pulumi.ProviderResource | None = None


class FraudModelService(pulumi.ComponentResource):
    """The fraud model service of one region (type ``fraud:serving:FraudModelService``)."""

    def __init__(self, name: str, args: FraudModelServiceArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("fraud:serving:FraudModelService", name, None, opts)
        import pulumi_random as random

        config = args.config
        self._name, self._args = name, args
        self.crds_ready: list[pulumi.Resource] = []
        self.namespace = self._declare("ns", namespace_object(config), list(args.depends_on))
        signing_key = random.RandomPassword(
            f"{name}-feedback-signing-key", length=48, special=False, opts=pulumi.ResourceOptions(parent=self)
        )
        webhook = None
        if config.alerts_enabled:
            from infra.config import PROJECT

            webhook = pulumi.Config(PROJECT).require_secret("alertWebhookUrl")
        objects = service_objects(
            config, args.image, pulumi.Output.secret(signing_key.result), webhook, region=args.region
        )
        self.resources: dict[str, pulumi.Resource] = {}
        for obj in objects.builtin:
            self._add(obj, [self.namespace])
        for components, obj in objects.custom:
            ready = [r for key in components for r in args.crds.get(key, ())]
            self._add(obj, [self.namespace, *ready])
        self.outputs: dict[str, Any] = {
            "namespace": NS,
            "strategy": config.strategy,
            "model_version": config.model.target_version,
            "service_url": ACTIVE_URL,
            "replay_url": REPLAY_URL,
            "dashboard_uid": observability.DASHBOARD_UID,
        }
        self.register_outputs(self.outputs)

    def _declare(self, suffix: str, obj: dict[str, Any], depends_on: list[pulumi.Resource]) -> Any:
        provider = self._args.provider
        if obj["kind"] in ("Namespace", "Secret") and self._args.cluster_provider is not None:
            # With delivery argocd everything else is rendered to git; secret values must not be.
            provider = self._args.cluster_provider
        opts = pulumi.ResourceOptions(parent=self, provider=provider, depends_on=depends_on)
        return k8s.declare(f"{self._name}-{suffix}", obj, opts)

    def _add(self, obj: dict[str, Any], depends_on: list[pulumi.Resource]) -> None:
        suffix = f"{obj['kind'].lower()}-{obj['metadata']['name']}"
        self.resources[suffix] = self._declare(suffix, obj, depends_on)
