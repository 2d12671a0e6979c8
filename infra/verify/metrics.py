"""Which series exist in the platform's Prometheus, and whether our queries can find them.

Families come from :data:`CATALOG_FILE` (Flagger, Istio, kube-state-metrics: read from their source at the
pinned versions, with provenance) and from :mod:`serving.metrics` (our runtime). A family only reaches Prometheus if a
ServiceMonitor scrapes its exporter; a sample then carries the target's labels, and with
``honorLabels: false`` an exposed label that a target label also sets becomes ``exported_<name>``
(see the ``scrape`` section of the catalog for the upstream files).

Queries are parsed with ``promql-parser`` (a PromQL parser, not a hand-written one); Flagger's template
functions (``{{ namespace }}``, ``{{ target }}``, ``{{ variables.x }}`` ..., fluxcd/flagger v1.40.0
``pkg/apis/flagger/v1beta1/metric.go`` ``TemplateFunctions``) and Argo Rollouts' ``{{args.x}}`` are
filled in from the Canary or Rollout that uses the template before parsing.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infra.verify.platform import Platform, PlatformObject, PodTemplate

CATALOG_FILE = Path(__file__).with_name("metrics-catalog.yaml")
RUNTIME_SOURCE = "serving/metrics.py (our runtime; a live MLServer exports exactly these: tests/test_verify_live.py)"
ISTIO_INJECTION_LABEL = "istio-injection"
# Grafana's own variables, as Grafana substitutes them before querying.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
_FLAGGER_TEMPLATE = re.compile(r"\{\{\s*(variables\.([A-Za-z0-9_]+)|[a-z]+)\s*\}\}")
_ARGO_TEMPLATE = re.compile(r"\{\{\s*args\.([A-Za-z0-9_.-]+)\s*\}\}")


@dataclass(frozen=True)
class Family:
    name: str
    type: str
    labels: frozenset[str]
    source: str
    exporter: Mapping[str, Any]
    # prometheus_client also exposes <base>_created for counters and histograms (our runtime does).
    created_series: bool = False

    def series_names(self) -> dict[str, frozenset[str]]:
        """Exposed series name -> its labels (a histogram also has _bucket{le}, _sum and _count)."""
        if self.type != "histogram":
            series = {self.name: self.labels}
        else:
            series = {
                f"{self.name}_bucket": self.labels | {"le"},
                f"{self.name}_sum": self.labels,
                f"{self.name}_count": self.labels,
            }
        if self.created_series and self.type in ("counter", "histogram"):
            series[f"{self.name.removesuffix('_total')}_created"] = self.labels
        return series


@dataclass(frozen=True)
class Catalog:
    families: dict[str, Family]
    target_labels: frozenset[str]
    conflict_prefix: str
    synthetic: frozenset[str]

    def family_of(self, series: str) -> tuple[Family, frozenset[str]] | None:
        for family in self.families.values():
            labels = family.series_names().get(series)
            if labels is not None:
                return family, labels
        return None


@functools.cache
def catalog() -> Catalog:
    from infra.registry import image_name
    from serving import metrics as runtime
    from serving.settings import DEFAULT_METRICS_PORT

    doc = yaml.safe_load(CATALOG_FILE.read_text())
    families: dict[str, Family] = {}
    for name, spec in doc["families"].items():
        source = doc["sources"][spec["source"]]
        provenance = f"{source['repository']} {source['tag']} {', '.join(source['files'])}"
        families[name] = Family(name, spec["type"], frozenset(spec["labels"]), provenance, source["exporter"])
    # The model server's image, whoever built it (this program or the training pipeline).
    runtime_exporter = {"image": image_name("serving"), "port": DEFAULT_METRICS_PORT}
    for name, labels in runtime.METRIC_LABELS.items():
        families[name] = Family(
            name, runtime.METRIC_TYPES[name], frozenset(labels), RUNTIME_SOURCE, runtime_exporter, created_series=True
        )
    scrape = doc["scrape"]
    return Catalog(
        families, frozenset(scrape["target_labels"]), scrape["conflict_prefix"], frozenset(scrape["synthetic"])
    )


# ---------------------------------------------------------------------------------------------------
# Scrape targets


@dataclass(frozen=True)
class ScrapeTarget:
    """One ServiceMonitor endpoint reaching one container port of the pods of one workload."""

    monitor: PlatformObject
    service: PlatformObject
    pods: PodTemplate
    container: str
    port_number: int | None
    port_name: str | None
    endpoint: str
    honor_labels: bool
    sidecar: bool = False

    def label_values(self) -> dict[str, str | None]:
        """Target labels and their value (None: varies per pod)."""
        job_label = self.monitor.spec.get("jobLabel")
        job = self.service.labels.get(job_label) if job_label else None
        values: dict[str, str | None] = {
            "namespace": self.service.namespace,
            "service": self.service.name,
            "job": job or self.service.name,
            "endpoint": self.endpoint,
            "container": self.container,
            "pod": None,
            "instance": None,
        }
        # prometheus-operator v0.78.2 pkg/prometheus/promcfg.go: each ``podTargetLabels`` entry relabels
        # __meta_kubernetes_pod_label_<name> onto the target as the sanitised name (absent on pods without
        # it); ``targetLabels`` does the same from the Service's labels.
        for label in self.monitor.spec.get("podTargetLabels") or []:
            values[_sanitised(str(label))] = self.pods.labels.get(str(label))
        for label in self.monitor.spec.get("targetLabels") or []:
            values[_sanitised(str(label))] = self.service.labels.get(str(label))
        return values

    def describe(self) -> str:
        monitor, service = self.monitor, self.service
        return f"{monitor.namespace}/{monitor.name} -> {service.namespace}/{service.name}:{self.endpoint}"


def _sanitised(label: str) -> str:
    """A Kubernetes label name as a Prometheus label (prometheus-operator's sanitizeLabelName)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


def _container_port(template: PodTemplate, target_port: Any) -> Iterator[tuple[str, int | None, str | None]]:
    for container in template.containers():
        for port in container.get("ports") or []:
            if target_port in (port.get("name"), port.get("containerPort")):
                yield str(container.get("name")), port.get("containerPort"), port.get("name")


def _in_mesh(platform: Platform, template: PodTemplate) -> bool:
    namespaces = {o.name: o for o in platform.of_kind("Namespace")}
    ns = namespaces.get(template.namespace)
    injected = ns is not None and ns.labels.get(ISTIO_INJECTION_LABEL) == "enabled"
    return injected and template.annotations.get("sidecar.istio.io/inject") != "false"


def scrape_targets(platform: Platform) -> list[ScrapeTarget]:
    targets: list[ScrapeTarget] = []
    sidecar_ports = {int(f.exporter["sidecar"]) for f in catalog().families.values() if "sidecar" in f.exporter}
    for monitor in platform.of_kind("ServiceMonitor"):
        if monitor.group != "monitoring.coreos.com":
            continue
        ns_selector = monitor.spec.get("namespaceSelector") or {}
        namespaces = None if ns_selector.get("any") else set(ns_selector.get("matchNames") or [monitor.namespace])
        for service in platform.of_kind("Service"):
            if namespaces is not None and service.namespace not in namespaces:
                continue
            if not _label_selector_matches(monitor.spec.get("selector") or {}, service.labels):
                continue
            for endpoint in monitor.spec.get("endpoints") or []:
                wanted = endpoint.get("port")
                ports = [
                    p
                    for p in service.spec.get("ports") or []
                    if (wanted and p.get("name") == wanted)
                    or (not wanted and endpoint.get("targetPort") in (p.get("targetPort"), p.get("port")))
                ]
                for port in ports:
                    target_port = port.get("targetPort", port.get("port"))
                    for template in platform.pods_selected(service.namespace, service.spec.get("selector")):
                        name = str(wanted or target_port)
                        honor = bool(endpoint.get("honorLabels", False))
                        for container, number, port_name in _container_port(template, target_port):
                            targets.append(
                                ScrapeTarget(monitor, service, template, container, number, port_name, name, honor)
                            )
                        if target_port in sidecar_ports and _in_mesh(platform, template):
                            targets.append(
                                ScrapeTarget(
                                    monitor, service, template, "istio-proxy", int(target_port), None, name, honor, True
                                )
                            )
    return targets


def _label_selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    from infra.verify.platform import selector_matches

    return bool(selector) and selector_matches(selector, labels)


def exports(family: Family, target: ScrapeTarget) -> bool:
    """Whether ``target`` scrapes the exporter of ``family``."""
    exporter = family.exporter
    if "sidecar" in exporter:
        return target.sidecar and target.port_number == int(exporter["sidecar"])
    if target.sidecar:
        return False
    if "release" in exporter:
        return (
            target.pods.owner.origin == f"helm:{exporter['release']}"
            and target.container == exporter["container"]
            and exporter["port"] in (target.port_name, target.port_number)
        )
    if "image" in exporter:
        container = next((c for c in target.pods.containers() if c.get("name") == target.container), {})
        image = str(container.get("image", ""))
        return f"/{exporter['image']}" in image and target.port_number == exporter["port"]
    return False


def series_labels(labels: frozenset[str], target: ScrapeTarget, prefix: str) -> dict[str, str | None]:
    """Labels (and fixed values) of a scraped sample: its own, the target's, conflicts renamed."""
    target_values = target.label_values()
    out: dict[str, str | None] = {}
    for label in labels:
        if label in target_values and not target.honor_labels:
            out[prefix + label] = None
        else:
            out[label] = None
    for label, value in target_values.items():
        if not (target.honor_labels and label in labels):
            out[label] = value
    return out


# ---------------------------------------------------------------------------------------------------
# Queries


@dataclass(frozen=True)
class Selector:
    """One vector selector of a query: metric name and matchers (label, op, value)."""

    metric: str
    matchers: tuple[tuple[str, str, str], ...]


@dataclass
class ParsedQuery:
    selectors: list[Selector] = field(default_factory=list)
    # (labels named in by/on/group_left..., metrics of the expression they group)
    groupings: list[tuple[tuple[str, ...], tuple[str, ...]]] = field(default_factory=list)


_OPS = {"Equal": "=", "NotEqual": "!=", "Re": "=~", "NotRe": "!~"}


def parse_query(query: str) -> ParsedQuery:
    """Selectors and grouping labels of a PromQL expression. Raises ValueError when it does not parse."""
    import promql_parser

    try:
        ast = promql_parser.parse(query)
    except Exception as error:  # the parser raises plain exceptions with its message
        raise ValueError(str(error).splitlines()[0]) from error
    parsed = ParsedQuery()
    _walk(ast, parsed)
    return parsed


def _op_name(op: Any) -> str:
    text = str(op)
    return next((symbol for name, symbol in _OPS.items() if text.endswith(f".{name}") or text == name), text)


def _walk(node: Any, parsed: ParsedQuery) -> list[str]:
    """Collect selectors; return the metric names under ``node`` (for grouping checks)."""
    import promql_parser as p

    if isinstance(node, p.VectorSelector):
        matchers = tuple((m.name, _op_name(m.op), m.value) for m in node.matchers.matchers)
        name = node.name or next((v for n, o, v in matchers if n == "__name__" and o == "="), "")
        parsed.selectors.append(Selector(name, tuple(m for m in matchers if m[0] != "__name__")))
        return [name]
    if isinstance(node, p.MatrixSelector):
        return _walk(node.vector_selector, parsed)
    if isinstance(node, p.AggregateExpr):
        metrics = _walk(node.expr, parsed)
        if node.param is not None:
            _walk(node.param, parsed)
        grouping = node.modifier
        if grouping is not None and "Without" not in str(grouping.type):
            parsed.groupings.append((tuple(grouping.labels), tuple(metrics)))
        return metrics
    if isinstance(node, p.BinaryExpr):
        metrics = _walk(node.lhs, parsed) + _walk(node.rhs, parsed)
        modifier = node.modifier
        if modifier is not None:
            matching = modifier.matching
            if matching is not None and "Ignoring" not in str(matching.type) and matching.labels:
                parsed.groupings.append((tuple(matching.labels), tuple(metrics)))
            if modifier.group_labels:  # group_left(...) / group_right(...)
                parsed.groupings.append((tuple(modifier.group_labels), tuple(metrics)))
        return metrics
    if isinstance(node, p.Call):
        return [m for arg in node.args for m in _walk(arg, parsed)]
    for attribute in ("expr",):
        inner = getattr(node, attribute, None)
        if inner is not None:
            return _walk(inner, parsed)
    return []


@dataclass(frozen=True)
class Query:
    """A query one of our objects runs, with the values its template placeholders take."""

    owner: PlatformObject
    where: str
    text: str
    candidate: Mapping[str, str] | None = None  # for canary checks: workload facts (see canary_queries)


def fill_flagger(template: str, values: Mapping[str, str], variables: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(2):
            if match.group(2) not in variables:
                raise ValueError(f"template variable {match.group(2)!r} is not set by the Canary")
            return variables[match.group(2)]
        if match.group(1) not in values:
            raise ValueError(f"{{{{ {match.group(1)} }}}} is not a Flagger template function")
        return values[match.group(1)]

    return _FLAGGER_TEMPLATE.sub(replace, template)


def fill_argo(template: str, args: Mapping[str, str]) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(1) not in args:
            raise ValueError(f"argument {match.group(1)!r} has no value")
        return args[match.group(1)]

    return _ARGO_TEMPLATE.sub(replace, template)


def ours(platform: Platform) -> list[PlatformObject]:
    return [o for o in platform.objects if o.origin in ("program", "gitops")]


def our_queries(platform: Platform, dashboard_label: str) -> Iterator[Query | tuple[PlatformObject, str, str]]:
    """Every query our objects run (templates filled by their users); an unusable one as (owner, where, problem)."""
    objects = ours(platform)
    templates = {(o.namespace, o.name): o for o in objects if o.kind == "MetricTemplate"}
    for canary in (o for o in objects if o.kind == "Canary"):
        target = (canary.spec.get("targetRef") or {}).get("name", "")
        service = (canary.spec.get("service") or {}).get("name") or canary.name
        for metric in (canary.spec.get("analysis") or {}).get("metrics") or []:
            ref = metric.get("templateRef")
            if not ref:
                continue
            template = templates.get((ref.get("namespace") or canary.namespace, ref.get("name")))
            if template is None:
                continue  # the reference check reports it
            values = {
                "name": canary.name,
                "namespace": canary.namespace,
                "target": target,
                "service": service,
                "ingress": "",
                "route": "",
                "interval": str(metric.get("interval") or "1m"),
            }
            where = f"{template.ref} via {canary.kind}/{canary.name} metric {metric.get('name')}"
            try:
                text = fill_flagger(str(template.spec.get("query", "")), values, metric.get("templateVariables") or {})
            except ValueError as error:
                yield (template, where, str(error))
                continue
            yield Query(template, where, text, {"engine": "flagger", "namespace": canary.namespace, "target": target})
    for rollout in (o for o in objects if o.kind == "Rollout"):
        strategy = (rollout.spec.get("strategy") or {}).get("blueGreen") or {}
        for phase in ("prePromotionAnalysis", "postPromotionAnalysis"):
            analysis = strategy.get(phase) or {}
            for ref in analysis.get("templates") or []:
                template = next(
                    (
                        o
                        for o in objects
                        if o.kind == "AnalysisTemplate"
                        and o.name == ref.get("templateName")
                        and o.namespace == rollout.namespace
                    ),
                    None,
                )
                if template is None:
                    continue
                args = {a["name"]: str(a["value"]) for a in template.spec.get("args") or [] if "value" in a}
                for arg in analysis.get("args") or []:
                    if "value" in arg:
                        args[arg["name"]] = str(arg["value"])
                    elif (arg.get("valueFrom") or {}).get("podTemplateHashValue"):
                        args[arg["name"]] = CANDIDATE_HASH
                for metric in template.spec.get("metrics") or []:
                    prometheus = (metric.get("provider") or {}).get("prometheus")
                    if not prometheus:
                        continue
                    where = f"{template.ref} metric {metric.get('name')} via Rollout/{rollout.name} {phase}"
                    try:
                        text = fill_argo(str(prometheus.get("query", "")), args)
                    except ValueError as error:
                        yield (template, where, str(error))
                        continue
                    yield Query(
                        template,
                        where,
                        text,
                        {"engine": "argo", "namespace": rollout.namespace, "target": rollout.name},
                    )
    for rule in (o for o in objects if o.kind == "PrometheusRule"):
        for group in rule.spec.get("groups") or []:
            for entry in group.get("rules") or []:
                name = entry.get("alert") or entry.get("record")
                yield Query(rule, f"{rule.ref} rule {name}", str(entry.get("expr", "")))
    for board in (o for o in objects if o.kind == "ConfigMap" and o.labels.get(dashboard_label)):
        for key, text in (board.obj.get("data") or {}).items():
            try:
                dashboard = json.loads(text)
            except ValueError:
                yield (board, f"{board.ref} {key}", "dashboard is not JSON")
                continue
            for panel in _panels(dashboard):
                for target in panel.get("targets") or []:
                    expr = str(target.get("expr", ""))
                    for variable, value in GRAFANA_VARIABLES.items():
                        expr = expr.replace(variable, value)
                    yield Query(board, f"{board.ref} panel {panel.get('title')!r}", expr)


def _panels(dashboard: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for panel in dashboard.get("panels") or []:
        yield panel
        yield from _panels(panel)


# ---------------------------------------------------------------------------------------------------
# Series models for "does this canary check read the candidate only?"

CANDIDATE_HASH = "7c9d8b6f5"
STABLE_HASH = "5f4b7c8d9"


def workload_series(facts: Mapping[str, str], version: str) -> dict[str, dict[str, str]]:
    """Label values of the series the candidate's and the serving version's pods export, in the worst case
    for a gate: both run the same model version label (a fault drill after a promotion, or a retrain
    proposed under the same label). Flagger: the target Deployment's pods vs ``<target>-primary``'s
    (fluxcd/flagger v1.40.0 pkg/canary/deployment_controller.go names the primary ``<target>-primary``);
    Argo Rollouts blue-green: the preview ReplicaSet's pods vs the active one's (``<rollout>-<pod template
    hash>``)."""
    target, namespace = facts["target"], facts["namespace"]
    if facts["engine"] == "flagger":
        candidate_workload, primary_workload = target, f"{target}-primary"
        candidate_pod, primary_pod = f"{target}-{CANDIDATE_HASH}-x2x4z", f"{target}-primary-{STABLE_HASH}-k8s9q"
    else:
        candidate_workload = primary_workload = target
        candidate_pod, primary_pod = f"{target}-{CANDIDATE_HASH}-x2x4z", f"{target}-{STABLE_HASH}-k8s9q"
    common = {"namespace": namespace, "model_version": version, "destination_workload_namespace": namespace}
    # The selector label's value as podTargetLabels carries it: Flagger rewrites it to ``<target>-primary``
    # on the primary's pods (pkg/canary/util.go, makePrimaryLabels); Argo keeps the Rollout's on both.
    name_label = "app_kubernetes_io_name"
    candidate_name, serving_name = (target, f"{target}-primary") if facts["engine"] == "flagger" else (target, target)
    # Pod labels a ServiceMonitor may copy onto series (podTargetLabels, sanitised as Prometheus does).
    hash_label = "rollouts_pod_template_hash" if facts["engine"] == "argo" else "pod_template_hash"
    return {
        "candidate": {
            **common,
            "pod": candidate_pod,
            "destination_workload": candidate_workload,
            hash_label: CANDIDATE_HASH,
            name_label: candidate_name,
        },
        "serving": {
            **common,
            "pod": primary_pod,
            "destination_workload": primary_workload,
            hash_label: STABLE_HASH,
            name_label: serving_name,
        },
    }


def matcher_holds(op: str, value: str, actual: str) -> bool:
    if op == "=":
        return actual == value
    if op == "!=":
        return actual != value
    try:
        full = re.fullmatch(value, actual) is not None
    except re.error:
        return True
    return full if op == "=~" else not full
