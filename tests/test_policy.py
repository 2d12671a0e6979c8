"""The CrossGuard policy pack's rules: unit cases, and every resource of every offline render complies."""

from __future__ import annotations

import ast
import copy
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml
from render_support import STACKS, STRATEGIES, rendered

from infra.render import RenderResult

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "policy"))
import fraud_rules as rules  # noqa: E402

DEPLOYMENT = "kubernetes:apps/v1:Deployment"


def secret(value: Any) -> dict[str, Any]:
    return {rules.SECRET_KEY: rules.SECRET_SIG, "value": value}


def container(**overrides: Any) -> dict[str, Any]:
    base = {
        "name": "app",
        "image": "registry.example.com/app:1.2.3",
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"cpu": "1", "memory": "1Gi"}},
        "securityContext": {"runAsNonRoot": True, "runAsUser": 10001},
    }
    base.update(overrides)
    return base


def deployment(*containers: dict[str, Any], pod: dict[str, Any] | None = None) -> rules.Resource:
    props = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "app"},
        "spec": {"template": {"spec": {**(pod or {}), "containers": list(containers)}}},
    }
    return rules.Resource(DEPLOYMENT, props, "app")


def violations(resource: rules.Resource, rule: str | None = None) -> list[str]:
    return [message for name, message in rules.evaluate(resource) if rule is None or name == rule]


def test_a_compliant_deployment_passes_every_rule() -> None:
    assert violations(deployment(container())) == []


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("nginx", "has no tag"),
        ("registry.example.com:5000/team/app", "has no tag"),
        ("nginx:latest", "uses :latest"),
        ("registry.example.com:5000/app:1.0", None),
        ("app@sha256:" + "a" * 64, None),
        (rules.UNKNOWN, None),  # unknown during preview: not judged
    ],
)
def test_images_must_be_pinned(image: str, expected: str | None) -> None:
    found = violations(deployment(container(image=image)), "no-latest-images")
    assert (expected in found[0]) if expected else not found
    docker = rules.Resource("docker:index/image:Image", {"imageName": image})
    assert bool(violations(docker, "no-latest-images")) == bool(expected)


def test_limits_non_root_and_secret_env() -> None:
    no_limits = container(resources={"requests": {"cpu": "1", "memory": "1Gi"}})
    assert violations(deployment(no_limits), "resource-limits") == [
        "spec.template.spec.containers[app]: no limits for cpu, memory"
    ]
    root = container(securityContext={"runAsUser": 0})
    assert "runs as root" in violations(deployment(root), "non-root-containers")[0]
    unset = container(securityContext={})
    assert "does not set runAsNonRoot" in violations(deployment(unset), "non-root-containers")[0]
    # The pod's securityContext counts for its containers.
    assert violations(deployment(unset, pod={"securityContext": {"runAsNonRoot": True}}), "non-root-containers") == []
    privileged = container(securityContext={"runAsNonRoot": True, "privileged": True})
    assert "runs privileged" in violations(deployment(privileged), "non-root-containers")[0]
    leaky = container(env=[{"name": "DB_PASSWORD", "value": "hunter2"}, {"name": "MODE", "value": "x"}])
    assert violations(deployment(leaky), "secrets-are-pulumi-secrets") == [
        "spec.template.spec.containers[app]: env DB_PASSWORD carries a literal value; mount the Secret and name its "
        "file (DB_PASSWORD_FILE), or use valueFrom.secretKeyRef"
    ]
    # A variable naming the file a mounted Secret holds the value in carries a path, not the secret.
    as_file = container(env=[{"name": "DB_PASSWORD_FILE", "value": "/etc/db/password"}])
    assert violations(deployment(as_file), "secrets-are-pulumi-secrets") == []
    not_a_path = container(env=[{"name": "DB_PASSWORD_FILE", "value": "hunter2"}])
    assert violations(deployment(not_a_path), "secrets-are-pulumi-secrets") != []


def test_secret_values_must_be_pulumi_secrets_and_stay_out_of_git() -> None:
    def k8s_secret(string_data: Any, provider: dict[str, Any] | None = None) -> rules.Resource:
        props = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"}, "stringData": string_data}
        return rules.Resource("kubernetes:core/v1:Secret", props, "s", provider)

    assert violations(k8s_secret({"password": secret("x")})) == []
    assert violations(k8s_secret(secret({"password": "x"}))) == []  # the SDK lifts a nested secret
    assert violations(k8s_secret({"password": rules.UNKNOWN})) == []
    (plain,) = violations(k8s_secret({"password": "hunter2", "user": secret("u")}))
    assert "stringData.password are plain" in plain and "user" not in plain
    (in_git,) = violations(k8s_secret({"key": secret("k")}, {"renderYamlToDirectory": "gitops/dev/local"}))
    assert "plain text to gitops/dev/local" in in_git
    token = rules.Resource(
        "kubernetes:core/v1:Secret",
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "t"},
            "type": "kubernetes.io/service-account-token",
        },
    )
    assert violations(token) == []


def test_chart_versions_must_be_exact() -> None:
    def release(version: Any) -> rules.Resource:
        return rules.Resource("kubernetes:helm.sh/v3:Release", {"chart": "harbor", "version": version})

    assert violations(release("1.16.2")) == []
    for bad in ("^1.16.0", "1.16", "latest", None, "~1.2.3"):
        assert "is not an exact version" in violations(release(bad))[0], bad


def canary(**analysis: Any) -> rules.Resource:
    base = {
        "interval": "1m",
        "threshold": 3,
        "stepWeights": [5, 10, 50],
        "metrics": [
            {"name": "success-rate", "interval": "1m", "thresholdRange": {"min": 99}},
            {"name": "latency-p99", "interval": "1m", "thresholdRange": {"max": 100}},
        ],
    }
    base.update(analysis)
    props = {
        "apiVersion": "flagger.app/v1beta1",
        "kind": "Canary",
        "metadata": {"name": "c"},
        "spec": {"analysis": base},
    }
    return rules.Resource("kubernetes:flagger.app/v1beta1:Canary", props, "c")


@pytest.mark.parametrize(
    ("analysis", "expected"),
    [
        ({}, None),
        ({"threshold": 0}, "analysis.threshold 0 outside 1..10"),
        ({"threshold": 50}, "analysis.threshold 50 outside"),
        ({"stepWeights": [5, 10, 100]}, "each must be in 1..80"),
        ({"stepWeights": [10, 5]}, "must increase"),
        ({"interval": "1s"}, "analysis.interval '1s' outside 10s..3600s"),
        ({"metrics": []}, "no metrics"),
        ({"metrics": [{"name": "success-rate", "thresholdRange": {"min": 50}}]}, "min 50 outside 90..100"),
        ({"metrics": [{"name": "latency-p99", "thresholdRange": {"max": 60000}}]}, "outside 0..10000 ms"),
        ({"metrics": [{"name": "precision"}]}, "no thresholdRange"),
    ],
)
def test_canary_thresholds_stay_within_sane_bounds(analysis: dict[str, Any], expected: str | None) -> None:
    found = violations(canary(**analysis), "canary-thresholds")
    assert (len(found) == 1 and expected in found[0]) if expected else found == []


def test_argo_rollouts_analysis_bounds() -> None:
    def rollout(blue_green: dict[str, Any]) -> rules.Resource:
        props = {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Rollout",
            "spec": {"strategy": {"blueGreen": blue_green}},
        }
        return rules.Resource("kubernetes:argoproj.io/v1alpha1:Rollout", props)

    guarded = {"prePromotionAnalysis": {"templates": [{"templateName": "checks"}]}}
    assert violations(rollout(guarded), "canary-thresholds") == []
    assert "without a prePromotionAnalysis" in violations(rollout({}), "canary-thresholds")[0]
    assert violations(rollout({"autoPromotionEnabled": False}), "canary-thresholds") == []
    template = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisTemplate",
        "spec": {"metrics": [{"name": "m", "failureLimit": 20}]},
    }
    found = violations(
        rules.Resource("kubernetes:argoproj.io/v1alpha1:AnalysisTemplate", template), "canary-thresholds"
    )
    assert found == [
        "metric m: neither successCondition nor failureCondition",
        "metric m: failureLimit 20 outside 0..5",
    ]


def test_workflow_templates_are_checked_per_step() -> None:
    template = {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "WorkflowTemplate",
        "spec": {
            "securityContext": {"runAsNonRoot": True},
            "templates": [
                {"name": "ok", "container": container()},
                {
                    "name": "build",
                    "securityContext": {"runAsUser": 0},
                    "container": container(image="kaniko:latest", securityContext={}),
                },
            ],
        },
    }
    found = violations(rules.Resource("kubernetes:argoproj.io/v1alpha1:WorkflowTemplate", template))
    assert found == [
        "templates[build].container: image 'kaniko:latest' uses :latest; pin a tag or digest",
        "templates[build].container: runs as root (runAsUser 0)",
    ]


def test_the_pack_reports_through_pulumi_policys_callback() -> None:
    (rule,) = [r for r in rules.RULES if r.name == "no-latest-images"]
    reported: list[tuple[str, Any]] = []
    bad = deployment(container(image="app:latest"))
    args = SimpleNamespace(resource_type=DEPLOYMENT, props=bad.props, name="app", urn="urn:x", provider=None)
    rules.validator(rule)(args, lambda message, urn=None: reported.append((message, urn)))
    assert reported == [
        ("spec.template.spec.containers[app]: image 'app:latest' uses :latest; pin a tag or digest", "urn:x")
    ]
    # The pack registers every rule, with the pinned pulumi-policy in its own virtualenv.
    source = (ROOT / "policy" / "__main__.py").read_text()
    ast.parse(source)
    assert "fraud_rules.RULES" in source and "ResourceValidationPolicy" in source
    assert yaml.safe_load((ROOT / "policy" / "PulumiPolicy.yaml").read_text())["runtime"]["name"] == "python"
    pins = (ROOT / "policy" / "requirements.txt").read_text()
    assert "pulumi-policy==1.21.0" in pins


def resources_of(result: RenderResult) -> list[rules.Resource]:
    providers = {r.urn: r.inputs for r in result.resources if r.type.startswith("pulumi:providers:")}
    return [
        rules.Resource(r.type, r.inputs, r.name, providers.get(r.provider.rsplit("::", 1)[0]))
        for r in result.resources
        if r.custom and not r.type.startswith("pulumi:providers:")
    ]


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_rendered_resource_complies(stack: str, strategy: str) -> None:
    result = rendered(stack, strategy)
    checked = resources_of(result)
    assert len(checked) > 50
    found = [(r.type, r.name, rule, message) for r in checked for rule, message in rules.evaluate(r)]
    assert found == []
    # The rules saw the things they are about.
    kinds = {rules.kubernetes_kind(r) for r in checked}
    assert ("argoproj.io/v1alpha1", "WorkflowTemplate") in kinds
    assert (
        ("flagger.app/v1beta1", "Canary") in kinds
        if strategy == "canary"
        else ("argoproj.io/v1alpha1", "Rollout") in kinds
    )
    assert any(r.type == "kubernetes:helm.sh/v3:Release" for r in checked)


def test_a_broken_render_is_caught() -> None:
    """Mutating a real render's objects trips the rules (they look where the program puts things)."""
    result = rendered("dev")
    resources = resources_of(result)
    template = next(r for r in resources if rules.kubernetes_kind(r) == ("argoproj.io/v1alpha1", "WorkflowTemplate"))
    props = copy.deepcopy(template.props)
    props["spec"]["templates"][1]["container"]["image"] = "fraud-platform:latest"
    assert violations(rules.Resource(template.type, props, template.name), "no-latest-images")
    release = next(r for r in resources if r.type == "kubernetes:helm.sh/v3:Release")
    assert violations(rules.Resource(release.type, {**release.props, "version": ">=1.0.0"}), "pinned-chart-versions")
    # A vendored archive is pinned by its name; a chart name without a version is not.
    assert release.props["chart"].startswith("./charts/") and "version" not in release.props
    assert violations(rules.Resource(release.type, {**release.props, "chart": "flagger"}), "pinned-chart-versions")
    assert violations(
        rules.Resource(release.type, {**release.props, "chart": "./charts/flagger-latest.tgz"}), "pinned-chart-versions"
    )
