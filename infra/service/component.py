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

import pulumi

from infra import charts, k8s, observability
from infra.component import Component
from infra.config import (
    PROJECT,
    AnalysisSettings,
    CandidateMetrics,
    ModelSettings,
    Region,
    ServingSettings,
    StackConfig,
)
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
    pod_template,
    service_account,
    service_monitor,
    serving_image,
    signing_secret,
)


@dataclass(frozen=True)
class ServiceSpec:
    """The parts of the stack config one region's fraud service is built from."""

    strategy: str
    model: ModelSettings
    serving: ServingSettings
    analysis: AnalysisSettings
    candidate_metrics: CandidateMetrics | None
    mesh: bool  # Istio runs: the namespace is in the mesh, Envoy's metrics are scraped
    mlflow: bool  # the in-cluster MLflow runs: the model server may load models:/ URIs from it
    alerts: bool  # alertWebhookUrl is set: Flagger posts rollout events to it
    upstream: tuple[Region, ...] = ()  # the previous rollout wave's regions: they promote first

    @classmethod
    def of(cls, config: StackConfig, region: Region) -> ServiceSpec:
        return cls(
            strategy=config.strategy,
            model=config.model,
            serving=config.serving,
            analysis=config.analysis,
            candidate_metrics=config.candidate_metrics,
            mesh=config.enabled("istio"),
            mlflow=config.enabled("mlflow"),
            alerts=config.alerts_enabled,
            upstream=config.upstream_regions(region),
        )


@dataclass(frozen=True)
class ServiceObjects:
    """The objects of one region's fraud service, grouped by the CRDs they need."""

    builtin: list[k8s.Manifest]
    # platform component key(s) whose CRDs must exist first -> objects
    custom: list[tuple[tuple[str, ...], k8s.Manifest]] = field(default_factory=list)


def service_objects(
    spec: ServiceSpec,
    image: pulumi.Input[str],
    tools_image: pulumi.Input[str],
    signing_key: pulumi.Input[str],
    alert_webhook_url: pulumi.Input[str] | None = None,
) -> ServiceObjects:
    """Every object except the namespace, for the stack's strategy (tests render these directly). The model
    server runs the serving image (the pipeline's, by digest, while the candidate it was built for rolls out),
    the replay the tools image."""
    image = serving_image(spec.model, image)
    builtin = [service_account(), signing_secret(signing_key), metrics_service(spec.mesh)]
    builtin += [autoscaler(spec.serving, spec.strategy), disruption_budget()]
    builtin += network_policies(
        mesh=spec.mesh, mlflow=spec.mlflow, model_uri=spec.model.target_uri, strategy=spec.strategy
    )
    builtin += replay_objects(spec.analysis, spec.model.name, tools_image, strategy=spec.strategy)
    metrics_map = model_metrics_configmap(spec.candidate_metrics)
    if metrics_map is not None:
        builtin.append(metrics_map)
    builtin.append(
        observability.dashboard_configmap(
            spec.analysis,
            name=DASHBOARD,
            namespace=NS,
            workload=APP,
            labels=object_labels(DASHBOARD),
            label=charts.GRAFANA_DASHBOARD_LABEL,
        )
    )
    monitoring = ("monitoring",)
    custom: list[tuple[tuple[str, ...], k8s.Manifest]] = [
        (monitoring, service_monitor(spec.mesh)),
        (
            monitoring,
            observability.prometheus_rule(
                spec.analysis,
                strategy=spec.strategy,
                name=RULES,
                namespace=NS,
                metrics_job=METRICS_SERVICE,
                workload=APP,
                labels=object_labels(RULES),
            ),
        ),
    ]
    pod = pod_template(spec.model, spec.serving, image, strategy=spec.strategy, mlflow=spec.mlflow)
    if spec.strategy == "canary":
        builtin.insert(0, deployment(pod))
        flagger = ("flagger",)
        custom += [(flagger, t) for t in flagger_metric_templates(spec.analysis)]
        if spec.alerts and alert_webhook_url is not None:
            secret, provider = alert_objects(alert_webhook_url)
            builtin.append(secret)
            custom.append((flagger, provider))
        # Flagger writes Istio VirtualServices and DestinationRules for the Canary: Istio's CRDs too.
        canary_object = canary(spec.analysis, spec.model.name, alerts=spec.alerts, upstream=spec.upstream)
        custom.append((("flagger", "istio"), canary_object))
    else:
        builtin += blue_green_services()
        argo = ("argoRollouts",)
        custom += [(argo, t) for t in argo_templates(spec.analysis, spec.model.name)]
        wave_template = argo_wave_template(spec.upstream)
        if wave_template is not None:
            custom.append((argo, wave_template))
        custom.append((argo, rollout(spec.analysis, pod, spec.upstream)))
    return ServiceObjects(builtin=builtin, custom=custom)


@dataclass(frozen=True, kw_only=True)
class FraudModelServiceArgs:
    spec: ServiceSpec
    enabled: bool  # serving.enabled: false declares the namespace only (a fresh cluster's first `pulumi up`)
    provider: pulumi.ProviderResource
    image: pulumi.Input[str]  # the serving image this program built (or its tag)
    tools_image: pulumi.Input[str]  # fraudctl: the replay webhook
    # Platform component key -> the resources its custom resources must wait for (RegionStack.crds_ready).
    crds: Mapping[str, Sequence[pulumi.Resource]]
    depends_on: tuple[pulumi.Resource, ...] = ()
    # The cluster's own provider, for what must never be written to a GitOps folder (Secrets) and what
    # they need first (the namespace). None: the same as ``provider``.
    cluster_provider: pulumi.ProviderResource | None = None


class FraudModelService(Component):
    """The fraud model service of one region (type ``fraud:serving:FraudModelService``)."""

    def __init__(self, name: str, args: FraudModelServiceArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("fraud:serving:FraudModelService", name, opts, provider=args.provider)
        spec = args.spec
        self._cluster_provider = args.cluster_provider
        self.namespace = self._declare("ns", namespace_object(spec.mesh), list(args.depends_on))
        if not args.enabled:
            # A fresh cluster's first `pulumi up` (serving.enabled false): the namespace only, so it is the same
            # resource when the service arrives and what lives in it meanwhile (Argo Workflows' RBAC) stays.
            self.finish(namespace=NS)
            return
        signing_key = self.password("feedback-signing-key", length=48)
        webhook = pulumi.Config(PROJECT).require_secret("alertWebhookUrl") if spec.alerts else None
        signing: pulumi.Output[str] = pulumi.Output.secret(signing_key.result)
        objects = service_objects(spec, args.image, args.tools_image, signing, webhook)
        self.resources: dict[str, pulumi.Resource] = {}
        for obj in objects.builtin:
            self._add(obj, [self.namespace])
        for components, obj in objects.custom:
            ready = [r for key in components for r in args.crds.get(key, ())]
            self._add(obj, [self.namespace, *ready])
        self.finish(
            namespace=NS,
            strategy=spec.strategy,
            model_version=spec.model.target_version,
            model_image=serving_image(spec.model, args.image),
            service_url=ACTIVE_URL,
            replay_url=REPLAY_URL,
            dashboard_uid=observability.DASHBOARD_UID,
        )

    def _declare(self, suffix: str, obj: k8s.Manifest, depends_on: list[pulumi.Resource]) -> pulumi.Resource:
        # With delivery argocd everything else is rendered to git; secret values must not be.
        provider = self._cluster_provider if obj["kind"] in ("Namespace", "Secret") else None
        return self.declare(suffix, obj, depends_on, provider)

    def _add(self, obj: k8s.Manifest, depends_on: list[pulumi.Resource]) -> None:
        suffix = k8s.object_suffix(obj)
        self.resources[suffix] = self._declare(suffix, obj, depends_on)
