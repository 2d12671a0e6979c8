"""The Pulumi components of the training pipeline and of the rollout waves (issue 6), one per region.

The objects themselves are built by pure functions in :mod:`infra.pipeline` and :mod:`infra.waves`, which
``fraudctl`` also uses at run time inside the project image; this module is the only part that needs the
Pulumi SDK, so those commands import nothing of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pulumi

from infra import k8s
from infra.config import Region, StackConfig
from infra.mlflow import aws_credentials
from infra.pipeline import (
    GIT_SECRET,
    GIT_SECRET_TOKEN_KEY,
    GIT_SECRET_USERNAME_KEY,
    HARBOR_SECRET,
    NAMESPACE,
    S3_CREDENTIALS_KEY,
    S3_SECRET,
    TEMPLATE_NAME,
    PipelineEndpoints,
    buildkit_config,
    docker_config_json,
    rbac_objects,
    workflow_template,
)
from infra.platform import PlatformArgs, PlatformComponent
from infra.waves import (
    GATE_URL,
    UPSTREAMS_SECRET,
    gate_objects,
    reader_objects,
    upstream_kubeconfig,
)
from infra.waves import NAMESPACE as WAVES_NAMESPACE


class TrainingPipeline(PlatformComponent):
    """The WorkflowTemplate, its service account and the Secrets its steps read, in Argo's namespace."""

    component = "argoWorkflows"

    def __init__(
        self,
        name: str,
        args: PlatformArgs,
        *,
        namespace: Any,
        image: Any,
        tracking_url: str,
        artifact_store: Any,
        harbor_password: Any | None,
        ca_cert: Any | None,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("TrainingPipeline", name, args, opts)
        config, region = self.config, args.region
        self.namespace = namespace
        from infra.registry import host_aliases

        registry = config.registry.address(region.registry_host)
        depends: list[Any] = []
        for obj in rbac_objects():
            depends.append(self.declare(f"{obj['kind'].lower()}-{obj['metadata']['name']}", obj, [namespace]))
        s3_secret = None
        if artifact_store.has_static_credentials:
            s3_secret = S3_SECRET
            depends.append(
                self.make_secret(
                    "s3",
                    S3_SECRET,
                    {
                        S3_CREDENTIALS_KEY: pulumi.Output.secret(
                            pulumi.Output.all(artifact_store.access_key, artifact_store.secret_key).apply(
                                lambda keys: aws_credentials(*keys)
                            )
                        )
                    },
                )
            )
        if harbor_password is not None:
            docker_json = pulumi.Output.secret(
                pulumi.Output.from_input(harbor_password).apply(
                    lambda pw: docker_config_json(registry, "admin", pw)
                )
            )
            harbor = k8s.secret(
                HARBOR_SECRET,
                NAMESPACE,
                {".dockerconfigjson": docker_json},
                obj_labels=k8s.labels(HARBOR_SECRET, "pipeline"),
            )
            harbor["type"] = "kubernetes.io/dockerconfigjson"
            depends.append(self.declare("harbor", harbor, [namespace]))
        if ca_cert is not None:
            depends.append(self.declare("buildkit-config", buildkit_config(registry, ca_cert), [namespace]))
        if config.git_token_set:
            token = pulumi.Config("fraud-platform").require_secret("gitToken")
            depends.append(
                self.make_secret(
                    "git", GIT_SECRET, {GIT_SECRET_USERNAME_KEY: "x-access-token", GIT_SECRET_TOKEN_KEY: token}
                )
            )
        endpoints = PipelineEndpoints(
            image=image,
            tracking_url=tracking_url,
            registry=registry,
            registry_project=config.registry.project,
            registry_aliases=tuple(host_aliases(config.registry, region)),
            s3_endpoint=artifact_store.endpoint_url,
            s3_region=config.mlflow.region,
            s3_secret=s3_secret,
        )
        template = workflow_template(
            region,
            endpoints,
            stack=config.stack,
            settings=config.pipeline,
            gate=config.gate,
            git=config.git,
            candidate_version=config.model.candidate_version,
        )
        self.template = self.declare("workflow-template", template, depends)
        self.finish(
            workflow_template=f"{NAMESPACE}/{TEMPLATE_NAME}",
            submit=f"fraudctl pipeline submit --context {region.context} --model-version "
            f"{template['spec']['arguments']['parameters'][0]['value']} --follow",
            data_bucket=region.data_bucket or "",
            image_repository=endpoints.image_repository,
        )


# Reader token Secrets of regions already built, per program run (keyed by the StackConfig object), so a
# later wave's region can build its kubeconfig. Regions are listed in wave order (infra/config/rules.py checks).
_READERS: dict[int, tuple[StackConfig, dict[str, Any]]] = {}


def _readers(config: StackConfig) -> dict[str, Any]:
    entry = _READERS.get(id(config))
    if entry is None or entry[0] is not config:
        entry = _READERS[id(config)] = (config, {})
    return entry[1]


class RolloutWaves(pulumi.ComponentResource):
    """One region's part in the rollout waves: a reader for later waves, a gate for earlier ones."""

    def __init__(
        self,
        name: str,
        config: StackConfig,
        region: Region,
        provider: pulumi.ProviderResource,
        image: Any,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("fraud:waves:RolloutWaves", name, None, opts)
        self._name, self._provider = name, provider
        self.outputs: dict[str, Any] = {"wave": region.wave}
        self.crds_ready: list[pulumi.Resource] = []
        namespace = self._declare("ns", k8s.namespace(WAVES_NAMESPACE, pod_security="restricted"), [])
        later = [r for r in config.regions if region in config.upstream_regions(r)]
        if later:
            declared = [self._declare(self._suffix(obj), obj, [namespace]) for obj in reader_objects()]
            _readers(config)[region.name] = declared[-1]
            self.outputs["read_by"] = [r.name for r in later]
        upstream = config.upstream_regions(region)
        if upstream:
            readers = _readers(config)
            data = [readers[r.name].data if r.name in readers else pulumi.Output.from_input(None) for r in upstream]
            kubeconfig = pulumi.Output.secret(
                pulumi.Output.all(*data).apply(
                    lambda values: upstream_kubeconfig(list(zip(upstream, values, strict=True)))
                )
            )
            secret = self._declare(
                "upstreams",
                k8s.secret(
                    UPSTREAMS_SECRET,
                    WAVES_NAMESPACE,
                    {"config": kubeconfig},
                    obj_labels=k8s.labels(UPSTREAMS_SECRET, "rollout-waves"),
                ),
                [namespace, *(readers[r.name] for r in upstream if r.name in readers)],
            )
            for obj in gate_objects(region, upstream, image, strategy=config.strategy):
                self._declare(self._suffix(obj), obj, [namespace, secret])
            self.outputs.update({"gate_url": GATE_URL, "waits_for": [r.name for r in upstream]})
        self.register_outputs(self.outputs)

    @staticmethod
    def _suffix(obj: Mapping[str, Any]) -> str:
        return f"{obj['kind'].lower()}-{obj['metadata']['name']}"

    def _declare(self, suffix: str, obj: dict[str, Any], depends_on: list[Any]) -> Any:
        opts = pulumi.ResourceOptions(parent=self, provider=self._provider, depends_on=depends_on)
        return k8s.declare(f"{self._name}-{suffix}", obj, opts)
