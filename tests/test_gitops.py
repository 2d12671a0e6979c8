"""GitOps delivery: with ``delivery: argocd`` the fraud service goes to a git folder and Argo CD syncs it."""

from __future__ import annotations

import pytest
from render_support import STACKS, STRATEGIES, rendered

from infra import charts, gitops
from infra.config import ConfigError, load_stack
from infra.render import HELM_RELEASE, RecordedResource, RenderResult
from infra.verify.k8s_schema import validate_objects


def providers(result: RenderResult) -> dict[str, RecordedResource]:
    return {r.urn: r for r in result.resources if r.type == "pulumi:providers:kubernetes"}


def provider_of(result: RenderResult, resource: RecordedResource) -> RecordedResource:
    return providers(result)[resource.provider.rsplit("::", 1)[0]]


def fraud_service_objects(result: RenderResult, region: str) -> list[RecordedResource]:
    return [r for r in result.resources if r.is_kubernetes_object and r.name.startswith(f"region-{region}-fraud-")]


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_argocd_delivery_syncs_each_regions_folder_with_prune_and_self_heal(stack: str, strategy: str) -> None:
    result = rendered(stack, strategy, delivery="argocd")
    config = result.config
    for region in config.regions:
        objects = result.manifests(region.name)
        (app,) = [o for o in objects if o["kind"] == "Application"]
        (project,) = [o for o in objects if o["kind"] == "AppProject"]
        assert validate_objects([app, project]) == []
        path = f"gitops/{stack}/{region.name}"
        assert app["metadata"]["namespace"] == charts.NAMESPACES["argocd"]
        assert app["spec"]["project"] == project["metadata"]["name"] == gitops.APP_PROJECT
        assert app["spec"]["source"] == {
            "repoURL": config.git.url,
            "targetRevision": config.git.revision,
            "path": path,
            "directory": {"recurse": True},
        }
        automated = app["spec"]["syncPolicy"]["automated"]
        assert automated["prune"] is True and automated["selfHeal"] is True
        assert app["spec"]["destination"] == {"server": gitops.IN_CLUSTER, "namespace": charts.FRAUD_NAMESPACE}
        assert project["spec"]["sourceRepos"] == [config.git.url]

        # The fraud service is rendered to exactly that folder, not applied to the cluster, except its
        # namespace and Secrets: secret values must never be written to git.
        service = fraud_service_objects(result, region.name)
        assert service, "the fraud service declared nothing"
        secrets = 0
        for resource in service:
            provider = provider_of(result, resource)
            if resource.inputs["kind"] in ("Namespace", "Secret"):
                assert provider.name == f"region-{region.name}-k8s", resource.name
                secrets += resource.inputs["kind"] == "Secret"
                continue
            assert provider.inputs.get("renderYamlToDirectory") == path, resource.name
            assert "context" not in provider.inputs
        assert secrets >= 1
        in_cluster = [o["kind"] for o in objects if o["metadata"].get("namespace") == charts.FRAUD_NAMESPACE]
        assert set(in_cluster) <= {"Secret"}, in_cluster


def test_argo_cd_objects_wait_for_the_argo_cd_release() -> None:
    result = rendered("multiregion", delivery="argocd")
    releases = {(result.region_of(r), r.inputs["name"]): r.urn for r in result.resources if r.type == HELM_RELEASE}
    checked = 0
    for resource in result.resources:
        if resource.is_kubernetes_object and resource.inputs["kind"] in ("Application", "AppProject"):
            assert releases[(result.region_of(resource), "argo-cd")] in resource.dependencies
            checked += 1
    assert checked == 2 * len(result.config.regions)


def test_pulumi_delivery_applies_the_fraud_service_and_declares_no_application() -> None:
    result = rendered("multiregion", delivery="pulumi")
    for region in result.config.regions:
        assert not [o for o in result.manifests(region.name) if o["kind"] in ("Application", "AppProject")]
        for resource in fraud_service_objects(result, region.name):
            provider = provider_of(result, resource)
            assert provider.name == f"region-{region.name}-k8s" and "renderYamlToDirectory" not in provider.inputs
    assert not [r for r in providers(result).values() if "renderYamlToDirectory" in r.inputs]


def test_repository_and_revision_come_from_config() -> None:
    result = rendered(
        "dev", delivery="argocd", git__url="https://git.example.com/team/fraud.git", git__revision="release"
    )
    (app,) = [o for o in result.manifests("local") if o["kind"] == "Application"]
    assert app["spec"]["source"]["repoURL"] == "https://git.example.com/team/fraud.git"
    assert app["spec"]["source"]["targetRevision"] == "release"
    assert result.stack_outputs["regions"]["local"]["gitops"] == {
        "application": "argocd/fraud-service",
        "repo": "https://git.example.com/team/fraud.git",
        "revision": "release",
        "path": "gitops/dev/local",
    }


def test_gitops_config_is_validated() -> None:
    with pytest.raises(ConfigError, match=r"delivery: argocd needs platform\.argocd\.enabled: true"):
        load_stack("dev", overrides={"delivery": "argocd", "platform": {"argocd": {"enabled": False}}})
    with pytest.raises(ConfigError, match=r"git\.url: must be the repository's https://"):
        load_stack("dev", overrides={"git": {"url": "ftp://example.com/x"}})
    with pytest.raises(ConfigError, match=r"pipeline\.propose: pull-request needs git\.url"):
        load_stack("dev", overrides={"git": {"url": "git@github.com:o/r.git"}})
    assert load_stack("dev", overrides={"git": {"url": "git@github.com:o/r.git"}, "pipeline": {"propose": "commit"}})
