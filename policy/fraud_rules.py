"""The fraud platform's policy rules as plain functions over a resource's type and properties.

Properties are in Pulumi's wire format: camelCase keys as the program declared them, Pulumi secrets as
``{"4dabf18193072939515e22adb298388d": "1b47061264138c4ac30d75fd1eb44270", "value": ...}`` and values
unknown during a preview as the unknown sentinel. The CrossGuard pack (``__main__.py``) hands every
resource to these functions; the tests hand them every resource of the offline renders. A check returns
the list of its violations (empty: compliant). Values that are unknown are never judged.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

SECRET_KEY = "4dabf18193072939515e22adb298388d"
SECRET_SIG = "1b47061264138c4ac30d75fd1eb44270"
UNKNOWN = "04da6b54-80e4-46f7-96ec-b56ff0331ba9"

EXACT_VERSION = re.compile(r"^v?\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?(\+[0-9A-Za-z.-]+)?$")
# ./charts/<chart>-<exact version>.tgz: the project's vendored chart archives.
VENDORED_ARCHIVE = re.compile(r"^\./charts/[a-z0-9][a-z0-9-]*-\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?\.tgz$")
CHART_TYPES = ("kubernetes:helm.sh/v3:Release", "kubernetes:helm.sh/v3:Chart", "kubernetes:helm.sh/v4:Chart")
SECRET_ENV = re.compile(r"(PASSWORD|TOKEN|SECRET|_KEY$|^KEY$|CREDENTIAL)", re.I)

# Sane bounds for progressive delivery (Flagger Canary, Argo Rollouts analysis).
CANARY_THRESHOLD = (1, 10)  # failed checks before rollback
CANARY_MAX_STEP_WEIGHT = 80  # a canary never takes (nearly) all traffic before it is promoted
CANARY_INTERVAL_SECONDS = (10, 3600)
MIN_SUCCESS_RATE = 90.0  # percent: a success-rate check below this lets broken models through
MAX_LATENCY_MS = 10_000.0
MAX_FAILURE_LIMIT = 5


@dataclass(frozen=True)
class Resource:
    type: str
    props: Mapping[str, Any]
    name: str = ""
    provider: Mapping[str, Any] | None = None  # the provider's own properties


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    check: Callable[[Resource], list[str]] = field(repr=False)


# ---------------------------------------------------------------------------------------------------
# Helpers


def is_secret(value: Any) -> bool:
    return isinstance(value, Mapping) and value.get(SECRET_KEY) == SECRET_SIG


def reveal(value: Any) -> Any:
    """The value with Pulumi secret markers removed (what the resource will contain)."""
    if is_secret(value):
        return reveal(value.get("value"))
    if isinstance(value, Mapping):
        return {k: reveal(v) for k, v in value.items()}
    if isinstance(value, list):
        return [reveal(v) for v in value]
    return value


def is_unknown(value: Any) -> bool:
    return value == UNKNOWN


def kubernetes_kind(resource: Resource) -> tuple[str, str] | None:
    """(apiVersion, kind) of a Kubernetes object resource, typed or CustomResource."""
    if not resource.type.startswith("kubernetes:") or resource.type in CHART_TYPES:
        return None
    props = resource.props
    if "apiVersion" in props and "kind" in props:
        return str(props["apiVersion"]), str(props["kind"])
    _, token, kind = resource.type.split(":", 2)
    group, _, version = token.rpartition("/")
    group = "" if group == "core" else group
    return (f"{group}/{version}" if group else version), kind


def _whole(value: Any) -> bool:
    """A whole number (the engine hands numbers over as floats: 3.0 is 3)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer()


def _duration_seconds(text: Any) -> float | None:
    if not isinstance(text, str):
        return float(text) if isinstance(text, (int, float)) else None
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return None
    scale = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    return sum(float(n) * scale[u] for n, u in parts)


@dataclass(frozen=True)
class PodSpec:
    where: str
    spec: Mapping[str, Any]
    containers: list[tuple[str, Mapping[str, Any]]]


def _containers_of(pod: Mapping[str, Any], where: str) -> list[tuple[str, Mapping[str, Any]]]:
    found = []
    for key in ("initContainers", "containers", "ephemeralContainers"):
        for c in pod.get(key) or []:
            if isinstance(c, Mapping):
                found.append((f"{where}.{key}[{c.get('name', '?')}]", c))
    return found


def pod_specs(resource: Resource) -> Iterator[PodSpec]:
    """Every pod a Kubernetes object would run, with its containers."""
    kind = kubernetes_kind(resource)
    if kind is None:
        return
    _, k = kind
    props = reveal(resource.props)
    spec = props.get("spec") or {}
    if k == "Pod":
        yield PodSpec("spec", spec, _containers_of(spec, "spec"))
    elif k == "CronJob":
        pod = (((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}).get("spec") or {}
        yield PodSpec("spec.jobTemplate.spec.template.spec", pod, _containers_of(pod, "pod"))
    elif k in ("WorkflowTemplate", "Workflow", "ClusterWorkflowTemplate", "CronWorkflow"):
        wf = spec.get("workflowSpec") or spec if k == "CronWorkflow" else spec
        for t in wf.get("templates") or []:
            where = f"templates[{t.get('name', '?')}]"
            # Pod-level settings: the template's own, else the workflow's.
            pod_level = {"securityContext": t.get("securityContext") or wf.get("securityContext") or {}}
            containers = []
            for key in ("container", "script"):
                if isinstance(t.get(key), Mapping):
                    containers.append((f"{where}.{key}", t[key]))
            for key in ("initContainers", "sidecars"):
                containers += [(f"{where}.{key}[{c.get('name', '?')}]", c) for c in t.get(key) or []]
            containers += [
                (f"{where}.containerSet[{c.get('name', '?')}]", c)
                for c in (t.get("containerSet") or {}).get("containers") or []
            ]
            if containers:
                yield PodSpec(where, pod_level, containers)
    else:
        template = spec.get("template")
        if isinstance(template, Mapping) and isinstance(template.get("spec"), Mapping):
            pod = template["spec"]
            yield PodSpec("spec.template.spec", pod, _containers_of(pod, "spec.template.spec"))


# ---------------------------------------------------------------------------------------------------
# Rules


def pinned_chart_versions(resource: Resource) -> list[str]:
    if resource.type not in CHART_TYPES:
        return []
    props = reveal(resource.props)
    version = props.get("version")
    if is_unknown(version):
        return []
    chart = props.get("chart")
    if version is None and isinstance(chart, str) and VENDORED_ARCHIVE.match(chart):
        return []  # a vendored archive (charts/README.md) is pinned by its file: Helm ignores version for a path
    if not isinstance(version, str) or not EXACT_VERSION.match(version):
        chart = reveal(resource.props).get("chart", resource.name)
        return [f"chart {chart}: version {version!r} is not an exact version (pin e.g. 1.2.3; no ranges, no latest)"]
    return []


def image_problem(image: Any) -> str | None:
    if image is None:
        return "has no image"
    if not isinstance(image, str) or is_unknown(image) or UNKNOWN in image:
        return None
    if "@sha256:" in image:
        return None
    last = image.rsplit("/", 1)[-1]
    if ":" not in last:
        return f"image {image!r} has no tag (an implicit :latest); pin a tag or digest"
    if last.rsplit(":", 1)[1] == "latest":
        return f"image {image!r} uses :latest; pin a tag or digest"
    return None


def no_latest_images(resource: Resource) -> list[str]:
    problems = []
    if resource.type == "docker:index/image:Image":
        problem = image_problem(reveal(resource.props).get("imageName"))
        return [problem] if problem else []
    for pod in pod_specs(resource):
        for where, container in pod.containers:
            problem = image_problem(container.get("image"))
            if problem:
                problems.append(f"{where}: {problem}")
    return problems


def resource_limits(resource: Resource) -> list[str]:
    problems = []
    for pod in pod_specs(resource):
        for where, container in pod.containers:
            resources = container.get("resources") or {}
            for bound in ("requests", "limits"):
                missing = [r for r in ("cpu", "memory") if not (resources.get(bound) or {}).get(r)]
                if missing:
                    problems.append(f"{where}: no {bound} for {', '.join(missing)}")
    return problems


def non_root(resource: Resource) -> list[str]:
    problems = []
    for pod in pod_specs(resource):
        pod_ctx = pod.spec.get("securityContext") or {}
        for where, container in pod.containers:
            ctx = container.get("securityContext") or {}
            run_as_user = ctx.get("runAsUser", pod_ctx.get("runAsUser"))
            non_root_flag = ctx.get("runAsNonRoot", pod_ctx.get("runAsNonRoot"))
            if ctx.get("privileged") is True:
                problems.append(f"{where}: runs privileged")
            if run_as_user == 0:
                problems.append(f"{where}: runs as root (runAsUser 0)")
            elif non_root_flag is not True:
                problems.append(f"{where}: does not set runAsNonRoot: true (container or pod securityContext)")
    return problems


def _plain_secret_values(props: Mapping[str, Any]) -> list[str]:
    plain = []
    for field_name in ("data", "stringData"):
        values = props.get(field_name)
        if values is None or is_secret(values) or is_unknown(values):
            continue
        for key, value in (values or {}).items():
            if not is_secret(value) and not is_unknown(value):
                plain.append(f"{field_name}.{key}")
    return plain


def secrets_are_pulumi_secrets(resource: Resource) -> list[str]:
    problems = []
    kind = kubernetes_kind(resource)
    if kind == ("v1", "Secret"):
        plain = _plain_secret_values(resource.props)
        if plain:
            problems.append(
                f"Secret values {', '.join(plain)} are plain in the program; build them from pulumi-random or "
                "`pulumi config set --secret` so they stay encrypted in state and previews"
            )
        has_data = any(resource.props.get(f) for f in ("data", "stringData"))
        if has_data and (resource.provider or {}).get("renderYamlToDirectory"):
            problems.append(
                f"Secret would be written in plain text to {resource.provider['renderYamlToDirectory']} (the GitOps "
                "folder in git); declare Secrets with the cluster provider instead"
            )
    for pod in pod_specs(resource):
        for where, container in pod.containers:
            for env in container.get("env") or []:
                name, value = str(env.get("name", "")), env.get("value")
                # <NAME>_FILE names the file a mounted Secret puts the value in: a path, not the secret.
                names_a_file = name.endswith("_FILE") and isinstance(value, str) and value.startswith("/")
                if SECRET_ENV.search(name) and "value" in env and value not in ("", None) and not names_a_file:
                    problems.append(
                        f"{where}: env {name} carries a literal value; mount the Secret and name its file "
                        f"({name}_FILE), or use valueFrom.secretKeyRef"
                    )
    return problems


def _canary_problems(spec: Mapping[str, Any]) -> list[str]:
    problems = []
    analysis = spec.get("analysis") or {}
    if spec.get("skipAnalysis") is True:
        problems.append("skipAnalysis: true promotes without checking anything")
    threshold = analysis.get("threshold")
    if not _whole(threshold) or not CANARY_THRESHOLD[0] <= threshold <= CANARY_THRESHOLD[1]:
        problems.append(f"analysis.threshold {threshold!r} outside {CANARY_THRESHOLD[0]}..{CANARY_THRESHOLD[1]}")
    weights = analysis.get("stepWeights")
    if weights is not None:
        if not weights or any(not isinstance(w, (int, float)) or not 0 < w <= CANARY_MAX_STEP_WEIGHT for w in weights):
            problems.append(f"analysis.stepWeights {weights!r}: each must be in 1..{CANARY_MAX_STEP_WEIGHT}")
        elif any(b <= a for a, b in itertools.pairwise(weights)):
            problems.append(f"analysis.stepWeights {weights!r} must increase")
    else:
        max_weight, step = analysis.get("maxWeight"), analysis.get("stepWeight")
        if not (isinstance(max_weight, (int, float)) and 0 < max_weight <= CANARY_MAX_STEP_WEIGHT):
            problems.append(f"analysis.maxWeight {max_weight!r} outside 1..{CANARY_MAX_STEP_WEIGHT}")
        if not (isinstance(step, (int, float)) and 0 < step <= (max_weight or 0)):
            problems.append(f"analysis.stepWeight {step!r} must be in 1..maxWeight")
    interval = _duration_seconds(analysis.get("interval"))
    low, high = CANARY_INTERVAL_SECONDS
    if interval is None or not low <= interval <= high:
        problems.append(f"analysis.interval {analysis.get('interval')!r} outside {low}s..{high}s")
    metrics = analysis.get("metrics") or []
    if not metrics:
        problems.append("analysis has no metrics: nothing decides whether the canary is healthy")
    for metric in metrics:
        name = str(metric.get("name", "?"))
        bounds = metric.get("thresholdRange") or {}
        if "min" not in bounds and "max" not in bounds:
            problems.append(f"metric {name}: no thresholdRange")
            continue
        if "success" in name and not (MIN_SUCCESS_RATE <= float(bounds.get("min", -1)) <= 100):
            problems.append(f"metric {name}: min {bounds.get('min')!r} outside {MIN_SUCCESS_RATE:g}..100 (percent)")
        if "latency" in name and not (0 < float(bounds.get("max", -1)) <= MAX_LATENCY_MS):
            problems.append(f"metric {name}: max {bounds.get('max')!r} outside 0..{MAX_LATENCY_MS:g} ms")
    return problems


def _rollout_problems(spec: Mapping[str, Any]) -> list[str]:
    strategy = spec.get("strategy") or {}
    problems = []
    blue_green = strategy.get("blueGreen")
    if isinstance(blue_green, Mapping):
        auto = blue_green.get("autoPromotionEnabled", True)
        if auto and not (blue_green.get("prePromotionAnalysis") or {}).get("templates"):
            problems.append("blueGreen promotes automatically without a prePromotionAnalysis")
    canary = strategy.get("canary")
    if isinstance(canary, Mapping):
        weights = [s["setWeight"] for s in canary.get("steps") or [] if isinstance(s, Mapping) and "setWeight" in s]
        if any(not 0 <= w <= 100 for w in weights):
            problems.append(f"canary setWeight {weights!r} outside 0..100")
        if not canary.get("analysis") and not any("analysis" in s for s in canary.get("steps") or []):
            problems.append("canary steps without any analysis")
    return problems


def _analysis_template_problems(spec: Mapping[str, Any]) -> list[str]:
    problems = []
    for metric in spec.get("metrics") or []:
        name = metric.get("name", "?")
        if not metric.get("successCondition") and not metric.get("failureCondition"):
            problems.append(f"metric {name}: neither successCondition nor failureCondition")
        limit = metric.get("failureLimit", 0)
        if _whole(limit) and not 0 <= limit <= MAX_FAILURE_LIMIT:
            problems.append(f"metric {name}: failureLimit {limit} outside 0..{MAX_FAILURE_LIMIT}")
    return problems


def canary_thresholds(resource: Resource) -> list[str]:
    kind = kubernetes_kind(resource)
    if kind is None:
        return []
    api_version, k = kind
    spec = reveal(resource.props).get("spec") or {}
    if api_version.startswith("flagger.app/") and k == "Canary":
        return _canary_problems(spec)
    if api_version.startswith("argoproj.io/") and k == "Rollout":
        return _rollout_problems(spec)
    if api_version.startswith("argoproj.io/") and k in ("AnalysisTemplate", "ClusterAnalysisTemplate"):
        return _analysis_template_problems(spec)
    return []


RULES: tuple[Rule, ...] = (
    Rule("pinned-chart-versions", "Helm charts are pinned to exact versions.", pinned_chart_versions),
    Rule("no-latest-images", "Container images carry a pinned tag or digest, never :latest.", no_latest_images),
    Rule("resource-limits", "Every container declares CPU and memory requests and limits.", resource_limits),
    Rule("non-root-containers", "Containers run as non-root and unprivileged.", non_root),
    Rule(
        "secrets-are-pulumi-secrets",
        "Secret values are Pulumi secrets, never plain in the program or written to the GitOps folder.",
        secrets_are_pulumi_secrets,
    ),
    Rule(
        "canary-thresholds",
        "Rollout analysis (Flagger, Argo Rollouts) stays within sane thresholds.",
        canary_thresholds,
    ),
)


def evaluate(resource: Resource) -> list[tuple[str, str]]:
    """(rule name, violation) for every rule the resource breaks."""
    return [(rule.name, message) for rule in RULES for message in rule.check(resource)]


def validator(rule: Rule) -> Callable[[Any, Callable[..., None]], None]:
    """A pulumi_policy ``validate`` callback running ``rule`` (args: resource_type, props, name, urn, provider)."""

    def validate(args: Any, report_violation: Callable[..., None]) -> None:
        provider = getattr(args, "provider", None)
        resource = Resource(
            type=args.resource_type,
            props=_raw(args.props),
            name=getattr(args, "name", ""),
            provider=_raw(provider.props) if provider is not None else None,
        )
        for message in rule.check(resource):
            report_violation(message, getattr(args, "urn", None))

    return validate


def _raw(props: Any) -> Any:
    """pulumi_policy wraps props in a read-only proxy; its ``__target`` is the plain mapping."""
    if isinstance(props, dict) or props is None:
        return props or {}
    try:
        return props["__target"]
    except (KeyError, TypeError):
        return dict(props)
