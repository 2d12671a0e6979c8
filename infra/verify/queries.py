"""The queries our objects run, and what they select.

Queries are parsed with ``promql-parser`` (a PromQL parser, not a hand-written one); Flagger's template
functions (``{{ namespace }}``, ``{{ target }}``, ``{{ variables.x }}`` ..., fluxcd/flagger v1.40.0
``pkg/apis/flagger/v1beta1/metric.go`` ``TemplateFunctions``) and Argo Rollouts' ``{{args.x}}`` are
filled in from the Canary or Rollout that uses the template before parsing. Which series exist is in
metrics.py.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from infra.verify.platform import Platform, PlatformObject

# Grafana's own variables, as Grafana substitutes them before querying.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
_FLAGGER_TEMPLATE = re.compile(r"\{\{\s*(variables\.([A-Za-z0-9_]+)|[a-z]+)\s*\}\}")
_ARGO_TEMPLATE = re.compile(r"\{\{\s*args\.([A-Za-z0-9_.-]+)\s*\}\}")


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
