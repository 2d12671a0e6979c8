"""One region: its own cluster provider, the full platform, the project images, and the fraud service."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi

from infra import gitops, platform, registry
from infra.config import Region, RegistrySettings, StackConfig
from infra.mlflow import MlflowTracking
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
        base = platform.PlatformArgs(config=config, region=region, provider=self.provider)
        child = pulumi.ResourceOptions(parent=self)
        self.components: dict[str, platform.PlatformComponent] = {}

        def add(key: str, component: platform.PlatformComponent) -> platform.PlatformComponent:
            self.components[key] = component
            return component

        monitoring_deps: tuple[pulumi.Resource, ...] = ()
        if config.enabled("monitoring"):
            # Other charts create ServiceMonitors, so the Prometheus Operator CRDs come first.
            monitoring = add("monitoring", platform.Monitoring(f"{name}-monitoring", base, child))
            monitoring_deps = tuple(monitoring.crds_ready)
        after_monitoring = platform.PlatformArgs(config, region, self.provider, monitoring_deps)
        if config.enabled("istio"):
            add("istio", platform.IstioMesh(f"{name}-istio", after_monitoring, child))
        if config.enabled("harbor"):
            harbor = add("harbor", platform.Harbor(f"{name}-harbor", after_monitoring, child))
            images = self._project_images(name, config.registry, region, config.serving.image_tag, harbor)
        else:
            # Built and pushed elsewhere (registry.host names that registry), referenced by tag.
            images = ProjectImages.tagged(config.registry, region, config.serving.image_tag)
        self.images = images
        mlflow = None
        if config.enabled("mlflow"):
            mlflow = add("mlflow", MlflowTracking(f"{name}-mlflow", after_monitoring, images.mlflow, child))
        if config.enabled("argoWorkflows") and mlflow is not None:
            add(
                "argoWorkflows",
                platform.ArgoWorkflows(f"{name}-argo-workflows", after_monitoring, mlflow.artifact_store, child),
            )
        if config.enabled("argoRollouts"):
            add("argoRollouts", platform.ArgoRollouts(f"{name}-argo-rollouts", after_monitoring, child))
        if config.enabled("flagger"):
            mesh = tuple(self.components["istio"].crds_ready) if "istio" in self.components else ()
            flagger_args = platform.PlatformArgs(config, region, self.provider, monitoring_deps + mesh)
            add("flagger", platform.Flagger(f"{name}-flagger", flagger_args, child))
        if config.enabled("argocd"):
            add("argocd", platform.ArgoCD(f"{name}-argocd", after_monitoring, child))

        # The provider the fraud service is declared with: the cluster's own, or (delivery argocd) one
        # that renders manifests to a folder for Argo CD to sync.
        self.service_provider: pulumi.ProviderResource = gitops.service_provider(
            name, config.delivery, gitops.gitops_path(config.stack, region.name), self.provider, parent=self
        )
        # --- fraud service (issue 5) ---
        from infra.service.component import FraudModelService, FraudModelServiceArgs

        self.fraud_service = FraudModelService(
            f"{name}-fraud",
            FraudModelServiceArgs(
                config=config,
                region=region,
                provider=self.service_provider,
                cluster_provider=self.provider,
                image=images.serving,
                tools_image=images.tools,
                crds={key: self.crds_ready(key) for key in ("flagger", "istio", "argoRollouts", "monitoring")},
            ),
            child,
        )
        if config.serving.enabled:
            self.components["fraud"] = self.fraud_service  # type: ignore[assignment]  # same outputs/crds_ready
        # --- pipeline and GitOps (issue 6) ---
        from infra import pipeline_stack

        argo = self.components.get("argoWorkflows")
        if argo is not None and mlflow is not None and config.pipeline.enabled:
            harbor_component = self.components.get("harbor")
            self.components["pipeline"] = pipeline_stack.TrainingPipeline(
                f"{name}-pipeline",
                platform.PlatformArgs(config, region, self.provider, tuple(argo.crds_ready)),
                namespace=argo.namespace,
                image=images.tools,
                ca_cert=getattr(harbor_component, "ca_pem", None),
                tracking_url=mlflow.outputs["tracking_url"],
                artifact_store=mlflow.artifact_store,
                harbor_password=getattr(harbor_component, "admin_password", None),
                opts=child,
            )
        if config.delivery == "argocd" and "argocd" in self.components:
            self.components["gitops"] = gitops.GitOpsDelivery(  # type: ignore[assignment]  # outputs/crds_ready shape
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
            self.components["waves"] = pipeline_stack.RolloutWaves(  # type: ignore[assignment]
                f"{name}-waves", config, region, self.provider, images.tools, child
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
