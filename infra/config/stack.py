"""The stack config: every key (``StackSettings``), validated key by key, then the cross-field rules.

``parse_config`` validates each top-level key on its own, so one bad key never hides another key's problems
nor the cross-field rules that do not depend on it (infra/config/rules.py); every problem is reported at
once as ``<key>: <what is wrong, what is allowed>``. The result, ``StackConfig``, is frozen.
"""

from __future__ import annotations

import functools
import json
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, TypeAdapter, ValidationError

from fraudctl.settings import StrictSettings, bounded, in_parentheses, key_text, near_miss, problems, shown
from infra.config import rules
from infra.config.sections import (
    ChartComponent,
    GitSettings,
    MlflowSettings,
    ModelSettings,
    PipelineSettings,
    PlatformSettings,
    Region,
    RegistrySettings,
    ServerComponent,
    ServingSettings,
)
from infra.config.values import SecretRef, secret
from model.gate import GateSettings
from rollout.settings import AnalysisSettings

PROJECT = "fraud-platform"
PROJECT_ROOT = Path(__file__).resolve().parent.parent.parent
STRATEGIES = ("canary", "blue-green")
DELIVERIES = ("pulumi", "argocd")
ENVIRONMENTS = ("dev", "staging", "prod")
# The environment that is production: fault injection there needs serving.allowFaultInjectionInProduction.
PRODUCTION = "prod"
# model.metricsFile is read whole: a metrics JSON is a few hundred bytes; anything this big is not one.
MAX_METRICS_FILE_BYTES = 1024 * 1024


class ConfigError(ValueError):
    """Invalid stack configuration; ``problems`` lists every ``<key>: <message>`` (bounded in number and size)."""

    def __init__(self, problems: list[str]):
        self.found = list(problems)  # all of them, for combining with more
        self.problems = bounded(problems)
        super().__init__("invalid stack configuration:\n  " + "\n  ".join(self.problems))


def _position_waves(regions: Any) -> Any:
    """A region's wave defaults to its position in the list."""
    if not isinstance(regions, list | tuple):
        return regions
    return [
        {"wave": index, **region} if isinstance(region, Mapping) and "wave" not in region else region
        for index, region in enumerate(regions)
    ]


Regions = Annotated[tuple[Region, ...], BeforeValidator(_position_waves), Field(min_length=1)]


class StackSettings(StrictSettings):
    """Every key of a stack, as ``fraud-platform:<key>`` in ``Pulumi.<stack>.yaml``. Descriptions are the
    ones Pulumi.yaml shows (generated from here, infra/config/schema.py)."""

    strategy: Literal["canary", "blue-green"] = Field(
        "canary",
        description="Rollout strategy for the fraud model: canary (Flagger + Istio) or blue-green (Argo Rollouts).",
    )
    delivery: Literal["pulumi", "argocd"] = Field(
        "pulumi",
        description="How the fraud service reaches the cluster: pulumi (applied by this program) or argocd "
        "(rendered to gitops/ and synced by Argo CD).",
    )
    environment: Literal["dev", "staging", "prod"] = Field(
        "dev",
        description="Environment label (dev, staging, prod) stamped on every object; prod is production "
        "(fault injection refused unless serving.allowFaultInjectionInProduction).",
    )
    regions: Regions = Field(
        description="Regions, each {name, context, kubeconfig?, dataBucket?, registryHost?, wave?, apiServer?}: "
        "name is a DNS label, context the kubeconfig context of that region's own cluster, dataBucket the S3 "
        "bucket (in that region) holding its training data, registryHost its Harbor (default registry.host), "
        "wave its rollout wave (default: its position; a region's canary starts only after the previous wave "
        "promoted), apiServer the https URL of its Kubernetes API that later waves' gates read its rollout "
        "status from (required when a later wave waits on it). At least one.",
    )
    platform: PlatformSettings = Field(
        default_factory=PlatformSettings,
        description="Platform components: per component {enabled, version, repository?}. Versions are exact chart "
        "versions (no ranges). Without repository a chart component installs the vendored archive "
        "charts/<chart>-<version>.tgz (charts/README.md: provenance, bumping); with repository (https:// or "
        "oci://) it installs that chart version from there. mlflow's version is the MLflow server release "
        "(not a chart, no repository).",
    )
    mlflow: MlflowSettings = Field(
        default_factory=MlflowSettings,
        description="MLflow tracking: PostgreSQL backend; artifactStore minio (in-cluster, default) or bucket (an "
        "existing S3 bucket: bucket, endpoint, region).",
    )
    registry: RegistrySettings = Field(
        default_factory=RegistrySettings,
        description="Harbor, where the project images are pushed and pulled, under one name <host>:<port> "
        "everywhere (docs/CLUSTER.md): host, port (with exposure nodePort also the node port, 30000-32767), "
        "project, exposure (nodePort or loadBalancer), clusterIP (static ClusterIP of Service harbor-registry, "
        "inside the service CIDR; pods and nodes map the host to it; \"\" to leave it to the cluster and DNS), "
        "caCertFile (PEM of the CA that signs Harbor's certificate, e.g. .cluster/ca.crt from `fraudctl cluster "
        "ca`; its key is the secret registryCaKey; \"\" keeps a CA in the program's state).",
    )
    registry_ca_key: Annotated[SecretRef | None, secret("registryCaKey")] = Field(
        None,
        description="Private key (PEM) of the CA in registry.caCertFile, which signs Harbor's certificate; a "
        "secret: `pulumi config set --secret registryCaKey < .cluster/ca.key`. Set exactly when "
        "registry.caCertFile is.",
    )
    serving: ServingSettings = Field(
        default_factory=ServingSettings,
        description="Fraud model serving (MLServer): enabled (false declares the platform and the pipeline without "
        "the fraud service, for a fresh cluster's first `pulumi up` before any model is registered), replicas, "
        "autoscaling bounds, resources (requests may not "
        "exceed limits), adaptive batching; simulateError (the string false, true or degrade) injects a fault "
        "into the rolled-out version for the rollback drill (docs/ROLLOUT.md), refused in environment prod "
        "unless allowFaultInjectionInProduction is true.",
    )
    model: ModelSettings = Field(
        default_factory=ModelSettings,
        description="The model being rolled out: registered name, the version now serving (stable) and the one "
        "to roll out (candidate), as registry versions with labels; candidateImage: the serving image the training "
        "pipeline built for the candidate, by digest (\"\": the one this program builds). target: which of the two "
        "the workload declares (stable to seed a fresh cluster, candidate to roll out). metricsFile: the candidate's "
        "evaluation metrics JSON (relative paths are under $FRAUD_HOME), published as ConfigMap "
        "model-metrics-<version>; empty publishes none.",
    )
    analysis: AnalysisSettings = Field(
        default_factory=AnalysisSettings,
        description="Rollout analysis shared by Flagger, Argo Rollouts and the local rehearsal (docs/ROLLOUT.md). "
        "interval: seconds per step and the request-metric window. The ML decision compares the candidate with "
        "the stable on the same labelled replay, sequentially: falseRollbackRate (P roll back a candidate as good "
        "as the stable), missRate (P promote one worse by minDetectableDrop in recall or precision), minRecall / "
        "minPrecision (floors; precision at replayFraudShare), minLabelledFrauds (evidence before any decision), "
        "horizon (intervals after which every check is forced to pass or fail), replayRate (labelled pairs per "
        "second). `fraudctl analysis plan` shows what they decide. feedbackWindow: seconds of labelled feedback "
        "the monitoring queries and alerts look back over.",
    )
    gate: GateSettings = Field(
        default_factory=GateSettings,
        description="Offline promotion gate of the candidate against the stable model on the holdout.",
    )
    alert_webhook_url: Annotated[SecretRef | None, secret("alertWebhookUrl")] = Field(
        None,
        description="Webhook URL for rollout alerts (Flagger AlertProvider); a secret: set with "
        "`pulumi config set --secret alertWebhookUrl <url>`. Unset disables alerts.",
    )
    git: GitSettings = Field(
        default_factory=GitSettings,
        description="The repository this program lives in: url (clone URL, without credentials; "
        "https://<host>/<owner>/<name> for pull requests), revision (the branch Argo CD syncs and proposals "
        "target), apiUrl (GitHub REST API). Used by Argo CD (delivery argocd) and the training pipeline's "
        "proposal step.",
    )
    git_token: Annotated[SecretRef | None, secret("gitToken")] = Field(
        None,
        description="Token that may push branches and open pull requests on git.url (and lets Argo CD read "
        "it); a secret: set with `pulumi config set --secret gitToken <token>`. Unset: the Secret "
        "fraud-pipeline-git is left to an operator (docs/PIPELINE.md).",
    )
    pipeline: PipelineSettings = Field(
        default_factory=PipelineSettings,
        description="Training pipeline (Argo WorkflowTemplate fraud-model-training, docs/PIPELINE.md): enabled, "
        "propose (pull-request or commit), workspaceSize, buildkitImage (pinned, rootless), dataKey (object key "
        "of the training CSV in the region's dataBucket), trainCpuLimit, trainMemoryLimit.",
    )

    @property
    def components(self) -> dict[str, ChartComponent | ServerComponent]:
        return self.platform.by_key()

    def enabled(self, component: str) -> bool:
        return self.components[component].enabled

    @property
    def alerts_enabled(self) -> bool:
        return self.alert_webhook_url is not None

    @property
    def git_token_set(self) -> bool:
        """Whether the secret gitToken is set (its value is only ever read as a Pulumi secret)."""
        return self.git_token is not None

    @property
    def production(self) -> bool:
        return self.environment == PRODUCTION

    def waves(self) -> list[tuple[Region, ...]]:
        """Regions grouped by rollout wave, first wave first."""
        order = sorted({r.wave for r in self.regions})
        return [tuple(r for r in self.regions if r.wave == w) for w in order]

    def upstream_regions(self, region: Region) -> tuple[Region, ...]:
        """The regions of the wave just before ``region``'s: they must promote before it starts."""
        earlier = [w for w in self.waves() if w[0].wave < region.wave]
        return earlier[-1] if earlier else ()


@dataclass(frozen=True)
class RegistryCa:
    """registry.caCertFile, read and checked: the CA certificate (PEM) that signs Harbor's certificate."""

    path: str
    pem: str
    subject: str


@dataclass(frozen=True)
class CandidateMetrics:
    """model.metricsFile, read and checked: published as ConfigMap ``model-metrics-<version>``."""

    version: str
    path: str
    json: str


class StackConfig(StackSettings):
    """A validated stack: its keys, its name, and what validation read (the candidate's metrics)."""

    stack: str
    candidate_metrics: CandidateMetrics | None = None
    registry_ca: RegistryCa | None = None


def stack_keys() -> list[str]:
    return StackSettings.keys()


def secret_keys() -> list[str]:
    """The keys that only ever hold Pulumi secrets."""
    return [
        info.alias or name
        for name, info in StackSettings.model_fields.items()
        if SecretRef in getattr(info.annotation, "__args__", ())
    ]


@functools.cache
def _adapter(name: str) -> TypeAdapter[Any]:
    field = StackSettings.model_fields[name]
    annotation: Any = field.annotation  # every field of StackSettings is annotated
    return TypeAdapter(Annotated[annotation, *field.metadata] if field.metadata else annotation)


def parse_config(raw: Mapping[str, Any], *, stack: str, root: Path = PROJECT_ROOT) -> StackConfig:
    """Validate raw config (defaults merged, keys without the project prefix) into a StackConfig, or raise
    ConfigError with every problem. ``root``: the project checkout relative file keys are read from."""
    found: list[str] = []
    known = stack_keys()
    for key in raw:
        if key not in known:
            hint = in_parentheses(near_miss(str(key), known))
            found.append(f"{key_text(key)}: unknown key{hint}; known keys are {', '.join(known)}")
    values: dict[str, Any] = {}
    for name, field in StackSettings.model_fields.items():
        key = field.alias or name
        if key not in raw:
            if field.is_required():
                found.append(f"{key}: is required")
                continue
            value = field.get_default(call_default_factory=True)
        else:
            value = raw[key]
        try:
            values[name] = _adapter(name).validate_python(value)
        except ValidationError as error:
            found.extend(problems(error, "", StackSettings, at=(key,)))
    found.extend(rules.problems(values))
    metrics = None
    if "model" in values and values["model"].metrics_file:
        metrics, metric_problems = read_candidate_metrics("model.metricsFile", values["model"])
        found.extend(metric_problems)
    registry_ca = None
    if "registry" in values and values["registry"].ca_cert_file:
        registry_ca, ca_problems = read_registry_ca("registry.caCertFile", values["registry"].ca_cert_file, root)
        found.extend(ca_problems)
    if found:
        raise ConfigError(found)
    return StackConfig.model_construct(stack=stack, candidate_metrics=metrics, registry_ca=registry_ca, **values)


# A CA certificate is about a kilobyte; anything this big is not one.
MAX_CA_FILE_BYTES = 64 * 1024


def read_registry_ca(key: str, file: str, root: Path = PROJECT_ROOT) -> tuple[RegistryCa | None, list[str]]:
    """The registry CA certificate: a PEM file (relative paths under the project checkout ``root``) holding
    one CA certificate that is valid now."""
    import datetime

    from cryptography import x509

    path = Path(file).expanduser()
    if not path.is_absolute():
        path = root / path
    hint = "`fraudctl cluster ca` writes one (docs/CLUSTER.md)"
    try:
        data = read_bounded(path, MAX_CA_FILE_BYTES)
    except FileNotFoundError:
        return None, [f'{key}: {path} does not exist; {hint}, or set the key to "" to keep a CA in the state']
    except ValueError as exc:
        return None, [f"{key}: {path} {exc}"]
    except OSError as exc:
        return None, [f"{key}: {path} cannot be read ({exc.strerror})"]
    try:
        certificate = x509.load_pem_x509_certificate(data)
    except ValueError:
        return None, [f"{key}: {path} is not a PEM certificate (-----BEGIN CERTIFICATE-----); {hint}"]
    try:
        is_ca = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        return None, [f"{key}: {path} is not a CA certificate (no basicConstraints CA:TRUE); {hint}"]
    now = datetime.datetime.now(datetime.UTC)
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        window = f"{certificate.not_valid_before_utc:%Y-%m-%d} to {certificate.not_valid_after_utc:%Y-%m-%d}"
        return None, [f"{key}: {path} is valid from {window}, not now; make a new CA ({hint})"]
    subject = certificate.subject.rfc4514_string()
    return RegistryCa(str(path), data.decode("ascii"), subject), []


def read_candidate_metrics(key: str, model: ModelSettings) -> tuple[CandidateMetrics | None, list[str]]:
    """The candidate's evaluation metrics (``metrics-<version>.json`` from the offline gate), checked."""
    from model.paths import fraud_home

    path = Path(model.metrics_file).expanduser()
    if not path.is_absolute():
        path = fraud_home() / path
    try:
        payload = json.loads(read_bounded(path, MAX_METRICS_FILE_BYTES).decode("utf-8"))
    except FileNotFoundError:
        return None, [f'{key}: {path} does not exist; run the evaluation first or set the key to "" to publish none']
    except UnicodeDecodeError:
        return None, [f"{key}: {path} is not UTF-8 text; it must be the metrics JSON the evaluation wrote"]
    except json.JSONDecodeError as exc:
        return None, [f"{key}: {path} is not valid JSON ({exc.msg} at line {exc.lineno})"]
    except ValueError as exc:  # not a regular file, or too big
        return None, [f"{key}: {path} {exc}"]
    except OSError as exc:
        return None, [f"{key}: {path} cannot be read ({exc.strerror})"]
    if not isinstance(payload, dict):
        return None, [f"{key}: {path} must hold a JSON object of evaluation metrics, got {type(payload).__name__}"]
    candidate = model.candidate_version
    if payload.get("model_version") != candidate:
        return None, [
            f"{key}: {path} has model_version {shown(payload.get('model_version'))} but model.candidateVersion is "
            f"{candidate!r}; point it at metrics-{candidate}.json"
        ]
    for name in ("precision", "recall"):
        figure = payload.get(name)
        if isinstance(figure, bool) or not isinstance(figure, int | float) or not 0.0 <= figure <= 1.0:
            return None, [f"{key}: {path}: {name} must be a number in [0, 1], got {shown(figure)}"]
    return CandidateMetrics(candidate, str(path), json.dumps(payload, sort_keys=True)), []


def read_bounded(path: Path, limit: int) -> bytes:
    """A regular file's bytes, at most ``limit`` of them (ValueError otherwise): never a device, FIFO or a
    file that would be read until memory runs out."""
    # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat then refuses it like any non-regular file.
    descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise ValueError("is not a regular file (a device, FIFO or directory is never read as one)")
        if info.st_size > limit:
            raise ValueError(f"is {info.st_size} bytes; at most {limit} are read")
        chunks: list[bytes] = []
        while (size := sum(map(len, chunks))) <= limit and (chunk := os.read(descriptor, limit + 1 - size)):
            chunks.append(chunk)
        data = b"".join(chunks)
    finally:
        os.close(descriptor)
    if len(data) > limit:
        raise ValueError(f"is more than {limit} bytes; at most {limit} are read")
    return data


__all__ = [
    "DELIVERIES",
    "ENVIRONMENTS",
    "PRODUCTION",
    "PROJECT",
    "PROJECT_ROOT",
    "STRATEGIES",
    "CandidateMetrics",
    "ConfigError",
    "RegistryCa",
    "SecretRef",
    "StackConfig",
    "StackSettings",
    "parse_config",
    "read_bounded",
    "secret_keys",
    "stack_keys",
]
