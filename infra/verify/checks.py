"""``fraudctl verify``: render a stack and check each region's platform as one system.

The objects are ours (the program, GitOps-delivered ones included) and everything every Helm release
creates as Helm renders it from the vendored chart with our values (infra/helm.py). Each check returns
how many things it looked at and every failure; a region passes when every check does. The checks run in
the order they are registered here; the ``references`` check lives in references.py, the table in result.py.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from infra.verify import hardening, metrics, queries, references
from infra.verify.k8s_schema import SchemaRegistry
from infra.verify.platform import Platform, PlatformObject, cluster_baseline
from infra.verify.result import CheckResult, counts, format_table

if TYPE_CHECKING:
    from infra.render import RenderResult

__all__ = ["CHECKS", "CheckResult", "check", "counts", "format_table", "platform_of", "run_checks"]
# Registries that publish test builds, never releases.
TESTING_REGISTRIES = ("gcr.io/istio-testing", "localhost/", "localhost:")
DASHBOARD_LABEL = "grafana_dashboard"

Check = Callable[[Platform], CheckResult]
CHECKS: dict[str, tuple[str, Check]] = {}


def check(name: str, title: str) -> Callable[[Callable[[Platform, CheckResult], None]], Check]:
    def register(body: Callable[[Platform, CheckResult], None]) -> Check:
        def run(platform: Platform) -> CheckResult:
            result = CheckResult(name, title)
            body(platform, result)
            return result

        CHECKS[name] = (title, run)
        return run

    return register


# ---------------------------------------------------------------------------------------------------
# Building the platform of a region


def platform_of(result: RenderResult, region: str) -> Platform:
    """Region ``region`` of a RenderResult (infra/render.py) as a Platform."""
    objects = list(cluster_baseline())
    objects += [PlatformObject(obj, origin, source) for obj, origin, source in result.delivered_objects(region)]
    releases = result.helm_renders(region)
    for release in releases:
        objects += [PlatformObject(o.obj, f"helm:{release.name}", o.source) for o in release.objects()]
    crds = [o.obj for o in objects if o.kind == "CustomResourceDefinition"]
    registry = SchemaRegistry(crds, crd_source=f"the releases of region {region}")
    return Platform(region, objects, registry, releases)


def run_checks(platform: Platform, only: list[str] | None = None) -> list[CheckResult]:
    return [run(platform) for name, (_title, run) in CHECKS.items() if only is None or name in only]


# ---------------------------------------------------------------------------------------------------
# Renders, CRDs, identities, schemas, namespaces


@check("renders", "every Helm release renders from its vendored chart")
def _renders(platform: Platform, result: CheckResult) -> None:
    for release in platform.releases:
        result.checked += 1
        if release.error:
            result.fail(f"release {release.name}: {release.error}")


@check("crds-once", "every CRD is installed exactly once across all releases")
def _crds_once(platform: Platform, result: CheckResult) -> None:
    sources: dict[str, list[str]] = defaultdict(list)
    for item in platform.of_kind("CustomResourceDefinition"):
        sources[item.name].append(f"{item.origin} {item.source}")
    for name, where in sorted(sources.items()):
        result.checked += 1
        if len(where) > 1:
            result.fail(f"{name} is installed {len(where)} times: {'; '.join(where)}")


@check("unique", "no two objects (ours or any release's) claim the same identity")
def _unique(platform: Platform, result: CheckResult) -> None:
    seen: dict[tuple[str, str, str, str], list[PlatformObject]] = defaultdict(list)
    for item in platform.objects:
        if item.kind != "CustomResourceDefinition":  # crds-once reports those
            seen[(item.group, item.kind, item.namespace, item.name)].append(item)
    for items in seen.values():
        result.checked += 1
        if len(items) > 1:
            result.fail(f"{items[0].ref.rsplit(' (', 1)[0]} is created by {', '.join(i.origin for i in items)}")


@check("schemas", "every object validates: built-ins for Kubernetes 1.31, custom resources at their pinned CRD")
def _schemas(platform: Platform, result: CheckResult) -> None:
    for item in platform.objects:
        result.checked += 1
        for error in platform.registry.validate_object(item.obj):
            result.fail(f"{error} [{item.origin}]")


@check("namespaces", "every namespace an object or release lives in is created by someone")
def _namespaces(platform: Platform, result: CheckResult) -> None:
    existing = platform.namespaces()
    for item in platform.objects:
        if item.namespace:
            result.checked += 1
            if item.namespace not in existing:
                result.fail(f"{item.ref}: namespace {item.namespace} is created by nobody")
    for release in platform.releases:
        result.checked += 1
        if release.namespace not in existing:
            result.fail(f"release {release.name}: namespace {release.namespace} is created by nobody")


# ---------------------------------------------------------------------------------------------------
# References


check("references", references.TITLE)(references.check_references)


# ---------------------------------------------------------------------------------------------------
# Metrics


def _queries(platform: Platform, result: CheckResult) -> Iterator[queries.Query]:
    for query in queries.our_queries(platform, DASHBOARD_LABEL):
        if isinstance(query, tuple):
            _owner, where, problem = query
            result.checked += 1
            result.fail(f"{where}: {problem}")
        else:
            yield query


@check("metrics", "every metric and label our queries use is exported and scraped in the platform")
def _metrics(platform: Platform, result: CheckResult) -> None:
    catalog = metrics.catalog()
    targets = metrics.scrape_targets(platform)
    for query in _queries(platform, result):
        result.checked += 1
        try:
            parsed = queries.parse_query(query.text)
        except ValueError as error:
            result.fail(f"{query.where}: does not parse: {error}")
            continue
        label_sets: dict[str, list[dict[str, str | None]]] = {}
        for selector in parsed.selectors:
            series = _series_of(catalog, targets, selector.metric)
            if isinstance(series, str):
                result.fail(f"{query.where}: {series}")
                continue
            label_sets[selector.metric] = series
            for label, op, value in selector.matchers:
                problem = _matcher_problem(selector.metric, series, label, op, value)
                if problem:
                    result.fail(f"{query.where}: {problem}")
        for labels, names in parsed.groupings:
            known = {label for name in names for s in label_sets.get(name, []) for label in s}
            for label in labels:
                if known and label not in known:
                    result.fail(
                        f"{query.where}: groups by {label!r}, which none of {', '.join(sorted(set(names)))} has"
                    )


def _series_of(
    catalog: metrics.Catalog, targets: list[metrics.ScrapeTarget], name: str
) -> list[dict[str, str | None]] | str:
    if not name:
        return "a selector without a metric name"
    if name in catalog.synthetic:
        return [{k: v for k, v in t.label_values().items()} for t in targets]
    found = catalog.family_of(name)
    if found is None:
        return (
            f"{name} is exported by nothing in the platform (not in {metrics.CATALOG_FILE.name} or serving/metrics.py)"
        )
    family, labels = found
    scraped = [t for t in targets if metrics.exports(family, t)]
    if not scraped:
        return (
            f"{name} ({family.source}) is not scraped: no ServiceMonitor reaches its exporter {dict(family.exporter)}"
        )
    return [metrics.series_labels(labels, t, catalog.conflict_prefix) for t in scraped]


def _matcher_problem(metric: str, series: list[dict[str, str | None]], label: str, op: str, value: str) -> str | None:
    present = [s for s in series if label in s]
    if not present:
        # An absent label reads as "": only a matcher that accepts "" still selects anything.
        if queries.matcher_holds(op, value, ""):
            return None
        have = sorted({k for s in series for k in s})
        return f"{metric} has no label {label!r} (it has: {', '.join(have)})"
    fixed = {s[label] for s in present}
    if op == "=" and None not in fixed and value not in fixed:
        return f"{metric}{{{label}={value!r}}} matches no series: {label} is {', '.join(sorted(map(str, fixed)))} there"
    return None


@check("canary-candidate", "canary checks select the candidate's pods only, never the serving version's")
def _canary_candidate(platform: Platform, result: CheckResult) -> None:
    catalog = metrics.catalog()
    for query in _queries(platform, result):
        if not query.candidate:
            continue
        try:
            parsed = queries.parse_query(query.text)
        except ValueError:
            continue  # the metrics check reports it
        facts = query.candidate
        for selector in parsed.selectors:
            found = catalog.family_of(selector.metric)
            if found is None or selector.metric in catalog.synthetic:
                continue
            version = next((v for label, op, v in selector.matchers if label == "model_version" and op == "="), "v2")
            models = queries.workload_series(facts, version)
            known = set(models["candidate"])

            def matches(model: dict[str, str], selector: queries.Selector = selector, known: set[str] = known) -> bool:
                return all(
                    queries.matcher_holds(op, value, model.get(label, ""))
                    for label, op, value in selector.matchers
                    if label in known
                )

            result.checked += 1
            if not matches(models["candidate"]):
                result.fail(f"{query.where}: {selector.metric} selects none of the candidate's series")
            elif matches(models["serving"]):
                used = [f"{label}{op}{value!r}" for label, op, value in selector.matchers if label in known]
                result.fail(
                    f"{query.where}: {selector.metric}{{{', '.join(used)}}} also matches the serving version's pods "
                    f"({models['serving']['pod']}) when both carry model_version {version!r}"
                )


# ---------------------------------------------------------------------------------------------------
# Images


def _image_problem(image: str) -> str | None:
    if any(image.startswith(prefix) for prefix in TESTING_REGISTRIES):
        return "comes from a testing registry"
    if "@sha256:" in image:
        return None
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return "has no tag (means latest)"
    if last.rsplit(":", 1)[1] == "latest":
        return "is on the latest tag"
    return None


@check("images", "no image is on latest (or untagged) or comes from a testing registry")
def _images(platform: Platform, result: CheckResult) -> None:
    for template in platform.pod_templates():
        for container in template.containers():
            image = str(container.get("image", ""))
            if not image or "{{" in image:
                continue
            result.checked += 1
            problem = _image_problem(image)
            if problem:
                result.fail(f"{template.owner.ref} container {container.get('name')}: {image} {problem}")
    # istiod injects sidecars from global.hub/global.tag (istio-sidecar-injector ConfigMap `values`).
    for config_map in platform.of_kind("ConfigMap"):
        if not config_map.name.startswith("istio-sidecar-injector"):
            continue
        values = json.loads((config_map.obj.get("data") or {}).get("values") or "{}")
        glob = values.get("global") or {}
        image = f"{glob.get('hub')}/{(glob.get('proxy') or {}).get('image', 'proxyv2')}:{glob.get('tag')}"
        result.checked += 1
        problem = _image_problem(image)
        if problem:
            result.fail(f"{config_map.ref}: injected sidecars run {image}, which {problem}")


# ---------------------------------------------------------------------------------------------------
# Hardening


@check(
    "hardening",
    "workloads are hardened: Secrets as files, no unused token, UID >= 10000, probes, Pod Security restricted",
)
def _hardening(platform: Platform, result: CheckResult) -> None:
    checked, open_findings, waived = hardening.judged(platform)
    result.checked = checked
    result.waived = len(waived)
    for finding in open_findings:
        result.fail(finding.text())
