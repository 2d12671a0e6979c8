"""``fraudctl verify``: each check catches a deliberately broken render; the stacks as they are."""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Callable

import pytest
from render_support import rendered

from infra.verify.checks import CHECKS, format_table, platform_of, run_checks
from infra.verify.platform import Platform, PlatformObject

# Findings verify reports on the current tree that another engineer is still fixing: none. Every check must pass
# on every stack.
KNOWN_FINDINGS: dict[str, tuple[str, ...]] = {}


@functools.cache
def base(stack: str = "dev", **overrides: object) -> Platform:
    result = rendered(stack, **overrides)
    return platform_of(result, result.config.regions[0].name)


def variant(platform: Platform, change: Callable[[list[PlatformObject]], list[PlatformObject]]) -> Platform:
    """The same region with its object list changed (objects are shared: change copies, never edit)."""
    return Platform(platform.region, change(list(platform.objects)), platform.registry, platform.releases)


def edited(kind: str, name: str, edit: Callable[[dict], None], origin: str | None = None):
    """A change that replaces one object by an edited copy of it."""

    def change(objects: list[PlatformObject]) -> list[PlatformObject]:
        out, hits = [], 0
        for item in objects:
            if item.kind == kind and item.name == name and (origin is None or item.origin == origin):
                obj = copy.deepcopy(item.obj)
                edit(obj)
                item, hits = PlatformObject(obj, item.origin, item.source), hits + 1
            out.append(item)
        assert hits == 1, f"{kind}/{name}: {hits} objects"
        return out

    return change


def added(*objs: dict, origin: str = "program") -> Callable[[list[PlatformObject]], list[PlatformObject]]:
    return lambda objects: [*objects, *(PlatformObject(o, origin, "test") for o in objs)]


def failures(platform: Platform, check: str) -> list[str]:
    (result,) = run_checks(platform, [check])
    assert result.checked > 0
    return result.failures


def only_known(platform: Platform, check: str) -> list[str]:
    known = KNOWN_FINDINGS.get(check, ())
    return [f for f in failures(platform, check) if not any(k in f for k in known)]


# ---------------------------------------------------------------------------------------------------
# The stacks


@pytest.mark.parametrize(
    ("stack", "overrides"),
    [("dev", {}), ("multiregion", {}), ("dev", {"strategy": "blue-green"}), ("dev", {"delivery": "argocd"})],
    ids=["dev", "multiregion", "blue-green", "argocd"],
)
def test_every_stack_passes_every_check_but_the_known_findings(stack: str, overrides: dict) -> None:
    result = rendered(stack, **overrides)
    for region in result.config.regions:
        results = run_checks(platform_of(result, region.name))
        assert [r.name for r in results] == list(CHECKS)
        for r in results:
            unexpected = [f for f in r.failures if not any(k in f for k in KNOWN_FINDINGS.get(r.name, ()))]
            assert not unexpected, (region.name, r.name, unexpected[:5])
            assert r.checked > 0, r.name


def test_argocd_delivery_checks_the_objects_argo_cd_syncs() -> None:
    platform = base("dev", delivery="argocd")
    origins = {o.origin for o in platform.objects if o.kind in ("Canary", "Deployment") and o.namespace == "fraud"}
    assert origins == {"gitops"}


# ---------------------------------------------------------------------------------------------------
# Each check on a deliberately broken render


def test_renders_fails_when_a_release_cannot_be_rendered() -> None:
    platform = base()
    assert failures(platform, "renders") == []
    broken = copy.copy(platform.releases[0])
    broken.error = "template: boom"
    other = Platform(platform.region, platform.objects, platform.registry, [broken, *platform.releases[1:]])
    assert failures(other, "renders") == [f"release {broken.name}: template: boom"]


def test_crds_once_catches_a_chart_templating_its_crds_folder_again() -> None:
    """Defect 1 regression: flagger's crd.create templated crds/ a second time."""
    platform = base()
    assert failures(platform, "crds-once") == []
    canaries = next(o for o in platform.of_kind("CustomResourceDefinition") if o.name == "canaries.flagger.app")
    twice = variant(platform, added(canaries.obj, origin="helm:flagger"))
    [failure] = failures(twice, "crds-once")
    assert failure.startswith("canaries.flagger.app is installed 2 times: helm:flagger flagger/crds/crd.yaml")


def test_the_flagger_release_is_rendered_with_crd_create_off() -> None:
    (flagger,) = [r for r in rendered("dev").helm_releases("local") if r["name"] == "flagger"]
    assert flagger["values"]["crd"] == {"create": False}


def test_unique_catches_two_releases_creating_the_same_object() -> None:
    platform = base()
    assert failures(platform, "unique") == []
    role = next(o for o in platform.of_kind("ClusterRole") if o.origin == "helm:flagger")
    [failure] = failures(variant(platform, added(role.obj, origin="helm:argo-cd")), "unique")
    assert failure == f"ClusterRole/{role.name} is created by helm:flagger, helm:argo-cd"


def test_schemas_catch_a_typo_and_a_field_newer_than_the_pinned_crd() -> None:
    platform = base()
    assert failures(platform, "schemas") == []

    def break_canary(obj: dict) -> None:
        obj["spec"]["analysis"]["stepWeightz"] = obj["spec"]["analysis"].pop("stepWeights")
        obj["spec"]["service"]["headless"] = True  # Flagger 1.44+, not in the 1.40.0 CRD

    found = failures(variant(platform, edited("Canary", "fraud-detector", break_canary)), "schemas")
    assert any("Canary/fraud-detector: spec.analysis.stepWeightz: unknown field" in f for f in found)
    assert any("spec.service.headless: unknown field" in f for f in found)


def test_namespaces_catch_an_object_in_a_namespace_nobody_creates() -> None:
    platform = base()
    assert failures(platform, "namespaces") == []
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "fraud-typo"}}
    assert failures(variant(platform, added(config_map)), "namespaces") == [
        "ConfigMap/fraud-typo/x (program): namespace fraud-typo is created by nobody"
    ]


def _set(path: tuple, value: object) -> Callable[[dict], None]:
    def edit(obj: dict) -> None:
        node = obj
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return edit


@pytest.mark.parametrize(
    ("kind", "name", "edit", "expected"),
    [
        (
            "Service",
            "fraud-detector-metrics",
            _set(("spec", "selector"), {"fraud-platform/workload": "model-srv"}),
            'Service/fraud/fraud-detector-metrics (program): selector {"fraud-platform/workload": "model-srv"} selects '
            "no pods in fraud",
        ),
        (
            "ServiceMonitor",
            "fraud-detector",
            _set(("spec", "endpoints", 0, "port"), "metrics"),
            "ServiceMonitor/fraud/fraud-detector (program): no selected Service has a port named 'metrics'",
        ),
        (
            "ServiceMonitor",
            "fraud-detector",
            _set(("spec", "selector", "matchLabels"), {"app": "nope"}),
            'ServiceMonitor/fraud/fraud-detector (program): selector {"matchLabels": {"app": "nope"}} matches no '
            "Service",
        ),
        (
            "PodDisruptionBudget",
            "fraud-detector",
            _set(("spec", "selector", "matchLabels"), {"a": "b"}),
            'PodDisruptionBudget/fraud/fraud-detector (program): selector {"matchLabels": {"a": "b"}} selects no pods',
        ),
        (
            "HorizontalPodAutoscaler",
            "fraud-detector",
            _set(("spec", "scaleTargetRef", "name"), "fraud"),
            "HorizontalPodAutoscaler/fraud/fraud-detector (program): Deployment fraud/fraud does not exist",
        ),
        (
            "Canary",
            "fraud-detector",
            _set(("spec", "analysis", "metrics", 0, "templateRef", "name"), "fraud-x"),
            "Canary/fraud/fraud-detector (program): MetricTemplate fraud/fraud-x does not exist",
        ),
        (
            "Canary",
            "fraud-detector",
            _set(("spec", "targetRef", "name"), "fraud-detektor"),
            "Canary/fraud/fraud-detector (program): Deployment fraud/fraud-detektor does not exist",
        ),
        (
            "Deployment",
            "fraud-detector",
            _set(("spec", "template", "spec", "serviceAccountName"), "fraud-sa"),
            "Deployment/fraud/fraud-detector (program): ServiceAccount fraud/fraud-sa does not exist",
        ),
    ],
    ids=["service", "monitor-port", "monitor-selector", "pdb", "hpa", "canary-template", "canary-target", "account"],
)
def test_references_catch_a_dangling_selector_or_reference(
    kind: str, name: str, edit: Callable[[dict], None], expected: str
) -> None:
    platform = base()
    assert only_known(platform, "references") == []
    found = failures(variant(platform, edited(kind, name, edit, origin="program")), "references")
    assert any(f.startswith(expected) for f in found), found


def test_references_catch_a_missing_secret_key_and_role() -> None:
    platform = base()

    def wrong_key(obj: dict) -> None:
        for volume in obj["spec"]["template"]["spec"]["volumes"]:
            if volume.get("secret", {}).get("secretName") == "fraud-feedback-signing":
                volume["secret"]["items"][0]["key"] = "signing-key"

    found = only_known(variant(platform, edited("Deployment", "fraud-detector", wrong_key, "program")), "references")
    assert found == [
        "Deployment/fraud/fraud-detector (program): Secret fraud/fraud-feedback-signing has no key 'signing-key'"
    ]
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": {"name": "b", "namespace": "fraud"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "ghost", "namespace": "fraud"}],
    }
    assert only_known(variant(platform, added(binding)), "references") == [
        "RoleBinding/fraud/b (program): Role fraud/reader does not exist",
        "RoleBinding/fraud/b (program): ServiceAccount fraud/ghost does not exist",
    ]


HARBOR_INGRESS = {
    "apiVersion": "networking.k8s.io/v1",
    "kind": "Ingress",
    "metadata": {"name": "harbor-ingress", "namespace": "harbor"},
    "spec": {
        "rules": [
            {
                "host": "harbor.fraud.local",
                "http": {
                    "paths": [
                        {
                            "path": "/",
                            "pathType": "Prefix",
                            "backend": {"service": {"name": "harbor-core", "port": {"number": 80}}},
                        }
                    ]
                },
            }
        ]
    },
}


def test_references_catch_an_ingress_no_controller_serves() -> None:
    """Defect 2 as verify saw it: Harbor's Ingress (expose ingress) had no class and the platform runs no
    ingress controller. Harbor is now reached through its own Service; the check still catches such an Ingress."""
    platform = base()
    assert platform.of_kind("Ingress") == [] and failures(platform, "references") == []
    [finding] = failures(variant(platform, added(HARBOR_INGRESS, origin="helm:harbor")), "references")
    assert "has no ingressClassName and the platform has no default IngressClass" in finding
    default_class = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "IngressClass",
        "metadata": {"name": "nginx", "annotations": {"ingressclass.kubernetes.io/is-default-class": "true"}},
        "spec": {"controller": "k8s.io/ingress-nginx"},
    }
    assert failures(variant(platform, added(HARBOR_INGRESS, default_class)), "references") == []

    broken = copy.deepcopy(HARBOR_INGRESS)
    broken["spec"]["ingressClassName"] = "traefik"
    broken["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]["name"] = "harbor-cor"
    found = failures(variant(platform, added(broken, default_class)), "references")
    assert found == [
        "Ingress/harbor/harbor-ingress (program): IngressClass traefik does not exist: no ingress controller in "
        "the platform serves it",
        "Ingress/harbor/harbor-ingress (program): backend Service harbor/harbor-cor does not exist",
    ]


def test_references_resolve_the_registry_endpoint_to_harbors_nginx() -> None:
    """Service harbor-endpoint (the registry's one address) must select the chart's nginx pods."""
    platform = base()
    (endpoint,) = platform.find("Service", "harbor", "harbor-endpoint")
    assert endpoint.spec["selector"] == {"release": "harbor", "app": "harbor", "component": "nginx"}
    wrong = variant(
        platform,
        edited("Service", "harbor-endpoint", _set(("spec", "selector", "component"), "ngnix"), origin="program"),
    )
    [finding] = failures(wrong, "references")
    assert finding.startswith("Service/harbor/harbor-endpoint (program): selector")


def test_references_catch_a_rollout_without_its_preview_service() -> None:
    platform = base("dev", strategy="blue-green")
    assert only_known(platform, "references") == []
    removed = variant(
        platform, lambda objs: [o for o in objs if not (o.kind == "Service" and o.name == "fraud-detector-preview")]
    )
    assert "Rollout/fraud/fraud-detector (program): Service fraud/fraud-detector-preview does not exist" in failures(
        removed, "references"
    )


def _rule(expr: str) -> dict:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "t", "namespace": "fraud"},
        "spec": {"groups": [{"name": "g", "rules": [{"record": "t:x", "expr": expr}]}]},
    }


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ('sum(rate(fraud_requests_totl{namespace="fraud"}[5m]))', "fraud_requests_totl is exported by nothing"),
        (
            'sum(rate(fraud_requests_total{model_versoin="v2"}[5m]))',
            "fraud_requests_total has no label 'model_versoin'",
        ),
        ("sum by (modelversion) (rate(fraud_requests_total[5m]))", "groups by 'modelversion'"),
        ('max(flagger_canary_weight{name="fraud-detector"})', "flagger_canary_weight has no label 'name'"),
        ('max(flagger_canary_weight{namespace="fraud"})', "namespace is flagger-system there"),
        ('sum(rate(fraud_requests_total{namespace="flagger-system"}[5m]))', "namespace is fraud there"),
        ("sum(rate(fraud_requests_total[5m]) >", "does not parse"),
        ('kube_deployment_status_replicas_available{deploymnet="fraud-detector"}', "has no label 'deploymnet'"),
        (
            "sum by (model_version) (rate(fraud_requests_total[5m])) / on (model_version) group_left (modelversion) "
            "sum by (model_version) (rate(fraud_requests_total[5m]))",
            "groups by 'modelversion'",
        ),
    ],
    ids=[
        "metric",
        "label",
        "grouping",
        "flagger-name",
        "flagger-namespace",
        "wrong-namespace",
        "syntax",
        "ksm-label",
        "group-left",
    ],
)
def test_metrics_catch_names_and_labels_nothing_exports(expr: str, expected: str) -> None:
    platform = base()
    assert only_known(platform, "metrics") == []
    found = failures(variant(platform, added(_rule(expr))), "metrics")
    assert [f for f in found if f.startswith("PrometheusRule/fraud/t (program)") and expected in f], found


def test_metrics_accept_what_the_platform_exports_after_relabelling() -> None:
    platform = base()
    fine = [
        "sum by (model_version, code) "
        '(rate(fraud_requests_total{namespace="fraud",service="fraud-detector-metrics"}[5m]))',
        'max(flagger_canary_weight{exported_namespace="fraud",workload="fraud-detector"})',
        'sum(rate(istio_requests_total{reporter="destination",destination_workload="fraud-detector"}[1m]))',
        'up{namespace="fraud",job="fraud-detector-metrics",endpoint="http-metrics"}',
        "histogram_quantile(0.99, sum by (le) (rate(fraud_request_duration_seconds_bucket[5m])))",
        # kube-state-metrics' ServiceMonitor honours labels: namespace is the object's, not the exporter's.
        'kube_deployment_status_replicas_available{namespace="fraud",deployment="fraud-detector"}',
    ]
    found = failures(
        variant(
            platform,
            added(*(_rule(e) | {"metadata": {"name": f"t{i}", "namespace": "fraud"}} for i, e in enumerate(fine))),
        ),
        "metrics",
    )
    assert [f for f in found if "PrometheusRule/fraud/t" in f] == []


def test_the_canary_weight_alert_and_panel_select_what_flagger_exports() -> None:
    """Defect 5: Flagger 1.40 labels flagger_canary_weight by workload and namespace, which its ServiceMonitor
    moves to exported_namespace; the alert and the dashboard panel read the canary's own weight."""
    platform = base()
    (rule,) = platform.find("PrometheusRule", "fraud", "fraud-model")
    (alert,) = [r for r in rule.spec["groups"][0]["rules"] if r.get("alert") == "FraudRolloutTrafficImbalance"]
    weight = 'flagger_canary_weight{exported_namespace="fraud",workload="fraud-detector"}'
    assert f"max({weight})" in alert["expr"]
    (board,) = platform.find("ConfigMap", "fraud", "fraud-model-dashboard")
    panels = json.loads(board.obj["data"]["fraud-model-rollout.json"])["panels"]
    assert [p["targets"][0]["expr"] for p in panels if p["title"] == "Canary weight (Flagger)"] == [weight]
    assert only_known(platform, "metrics") == []
    assert not [f for f in failures(platform, "metrics") if "flagger_canary_weight" in f]


def test_metrics_catch_a_family_nothing_scrapes() -> None:
    platform = base()
    unscraped = variant(
        platform, lambda objs: [o for o in objs if not (o.kind == "ServiceMonitor" and o.origin == "program")]
    )
    found = failures(unscraped, "metrics")
    assert any("fraud_requests_total (serving/metrics.py" in f and "is not scraped" in f for f in found)


def _template_query(platform: Platform, query: str) -> Callable[[list[PlatformObject]], list[PlatformObject]]:
    return edited("MetricTemplate", "fraud-success-rate", _set(("spec", "query"), query), origin="program")


def test_canary_candidate_catches_a_check_that_reads_the_primary_too() -> None:
    """Defect 4: namespace + model_version also select the primary when both carry the same label."""
    platform = base()
    # The selector before the fix: the namespace and the rolled-out version's label.
    blended = 'sum(rate(fraud_requests_total{namespace="{{ namespace }}",model_version="v2"}[{{ interval }}]))'
    found = failures(variant(platform, _template_query(platform, blended)), "canary-candidate")
    assert any(
        f.startswith(
            "MetricTemplate/fraud/fraud-success-rate (program) via Canary/fraud-detector metric success-rate: "
            "fraud_requests_total{namespace='fraud', model_version='v2'} also matches the serving version's pods"
        )
        for f in found
    )
    # Flagger's own pattern for the target's pods (pkg/metrics/observers) keeps the primary's out.
    candidate_only = (
        'sum(rate(fraud_requests_total{namespace="{{ namespace }}",pod=~"{{ target }}-[0-9a-zA-Z]+(-[0-9a-zA-Z]+)"}'
        "[{{ interval }}]))"
    )
    found = failures(variant(platform, _template_query(platform, candidate_only)), "canary-candidate")
    assert not [f for f in found if "fraud-success-rate" in f]
    wrong_target = 'sum(rate(fraud_requests_total{pod=~"{{ target }}-primary-.*"}[{{ interval }}]))'
    found = failures(variant(platform, _template_query(platform, wrong_target)), "canary-candidate")
    assert any("fraud-success-rate" in f and "selects none of the candidate's series" in f for f in found)


def test_canary_candidate_catches_a_blue_green_check_that_reads_the_active_pods_too() -> None:
    """Blue-green: preview and active pods differ only by their pod template hash (Argo's
    ``podTemplateHashValue: Latest`` argument); the version label alone blends both (defect 4)."""
    platform = base("dev", strategy="blue-green")
    assert not failures(platform, "canary-candidate")
    by_version = 'sum(rate(fraud_requests_total{namespace="{{args.namespace}}",model_version="v2"}[1m]))'

    def select_by_version(objects: list[PlatformObject]) -> list[PlatformObject]:
        out = []
        for item in objects:
            if item.kind == "AnalysisTemplate" and item.name == "fraud-analysis":
                obj = copy.deepcopy(item.obj)
                for metric in obj["spec"]["metrics"]:
                    metric["provider"]["prometheus"]["query"] = by_version
                item = PlatformObject(obj, item.origin, item.source)
            out.append(item)
        return out

    found = failures(variant(platform, select_by_version), "canary-candidate")
    assert any("fraud-analysis" in f and "also matches the serving version's pods" in f for f in found), found


def test_references_catch_a_controller_told_to_call_a_service_that_is_not_there() -> None:
    platform = base()
    assert not [f for f in failures(platform, "references") if "http://" in f]
    hook = {
        "name": "manual-promotion",
        "type": "confirm-promotion",
        "url": "http://flagger-loadtester.flagger-system/gate/check",
    }
    no_loadtester = variant(
        variant(platform, edited("Canary", "fraud-detector", lambda o: o["spec"]["analysis"]["webhooks"].append(hook))),
        lambda objects: [o for o in objects if o.origin != "helm:flagger-loadtester"],
    )
    found = failures(no_loadtester, "references")
    assert any(
        "http://flagger-loadtester.flagger-system/gate/check: Service flagger-system/flagger-loadtester does not exist"
        in f
        for f in found
    ), found
    wrong_port = variant(
        platform,
        edited(
            "MetricTemplate",
            "fraud-success-rate",
            _set(("spec", "provider", "address"), "http://kube-prometheus-stack-prometheus.monitoring:9091"),
            origin="program",
        ),
    )
    assert any("has no port 9091" in f for f in failures(wrong_port, "references"))


def test_canary_candidate_reports_a_template_function_flagger_does_not_have() -> None:
    platform = base()
    bad = 'sum(rate(fraud_requests_total{pod=~"{{ workload }}-.*"}[1m]))'
    found = failures(variant(platform, _template_query(platform, bad)), "canary-candidate")
    assert any("{{ workload }} is not a Flagger template function" in f for f in found)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("docker.io/library/busybox:latest", "is on the latest tag"),
        ("docker.io/library/busybox", "has no tag (means latest)"),
        ("gcr.io/istio-testing/pilot:1.24.2", "comes from a testing registry"),
    ],
)
def test_images_catch_latest_untagged_and_testing_registries(image: str, expected: str) -> None:
    platform = base()
    assert failures(platform, "images") == []
    found = failures(
        variant(
            platform,
            edited("Deployment", "mlflow", _set(("spec", "template", "spec", "containers", 0, "image"), image)),
        ),
        "images",
    )
    assert found == [f"Deployment/mlflow/mlflow (program) container mlflow: {image} {expected}"]


def test_images_catch_sidecars_injected_from_the_testing_hub() -> None:
    """The source istiod chart defaults to gcr.io/istio-testing:latest for pilot and every sidecar."""
    platform = base()

    def testing_hub(obj: dict) -> None:
        values = json.loads(obj["data"]["values"])
        values["global"]["hub"], values["global"]["tag"] = "gcr.io/istio-testing", "latest"
        obj["data"]["values"] = json.dumps(values)

    found = failures(variant(platform, edited("ConfigMap", "istio-sidecar-injector", testing_hub)), "images")
    assert found == [
        "ConfigMap/istio-system/istio-sidecar-injector (helm:istiod): injected sidecars run "
        "gcr.io/istio-testing/proxyv2:latest, which comes from a testing registry"
    ]


def test_istiod_runs_the_release_images() -> None:
    images = [c["image"] for t in base().pod_templates() if t.owner.origin == "helm:istiod" for c in t.containers()]
    assert images == ["docker.io/istio/pilot:1.24.2"]


# ---------------------------------------------------------------------------------------------------
# The command


def test_verify_cli_prints_a_table_and_exits_1_on_a_failure(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from fraudctl.cli import main
    from infra.verify import checks

    assert main(["verify", "--stack", "dev", "--check", "crds-once", "--check", "images"]) == 0
    capsys.readouterr()
    # A broken render (no valid stack produces one): the Canary's target Deployment is gone.
    real = checks.platform_of
    monkeypatch.setattr(
        checks,
        "platform_of",
        lambda result, region: variant(
            real(result, region),
            lambda objects: [o for o in objects if not (o.kind == "Deployment" and o.name == "fraud-detector")],
        ),
    )
    code = main(["verify", "--stack", "dev", "--check", "crds-once", "--check", "references", "--all-failures"])
    out = capsys.readouterr().out
    assert code == 1
    assert "crds-once         pass" in out and "references        FAIL" in out
    assert "Canary/fraud/fraud-detector (program): Deployment fraud/fraud-detector does not exist" in out
    assert out.strip().endswith("s)") and "stack dev: 1 check(s) failed" in out


def test_verify_cli_exits_2_on_bad_config_or_an_unknown_check(capsys: pytest.CaptureFixture[str]) -> None:
    from fraudctl.cli import main

    assert main(["verify", "--stack", "dev", "--set", "strategy=rolling"]) == 2
    assert "strategy: must be one of canary, blue-green; got 'rolling'" in capsys.readouterr().err
    assert main(["verify", "--stack", "dev", "--check", "nope"]) == 2
    assert "unknown check(s) nope" in capsys.readouterr().err


def test_table_lists_every_check_with_status_count_and_first_failures() -> None:
    no_deployment = variant(base(), lambda objects: [o for o in objects if o.kind != "Deployment"])
    results = run_checks(no_deployment, ["renders", "references"])
    table = format_table("local", results, limit=1)
    lines = table.splitlines()
    assert lines[0] == "region local" and lines[1].split() == ["check", "status", "count", "what"]
    assert lines[2].split()[:3] == ["renders", "pass", str(results[0].checked)]
    assert "references        FAIL" in table and "... and" in table
