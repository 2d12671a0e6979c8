"""Stack configuration: raw Pulumi config in, frozen typed objects out, every problem reported at once.

Defaults live in one place, ``Pulumi.yaml``; object-valued keys are deep-merged over them so a stack
only states what it changes. ``parse_config`` is pure (a mapping of key -> value); ``load_from_pulumi``
reads ``pulumi.Config`` and calls it. Errors read ``<key>: <what is wrong, and what is allowed>``.
"""

from __future__ import annotations

import copy
import functools
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from model.gate import CONFIG_KEYS as GATE_CONFIG_KEYS
from model.gate import GateSettings, GateSettingsError
from rollout.settings import AnalysisSettings

PROJECT = "fraud-platform"
PROJECT_ROOT = Path(__file__).resolve().parent.parent
STRATEGIES = ("canary", "blue-green")
DELIVERIES = ("pulumi", "argocd")
ENVIRONMENTS = ("dev", "staging", "prod")
# Platform components that are Helm charts; mlflow is built from plain objects (see infra/mlflow.py).
CHART_COMPONENTS = (
    "istio",
    "argocd",
    "argoWorkflows",
    "argoRollouts",
    "flagger",
    "flaggerLoadtester",
    "monitoring",
    "harbor",
)
COMPONENTS = (*CHART_COMPONENTS, "mlflow")
ARTIFACT_STORES = ("minio", "bucket")
# pipeline.propose: how the training pipeline proposes a new model version to the stack config.
PROPOSE_MODES = ("pull-request", "commit")
REGION_KEYS = ("name", "context", "kubeconfig", "dataBucket", "registryHost", "wave", "apiServer")
# serving.simulateError: the value of SIMULATE_ERROR on the rolled-out version ("false" = no fault).
SIMULATED_FAULTS = ("false", "true", "degrade")
MODEL_TARGETS = ("candidate", "stable")

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
_EXACT_VERSION = re.compile(r"^v?\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")
_QUANTITY = re.compile(r"^\d+(\.\d+)?(m|k|Ki|M|Mi|G|Gi|T|Ti)?$")
_GIT_HTTPS_URL = re.compile(r"^https://[^/\s]+/(?P<owner>[A-Za-z0-9_.-]+)/(?P<name>[A-Za-z0-9_.-]+?)(\.git)?/?$")
_MODEL_URI = re.compile(r"^(models:/[A-Za-z0-9_.-]+(@[A-Za-z0-9_-]+|/\d+)|runs:/\S+|s3://\S+|/\S+)$")


class ConfigError(ValueError):
    """Invalid stack configuration; ``problems`` lists every ``<key>: <message>``."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("invalid stack configuration:\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class Region:
    name: str
    context: str
    kubeconfig: str | None = None
    data_bucket: str | None = None
    registry_host: str | None = None
    # Rollout wave (0 first): a region starts its canary only after every region of the previous wave
    # promoted. Default: its position in ``regions``. ``api_server``: the URL other regions' wave gates
    # read this region's rollout status from (required when a later wave waits on this region).
    wave: int = 0
    api_server: str | None = None


@dataclass(frozen=True)
class Component:
    name: str
    enabled: bool
    version: str
    repository: str | None


@dataclass(frozen=True)
class MlflowSettings:
    artifact_store: str
    bucket: str
    endpoint: str
    region: str
    postgres_image: str
    minio_image: str
    storage_size: str


@dataclass(frozen=True)
class RegistrySettings:
    host: str
    project: str


@dataclass(frozen=True)
class ServingSettings:
    replicas: int
    min_replicas: int
    max_replicas: int
    target_cpu_utilization: int
    cpu_request: str
    cpu_limit: str
    memory_request: str
    memory_limit: str
    max_batch_size: int
    max_batch_time: float
    image_tag: str
    simulate_error: str = "false"


@dataclass(frozen=True)
class ModelSettings:
    name: str
    stable_version: str
    stable_uri: str
    candidate_version: str
    candidate_uri: str
    target: str = "candidate"
    # model.metricsFile resolved, and its validated content (JSON text); empty when not set.
    metrics_file: str = ""
    metrics_json: str = ""

    @property
    def target_version(self) -> str:
        return self.candidate_version if self.target == "candidate" else self.stable_version

    @property
    def target_uri(self) -> str:
        return self.candidate_uri if self.target == "candidate" else self.stable_uri


@dataclass(frozen=True)
class GitSettings:
    """The repository this program lives in: Argo CD syncs it, the training pipeline proposes to it."""

    url: str = "https://github.com/example-org/fraud-platform.git"
    revision: str = "main"
    api_url: str = "https://api.github.com"

    @property
    def github_repository(self) -> str | None:
        """``owner/name`` when ``url`` is a GitHub-style https URL, else None."""
        match = _GIT_HTTPS_URL.match(self.url)
        return f"{match['owner']}/{match['name']}" if match else None


@dataclass(frozen=True)
class PipelineSettings:
    """The training pipeline (Argo WorkflowTemplate ``fraud-model-training``), see infra/pipeline.py."""

    enabled: bool = True
    propose: str = "pull-request"
    workspace_size: str = "4Gi"
    buildkit_image: str = "moby/buildkit:v0.18.2-rootless"
    data_key: str = "creditcard.csv"
    train_cpu_limit: str = "2"
    train_memory_limit: str = "6Gi"


@dataclass(frozen=True)
class StackConfig:
    stack: str
    strategy: str
    delivery: str
    environment: str
    regions: tuple[Region, ...]
    components: Mapping[str, Component]
    mlflow: MlflowSettings
    registry: RegistrySettings
    serving: ServingSettings
    model: ModelSettings
    analysis: AnalysisSettings
    gate: GateSettings
    alerts_enabled: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)
    git: GitSettings = field(default_factory=GitSettings)
    pipeline: PipelineSettings = field(default_factory=PipelineSettings)
    # Whether the secret gitToken is set (its value is only ever read as a Pulumi secret).
    git_token_set: bool = False

    def waves(self) -> list[tuple[Region, ...]]:
        """Regions grouped by rollout wave, first wave first."""
        order = sorted({r.wave for r in self.regions})
        return [tuple(r for r in self.regions if r.wave == w) for w in order]

    def upstream_regions(self, region: Region) -> tuple[Region, ...]:
        """The regions of the wave just before ``region``'s: they must promote before it starts."""
        earlier = [w for w in self.waves() if w[0].wave < region.wave]
        return earlier[-1] if earlier else ()

    def enabled(self, component: str) -> bool:
        return self.components[component].enabled


# ---------------------------------------------------------------------------------------------------
# Defaults and raw loading


def project_schema(root: Path = PROJECT_ROOT) -> dict[str, dict[str, Any]]:
    """The ``config:`` section of Pulumi.yaml with the project prefix removed (a copy: callers may edit it)."""
    return copy.deepcopy(_read_schema(root / "Pulumi.yaml", (root / "Pulumi.yaml").stat().st_mtime_ns))


@functools.cache
def _read_schema(path: Path, mtime_ns: int) -> dict[str, dict[str, Any]]:
    # Read once per file version: every config load and render asks for it several times.
    doc = yaml.safe_load(path.read_text())
    return {key.split(":", 1)[-1]: spec for key, spec in (doc.get("config") or {}).items()}


def project_defaults(root: Path = PROJECT_ROOT) -> dict[str, Any]:
    return {key: copy.deepcopy(spec["default"]) for key, spec in project_schema(root).items() if "default" in spec}


def deep_merge(base: Any, override: Any) -> Any:
    """Objects merge key by key; anything else (lists included) is replaced."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = deep_merge(base.get(key), value) if key in base else value
        return merged
    return copy.deepcopy(override)


def stack_file_values(path: Path) -> tuple[dict[str, Any], set[str]]:
    """Project keys from a ``Pulumi.<stack>.yaml`` (prefix removed) and which of them are secure."""
    doc = yaml.safe_load(path.read_text()) or {}
    values: dict[str, Any] = {}
    secure: set[str] = set()
    for key, value in (doc.get("config") or {}).items():
        namespace, _, name = key.partition(":")
        if namespace != PROJECT:
            continue
        if isinstance(value, dict) and set(value) == {"secure"}:
            secure.add(name)
        values[name] = value
    return values, secure


def parse_set_overrides(pairs: list[str]) -> dict[str, Any]:
    """``--set serving.replicas=3`` style overrides; values are YAML scalars/lists/objects."""
    result: dict[str, Any] = {}
    problems = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            problems.append(f"--set {pair!r}: expected KEY=VALUE, e.g. strategy=blue-green or serving.replicas=3")
            continue
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            problems.append(f"--set {key}: value is not valid YAML ({exc.problem})")
            continue
        node = result
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                problems.append(f"--set {key}: {part} is already set to a scalar")
                break
        else:
            node[parts[-1]] = value
    if problems:
        raise ConfigError(problems)
    return result


# ---------------------------------------------------------------------------------------------------
# Parsing


class _Problems:
    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, key: str, message: str) -> None:
        self.items.append(f"{key}: {message}")


def _number(p: _Problems, key: str, value: Any, *, lo: float, hi: float, integer: bool = False) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                p.add(key, f"must be a number in [{lo:g}, {hi:g}], got {value!r}")
                return None
        else:
            p.add(key, f"must be a number in [{lo:g}, {hi:g}], got {value!r}")
            return None
    if math.isnan(value) or not lo <= value <= hi:
        p.add(key, f"must be in [{lo:g}, {hi:g}], got {value!r}")
        return None
    if integer:
        if float(value) != int(value):
            p.add(key, f"must be a whole number, got {value!r}")
            return None
        return int(value)
    return float(value)


def _bool(p: _Problems, key: str, value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    p.add(key, f"must be true or false, got {value!r}")
    return None


def _choice(p: _Problems, key: str, value: Any, allowed: tuple[str, ...]) -> str | None:
    if value not in allowed:
        p.add(key, f"must be one of {', '.join(allowed)}; got {value!r}")
        return None
    return str(value)


def _string(p: _Problems, key: str, value: Any, *, pattern: re.Pattern[str] | None = None, hint: str = "") -> Any:
    if not isinstance(value, str) or not value:
        p.add(key, f"must be a non-empty string{hint}, got {value!r}")
        return None
    if pattern is not None and not pattern.match(value):
        p.add(key, f"{value!r} is not valid{hint}")
        return None
    return value


def _object(p: _Problems, key: str, value: Any, known: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        p.add(key, f"must be an object with keys {', '.join(known)}, got {type(value).__name__}")
        return {}
    for extra in sorted(set(value) - set(known)):
        p.add(f"{key}.{extra}", f"unknown key; allowed keys are {', '.join(known)}")
    return value


def _fields(p: _Problems, key: str, raw: Any, spec: dict[str, Callable[[str, Any], Any]]) -> dict[str, Any] | None:
    obj = _object(p, key, raw, tuple(spec))
    out: dict[str, Any] = {}
    for name, parse in spec.items():
        if name not in obj:
            p.add(f"{key}.{name}", "is required")
            continue
        out[name] = parse(f"{key}.{name}", obj[name])
    return out if all(v is not None for v in out.values()) and len(out) == len(spec) else None


def _parse_regions(p: _Problems, raw: Any) -> tuple[Region, ...]:
    if not isinstance(raw, list) or not raw:
        p.add("regions", "must be a non-empty list of {name, context}; each region needs its own cluster")
        return ()
    regions: list[Region] = []
    names: dict[str, int] = {}
    contexts: dict[str, int] = {}
    for i, item in enumerate(raw):
        key = f"regions[{i}]"
        obj = _object(p, key, item, REGION_KEYS)
        if not obj:
            continue
        name = _string(p, f"{key}.name", obj.get("name"), pattern=_DNS_LABEL, hint=" (a DNS label: a-z, 0-9, '-')")
        context = obj.get("context")
        if not isinstance(context, str) or not context:
            p.add(f"{key}.context", "is required: the kubeconfig context of this region's cluster")
            context = None
        kubeconfig = obj.get("kubeconfig")
        if kubeconfig is not None and not isinstance(kubeconfig, str):
            p.add(f"{key}.kubeconfig", "must be a path to a kubeconfig file")
        bucket = obj.get("dataBucket")
        if bucket is not None and not (
            isinstance(bucket, str) and re.match(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", bucket)
        ):
            p.add(f"{key}.dataBucket", f"must be an S3 bucket name, got {bucket!r}")
        registry_host = obj.get("registryHost")
        if registry_host is not None and not (
            isinstance(registry_host, str) and re.match(r"^[a-z0-9.-]+(:\d+)?$", registry_host)
        ):
            p.add(f"{key}.registryHost", f"must be a host name (this region's Harbor), got {registry_host!r}")
        wave = _number(p, f"{key}.wave", obj.get("wave", i), lo=0, hi=100, integer=True)
        api_server = obj.get("apiServer")
        if api_server is not None and not (isinstance(api_server, str) and re.match(r"^https://\S+$", api_server)):
            p.add(f"{key}.apiServer", f"must be the https:// URL of this region's Kubernetes API, got {api_server!r}")
            api_server = None
        if name in names:
            p.add(f"{key}.name", f"duplicate region name {name!r} (also regions[{names[name]}].name)")
        elif name:
            names[name] = i
        if context in contexts:
            p.add(
                f"{key}.context",
                f"{context!r} is already regions[{contexts[context]}]'s cluster; each region needs its own",
            )
        elif context:
            contexts[context] = i
        if name and context:
            regions.append(
                Region(
                    name=name,
                    context=context,
                    kubeconfig=kubeconfig,
                    data_bucket=bucket,
                    registry_host=registry_host,
                    wave=wave if wave is not None else i,
                    api_server=api_server,
                )
            )
    return tuple(regions)


def _parse_components(p: _Problems, raw: Any) -> dict[str, Component]:
    obj = _object(p, "platform", raw, COMPONENTS)
    components: dict[str, Component] = {}
    for name in COMPONENTS:
        key = f"platform.{name}"
        if name not in obj:
            p.add(key, "is required")
            continue
        allowed = ("enabled", "version", "repository") if name in CHART_COMPONENTS else ("enabled", "version")
        item = _object(p, key, obj[name], allowed)
        enabled = _bool(p, f"{key}.enabled", item.get("enabled", True))
        version = item.get("version")
        if not isinstance(version, str) or not _EXACT_VERSION.match(version):
            p.add(f"{key}.version", f"must be an exact version like 1.2.3 (no ranges, no 'latest'), got {version!r}")
            version = None
        # No repository: install the vendored archive charts/<chart>-<version>.tgz (infra/chart_archives.py).
        repository = item.get("repository") or None
        if repository is not None and not (
            isinstance(repository, str) and re.match(r"^(https://|oci://)\S+$", repository)
        ):
            p.add(f"{key}.repository", f"must be an https:// or oci:// chart repository, got {repository!r}")
            repository = None
        elif repository is None and name in CHART_COMPONENTS and version is not None:
            _check_vendored(p, key, name, version)
        if enabled is not None and version is not None:
            components[name] = Component(name, enabled, version, repository)
    loadtester, flagger = components.get("flaggerLoadtester"), components.get("flagger")
    if loadtester and flagger and loadtester.enabled and not flagger.enabled:
        p.add("platform.flaggerLoadtester.enabled", "needs platform.flagger.enabled: true")
    return components


def _check_vendored(p: _Problems, key: str, component: str, version: str) -> None:
    from infra.chart_archives import vendored_versions
    from infra.charts import chart_releases

    for spec in chart_releases(component):
        vendored = vendored_versions(spec.chart)
        if version not in vendored:
            p.add(
                f"{key}.version",
                f"{version} of chart {spec.chart} is not vendored under charts/ (vendored: "
                f"{', '.join(vendored) or 'none'}); package it (charts/README.md) or set {key}.repository",
            )


def parse_config(raw: Mapping[str, Any], *, stack: str, schema_root: Path = PROJECT_ROOT) -> StackConfig:
    """Validate raw config (defaults already merged) into a StackConfig, or raise ConfigError."""
    p = _Problems()
    schema = project_schema(schema_root)
    for key in sorted(set(raw) - set(schema)):
        p.add(key, f"unknown key; known keys are {', '.join(sorted(schema))}")

    strategy = _choice(p, "strategy", raw.get("strategy"), STRATEGIES)
    delivery = _choice(p, "delivery", raw.get("delivery"), DELIVERIES)
    environment = _choice(p, "environment", raw.get("environment"), ENVIRONMENTS)
    regions = _parse_regions(p, raw.get("regions"))
    components = _parse_components(p, raw.get("platform", {}))

    def quantity(key: str, v: Any) -> Any:
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            v = str(v)
        return _string(p, key, v, pattern=_QUANTITY, hint=" (a Kubernetes quantity such as 250m, 1, 512Mi)")

    def integer(lo: float, hi: float) -> Callable[[str, Any], Any]:
        return lambda k, v: _number(p, k, v, lo=lo, hi=hi, integer=True)

    def real(lo: float, hi: float) -> Callable[[str, Any], Any]:
        return lambda k, v: _number(p, k, v, lo=lo, hi=hi)

    def text(k: str, v: Any) -> Any:
        return _string(p, k, v)

    def flag(k: str, v: Any) -> Any:
        return _bool(p, k, v)

    mlflow = _fields(
        p,
        "mlflow",
        raw.get("mlflow"),
        {
            "artifactStore": lambda k, v: _choice(p, k, v, ARTIFACT_STORES),
            "bucket": text,
            "endpoint": lambda k, v: v if isinstance(v, str) else _string(p, k, v),
            "region": text,
            "postgresImage": lambda k, v: _pinned_image(p, k, v),
            "minioImage": lambda k, v: _pinned_image(p, k, v),
            "storageSize": quantity,
        },
    )
    if mlflow and mlflow["artifactStore"] == "bucket" and not mlflow["endpoint"]:
        p.add("mlflow.endpoint", "is required when mlflow.artifactStore is bucket (the S3 endpoint URL)")
    registry = _fields(
        p,
        "registry",
        raw.get("registry"),
        {
            "host": lambda k, v: _string(p, k, v, pattern=re.compile(r"^[a-z0-9.-]+(:\d+)?$"), hint=" (a host name)"),
            "project": lambda k, v: _string(p, k, v, pattern=_DNS_LABEL, hint=" (a Harbor project name)"),
        },
    )
    serving = _fields(
        p,
        "serving",
        raw.get("serving"),
        {
            "replicas": integer(1, 100),
            "minReplicas": integer(1, 100),
            "maxReplicas": integer(1, 500),
            "targetCpuUtilization": integer(10, 95),
            "cpuRequest": quantity,
            "cpuLimit": quantity,
            "memoryRequest": quantity,
            "memoryLimit": quantity,
            "maxBatchSize": integer(1, 1024),
            "maxBatchTime": real(0.0, 1.0),
            "imageTag": lambda k, v: _string(
                p,
                k,
                str(v) if isinstance(v, (int, float)) else v,
                pattern=re.compile(r"^(?!latest$)[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$"),
                hint=" (a pinned tag, not 'latest')",
            ),
            "simulateError": lambda k, v: _choice(
                p, k, str(v).lower() if isinstance(v, (bool, str)) else v, SIMULATED_FAULTS
            ),
        },
    )
    if serving:
        if serving["minReplicas"] > serving["maxReplicas"]:
            p.add("serving.minReplicas", f"must not exceed serving.maxReplicas ({serving['maxReplicas']})")
        if not serving["minReplicas"] <= serving["replicas"] <= serving["maxReplicas"]:
            p.add("serving.replicas", "must be between serving.minReplicas and serving.maxReplicas")
        if serving["maxBatchSize"] > 1 and serving["maxBatchTime"] <= 0:
            p.add(
                "serving.maxBatchTime",
                "must be > 0 when serving.maxBatchSize > 1 (MLServer ignores batching otherwise)",
            )

    version_label = re.compile(r"^[a-z0-9][a-z0-9.-]{0,62}$")
    model = _fields(
        p,
        "model",
        raw.get("model"),
        {
            "name": lambda k, v: _string(p, k, v, pattern=re.compile(r"^[A-Za-z0-9_.-]+$")),
            "stableVersion": lambda k, v: _string(p, k, v, pattern=version_label, hint=" (a label like v1)"),
            "stableUri": lambda k, v: _string(
                p,
                k,
                v,
                pattern=_MODEL_URI,
                hint=" (models:/name@alias, models:/name/N, runs:/, s3:// or an absolute path)",
            ),
            "candidateVersion": lambda k, v: _string(p, k, v, pattern=version_label, hint=" (a label like v2)"),
            "candidateUri": lambda k, v: _string(
                p,
                k,
                v,
                pattern=_MODEL_URI,
                hint=" (models:/name@alias, models:/name/N, runs:/, s3:// or an absolute path)",
            ),
            "target": lambda k, v: _choice(p, k, v, MODEL_TARGETS),
            "metricsFile": lambda k, v: v if isinstance(v, str) else _string(p, k, v),
        },
    )
    if model and model["stableVersion"] == model["candidateVersion"]:
        p.add("model.candidateVersion", f"must differ from model.stableVersion ({model['stableVersion']!r})")
    metrics_file, metrics_json = "", ""
    if model and model["metricsFile"]:
        metrics_file, metrics_json = _model_metrics(p, "model.metricsFile", model["metricsFile"], model)

    # The analysis section is declared once, in rollout/settings.py (keys, types, ranges, messages).
    analysis, analysis_problems = AnalysisSettings.from_section("analysis", raw.get("analysis"))
    p.items.extend(analysis_problems)
    # The gate's keys, ranges and messages are the model's own (model/gate.py), not repeated here.
    gate: GateSettings | None = None
    gate_keys = tuple(key for key, _, _ in GATE_CONFIG_KEYS.values())
    raw_gate = _object(p, "gate", raw.get("gate"), gate_keys)
    try:
        gate = GateSettings.from_config({k: v for k, v in raw_gate.items() if k in gate_keys})
    except GateSettingsError as error:
        p.items.extend(error.problems)
    # What each strategy's objects need in the cluster (their CRDs and controllers, and Prometheus for analysis).
    needs = {"canary": ("flagger", "istio", "monitoring"), "blue-green": ("argoRollouts", "monitoring")}
    for name in needs.get(strategy or "", ()):
        if name in components and not components[name].enabled:
            p.add(f"platform.{name}.enabled", f"must be true for strategy {strategy} (it runs the rollout)")
    webhook = raw.get("alertWebhookUrl", "")
    if not isinstance(webhook, (str, dict)):
        p.add("alertWebhookUrl", "must be a URL string set with `pulumi config set --secret`")

    git, pipeline_settings = _parse_delivery(p, raw, regions, components, mlflow)
    if p.items:
        raise ConfigError(p.items)
    assert strategy and delivery and environment and mlflow and registry and serving and model and analysis and gate
    return StackConfig(
        stack=stack,
        strategy=strategy,
        delivery=delivery,
        environment=environment,
        regions=regions,
        components=components,
        mlflow=MlflowSettings(
            artifact_store=mlflow["artifactStore"],
            bucket=mlflow["bucket"],
            endpoint=mlflow["endpoint"],
            region=mlflow["region"],
            postgres_image=mlflow["postgresImage"],
            minio_image=mlflow["minioImage"],
            storage_size=mlflow["storageSize"],
        ),
        registry=RegistrySettings(host=registry["host"], project=registry["project"]),
        serving=ServingSettings(
            replicas=serving["replicas"],
            min_replicas=serving["minReplicas"],
            max_replicas=serving["maxReplicas"],
            target_cpu_utilization=serving["targetCpuUtilization"],
            cpu_request=serving["cpuRequest"],
            cpu_limit=serving["cpuLimit"],
            memory_request=serving["memoryRequest"],
            memory_limit=serving["memoryLimit"],
            max_batch_size=serving["maxBatchSize"],
            max_batch_time=serving["maxBatchTime"],
            image_tag=serving["imageTag"],
            simulate_error=serving["simulateError"],
        ),
        model=ModelSettings(
            name=model["name"],
            stable_version=model["stableVersion"],
            stable_uri=model["stableUri"],
            candidate_version=model["candidateVersion"],
            candidate_uri=model["candidateUri"],
            target=model["target"],
            metrics_file=metrics_file,
            metrics_json=metrics_json,
        ),
        analysis=analysis,
        gate=gate,
        alerts_enabled=bool(webhook),
        git=git,
        pipeline=pipeline_settings,
        git_token_set=bool(raw.get("gitToken")),
    )


def _model_metrics(p: _Problems, key: str, value: str, model: Mapping[str, Any]) -> tuple[str, str]:
    """The candidate's evaluation metrics (``metrics-<version>.json`` from the offline gate), checked."""
    from model.paths import fraud_home

    path = Path(value).expanduser()
    if not path.is_absolute():
        path = fraud_home() / path
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        p.add(key, f'{path} does not exist; run the evaluation first or set the key to "" to publish no metrics')
        return "", ""
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        p.add(key, f"{path} is not a readable JSON file ({exc})")
        return "", ""
    if not isinstance(payload, dict):
        p.add(key, f"{path} must hold a JSON object of evaluation metrics, got {type(payload).__name__}")
        return "", ""
    candidate = model.get("candidateVersion")
    if payload.get("model_version") != candidate:
        p.add(
            key,
            f"{path} has model_version {payload.get('model_version')!r} but model.candidateVersion is "
            f"{candidate!r}; point it at metrics-{candidate}.json",
        )
        return "", ""
    for name in ("precision", "recall"):
        figure = payload.get(name)
        if isinstance(figure, bool) or not isinstance(figure, (int, float)) or not 0.0 <= figure <= 1.0:
            p.add(key, f"{path}: {name} must be a number in [0, 1], got {figure!r}")
            return "", ""
    return str(path), json.dumps(payload, sort_keys=True)


def _parse_delivery(
    p: _Problems,
    raw: Mapping[str, Any],
    regions: tuple[Region, ...],
    components: Mapping[str, Component],
    mlflow: Mapping[str, Any] | None,
) -> tuple[GitSettings, PipelineSettings]:
    """git, gitToken, pipeline, the delivery's needs and the regions' rollout waves (infra/pipeline.py,
    infra/gitops.py, infra/waves.py)."""
    git_raw = _object(p, "git", raw.get("git", {}), ("url", "revision", "apiUrl"))
    git = GitSettings()
    url = git_raw.get("url", git.url)
    revision = git_raw.get("revision", git.revision)
    api_url = git_raw.get("apiUrl", git.api_url)
    if not isinstance(url, str) or not re.match(r"^(https://|ssh://|git@)\S+$", url):
        p.add("git.url", f"must be the repository's https:// (or ssh://, git@) clone URL, got {url!r}")
    if not isinstance(revision, str) or not re.match(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,199}$", revision):
        p.add("git.revision", f"must be a branch, tag or commit (e.g. main), got {revision!r}")
    if not isinstance(api_url, str) or not re.match(r"^https?://\S+$", api_url):
        p.add("git.apiUrl", f"must be the http(s) URL of the GitHub REST API, got {api_url!r}")
    git = GitSettings(url=str(url), revision=str(revision), api_url=str(api_url).rstrip("/"))
    token = raw.get("gitToken", "")
    if not isinstance(token, (str, dict)):
        p.add("gitToken", "must be a token string set with `pulumi config set --secret gitToken`")

    defaults = PipelineSettings()
    known = ("enabled", "propose", "workspaceSize", "buildkitImage", "dataKey", "trainCpuLimit", "trainMemoryLimit")
    pipe = _object(p, "pipeline", raw.get("pipeline", {}), known)
    enabled = _bool(p, "pipeline.enabled", pipe.get("enabled", defaults.enabled))
    propose = _choice(p, "pipeline.propose", pipe.get("propose", defaults.propose), PROPOSE_MODES)
    quantities = {}
    for name, default in (
        ("workspaceSize", defaults.workspace_size),
        ("trainCpuLimit", defaults.train_cpu_limit),
        ("trainMemoryLimit", defaults.train_memory_limit),
    ):
        value = pipe.get(name, default)
        value = str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value
        quantities[name] = _string(
            p, f"pipeline.{name}", value, pattern=_QUANTITY, hint=" (a Kubernetes quantity such as 2, 4Gi)"
        )
    buildkit = _pinned_image(p, "pipeline.buildkitImage", pipe.get("buildkitImage", defaults.buildkit_image))
    data_key = pipe.get("dataKey", defaults.data_key)
    if not isinstance(data_key, str) or not re.match(r"^[A-Za-z0-9!_.*'()/-]{1,1024}$", data_key):
        p.add("pipeline.dataKey", f"must be the S3 object key of the training CSV, got {data_key!r}")
    if propose == "pull-request" and git.github_repository is None:
        p.add("pipeline.propose", f"pull-request needs git.url to be a https://<host>/<owner>/<name> URL, got {url!r}")
    pipeline_settings = PipelineSettings(
        enabled=bool(enabled),
        propose=propose or defaults.propose,
        workspace_size=quantities["workspaceSize"] or defaults.workspace_size,
        buildkit_image=buildkit or defaults.buildkit_image,
        data_key=str(data_key),
        train_cpu_limit=quantities["trainCpuLimit"] or defaults.train_cpu_limit,
        train_memory_limit=quantities["trainMemoryLimit"] or defaults.train_memory_limit,
    )

    if raw.get("delivery") == "argocd" and "argocd" in components and not components["argocd"].enabled:
        p.add("delivery", "argocd needs platform.argocd.enabled: true (Argo CD syncs the rendered manifests)")
    if len(regions) > 1 and mlflow and mlflow.get("artifactStore") == "bucket":
        # One configured bucket would hold every region's artifacts: data residency says each region keeps
        # its own, which the in-cluster MinIO of each region does.
        p.add(
            "mlflow.artifactStore",
            "bucket is one bucket for all regions; a multi-region stack keeps each region's MLflow artifacts "
            "in that region, so use minio (one store per region's cluster)",
        )
    buckets: dict[str, str] = {}
    for i, region in enumerate(regions):
        if region.data_bucket and region.data_bucket in buckets:
            p.add(
                f"regions[{i}].dataBucket",
                f"{region.data_bucket!r} is already region {buckets[region.data_bucket]}'s; training data stays "
                "in its region, so each region needs its own bucket",
            )
        elif region.data_bucket:
            buckets[region.data_bucket] = region.name
    for i in range(1, len(regions)):
        if regions[i].wave < regions[i - 1].wave:
            p.add(
                f"regions[{i}].wave",
                f"{regions[i].wave} comes after wave {regions[i - 1].wave} of {regions[i - 1].name}; list regions "
                "in wave order (first wave first)",
            )
    waves = sorted({r.wave for r in regions})
    for region in regions:
        index = waves.index(region.wave)
        if index == 0:
            continue
        for upstream in (r for r in regions if r.wave == waves[index - 1]):
            if upstream.api_server is None:
                j = regions.index(upstream)
                p.add(
                    f"regions[{j}].apiServer",
                    f"is required: region {region.name} (wave {region.wave}) waits for {upstream.name} "
                    f"(wave {upstream.wave}) to promote and reads its rollout status there",
                )
    return git, pipeline_settings


def _pinned_image(p: _Problems, key: str, value: Any) -> str | None:
    if not isinstance(value, str) or (":" not in value.rsplit("/", 1)[-1] and "@sha256:" not in value):
        p.add(key, f"must be an image with a pinned tag or digest, got {value!r}")
        return None
    if value.endswith(":latest"):
        p.add(key, f"must not use the 'latest' tag, got {value!r}")
        return None
    return value


# ---------------------------------------------------------------------------------------------------
# Entry points


def resolve_raw(
    stack: str, *, overrides: Mapping[str, Any] | None = None, root: Path = PROJECT_ROOT
) -> tuple[dict[str, Any], set[str]]:
    """Pulumi.yaml defaults, then Pulumi.<stack>.yaml, then overrides (each deep-merged)."""
    path = root / f"Pulumi.{stack}.yaml"
    if not path.exists():
        stacks = sorted(f.name[len("Pulumi.") : -len(".yaml")] for f in root.glob("Pulumi.*.yaml"))
        raise ConfigError([f"stack: no file {path.name}; known stacks are {', '.join(stacks)}"])
    values, secure = stack_file_values(path)
    raw = deep_merge(project_defaults(root), values)
    if overrides:
        raw = deep_merge(raw, dict(overrides))
    return raw, secure


def load_stack(stack: str, *, overrides: Mapping[str, Any] | None = None, root: Path = PROJECT_ROOT) -> StackConfig:
    raw, _ = resolve_raw(stack, overrides=overrides, root=root)
    return parse_config(raw, stack=stack, schema_root=root)


def load_from_pulumi() -> StackConfig:
    """Read every declared key from ``pulumi.Config`` and validate; called by __main__.py only."""
    import pulumi

    cfg = pulumi.Config(PROJECT)
    raw = project_defaults()
    for key, spec in project_schema().items():
        if spec.get("secret"):
            # Never read secret values here; only whether one is set (the program uses get_secret).
            raw[key] = "set" if pulumi.runtime.config.get_config(f"{PROJECT}:{key}") else ""
            continue
        value = cfg.get(key)
        if value is None:
            continue
        is_structured = spec.get("type") in ("array", None) or isinstance(spec.get("default"), (dict, list))
        if is_structured:
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                raw[key] = value  # reported by parse_config as the wrong type
                continue
        raw[key] = deep_merge(raw.get(key), value) if isinstance(raw.get(key), dict) else value
    return parse_config(raw, stack=pulumi.get_stack())
