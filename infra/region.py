"""One region: its own cluster provider, the full platform, the project images, and the fraud service.

``RegionStack`` is the one component that reads the whole stack config: it hands each component only the
part of it that component uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi

from infra import charts, gitops, platform, registry
from infra.component import RegionComponent
from infra.config import ChartComponent, Region, RegistrySettings, StackConfig
from infra.mlflow import MlflowArgs, MlflowTracking
from infra.registry import ProjectImages


@dataclass(frozen=True)
class RegionArgs:
    config: StackConfig
    region: Region


class RegionStack(pulumi.ComponentResource):
    """Everything one region runs. Platform tools first; the fraud service once their CRDs exist."""

    def __init__(self, name: str, args: RegionArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("fraud:stack:RegionStack", name, None, opts)
        import pulumi_kubernetes as kubernetes

        config, region = args.config, args.region
        self.provider = kubernetes.Provider(
            f"{name}-k8s",
            context=region.context,
            kubeconfig=region.kubeconfig,
            enable_server_side_apply=True,
            opts=pulumi.ResourceOptions(parent=self),
        )
        child = pulumi.ResourceOptions(parent=self)
        self.components: dict[str, RegionComponent] = {}
        small, monitored = charts.small_footprint(config.environment), config.enabled("monitoring")

        def chart_args(chart: ChartComponent, depends_on: tuple[pulumi.Resource, ...]) -> platform.ChartArgs:
            return platform.ChartArgs(
                provider=self.provider, depends_on=depends_on, chart=chart, small=small, monitoring=monitored
            )

        tools = config.platform
        monitoring_deps: tuple[pulumi.Resource, ...] = ()
        if config.enabled("monitoring"):
            # Other charts create ServiceMonitors, so the Prometheus Operator CRDs come first.
            monitoring = platform.Monitoring(f"{name}-monitoring", chart_args(tools.monitoring, ()), child)
            self.components["monitoring"] = monitoring
            monitoring_deps = tuple(monitoring.crds_ready)
        if config.enabled("istio"):
            self.components["istio"] = platform.IstioMesh(
                f"{name}-istio", chart_args(tools.istio, monitoring_deps), child
            )
        harbor: platform.Harbor | None = None
        if config.enabled("harbor"):
            harbor = platform.Harbor(
                f"{name}-harbor",
                platform.HarborArgs(
                    platform=chart_args(tools.harbor, monitoring_deps),
                    registry=config.registry,
                    registry_host=region.registry_host,
                    registry_ca=config.registry_ca,
                ),
                child,
            )
            self.components["harbor"] = harbor
            images = self._project_images(name, config.registry, region, config.serving.image_tag, harbor)
        else:
            # Built and pushed elsewhere (registry.host names that registry), referenced by tag.
            images = ProjectImages.tagged(config.registry, region, config.serving.image_tag)
        self.images = images
        mlflow: MlflowTracking | None = None
        if config.enabled("mlflow"):
            mlflow = MlflowTracking(
                f"{name}-mlflow",
                MlflowArgs(
                    provider=self.provider, depends_on=monitoring_deps, settings=config.mlflow, image=images.mlflow
                ),
                child,
            )
            self.components["mlflow"] = mlflow
        argo_workflows: platform.ArgoWorkflows | None = None
        if config.enabled("argoWorkflows") and mlflow is not None:
            argo_workflows = platform.ArgoWorkflows(
                f"{name}-argo-workflows",
                platform.ArgoWorkflowsArgs(chart_args(tools.argo_workflows, monitoring_deps), mlflow.artifact_store),
                child,
            )
            self.components["argoWorkflows"] = argo_workflows
        if config.enabled("argoRollouts"):
            self.components["argoRollouts"] = platform.ArgoRollouts(
                f"{name}-argo-rollouts", chart_args(tools.argo_rollouts, monitoring_deps), child
            )
        if config.enabled("flagger"):
            mesh = self.crds_ready("istio")
            self.components["flagger"] = platform.Flagger(
                f"{name}-flagger",
                platform.FlaggerArgs(
                    chart_args(tools.flagger, (*monitoring_deps, *mesh)),
                    loadtester=tools.flagger_loadtester if config.enabled("flaggerLoadtester") else None,
                ),
                child,
            )
        if config.enabled("argocd"):
            self.components["argocd"] = platform.ArgoCD(
                f"{name}-argocd", chart_args(tools.argocd, monitoring_deps), child
            )

        # The provider the fraud service is declared with: the cluster's own, or (delivery argocd) one
        # that renders manifests to a folder for Argo CD to sync.
        self.service_provider: pulumi.ProviderResource = gitops.service_provider(
            name, config.delivery, gitops.gitops_path(config.stack, region.name), self.provider, parent=self
        )
        # --- fraud service (issue 5) ---
        from infra.service.component import FraudModelService, FraudModelServiceArgs, ServiceSpec

        self.fraud_service = FraudModelService(
            f"{name}-fraud",
            FraudModelServiceArgs(
                spec=ServiceSpec.of(config, region),
                enabled=config.serving.enabled,
                provider=self.service_provider,
                cluster_provider=self.provider,
                image=images.serving,
                tools_image=images.tools,
                crds={key: self.crds_ready(key) for key in ("flagger", "istio", "argoRollouts", "monitoring")},
            ),
            child,
        )
        if config.serving.enabled:
            self.components["fraud"] = self.fraud_service
        # --- pipeline and GitOps (issue 6) ---
        from infra import pipeline_stack

        if argo_workflows is not None and mlflow is not None and config.pipeline.enabled:
            self.components["pipeline"] = pipeline_stack.TrainingPipeline(
                f"{name}-pipeline",
                pipeline_stack.TrainingPipelineArgs(
                    provider=self.provider,
                    depends_on=tuple(argo_workflows.crds_ready),
                    namespace=argo_workflows.namespace,
                    region=region,
                    stack=config.stack,
                    registry=config.registry,
                    pipeline=config.pipeline,
                    gate=config.gate,
                    git=config.git,
                    git_token_set=config.git_token_set,
                    candidate_version=config.model.candidate_version,
                    image=images.tools,
                    tracking_url=mlflow.tracking_url,
                    artifact_store=mlflow.artifact_store,
                    s3_region=config.mlflow.region,
                    harbor_password=harbor.admin_password if harbor is not None else None,
                    ca_cert=harbor.ca_pem if harbor is not None else None,
                ),
                child,
            )
        if config.delivery == "argocd" and "argocd" in self.components:
            self.components["gitops"] = gitops.GitOpsDelivery(
                f"{name}-gitops",
                gitops.GitOpsArgs(
                    git=config.git,
                    path=gitops.gitops_path(config.stack, region.name),
                    region=region,
                    provider=self.provider,
                    argocd_ready=self.crds_ready("argocd"),
                    git_token_set=config.git_token_set,
                ),
                child,
            )
        if len(config.waves()) > 1:
            self.components["waves"] = pipeline_stack.RolloutWaves(
                f"{name}-waves",
                pipeline_stack.RolloutWavesArgs(
                    provider=self.provider,
                    region=region,
                    upstream=config.upstream_regions(region),
                    downstream=tuple(r for r in config.regions if region in config.upstream_regions(r)),
                    strategy=config.strategy,
                    image=images.tools,
                    readers=pipeline_stack.wave_readers(config),
                ),
                child,
            )

        # Public outputs (URLs, Secret names) apart from passwords, so one secret does not make the
        # whole region's outputs opaque in `pulumi stack output`.
        self.outputs: dict[str, Any] = {"context": region.context}
        self.passwords: dict[str, Any] = {}
        for key, component in self.components.items():
            self.outputs[key] = {k: v for k, v in component.outputs.items() if not k.endswith("password")}
            for k, v in component.outputs.items():
                if k.endswith("password"):
                    self.passwords[f"{key}_{k}"] = v
        self.register_outputs({**self.outputs, "passwords": pulumi.Output.secret(self.passwords)})

    def crds_ready(self, *components: str) -> list[pulumi.Resource]:
        """What a custom resource served by these components must depend on."""
        ready: list[pulumi.Resource] = []
        for key in components:
            if key in self.components:
                ready.extend(self.components[key].crds_ready)
        return ready

    def _project_images(
        self, name: str, settings: RegistrySettings, region: Region, tag: str, harbor: platform.Harbor
    ) -> ProjectImages:
        """Build each role's image (the Dockerfile's targets) and push it to this region's Harbor, by its one
        name; the references are the pushed digests."""
        import pulumi_docker as docker

        provider = docker.Provider(f"{name}-docker", opts=pulumi.ResourceOptions(parent=self))
        credentials = docker.RegistryArgs(server=harbor.address, username="admin", password=harbor.admin_password)
        digests = {}
        for role in registry.ROLES:
            image = docker.Image(
                f"{name}-image-{role}",
                image_name=f"{registry.image_repository(settings, region, role)}:{tag}",
                build=docker.DockerBuildArgs(
                    context=".", dockerfile=registry.DOCKERFILE, target=role, platform="linux/amd64"
                ),
                registry=credentials,
                opts=pulumi.ResourceOptions(parent=self, provider=provider, depends_on=harbor.ready),
            )
            digests[role] = image.repo_digest
        return ProjectImages(**digests)
