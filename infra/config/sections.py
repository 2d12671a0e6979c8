"""The sections of the stack config: each key declared once (type, constraint, default, camelCase key).

``analysis`` is declared in rollout/settings.py and ``gate`` in model/gate.py (their owners' code reads them
too); infra/config/stack.py composes all of them. Defaults here are the project's defaults: Pulumi.yaml's
``config:`` block is generated from these models (infra/config/schema.py), never edited by hand.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, StrictBool

from fraudctl.settings import StrictSettings
from infra.config.values import (
    BucketName,
    CpuQuantity,
    DnsLabel,
    ExactVersion,
    GitRevision,
    GitUrl,
    HostName,
    ImageByDigest,
    ImageTag,
    IpAddress,
    MemoryQuantity,
    ModelName,
    ModelUri,
    ObjectKey,
    PinnedImage,
    SimulatedFault,
    StorageQuantity,
    Text,
    VersionLabel,
    url,
    url_check,
)

ChartRepository = Annotated[str, url("https", "oci", what="a chart repository: https:// or oci://")]
ApiServer = Annotated[str, url("https", what="this region's Kubernetes API, https://host[:port]")]


class Region(StrictSettings):
    """One region: its own cluster (``context``), data bucket, Harbor and rollout wave."""

    name: DnsLabel
    context: Text = Field(description="the kubeconfig context of this region's own cluster")
    kubeconfig: Text | None = None
    data_bucket: BucketName | None = None
    registry_host: HostName | None = None
    # Rollout wave (0 first): a region starts its canary only after every region of the previous wave
    # promoted. Default: its position in ``regions`` (infra/config/stack.py fills it in).
    wave: int = Field(0, ge=0, le=100)
    # The URL other regions' wave gates read this region's rollout status from (required when a later wave
    # waits on this region).
    api_server: ApiServer | None = None


class Component(StrictSettings):
    """A platform component: on or off, at an exact version."""

    enabled: StrictBool = True
    version: ExactVersion


class ChartComponent(Component):
    """A platform component installed from a Helm chart: the vendored archive charts/<chart>-<version>.tgz by
    default (infra/chart_archives.py), or ``repository`` when set (a remote chart repository)."""

    repository: ChartRepository | None = None


class ServerComponent(Component):
    """A platform component built from plain objects (no chart, so no repository)."""

    @property
    def repository(self) -> None:
        return None


def _chart(version: str) -> Any:
    return Field(default_factory=lambda: ChartComponent(version=version))


class PlatformSettings(StrictSettings):
    """Platform components per region; versions are exact chart versions (no ranges)."""

    istio: ChartComponent = _chart("1.24.2")
    argocd: ChartComponent = _chart("7.7.11")
    argo_workflows: ChartComponent = _chart("0.45.4")
    argo_rollouts: ChartComponent = _chart("2.38.2")
    flagger: ChartComponent = _chart("1.40.0")
    flagger_loadtester: ChartComponent = _chart("0.34.0")
    monitoring: ChartComponent = _chart("66.3.1")
    harbor: ChartComponent = _chart("1.16.2")
    # MLflow is not a chart: version is the MLflow server release, run from the project image.
    mlflow: ServerComponent = Field(default_factory=lambda: ServerComponent(version="3.17.2"))

    def by_key(self) -> dict[str, ChartComponent | ServerComponent]:
        """Each component under its stack key (``argoWorkflows``...)."""
        return {field.alias or name: getattr(self, name) for name, field in type(self).model_fields.items()}


def _component_keys(kind: type[Component]) -> tuple[str, ...]:
    return tuple(
        field.alias or name for name, field in PlatformSettings.model_fields.items() if field.annotation is kind
    )


# Platform components that are Helm charts; mlflow is built from plain objects (see infra/mlflow.py).
CHART_COMPONENTS = _component_keys(ChartComponent)
COMPONENTS = (*CHART_COMPONENTS, *_component_keys(ServerComponent))


_s3_endpoint = url_check("https", "http", what="the S3 endpoint URL")


def _empty_or_endpoint(value: str) -> str:
    return value if value == "" else _s3_endpoint(value)


class MlflowSettings(StrictSettings):
    """MLflow tracking: PostgreSQL backend, artifacts in the in-cluster MinIO or an existing bucket."""

    artifact_store: Literal["minio", "bucket"] = "minio"
    bucket: BucketName = "mlflow-artifacts"
    # The S3 endpoint of an existing bucket (artifactStore bucket); "" with minio.
    endpoint: Annotated[str, AfterValidator(_empty_or_endpoint)] = ""
    region: Text = "us-east-1"
    postgres_image: PinnedImage = "postgres:16.6-bookworm"
    minio_image: PinnedImage = "quay.io/minio/minio:RELEASE.2024-12-18T13-15-44Z"
    storage_size: StorageQuantity = "10Gi"


# NodePorts the API server hands out (kube-apiserver --service-node-port-range default).
NODE_PORTS = (30000, 32767)


class RegistrySettings(StrictSettings):
    """The Harbor registry the project images are pushed to and pulled from, under one name everywhere:
    ``<host>:<port>`` (docs/CLUSTER.md, "The image path"; infra/registry.py)."""

    host: HostName = "harbor.fraud.local"
    # The port in the registry's name: the port of Service harbor-registry and, with exposure nodePort, its
    # node port too (kind maps it to the host).
    port: int = Field(30003, ge=1, le=65535)
    project: Annotated[DnsLabel, Field(description="a Harbor project name")] = "fraud"
    # nodePort (kind, any cluster whose nodes the pushing host reaches) or loadBalancer (a cloud's load
    # balancer, its DNS record pointing the host at it).
    exposure: Literal["nodePort", "loadBalancer"] = "nodePort"
    # The static ClusterIP of harbor-registry, inside the cluster's service CIDR: pods (hostAliases) and nodes
    # (/etc/hosts) reach the registry's name there. The default is in the static band of kind's 10.96.0.0/16
    # (KEP-3070: the lowest 256 addresses are left to static assignment). "": allocated by the cluster, and the
    # host must resolve through DNS.
    cluster_ip: IpAddress = Field("10.96.0.30", alias="clusterIP")
    # PEM file (relative to the project) of the CA that signs Harbor's certificate, e.g. the .cluster/ca.crt
    # that `fraudctl cluster ca` writes; its private key is the secret registryCaKey. "": the program keeps a CA
    # of its own in its state (output registryCa; trust it before pushing).
    ca_cert_file: str = ""

    def address(self, region_host: str | None = None) -> str:
        """``host:port`` as images name the registry (``host`` alone on 443, as docker and containerd key it)."""
        host = region_host or self.host
        return host if self.port == 443 else f"{host}:{self.port}"


class ServingSettings(StrictSettings):
    """The fraud model's MLServer deployment."""

    replicas: int = Field(2, ge=1, le=100)
    min_replicas: int = Field(2, ge=1, le=100)
    max_replicas: int = Field(6, ge=1, le=500)
    target_cpu_utilization: int = Field(70, ge=10, le=95)
    cpu_request: CpuQuantity = "250m"
    cpu_limit: CpuQuantity = "1"
    memory_request: MemoryQuantity = "512Mi"
    memory_limit: MemoryQuantity = "1Gi"
    # Adaptive batching off by default. Measured on 2 cores with the real model and compiled scoring
    # (fraudctl bench serving, README "Benchmarks"): a row scores in 0.06 ms, so waiting to batch only adds
    # latency: 32 rows / 1 ms gave single-row p99 5.6 ms, 835 req/s at 4 clients and p99 199 ms at 16;
    # off gave 1.0 ms, 1,382 req/s and 12 ms. Turn it on for a model whose per-call cost dominates.
    max_batch_size: int = Field(1, ge=1, le=1024)
    max_batch_time: float = Field(0.0, ge=0.0, le=1.0)
    image_tag: ImageTag = "0.1.0"
    # SIMULATE_ERROR of the rolled-out version, for the rollback drill ("false": no fault; docs/ROLLOUT.md).
    simulate_error: SimulatedFault = "false"
    # Fault injection in environment prod is refused unless this says it is meant (infra/config/rules.py).
    allow_fault_injection_in_production: StrictBool = False
    # false: the platform and the training pipeline without the fraud service, for a fresh cluster's first
    # `pulumi up` (the model server needs a registered model to start; docs/CLUSTER.md).
    enabled: StrictBool = True


class ModelSettings(StrictSettings):
    """The model being rolled out: the version now serving (stable) and the one to roll out (candidate)."""

    TARGETS: ClassVar[tuple[str, ...]] = ("candidate", "stable")

    name: ModelName = "fraud-detector"
    stable_version: VersionLabel = "v1"
    stable_uri: ModelUri = "models:/fraud-detector@champion"
    candidate_version: VersionLabel = "v2"
    candidate_uri: ModelUri = "models:/fraud-detector@challenger"
    # The serving image the training pipeline built for the candidate, by digest (propose-version sets it with
    # the version); the workload runs it while the candidate is the target. "": the image this program builds.
    candidate_image: ImageByDigest = ""
    # Which of the two the workload declares: stable to seed a fresh cluster, candidate to roll out.
    target: Literal["candidate", "stable"] = "candidate"
    # The candidate's evaluation metrics JSON (relative: under $FRAUD_HOME); "" publishes none.
    metrics_file: str = ""

    @property
    def target_version(self) -> str:
        return self.candidate_version if self.target == "candidate" else self.stable_version

    @property
    def target_uri(self) -> str:
        return self.candidate_uri if self.target == "candidate" else self.stable_uri


_GIT_HTTPS_URL = re.compile(r"https://[^/\s]+/(?P<owner>[A-Za-z0-9_.-]+)/(?P<name>[A-Za-z0-9_.-]+?)(\.git)?/?")


def _no_trailing_slash(value: str) -> str:
    return value.rstrip("/")


GitHubApi = Annotated[str, url("https", "http", what="the GitHub REST API"), AfterValidator(_no_trailing_slash)]


class GitSettings(StrictSettings):
    """The repository this program lives in: Argo CD syncs it, the training pipeline proposes to it."""

    url: GitUrl = "https://github.com/example-org/fraud-platform.git"
    revision: GitRevision = "main"
    api_url: GitHubApi = "https://api.github.com"

    @property
    def github_repository(self) -> str | None:
        """``owner/name`` when ``url`` is a GitHub-style https URL, else None."""
        match = _GIT_HTTPS_URL.fullmatch(self.url)
        return f"{match['owner']}/{match['name']}" if match else None


class PipelineSettings(StrictSettings):
    """The training pipeline (Argo WorkflowTemplate ``fraud-model-training``), see infra/pipeline.py."""

    # What the training steps request (infra/pipeline.py); the limits below may not be smaller.
    TRAIN_CPU_REQUEST: ClassVar[str] = "500m"
    TRAIN_MEMORY_REQUEST: ClassVar[str] = "2Gi"

    enabled: StrictBool = True
    propose: Literal["pull-request", "commit"] = "pull-request"
    workspace_size: StorageQuantity = "4Gi"
    buildkit_image: PinnedImage = "moby/buildkit:v0.18.2-rootless"
    data_key: ObjectKey = "creditcard.csv"
    train_cpu_limit: CpuQuantity = "2"
    train_memory_limit: MemoryQuantity = "6Gi"
