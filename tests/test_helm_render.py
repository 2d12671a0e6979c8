"""Real Helm renders of the vendored charts (infra/helm.py): capabilities, install order, secrets."""

from __future__ import annotations

import base64
from collections import Counter
from pathlib import Path

import pytest
from render_support import rendered

from infra.chart_archives import CHARTS_DIR, archive_path
from infra.helm import (
    KUBE_VERSION,
    crd_api_versions,
    install_order,
    parse_documents,
    render_archive,
    render_releases,
)
from infra.render import SECRET_MARKER

# Objects per chart with the chart's own defaults (Helm v4 SDK, is_install): the counts
# ../shared/charts/SOURCES.md records from the same charts, so the archives render as the sources do.
DEFAULT_OBJECTS = {
    "kube-prometheus-stack-66.3.1": 126,
    "base-1.24.2": 16,
    "istiod-1.24.2": 17,
    "argo-rollouts-2.38.2": 14,
    "argo-workflows-0.45.4": 29,
    "argo-cd-7.7.11": 53,
    "harbor-1.16.2": 31,
    "flagger-1.40.0": 4,
    "loadtester-0.34.0": 2,
}


def objects(manifests: dict[str, str]) -> list[dict]:
    return [obj for text in manifests.values() for obj in parse_documents(text)]


@pytest.mark.parametrize("chart", sorted(DEFAULT_OBJECTS))
def test_every_archive_renders_with_helm_as_its_source_does(chart: str) -> None:
    manifests, _crds = render_archive(CHARTS_DIR / f"{chart}.tgz", {}, name="r", namespace="ns")
    assert len(objects(manifests)) == DEFAULT_OBJECTS[chart]


def test_flagger_crd_create_templates_its_crds_a_second_time() -> None:
    """Defect 1 as Helm shows it: crd.create duplicates the chart's crds/ folder as templates."""
    archive = archive_path("flagger", "1.40.0")
    with_flag, crd_files = render_archive(archive, {"crd": {"create": True}}, name="flagger", namespace="f")
    without, _ = render_archive(archive, {}, name="flagger", namespace="f")
    kinds = Counter(o["kind"] for o in objects(with_flag))
    assert (len(objects(with_flag)), kinds["CustomResourceDefinition"], len(objects(without))) == (7, 3, 4)
    assert {o["metadata"]["name"] for o in objects(crd_files)} == {
        o["metadata"]["name"] for o in objects(with_flag) if o["kind"] == "CustomResourceDefinition"
    }


def test_capabilities_decide_what_a_chart_emits() -> None:
    """argo-cd creates its ServiceMonitor only when the cluster serves monitoring.coreos.com/v1."""
    values = {"server": {"metrics": {"enabled": True, "serviceMonitor": {"enabled": True}}}}
    archive = archive_path("argo-cd", "7.7.11")
    bare, _ = render_archive(archive, values, name="argo-cd", namespace="argocd")
    monitored, _ = render_archive(
        archive, values, name="argo-cd", namespace="argocd", api_versions={"monitoring.coreos.com/v1"}
    )
    assert "ServiceMonitor" not in {o["kind"] for o in objects(bare)}
    assert "ServiceMonitor" in {o["kind"] for o in objects(monitored)}


def test_renders_target_the_pinned_kubernetes_version(tmp_path: Path) -> None:
    chart = tmp_path / "caps"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: caps\nversion: 0.1.0\n")
    (chart / "templates" / "cm.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: caps}\n"
        'data: {kube: {{ .Capabilities.KubeVersion.Version | quote }}, install: "{{ .Release.IsInstall }}"}\n'
    )
    from infra.chart_archives import package_chart

    manifests, _ = render_archive(package_chart(chart, tmp_path), {}, name="caps", namespace="x")
    (cm,) = objects(manifests)
    assert cm["data"] == {"kube": KUBE_VERSION, "install": "true"}


def test_install_order_and_capabilities_follow_the_programs_dependencies() -> None:
    result = rendered("dev")
    waits = result.helm_waits_for("local")
    # The Prometheus Operator comes first; Flagger waits for it and for the mesh; the load tester for Flagger.
    assert waits["kube-prometheus-stack"] == set()
    assert {"kube-prometheus-stack", "istio-base", "istiod"} <= waits["flagger"]
    assert "flagger" in waits["flagger-loadtester"]
    order = install_order(result.helm_releases("local"), waits)
    assert order[0] == "kube-prometheus-stack" and order.index("flagger") < order.index("flagger-loadtester")
    renders = {r.name: r for r in result.helm_renders("local")}
    assert all(r.error is None for r in renders.values()), [r.error for r in renders.values()]
    # Each release sees the CRDs of what it waits for, never its own templated CRDs or a sibling's.
    assert "monitoring.coreos.com/v1" in renders["flagger"].api_versions
    assert "networking.istio.io/v1/VirtualService" in renders["flagger"].api_versions
    assert not [v for v in renders["kube-prometheus-stack"].api_versions if v.startswith("monitoring")]
    assert not [v for v in renders["argo-rollouts"].api_versions if v.startswith("argoproj.io")]
    # So the Flagger chart emits its ServiceMonitor (serviceMonitor.enabled), as it will on the cluster.
    assert "ServiceMonitor" in {o.kind for o in renders["flagger"].objects()}


def test_crd_api_versions_lists_served_versions_only() -> None:
    crd = {
        "spec": {
            "group": "example.io",
            "names": {"kind": "Widget"},
            "versions": [{"name": "v1", "served": True}, {"name": "v1beta1", "served": False}],
        }
    }
    assert crd_api_versions([crd]) == {"example.io/v1", "example.io/v1/Widget"}


def test_generated_secrets_never_reach_a_render_in_plain_text() -> None:
    result = rendered("multiregion")
    for region in result.config.regions:
        text = "".join(r.text() for r in result.helm_renders(region.name))
        assert not [s for s in result.generated_secrets if s in text]
        # Harbor's database password is only taken inline: its Secrets carry the placeholder, base64-encoded.
        harbor = next(r for r in result.helm_renders(region.name) if r.name == "harbor")
        placeholder = base64.b64encode(SECRET_MARKER.encode()).decode()
        secrets = [o.obj for o in harbor.objects() if o.kind == "Secret"]
        assert "POSTGRES_PASSWORD" in str(secrets)
        assert all(
            value == placeholder for obj in secrets for key, value in (obj.get("data") or {}).items()
            if key.endswith("DATABASE_PASSWORD") or key.startswith("POSTGRES")
        )


def test_a_release_from_a_repository_that_is_not_vendored_is_reported_not_rendered() -> None:
    releases = [
        {"name": "harbor", "namespace": "harbor", "chart": "harbor", "version": "9.9.9",
         "repo": "https://helm.goharbor.io", "values": {}},
        {"name": "flagger", "namespace": "f", "chart": "flagger", "version": "1.40.0",
         "repo": "https://flagger.app", "values": {}},
    ]
    harbor, flagger = render_releases(releases, {})
    assert harbor.error and "not vendored under charts/" in harbor.error and "NOT RENDERED" in harbor.text()
    # The same chart and version from a repository renders from the vendored archive.
    assert flagger.error is None and flagger.archive == archive_path("flagger", "1.40.0")
