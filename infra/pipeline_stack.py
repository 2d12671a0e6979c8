"""The Pulumi components of the training pipeline and of the rollout waves (issue 6), one per region.

The objects themselves are built by pure functions in :mod:`infra.pipeline` and :mod:`infra.waves`, which
``fraudctl`` also uses at run time inside the project image; this module is the only part that needs the
Pulumi SDK, so those commands import nothing of it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import pulumi

from infra import k8s
from infra.component import Component
from infra.config import PROJECT, GitSettings, PipelineSettings, Region, RegistrySettings, StackConfig
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
from infra.platform import ArtifactStoreRef, PlatformArgs, PlatformComponent
from infra.waves import (
    GATE_URL,
    UPSTREAMS_SECRET,
    gate_objects,
    reader_objects,
    upstream_kubeconfig,
)
from infra.waves import NAMESPACE as WAVES_NAMESPACE
from model.gate import GateSettings


@dataclass(frozen=True, kw_only=True)
class TrainingPipelineArgs(PlatformArgs):
    namespace: pulumi.Resource  # Argo Workflows' namespace: the template and its Secrets live there
    region: Region
    stack: str
    registry: RegistrySettings
    pipeline: PipelineSettings
    gate: GateSettings
    git: GitSettings
    git_token_set: bool  # the secret gitToken is set: the proposal step gets it as a Secret
    candidate_version: str  # model.candidateVersion: the version the template proposes by default
    image: pulumi.Input[str]  # the tools image (fraudctl)
    tracking_url: str
    artifact_store: ArtifactStoreRef  # the training data's and models' S3 store, with its region
    s3_region: str
    harbor_password: pulumi.Output[str] | None  # Harbor's admin password, when this program runs Harbor
    ca_cert: pulumi.Input[str] | None  # the registry CA BuildKit trusts, when this program runs Harbor


class TrainingPipeline(PlatformComponent):
    """The WorkflowTemplate, its service account and the Secrets its steps read, in Argo's namespace."""

    component = "argoWorkflows"

    def __init__(self, name: str, args: TrainingPipelineArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("TrainingPipeline", name, args, opts)
        from infra.registry import host_aliases

        region, artifact_store = args.region, args.artifact_store
        self.namespace = namespace = args.namespace
        registry = args.registry.address(region.registry_host)
        depends: list[pulumi.Resource] = [*self.declare_each(rbac_objects(), [namespace])]
        s3_secret = None
        if artifact_store.has_static_credentials:
            s3_secret = S3_SECRET
            credentials = pulumi.Output.all(artifact_store.access_key, artifact_store.secret_key).apply(
                lambda keys: aws_credentials(*keys)
            )
            depends.append(self.make_secret("s3", S3_SECRET, {S3_CREDENTIALS_KEY: pulumi.Output.secret(credentials)}))
        if args.harbor_password is not None:
            docker_json: pulumi.Output[str] = pulumi.Output.secret(
                args.harbor_password.apply(lambda pw: docker_config_json(registry, "admin", pw))
            )
            harbor = k8s.secret(
                HARBOR_SECRET,
                NAMESPACE,
                {".dockerconfigjson": docker_json},
                obj_labels=k8s.labels(HARBOR_SECRET, "pipeline"),
            )
            harbor["type"] = "kubernetes.io/dockerconfigjson"
            depends.append(self.declare("harbor", harbor, [namespace]))
        if args.ca_cert is not None:
            depends.append(self.declare("buildkit-config", buildkit_config(registry, args.ca_cert), [namespace]))
        if args.git_token_set:
            token = pulumi.Config(PROJECT).require_secret("gitToken")
            depends.append(
                self.make_secret(
                    "git", GIT_SECRET, {GIT_SECRET_USERNAME_KEY: "x-access-token", GIT_SECRET_TOKEN_KEY: token}
                )
            )
        endpoints = PipelineEndpoints(
            image=args.image,
            tracking_url=args.tracking_url,
            registry=registry,
            registry_project=args.registry.project,
            registry_aliases=tuple(host_aliases(args.registry, region)),
            s3_endpoint=artifact_store.endpoint_url,
            s3_region=args.s3_region,
            s3_secret=s3_secret,
        )
        template = workflow_template(
            region,
            endpoints,
            stack=args.stack,
            settings=args.pipeline,
            gate=args.gate,
            git=args.git,
            candidate_version=args.candidate_version,
        )
        self.template = self.declare("workflow-template", template, depends)
        self.finish(
            workflow_template=f"{NAMESPACE}/{TEMPLATE_NAME}",
            submit=f"fraudctl pipeline submit --context {region.context} --model-version "
            f"{template['spec']['arguments']['parameters'][0]['value']} --follow",
            data_bucket=region.data_bucket or "",
            image_repository=endpoints.image_repository,
        )


@dataclass(frozen=True)
class ReaderToken:
    """A region's wave reader token Secret: what a later wave's kubeconfig is built from (and waits for)."""

    secret: pulumi.Resource
    data: pulumi.Output[Mapping[str, str] | None]  # the token and CA, base64, as the API server fills them in


# The reader tokens of the regions declared so far, per program run (keyed by the StackConfig object), so a
# later wave's region can build its kubeconfig. Regions are listed in wave order (infra/config/rules.py checks).
_READERS: dict[int, tuple[StackConfig, dict[str, ReaderToken]]] = {}


def wave_readers(config: StackConfig) -> dict[str, ReaderToken]:
    """The reader tokens of ``config``'s regions declared so far, by region name (one map per program run)."""
    entry = _READERS.get(id(config))
    if entry is None or entry[0] is not config:
        entry = _READERS[id(config)] = (config, {})
    return entry[1]


@dataclass(frozen=True, kw_only=True)
class RolloutWavesArgs:
    provider: pulumi.ProviderResource
    region: Region
    upstream: tuple[Region, ...]  # the previous wave's regions: this one waits for them
    downstream: tuple[Region, ...]  # the regions of later waves that wait for this one
    strategy: str
    image: pulumi.Input[str]  # the tools image (fraudctl wave-gate)
    readers: dict[str, ReaderToken]  # wave_readers(config): this region adds its own, reads its upstreams'


class RolloutWaves(Component):
    """One region's part in the rollout waves: a reader for later waves, a gate for earlier ones."""

    def __init__(self, name: str, args: RolloutWavesArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("fraud:waves:RolloutWaves", name, opts, provider=args.provider)
        import pulumi_kubernetes as kubernetes

        region, upstream, readers = args.region, args.upstream, args.readers
        self.outputs = {"wave": region.wave}
        namespace = self.declare("ns", k8s.namespace(WAVES_NAMESPACE, pod_security="restricted"))
        if args.downstream:
            *_identity, token = self.declare_each(reader_objects(), [namespace])
            if not isinstance(token, kubernetes.core.v1.Secret):
                raise TypeError(f"the reader token is declared as a {type(token).__name__}, not a Secret")
            readers[region.name] = ReaderToken(token, token.data)
            self.outputs["read_by"] = [r.name for r in args.downstream]
        if upstream:
            data = [readers[r.name].data if r.name in readers else pulumi.Output.from_input(None) for r in upstream]
            kubeconfig: pulumi.Output[str] = pulumi.Output.secret(
                pulumi.Output.all(*data).apply(
                    lambda values: upstream_kubeconfig(list(zip(upstream, values, strict=True)))
                )
            )
            secret = self.declare(
                "upstreams",
                k8s.secret(
                    UPSTREAMS_SECRET,
                    WAVES_NAMESPACE,
                    {"config": kubeconfig},
                    obj_labels=k8s.labels(UPSTREAMS_SECRET, "rollout-waves"),
                ),
                [namespace, *(readers[r.name].secret for r in upstream if r.name in readers)],
            )
            self.declare_each(gate_objects(region, upstream, args.image, strategy=args.strategy), [namespace, secret])
            self.outputs.update({"gate_url": GATE_URL, "waits_for": [r.name for r in upstream]})
        self.finish(**self.outputs)
