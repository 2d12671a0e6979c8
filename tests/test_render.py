"""The real Pulumi program under the mock engine: every stack, both strategies, recorded and checked."""

from __future__ import annotations

import contextvars
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from render_support import ROOT, STACKS, STRATEGIES, all_renders, fraudctl, rendered

from infra import charts
from infra.config import CHART_COMPONENTS, deep_merge, project_defaults
from infra.render import HELM_RELEASE, SECRET_MARKER, SECRET_SIG, RecordedResource, RenderResult, _run_isolated, wire

EXACT_VERSION = re.compile(r"^v?\d+\.\d+\.\d+(-[0-9A-Za-z.-]+)?$")
BUILTIN_GROUPS = {"", "apps", "batch", "policy", "autoscaling", "networking.k8s.io", "rbac.authorization.k8s.io"}
# Which release installs the CRDs of each custom-resource group (and kind, where groups are shared).
CRD_RELEASE = {
    "flagger.app": "flagger",
    "monitoring.coreos.com": "kube-prometheus-stack",
    "networking.istio.io": "istio-base",
    "security.istio.io": "istio-base",
    ("argoproj.io", "Rollout"): "argo-rollouts",
    ("argoproj.io", "AnalysisTemplate"): "argo-rollouts",
    ("argoproj.io", "WorkflowTemplate"): "argo-workflows",
    ("argoproj.io", "CronWorkflow"): "argo-workflows",
    ("argoproj.io", "Application"): "argo-cd",
    ("argoproj.io", "ApplicationSet"): "argo-cd",
    ("argoproj.io", "AppProject"): "argo-cd",
}


def group_of(api_version: str) -> str:
    return api_version.rsplit("/", 1)[0] if "/" in api_version else ""


def kubernetes_resources(result: RenderResult) -> list[RecordedResource]:
    return [r for r in result.resources if r.is_kubernetes_object]


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_stack_renders_every_enabled_component_per_region(stack: str, strategy: str) -> None:
    result = rendered(stack, strategy)
    assert result.config.strategy == strategy
    expected = {spec.name for c in CHART_COMPONENTS if result.config.enabled(c) for spec in charts.chart_releases(c)}
    for region in result.config.regions:
        releases = result.helm_releases(region.name)
        assert {r["name"] for r in releases} == expected
        kinds = {(o["kind"], o["metadata"]["name"]) for o in result.manifests(region.name)}
        assert ("Deployment", "mlflow") in kinds and ("StatefulSet", "mlflow-postgres") in kinds
        for ns in charts.NAMESPACES.values():
            assert ("Namespace", ns) in kinds


@pytest.mark.parametrize("stack", STACKS)
def test_every_resource_uses_its_regions_explicit_provider(stack: str) -> None:
    result = rendered(stack)
    providers = {r.urn: r for r in result.resources if r.type.startswith("pulumi:providers:")}
    k8s_providers = {u: r for u, r in providers.items() if r.type == "pulumi:providers:kubernetes"}
    assert len(k8s_providers) >= len(result.config.regions)
    for region in result.config.regions:
        (provider,) = [r for r in k8s_providers.values() if r.name == f"region-{region.name}-k8s"]
        assert provider.inputs["context"] == region.context
    for resource in result.resources:
        package = resource.type.split(":")[0]
        if not resource.custom or resource.type.startswith("pulumi:providers:") or package == "random":
            continue
        # With default providers disabled, a missing provider would fail `pulumi up`; here it must be explicit.
        provider_urn = resource.provider.rsplit("::", 1)[0]
        assert provider_urn in providers, f"{resource.type} {resource.name} has no explicit provider"
        assert providers[provider_urn].type == f"pulumi:providers:{package}"


@pytest.mark.parametrize("stack", STACKS)
def test_namespaced_objects_sit_in_their_component_namespace_and_region(stack: str) -> None:
    result = rendered(stack)
    for region in result.config.regions:
        namespaces = {o["metadata"]["name"] for o in result.manifests(region.name) if o["kind"] == "Namespace"}
        for resource in kubernetes_resources(result):
            if result.region_of(resource) != region.name:
                continue
            obj = resource.inputs
            if obj["kind"] in ("Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"):
                continue
            ns = obj["metadata"].get("namespace")
            assert ns in namespaces, (
                f"{obj['kind']}/{obj['metadata']['name']} in {ns!r}, not a namespace of {region.name}"
            )
            # Children are named from their region, so a resource can never be declared in the wrong cluster.
            assert resource.name.startswith(f"region-{region.name}-"), resource.name
        for release in result.helm_releases(region.name):
            assert release["namespace"] in namespaces


def test_resources_are_parented_to_components_with_fraud_type_tokens() -> None:
    result = rendered("multiregion")
    components = {r.urn: r for r in result.resources if not r.custom}
    assert components, "no component resources recorded"
    for component in components.values():
        assert re.match(r"^fraud:[a-z]+:[A-Z][A-Za-z]+$", component.type), component.type
    for resource in result.resources:
        if resource.custom and not resource.type.startswith("pulumi:providers:"):
            assert resource.parent in components, f"{resource.type} {resource.name} is not inside a component"


@pytest.mark.parametrize("stack", STACKS)
def test_every_chart_is_pinned_to_the_configured_version(stack: str) -> None:
    result = rendered(stack)
    by_release = {spec.name: c for c in CHART_COMPONENTS for spec in charts.chart_releases(c)}
    for region in result.config.regions:
        for release in result.helm_releases(region.name):
            component = result.config.components[by_release[release["name"]]]
            assert EXACT_VERSION.match(release["version"]), release
            assert release["version"] == component.version
            assert release["repo"] == component.repository is None
            # By default every release installs its vendored archive, by a path relative to the project.
            assert release["chart"].startswith("./charts/") and (ROOT / release["chart"]).is_file(), release


def test_chart_versions_follow_config_overrides() -> None:
    repo = "https://helm.goharbor.io"
    result = rendered("dev", platform__harbor__version="1.17.0", platform__harbor__repository=repo)
    (harbor,) = [r for r in result.helm_releases("local") if r["name"] == "harbor"]
    assert (harbor["chart"], harbor["version"], harbor["repo"]) == ("harbor", "1.17.0", repo)
    (resource,) = [r for r in result.resources if r.type == HELM_RELEASE and r.inputs["name"] == "harbor"]
    assert resource.inputs["repositoryOpts"] == {"repo": repo}
    # A vendored archive is installed by path, without version or repository (Helm ignores both for a path).
    (flagger,) = [r for r in result.resources if r.type == HELM_RELEASE and r.inputs["name"] == "flagger"]
    assert flagger.inputs["chart"] == "./charts/flagger-1.40.0.tgz"
    assert "version" not in flagger.inputs and "repositoryOpts" not in flagger.inputs


def test_a_chart_version_without_archive_needs_a_repository() -> None:
    from infra.config import ConfigError

    with pytest.raises(ConfigError) as error:
        rendered("dev", platform__harbor__version="1.17.0")
    assert error.value.problems == [
        "platform.harbor.version: 1.17.0 of chart harbor is not vendored under charts/ (vendored: 1.16.2); "
        "package it (charts/README.md) or set platform.harbor.repository"
    ]


def test_disabling_a_component_removes_it_and_what_depends_on_it() -> None:
    result = rendered("dev", platform__harbor__enabled=False)
    assert "harbor" not in {r["name"] for r in result.helm_releases("local")}
    assert not [r for r in result.resources if r.type == "docker:index/image:Image"]
    # Without Harbor the serving image is referenced by its configured tag instead of a pushed digest.
    mlflow = next(
        o for o in result.manifests("local") if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow"
    )
    assert mlflow["spec"]["template"]["spec"]["containers"][0]["image"].endswith(":0.1.0")


def _plain_strings(value: object, inside_secret: bool = False):
    if isinstance(value, dict):
        if value.get(SECRET_SIG):
            return
        for v in value.values():
            yield from _plain_strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _plain_strings(v)
    elif isinstance(value, str):
        yield value


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_generated_secrets_stay_secret(stack: str, strategy: str) -> None:
    result = rendered(stack, strategy)
    assert len(result.generated_secrets) >= 10
    secrets = set(result.generated_secrets)
    for resource in result.resources:
        if resource.type == "random:index/randomPassword:RandomPassword":
            continue
        for text in _plain_strings(resource.inputs):
            leaked = [s for s in secrets if s in text]
            assert not leaked, f"{resource.type} {resource.name} carries a generated secret in plain text"
    rendered_text = json.dumps(
        [result.manifests(r.name) + result.helm_releases(r.name) for r in result.config.regions]
    ) + json.dumps(wire(result.stack_outputs, result.known_secrets))
    assert not [s for s in secrets if s in rendered_text]
    assert SECRET_MARKER in rendered_text
    # Password outputs are exported as secrets, separately from the readable URLs.
    assert result.stack_outputs["adminPasswords"].get(SECRET_SIG)
    assert not result.stack_outputs["regions"].get(SECRET_SIG)


def test_secret_config_keys_are_declared_secret_and_never_set_in_plain_text() -> None:
    from infra.config import project_schema, stack_file_values

    schema = project_schema()
    secret_keys = {key for key, spec in schema.items() if spec.get("secret")}
    assert "alertWebhookUrl" in secret_keys
    for key in secret_keys:
        assert schema[key].get("default", "") == "", f"{key} has a non-empty default in Pulumi.yaml"
    for path in ROOT.glob("Pulumi.*.yaml"):
        values, secure = stack_file_values(path)
        for key in secret_keys & set(values):
            assert key in secure, f"{path.name} sets {key} in plain text; use pulumi config set --secret"


def test_custom_resources_depend_on_the_release_that_installs_their_crd() -> None:
    checked = 0
    for _stack, _strategy, result in all_renders():
        releases = {(result.region_of(r), r.inputs["name"]): r.urn for r in result.resources if r.type == HELM_RELEASE}
        for resource in kubernetes_resources(result):
            group = group_of(resource.inputs["apiVersion"])
            if group in BUILTIN_GROUPS:
                continue
            release = CRD_RELEASE.get(group) or CRD_RELEASE.get((group, resource.inputs["kind"]))
            assert release, f"no known CRD source for {resource.inputs['apiVersion']} {resource.inputs['kind']}"
            urn = releases.get((result.region_of(resource), release))
            assert urn, f"{resource.inputs['kind']} rendered but the {release} release is not"
            assert urn in resource.dependencies, (
                f"{resource.inputs['kind']} {resource.name} does not wait for {release}"
            )
            checked += 1
    assert checked > 0


def test_invalid_config_fails_the_program_itself_with_the_same_messages() -> None:
    """What `pulumi preview` would show: the program raises before declaring anything."""
    raw = deep_merge(project_defaults(), {"regions": [{"name": "eu", "context": "c"}], "strategy": "rolling"})
    with pytest.raises(Exception, match="strategy: must be one of canary, blue-green; got 'rolling'"):
        contextvars.Context().run(_run_isolated, "dev", None, raw, set(), ROOT)


# ---------------------------------------------------------------------------------------------------
# The CLI, as a user runs it


@pytest.mark.parametrize("stack", STACKS)
def test_render_cli_writes_every_region(stack: str, tmp_path: Path) -> None:
    proc = fraudctl("render", "--stack", stack, "--out", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    config_regions = rendered(stack).config.regions
    for region in config_regions:
        manifests = list(yaml.safe_load_all((tmp_path / "out" / region.name / "manifests.yaml").read_text()))
        releases = yaml.safe_load((tmp_path / "out" / region.name / "helm-releases.yaml").read_text())
        assert manifests and all({"apiVersion", "kind", "metadata"} <= set(m) for m in manifests)
        assert {"name", "namespace", "chart", "repo", "version", "values"} == set(releases[0])
        # Every release rendered by Helm from its archive, next to the values it was given.
        helm_dir = tmp_path / "out" / region.name / "helm"
        assert {p.stem for p in helm_dir.glob("*.yaml")} == {r["name"] for r in releases}
        assert "NOT RENDERED" not in "".join(p.read_text() for p in helm_dir.glob("*.yaml"))
        # Integers stay integers in wire format (the mock engine hands numbers over as floats).
        replicas = [m["spec"]["replicas"] for m in manifests if m["kind"] == "StatefulSet"]
        assert replicas and all(isinstance(n, int) for n in replicas)


def test_render_cli_applies_set_overrides(tmp_path: Path) -> None:
    proc = fraudctl("render", "--stack", "dev", "--set", "platform.argocd.enabled=false", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    releases = yaml.safe_load((tmp_path / "local" / "helm-releases.yaml").read_text())
    assert "argo-cd" not in {r["name"] for r in releases}


def test_render_cli_on_invalid_config_exits_2_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = fraudctl(
        "render",
        "--stack",
        "dev",
        "--set",
        "strategy=rolling",
        "--set",
        "analysis.stepWeights=[50,10]",
        "--out",
        str(out),
    )
    assert proc.returncode == 2
    assert "strategy: must be one of canary, blue-green; got 'rolling'" in proc.stderr
    assert "analysis.stepWeights: must be strictly increasing" in proc.stderr
    assert not out.exists()
    # An earlier render in the same folder survives a failed one untouched.
    assert fraudctl("render", "--stack", "dev", "--out", str(out)).returncode == 0
    before = (out / "local" / "manifests.yaml").read_text()
    assert fraudctl("render", "--stack", "dev", "--set", "strategy=x", "--out", str(out)).returncode == 2
    assert (out / "local" / "manifests.yaml").read_text() == before


def test_check_config_cli(tmp_path: Path) -> None:
    ok = fraudctl("check-config", *(str(ROOT / f"Pulumi.{s}.yaml") for s in STACKS))
    assert ok.returncode == 0, ok.stderr
    bad = tmp_path / "Pulumi.broken.yaml"
    bad.write_text(
        yaml.safe_dump(
            {
                "config": {
                    "fraud-platform:strategy": "linear",
                    "fraud-platform:regions": [{"name": "a", "context": "x"}, {"name": "b", "context": "x"}],
                }
            }
        )
    )
    proc = fraudctl("check-config", str(bad))
    assert proc.returncode == 2
    assert "strategy: must be one of canary, blue-green" in proc.stderr
    assert "regions[1].context: 'x' is already regions[0]'s cluster" in proc.stderr
    missing = fraudctl("check-config", str(tmp_path / "Pulumi.none.yaml"))
    assert missing.returncode == 2 and "no such file" in missing.stderr


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_rendered_object_validates_against_its_schema(stack: str, strategy: str) -> None:
    result = rendered(stack, strategy)
    from infra.verify.k8s_schema import SchemaRegistry

    for region in result.config.regions:
        # The CRDs this region's releases install, as Helm renders them at the pinned versions.
        crds = [crd for release in result.helm_renders(region.name) for crd in release.crds()]
        registry = SchemaRegistry(crds, crd_source=f"the releases of {region.name}")
        objects = result.manifests(region.name)
        assert registry.validate_objects(objects) == []
        for obj in objects:
            group = group_of(obj["apiVersion"])
            if group not in BUILTIN_GROUPS:
                assert (group, obj["kind"]) in registry.crd_kinds(), f"no CRD for {obj['apiVersion']} {obj['kind']}"


def test_a_render_works_after_asyncio_run_in_the_same_process() -> None:
    """asyncio.run leaves the thread without a current event loop; the mock engine needs one (an order-dependent
    failure of the suite when a test using asyncio.run ran first on the same worker)."""
    code = (
        "import asyncio\n"
        "async def nothing():\n    return None\n"
        "asyncio.run(nothing())\n"
        "from infra.render import run_program\n"
        "print(len(run_program('dev').resources))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.strip().splitlines()[-1]) > 50
