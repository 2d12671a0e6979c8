"""Every rule that relates two or more keys of the stack config, in one place.

A rule names the top-level keys it reads; it runs when those keys are valid on their own, so a broken key
elsewhere does not hide it (infra/config/stack.py). A rule yields ``(key, message)`` pairs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import SimpleNamespace
from typing import Any

from infra.config.sections import CHART_COMPONENTS
from infra.config.values import quantity_value

Problems = Iterator[tuple[str, str]]
Rule = Callable[[Any], Problems]
_RULES: list[tuple[tuple[str, ...], Rule]] = []
# What each strategy's objects need in the cluster (their CRDs and controllers, and Prometheus for analysis).
STRATEGY_NEEDS = {"canary": ("flagger", "istio", "monitoring"), "blue-green": ("argoRollouts", "monitoring")}


def rule(*needs: str) -> Callable[[Rule], Rule]:
    """Register a rule over the (attribute names of the) top-level keys ``needs``."""

    def register(check: Rule) -> Rule:
        _RULES.append((needs, check))
        return check

    return register


def problems(values: Mapping[str, Any]) -> list[str]:
    """Every rule whose keys are all in ``values`` (validated top-level values by attribute name), checked."""
    config = SimpleNamespace(**values)
    return [
        f"{key}: {message}"
        for needs, check in _RULES
        if all(name in values for name in needs)
        for key, message in check(config)
    ]


# ---------------------------------------------------------------------------------------------------
# Platform and delivery


@rule("platform")
def _loadtester_needs_flagger(c: Any) -> Problems:
    if c.platform.flagger_loadtester.enabled and not c.platform.flagger.enabled:
        yield "platform.flaggerLoadtester.enabled", "needs platform.flagger.enabled: true"


@rule("platform")
def _charts_are_vendored_or_fetched(c: Any) -> Problems:
    """No repository: the release installs charts/<chart>-<version>.tgz, which must exist (infra/chart_archives.py)."""
    from infra.chart_archives import vendored_versions
    from infra.charts import chart_releases

    for name, component in c.platform.by_key().items():
        if name not in CHART_COMPONENTS or component.repository is not None:
            continue
        for spec in chart_releases(name):
            vendored = vendored_versions(spec.chart)
            if component.version not in vendored:
                yield (
                    f"platform.{name}.version",
                    f"{component.version} of chart {spec.chart} is not vendored under charts/ (vendored: "
                    f"{', '.join(vendored) or 'none'}); package it (charts/README.md) or set "
                    f"platform.{name}.repository",
                )


@rule("strategy", "platform")
def _strategy_needs_its_controllers(c: Any) -> Problems:
    components = c.platform.by_key()
    for name in STRATEGY_NEEDS[c.strategy]:
        if not components[name].enabled:
            yield f"platform.{name}.enabled", f"must be true for strategy {c.strategy} (it runs the rollout)"


@rule("delivery", "platform")
def _argocd_delivery_needs_argocd(c: Any) -> Problems:
    if c.delivery == "argocd" and not c.platform.argocd.enabled:
        yield "delivery", "argocd needs platform.argocd.enabled: true (Argo CD syncs the rendered manifests)"


@rule("mlflow")
def _bucket_needs_endpoint(c: Any) -> Problems:
    if c.mlflow.artifact_store == "bucket" and not c.mlflow.endpoint:
        yield "mlflow.endpoint", "is required when mlflow.artifactStore is bucket (the S3 endpoint URL)"


@rule("mlflow", "regions")
def _artifacts_stay_in_their_region(c: Any) -> Problems:
    if len(c.regions) > 1 and c.mlflow.artifact_store == "bucket":
        # One configured bucket would hold every region's artifacts: data residency says each region keeps
        # its own, which the in-cluster MinIO of each region does.
        yield (
            "mlflow.artifactStore",
            "bucket is one bucket for all regions; a multi-region stack keeps each region's MLflow artifacts in "
            "that region, so use minio (one store per region's cluster)",
        )


# ---------------------------------------------------------------------------------------------------
# Regions and rollout waves


@rule("regions")
def _regions_are_distinct(c: Any) -> Problems:
    names: dict[str, int] = {}
    contexts: dict[str, int] = {}
    buckets: dict[str, str] = {}
    for i, region in enumerate(c.regions):
        if region.name in names:
            yield (
                f"regions[{i}].name",
                f"duplicate region name {region.name!r} (also regions[{names[region.name]}].name)",
            )
        names.setdefault(region.name, i)
        if region.context in contexts:
            yield (
                f"regions[{i}].context",
                f"{region.context!r} is already regions[{contexts[region.context]}]'s cluster; each region needs "
                "its own",
            )
        contexts.setdefault(region.context, i)
        if region.data_bucket and region.data_bucket in buckets:
            yield (
                f"regions[{i}].dataBucket",
                f"{region.data_bucket!r} is already region {buckets[region.data_bucket]}'s; training data stays "
                "in its region, so each region needs its own bucket",
            )
        elif region.data_bucket:
            buckets[region.data_bucket] = region.name


@rule("regions")
def _waves_are_ordered_and_reachable(c: Any) -> Problems:
    regions = c.regions
    for i in range(1, len(regions)):
        if regions[i].wave < regions[i - 1].wave:
            yield (
                f"regions[{i}].wave",
                f"{regions[i].wave} comes after wave {regions[i - 1].wave} of {regions[i - 1].name}; list regions "
                "in wave order (first wave first)",
            )
    waves = sorted({r.wave for r in regions})
    for region in regions:
        index = waves.index(region.wave)
        if index == 0:
            continue
        for j, upstream in enumerate(regions):
            if upstream.wave == waves[index - 1] and upstream.api_server is None:
                yield (
                    f"regions[{j}].apiServer",
                    f"is required: region {region.name} (wave {region.wave}) waits for {upstream.name} "
                    f"(wave {upstream.wave}) to promote and reads its rollout status there",
                )


# ---------------------------------------------------------------------------------------------------
# Registry (infra/registry.py, docs/CLUSTER.md)


@rule("registry")
def _registry_name_and_port(c: Any) -> Problems:
    from infra.config.sections import NODE_PORTS

    r = c.registry
    if ":" in r.host:
        yield "registry.host", f"{r.host!r} carries a port; give the host only and the port as registry.port"
    low, high = NODE_PORTS
    if r.exposure == "nodePort" and not low <= r.port <= high:
        yield (
            "registry.port",
            f"{r.port} is not a node port ({low}-{high}); with exposure nodePort the registry's port is its node "
            "port too. Use e.g. 30003, or exposure loadBalancer",
        )


@rule("regions")
def _region_registry_hosts_have_no_port(c: Any) -> Problems:
    for i, region in enumerate(c.regions):
        if region.registry_host and ":" in region.registry_host:
            yield (
                f"regions[{i}].registryHost",
                f"{region.registry_host!r} carries a port; give the host only (the port is registry.port)",
            )


@rule("registry", "registry_ca_key")
def _registry_ca_comes_with_its_key(c: Any) -> Problems:
    if c.registry.ca_cert_file and c.registry_ca_key is None:
        yield (
            "registryCaKey",
            "is required with registry.caCertFile (the CA's private key signs Harbor's certificate): "
            "`pulumi config set --secret registryCaKey < .cluster/ca.key`",
        )
    elif c.registry_ca_key is not None and not c.registry.ca_cert_file:
        yield "registry.caCertFile", "is required with registryCaKey: the PEM file of that key's CA certificate"


# ---------------------------------------------------------------------------------------------------
# Serving


@rule("serving")
def _replicas_within_bounds(c: Any) -> Problems:
    s = c.serving
    if s.min_replicas > s.max_replicas:
        yield "serving.minReplicas", f"must not exceed serving.maxReplicas ({s.max_replicas})"
    elif not s.min_replicas <= s.replicas <= s.max_replicas:
        yield "serving.replicas", f"must be between serving.minReplicas and serving.maxReplicas ({s.min_replicas}-" \
            f"{s.max_replicas}), got {s.replicas}"  # fmt: skip


def _request_within_limit(section: str, request_key: str, request: str, limit_key: str, limit: str) -> Problems:
    if quantity_value(request) > quantity_value(limit):
        yield (
            f"{section}.{request_key}",
            f"{request!r} is more than {section}.{limit_key} ({limit!r}); a request may not exceed its limit "
            "(Kubernetes refuses the pod)",
        )


@rule("serving")
def _serving_requests_within_limits(c: Any) -> Problems:
    s = c.serving
    yield from _request_within_limit("serving", "cpuRequest", s.cpu_request, "cpuLimit", s.cpu_limit)
    yield from _request_within_limit("serving", "memoryRequest", s.memory_request, "memoryLimit", s.memory_limit)


@rule("serving")
def _batching_takes_effect(c: Any) -> Problems:
    # MLServer's rule, stated once by the serving settings (serving/settings.py).
    from serving.settings import batching_problem

    problem = batching_problem(c.serving.max_batch_size, c.serving.max_batch_time, size_key="serving.maxBatchSize")
    if problem:
        yield "serving.maxBatchTime", problem


@rule("serving", "environment")
def _no_fault_injection_in_production(c: Any) -> Problems:
    from infra.config.stack import PRODUCTION

    s = c.serving
    if c.environment == PRODUCTION and s.simulate_error != "false" and not s.allow_fault_injection_in_production:
        yield (
            "serving.simulateError",
            f"is {s.simulate_error!r} in environment {PRODUCTION}: fault injection would break the service for real "
            'users. Use "false", or set serving.allowFaultInjectionInProduction: true for a deliberate drill',
        )


# ---------------------------------------------------------------------------------------------------
# Model, pipeline


@rule("model")
def _candidate_is_new(c: Any) -> Problems:
    if c.model.stable_version == c.model.candidate_version:
        yield "model.candidateVersion", f"must differ from model.stableVersion ({c.model.stable_version!r})"


@rule("pipeline", "git")
def _pull_requests_need_a_github_url(c: Any) -> Problems:
    if c.pipeline.propose == "pull-request" and c.git.github_repository is None:
        yield (
            "pipeline.propose",
            f"pull-request needs git.url to be a https://<host>/<owner>/<name> URL, got {c.git.url!r}",
        )


@rule("pipeline")
def _training_limits_cover_requests(c: Any) -> Problems:
    p = c.pipeline
    for key, limit, request in (
        ("trainCpuLimit", p.train_cpu_limit, p.TRAIN_CPU_REQUEST),
        ("trainMemoryLimit", p.train_memory_limit, p.TRAIN_MEMORY_REQUEST),
    ):
        if quantity_value(limit) < quantity_value(request):
            yield (
                f"pipeline.{key}",
                f"{limit!r} is less than what the training steps request ({request}); the limit must be at least that",
            )
