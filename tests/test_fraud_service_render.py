"""The fraud service as the real Pulumi program renders it: both strategies, every stack, checked against
the upstream schemas, the CRD order, and the stack config that shaped it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from render_support import STACKS, STRATEGIES, fraudctl, rendered

from infra import charts
from infra.config import ConfigError, load_stack
from infra.render import HELM_RELEASE, SECRET_MARKER, SECRET_SIG, SECRET_VALUE_SIG, RenderResult, run_program
from infra.service import names as fraud_service
from infra.verify.k8s_schema import validate_objects
from rollout import analysis
from rollout.settings import AnalysisSettings

NS = charts.FRAUD_NAMESPACE
COMPONENT_TYPE = "fraud:serving:FraudModelService"
ALERT = fraud_service.ALERT_SECRET
# Which Helm release(s) install the CRDs (or, for the Canary, the mesh it drives) each kind needs.
CRD_RELEASES = {
    "Canary": {"flagger", "istio-base", "istiod"},
    "MetricTemplate": {"flagger"},
    "AlertProvider": {"flagger"},
    "Rollout": {"argo-rollouts"},
    "AnalysisTemplate": {"argo-rollouts"},
    "ServiceMonitor": {"kube-prometheus-stack"},
    "PrometheusRule": {"kube-prometheus-stack"},
}


def service_objects(result: RenderResult, region: str) -> list[dict[str, Any]]:
    return [
        o
        for o in result.manifests(region)
        if o["metadata"].get("namespace") == NS or (o["kind"] == "Namespace" and o["metadata"]["name"] == NS)
    ]


def find(objects: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    matches = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def kinds(objects: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [o for o in objects if o["kind"] == kind]


def first_region(result: RenderResult) -> list[dict[str, Any]]:
    return service_objects(result, result.config.regions[0].name)


def workload(objects: list[dict[str, Any]]) -> dict[str, Any]:
    kind = "Rollout" if any(o["kind"] == "Rollout" for o in objects) else "Deployment"
    return find(objects, kind, fraud_service.APP)


def env_of(obj: dict[str, Any]) -> dict[str, Any]:
    container = obj["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_object_of_the_service_validates_against_upstream_schemas(stack: str, strategy: str) -> None:
    result = rendered(stack, strategy)
    for region in result.config.regions:
        objects = service_objects(result, region.name)
        expected = {"Canary", "MetricTemplate"} if strategy == "canary" else {"Rollout", "AnalysisTemplate"}
        present = {o["kind"] for o in objects}
        assert expected | {"ServiceMonitor", "PrometheusRule", "NetworkPolicy", "HorizontalPodAutoscaler"} <= present
        assert not ({"Canary", "Rollout"} - expected) & present, "objects of the other strategy were rendered"
        assert validate_objects(objects) == []


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_custom_resources_depend_on_the_releases_that_install_their_crds(stack: str, strategy: str) -> None:
    result = rendered(stack, strategy)
    releases = {(result.region_of(r), r.inputs["name"]): r.urn for r in result.resources if r.type == HELM_RELEASE}
    checked = set()
    for resource in result.resources:
        kind = resource.inputs.get("kind") if resource.is_kubernetes_object else None
        if kind not in CRD_RELEASES or resource.inputs.get("metadata", {}).get("namespace") != NS:
            continue
        region = result.region_of(resource)
        for release in CRD_RELEASES[kind]:
            assert releases[(region, release)] in resource.dependencies, f"{kind} {resource.name} not after {release}"
        checked.add(kind)
    want = {"ServiceMonitor", "PrometheusRule"} | (
        {"Canary", "MetricTemplate"} if strategy == "canary" else {"Rollout", "AnalysisTemplate"}
    )
    assert want <= checked


def test_one_component_per_region_with_children_parented_and_named_from_it() -> None:
    result = rendered("multiregion", "canary")
    components = [r for r in result.resources if r.type == COMPONENT_TYPE]
    assert {c.name for c in components} == {f"region-{r.name}-fraud" for r in result.config.regions}
    by_urn = result.by_urn()
    for component in components:
        children = [r for r in result.resources if r.parent == component.urn]
        assert len(children) > 15
        assert all(child.name.startswith(component.name + "-") for child in children)
        assert by_urn[component.parent].type == "fraud:stack:RegionStack"
        region = component.name[len("region-") : -len("-fraud")]
        assert all(result.region_of(c) == region for c in children if c.is_kubernetes_object)


def test_canary_analysis_follows_the_default_config() -> None:
    objects = first_region(rendered("dev", "canary"))
    canary = find(objects, "Canary")
    a = load_stack("dev").analysis
    spec = canary["spec"]
    assert spec["provider"] == "istio"
    assert spec["targetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": fraud_service.APP}
    assert spec["autoscalerRef"]["name"] == find(objects, "HorizontalPodAutoscaler")["metadata"]["name"]
    assert spec["service"]["gateways"] == ["mesh"] and spec["service"]["trafficPolicy"]["tls"]["mode"] == "ISTIO_MUTUAL"
    assert spec["analysis"]["interval"] == "1m" and spec["analysis"]["threshold"] == a.threshold == 3
    assert spec["analysis"]["stepWeights"] == [5, 10, 50]
    metrics = {m["name"]: m for m in spec["analysis"]["metrics"]}
    # System checks only: model quality is the decision service's (webhooks below).
    assert set(metrics) == {"success-rate", "latency-p99"}
    assert metrics["success-rate"]["thresholdRange"] == {"min": 99}
    assert metrics["latency-p99"]["thresholdRange"] == {"max": 100}
    assert metrics["success-rate"]["interval"] == "1m" and "templateVariables" not in metrics["success-rate"]
    templates = {t["metadata"]["name"]: t for t in kinds(objects, "MetricTemplate")}
    assert {m["templateRef"]["name"] for m in metrics.values()} == set(templates)
    assert all(t["spec"]["provider"]["address"] == charts.PROMETHEUS_URL for t in templates.values())
    # The canary's pods by identity (issue 10 #4), never by model_version.
    for template in templates.values():
        assert 'app_kubernetes_io_name="{{ target }}"' in template["spec"]["query"]
        assert "model_version" not in template["spec"]["query"]
    hooks = {h["name"]: h for h in spec["analysis"]["webhooks"]}
    url = fraud_service.REPLAY_URL
    assert [(h["name"], h["type"], h["url"]) for h in spec["analysis"]["webhooks"]] == [
        ("smoke-test", "pre-rollout", f"{url}/flagger/smoke"),
        ("labelled-replay-warmup", "pre-rollout", f"{url}/flagger/replay"),
        ("labelled-replay", "rollout", f"{url}/flagger/replay"),
        ("decision-rollback", "rollback", f"{url}/flagger/rollback"),
        ("decision-traffic-increase", "confirm-traffic-increase", f"{url}/flagger/confirm-traffic-increase"),
        ("decision-promotion", "confirm-promotion", f"{url}/flagger/confirm-promotion"),
    ]
    assert hooks["smoke-test"]["metadata"]["candidate"] == fraud_service.CANARY_URL
    replay = hooks["labelled-replay"]["metadata"]
    assert replay == hooks["labelled-replay-warmup"]["metadata"]
    assert (replay["stable"], replay["candidate"]) == (fraud_service.PRIMARY_URL, fraud_service.CANARY_URL)
    # The plan's size: analysis.replayRate x analysis.interval labelled pairs per interval.
    assert replay["transactions"] == str(round(a.replay_rate * a.interval_seconds))
    # A rollout webhook must be done within the interval it runs in.
    assert int(hooks["labelled-replay"]["timeout"].rstrip("s")) <= a.interval_seconds
    assert int(replay["timeoutSeconds"]) < a.interval_seconds
    assert "alerts" not in spec["analysis"] and not kinds(objects, "AlertProvider")


def test_the_decision_service_gets_the_stacks_analysis_and_keeps_one_pod() -> None:
    for strategy in STRATEGIES:
        config = load_stack("dev", overrides={"strategy": strategy})
        objects = first_region(rendered("dev", strategy))
        deploy = find(objects, "Deployment", fraud_service.REPLAY)
        assert deploy["spec"]["replicas"] == 1 and deploy["spec"]["strategy"] == {"type": "Recreate"}
        env = env_of(deploy)
        assert AnalysisSettings.from_section("analysis", json.loads(env["DECISION_ANALYSIS"]))[0] == config.analysis
        assert env["DECISION_PROMETHEUS_URL"] == charts.PROMETHEUS_URL
        args = deploy["spec"]["template"]["spec"]["containers"][0]["args"]
        pod = deploy["spec"]["template"]["spec"]
        if strategy == "canary":
            assert "--kubernetes" not in args and pod["automountServiceAccountToken"] is False
            assert not [o for o in objects if o["kind"] in ("Role", "RoleBinding")]
        else:
            # Blue-green: it lists pods by pod-template hash, and nothing else.
            assert "--kubernetes" in args and pod["automountServiceAccountToken"] is True
            assert pod["serviceAccountName"] == fraud_service.REPLAY
            role = find(objects, "Role", fraud_service.REPLAY)
            assert role["rules"] == [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]
            binding = find(objects, "RoleBinding", fraud_service.REPLAY)
            assert binding["subjects"] == [{"kind": "ServiceAccount", "name": fraud_service.REPLAY, "namespace": NS}]
        policies = {p["metadata"]["name"]: p["spec"] for p in kinds(objects, "NetworkPolicy")}
        egress = policies[f"{fraud_service.REPLAY}-egress"]["egress"]
        prometheus = [r for r in egress if r.get("to") and "monitoring" in json.dumps(r["to"])]
        assert prometheus and prometheus[0]["ports"] == [{"protocol": "TCP", "port": 9090}]


def test_overrides_change_steps_thresholds_and_gates() -> None:
    overrides = {"stepWeights": [10, 20, 40], "maxLatencyP99Ms": 80, "threshold": 5, "interval": 30, "horizon": 7}
    result = run_program("dev", overrides={"strategy": "canary", "analysis": {**overrides, "manualPromotion": True}})
    objects = first_region(result)
    spec = find(objects, "Canary")["spec"]["analysis"]
    assert spec["stepWeights"] == [10, 20, 40] and spec["threshold"] == 5 and spec["interval"] == "30s"
    assert {m["name"]: m["thresholdRange"] for m in spec["metrics"]}["latency-p99"] == {"max": 80}
    gate = [h for h in spec["webhooks"] if h["name"] == "manual-promotion"]
    assert gate == [
        {"name": "manual-promotion", "type": "confirm-promotion", "url": f"{charts.LOADTESTER_URL}gate/check"}
    ]
    # Same change reaches the Argo form: every metric of a run measures for the horizon.
    bg = first_region(run_program("dev", overrides={"strategy": "blue-green", "analysis": overrides}))
    template = find(bg, "AnalysisTemplate", analysis.ARGO_TEMPLATE)
    assert {m["count"] for m in template["spec"]["metrics"]} == {7}
    assert {m["failureLimit"] for m in template["spec"]["metrics"]} == {4}
    # After the switch every user is on the new version: the first failed system check switches back.
    post_template = find(bg, "AnalysisTemplate", analysis.ARGO_POST_TEMPLATE)
    assert {m["count"] for m in post_template["spec"]["metrics"]} == {7}
    assert {m["failureLimit"] for m in post_template["spec"]["metrics"]} == {0}
    (decision,) = find(bg, "AnalysisTemplate", "fraud-decision")["spec"]["metrics"]
    assert decision["count"] == 7 and decision["interval"] == "30s" and decision["failureLimit"] == 0


def test_render_cli_set_override_reaches_the_canary(tmp_path: Path) -> None:
    out = tmp_path / "render"
    proc = fraudctl("render", "--stack", "dev", "--out", str(out), "--set", "analysis.stepWeights=[10,20,40]")
    assert proc.returncode == 0, proc.stderr
    docs = list(yaml.safe_load_all((out / "local" / "manifests.yaml").read_text()))
    canary = find([d for d in docs if d], "Canary")
    assert canary["spec"]["analysis"]["stepWeights"] == [10, 20, 40]


def test_blue_green_rollout_follows_config() -> None:
    objects = first_region(rendered("dev", "blue-green"))
    rollout = find(objects, "Rollout")
    a = load_stack("dev").analysis
    bg = rollout["spec"]["strategy"]["blueGreen"]
    assert bg["activeService"] == fraud_service.APP and bg["previewService"] == fraud_service.PREVIEW
    services = {s["metadata"]["name"]: s for s in kinds(objects, "Service")}
    for name in (bg["activeService"], bg["previewService"]):
        assert services[name]["spec"]["selector"] == rollout["spec"]["selector"]["matchLabels"]
    assert bg["autoPromotionEnabled"] is True and bg["scaleDownDelaySeconds"] == a.scale_down_delay_seconds
    assert bg["abortScaleDownDelaySeconds"] == a.scale_down_delay_seconds
    assert rollout["spec"]["progressDeadlineAbort"] is True
    pre, post = bg["prePromotionAnalysis"], bg["postPromotionAnalysis"]
    assert [t["templateName"] for t in pre["templates"]] == ["fraud-smoke", "fraud-decision", analysis.ARGO_TEMPLATE]
    assert [t["templateName"] for t in post["templates"]] == ["fraud-decision", analysis.ARGO_POST_TEMPLATE]
    hashes = analysis.argo_rollout_hash_args()
    assert pre["args"] == [*hashes, {"name": "phase", "value": "pre"}]
    assert post["args"] == [*hashes, {"name": "phase", "value": "post"}]
    templates = {t["metadata"]["name"]: t for t in kinds(objects, "AnalysisTemplate")}
    assert {t["templateName"] for t in pre["templates"] + post["templates"]} <= set(templates)
    # Every arg a template declares without a default is supplied by the Rollout (Argo refuses the run else).
    supplied = {arg["name"] for arg in pre["args"]}
    for name in ("fraud-smoke", "fraud-decision", analysis.ARGO_TEMPLATE, analysis.ARGO_POST_TEMPLATE):
        declared = {arg["name"] for arg in templates[name]["spec"]["args"] if "value" not in arg}
        assert declared <= supplied, name
    (decision,) = templates["fraud-decision"]["spec"]["metrics"]
    web = decision["provider"]["web"]
    assert web["url"] == f"{fraud_service.REPLAY_URL}/argo/decision" and web["jsonPath"] == "{$.verdict}"
    assert decision["successCondition"] == 'result == "pass" || result == "undecided"'
    assert decision["failureCondition"] == 'result == "fail"'
    assert decision["count"] == a.horizon and decision["failureLimit"] == 0 and decision["inconclusiveLimit"] == 0
    body = json.loads(web["body"])
    assert body["candidateHash"] == "{{args.candidate_hash}}" and body["stableHash"] == "{{args.stable_hash}}"
    assert body["phase"] == "{{args.phase}}" and body["measurements"] == str(a.horizon)
    pre_checks = templates[analysis.ARGO_TEMPLATE]["spec"]["metrics"]
    post_checks = templates[analysis.ARGO_POST_TEMPLATE]["spec"]["metrics"]
    assert [m["name"] for m in pre_checks] == [m["name"] for m in post_checks]
    assert {m["failureLimit"] for m in pre_checks} == {a.threshold - 1}
    assert {m["failureLimit"] for m in post_checks} == {0}  # after the switch: the first failure switches back
    for metric in pre_checks + post_checks:
        assert 'rollouts_pod_template_hash="{{args.candidate_hash}}"' in metric["provider"]["prometheus"]["query"]
    hpa = find(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "name": "fraud-detector",
    }
    manual = find(first_region(rendered("dev", "blue-green", analysis__autoPromotion=False)), "Rollout")
    assert manual["spec"]["strategy"]["blueGreen"]["autoPromotionEnabled"] is False
    assert not kinds(objects, "Deployment") or all(
        d["metadata"]["name"] != fraud_service.APP for d in kinds(objects, "Deployment")
    )


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_model_server_pod_is_hardened_probed_and_configured(strategy: str) -> None:
    result = rendered("multiregion", strategy)
    config = result.config
    objects = first_region(result)
    obj = workload(objects)
    assert "replicas" not in obj["spec"], "the HPA owns the replica count"
    pod = obj["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"].startswith(f"{config.regions[0].registry_host}:30003/fraud/fraud-serving@sha256:")
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    security = container["securityContext"]
    assert security["runAsNonRoot"] and security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert container["resources"] == {
        "requests": {"cpu": config.serving.cpu_request, "memory": config.serving.memory_request},
        "limits": {"cpu": config.serving.cpu_limit, "memory": config.serving.memory_limit},
    }
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    env = env_of(obj)
    assert env["OMP_NUM_THREADS"] == "1" and env["MLSERVER_PARALLEL_WORKERS"] == "0"
    assert env["MLSERVER_MODEL_MAX_BATCH_SIZE"] == str(config.serving.max_batch_size)
    assert float(env["MLSERVER_MODEL_MAX_BATCH_TIME"]) == config.serving.max_batch_time
    assert env["MLSERVER_MODEL_VERSION"] == "v2" and env["MLSERVER_MODEL_URI"] == config.model.candidate_uri
    assert obj["spec"]["template"]["metadata"]["labels"][fraud_service.VERSION_POD_LABEL] == "v2"
    assert "SIMULATE_ERROR" not in env
    # The signing key is a file of the mounted Secret, named by FEEDBACK_SIGNING_KEY_FILE (no Secret in env).
    assert "FEEDBACK_SIGNING_KEY" not in env and not [e for e in container.get("env", []) if "valueFrom" in e]
    key_dir, key_name = env["FEEDBACK_SIGNING_KEY_FILE"].rsplit("/", 1)
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == key_dir]
    assert mount["readOnly"] is True
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["items"] == [{"key": key_name, "path": key_name}]
    secret = find(objects, "Secret", volume["secret"]["secretName"])
    assert secret["stringData"][key_name] == SECRET_MARKER  # generated, kept secret
    hpa, pdb = find(objects, "HorizontalPodAutoscaler"), find(objects, "PodDisruptionBudget")
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (
        config.serving.min_replicas,
        config.serving.max_replicas,
    )
    pod_labels = obj["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_every_model_server_pod_is_scraped_once_through_the_metrics_service() -> None:
    objects = first_region(rendered("dev", "canary"))
    monitor = find(objects, "ServiceMonitor")
    metrics_svc = find(objects, "Service", fraud_service.METRICS_SERVICE)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= metrics_svc["metadata"]["labels"].items()
    assert metrics_svc["spec"]["clusterIP"] == "None"
    assert metrics_svc["spec"]["selector"] == fraud_service.WORKLOAD_LABEL
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in metrics_svc["spec"]["ports"]}
    ports = workload(objects)["spec"]["template"]["spec"]["containers"][0]["ports"]
    assert {"name": "http-metrics", "containerPort": 8082} in ports
    # Pod identity on every series: the analysis selects the candidate's pods by it (issue 10 #4).
    assert monitor["spec"]["podTargetLabels"] == ["app.kubernetes.io/name", "rollouts-pod-template-hash"]
    # No other Service selects model-server pods by the workload label (no double scrape).
    others = [s for s in kinds(objects, "Service") if s["spec"].get("selector") == fraud_service.WORKLOAD_LABEL]
    assert others == [metrics_svc]


def test_network_policies_deny_by_default_and_allow_the_needed_flows() -> None:
    objects = first_region(rendered("dev", "canary"))
    policies = {p["metadata"]["name"]: p["spec"] for p in kinds(objects, "NetworkPolicy")}
    deny = policies["default-deny"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"} and "ingress" not in deny
    ingress = policies[f"{fraud_service.APP}-ingress"]["ingress"]

    def allowed(namespace: str) -> set[int]:
        return {
            p["port"]
            for rule in ingress
            for peer in rule["from"]
            if peer.get("namespaceSelector", {}).get("matchLabels", {}).get("kubernetes.io/metadata.name") == namespace
            for p in rule["ports"]
        }

    assert 8082 in allowed(charts.NAMESPACES["monitoring"]) and 8080 not in allowed(charts.NAMESPACES["monitoring"])
    assert allowed(charts.NAMESPACES["flagger"]) == {8080}
    mesh = [peer for rule in ingress for peer in rule["from"] if "istio-injection" in str(peer)]
    assert mesh, "mesh clients must be allowed"


def test_fault_drill_config_path_sets_simulate_error_on_the_rolled_out_version() -> None:
    for value in ("true", "degrade"):
        for strategy in STRATEGIES:
            objects = first_region(rendered("dev", strategy, serving__simulateError=value))
            assert env_of(workload(objects))["SIMULATE_ERROR"] == value
    with pytest.raises(ConfigError, match=r"serving.simulateError: must be one of false, true, degrade; got 'maybe'"):
        load_stack("dev", overrides={"serving": {"simulateError": "maybe"}})
    # A YAML boolean is not the drill's mode: it must be written as the string.
    with pytest.raises(ConfigError, match=r"serving.simulateError: must be one of false, true, degrade; got True"):
        load_stack("dev", overrides={"serving": {"simulateError": True}})


def test_target_stable_seeds_the_workload_with_the_stable_version() -> None:
    objects = first_region(rendered("dev", "canary", model__target="stable"))
    env = env_of(workload(objects))
    assert env["MLSERVER_MODEL_VERSION"] == "v1" and env["MLSERVER_MODEL_URI"] == "models:/fraud-detector@champion"
    # Nothing in the analysis names a version: it selects pods, whatever label they carry.
    assert "v1" not in json.dumps(find(objects, "Canary")["spec"]["analysis"])


def test_alert_provider_only_when_a_webhook_is_configured() -> None:
    result = rendered("dev", "canary", alertWebhookUrl="https://hooks.example.com/T000/B000/XXXX")
    objects = first_region(result)
    provider = find(objects, "AlertProvider")
    secret = find(objects, "Secret", provider["spec"]["secretRef"]["name"])
    # The URL reaches the Secret only as a Pulumi secret (encrypted in state, masked in output): a render
    # override of a secret key is taken as that secret, so the rendered Secret shows the marker.
    (recorded,) = [r for r in result.resources if r.is_kubernetes_object and r.name.endswith(f"secret-{ALERT}")]
    assert recorded.inputs["stringData"].get(SECRET_SIG) == SECRET_VALUE_SIG
    assert secret["stringData"]["address"] == SECRET_MARKER
    assert "hooks.example.com" not in json.dumps(objects)
    alerts = find(objects, "Canary")["spec"]["analysis"]["alerts"]
    assert alerts[0]["providerRef"] == {"name": provider["metadata"]["name"], "namespace": NS}
    assert validate_objects([provider, secret]) == []


def test_model_metrics_configmap_from_the_evaluation_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_HOME", str(tmp_path))
    reports = tmp_path / "reports"
    reports.mkdir()
    payload = {"model_version": "v2", "precision": 0.91, "recall": 0.8, "auprc": 0.85, "threshold": 0.4}
    (reports / "metrics-v2.json").write_text(json.dumps(payload))
    result = run_program("dev", overrides={"model": {"metricsFile": "reports/metrics-v2.json"}})
    cm = find(first_region(result), "ConfigMap", "model-metrics-v2")
    assert json.loads(cm["data"]["metrics.json"]) == payload
    assert cm["metadata"]["annotations"]["fraud-platform/source"] == str(reports / "metrics-v2.json")
    # Not set: no ConfigMap. Set but wrong: the config is refused, naming the file and the fix.
    assert not [o for o in first_region(rendered("dev", "canary")) if o["metadata"]["name"].startswith("model-metrics")]
    with pytest.raises(ConfigError, match=r"model.metricsFile: .*metrics-v3.json does not exist"):
        load_stack("dev", overrides={"model": {"metricsFile": "reports/metrics-v3.json"}})
    (reports / "metrics-v1.json").write_text(json.dumps({**payload, "model_version": "v1"}))
    with pytest.raises(ConfigError, match=r"has model_version 'v1' but model.candidateVersion is 'v2'"):
        load_stack("dev", overrides={"model": {"metricsFile": str(reports / "metrics-v1.json")}})


def test_strategy_needs_its_controllers_enabled() -> None:
    with pytest.raises(ConfigError, match=r"platform.flagger.enabled: must be true for strategy canary"):
        load_stack(
            "dev", overrides={"platform": {"flagger": {"enabled": False}, "flaggerLoadtester": {"enabled": False}}}
        )
    with pytest.raises(ConfigError, match=r"platform.argoRollouts.enabled: must be true for strategy blue-green"):
        load_stack("dev", overrides={"strategy": "blue-green", "platform": {"argoRollouts": {"enabled": False}}})


def test_dashboard_and_rules_are_wired_for_grafana_and_prometheus() -> None:
    objects = first_region(rendered("dev", "canary"))
    dashboards = [c for c in kinds(objects, "ConfigMap") if c["metadata"]["labels"].get(charts.GRAFANA_DASHBOARD_LABEL)]
    (board_cm,) = dashboards
    assert board_cm["metadata"]["labels"][charts.GRAFANA_DASHBOARD_LABEL] == "1"
    board = json.loads(next(iter(board_cm["data"].values())))
    exprs = " ".join(t["expr"] for p in board["panels"] for t in p["targets"])
    assert "flagger_canary_weight" in exprs and "fraud_feedback_total" in exprs
    rule = find(objects, "PrometheusRule")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert {"FraudModelDown", "FraudModelErrorRate", "FraudModelLatencyP99", "FraudModelPrecisionDrop"} <= alerts
    assert "FraudRolloutTrafficImbalance" in alerts
    bg_rule = find(first_region(rendered("dev", "blue-green")), "PrometheusRule")
    assert "FraudRolloutTrafficImbalance" not in {r["alert"] for g in bg_rule["spec"]["groups"] for r in g["rules"]}


def test_the_istio_routing_flagger_generates_from_the_canary_is_valid_istio() -> None:
    """Flagger writes the VirtualService and DestinationRules from ``spec.service``; what we put there must
    be valid for Istio's own schemas, or Flagger's objects would be refused at rollout time."""
    service = find(first_region(rendered("dev", "canary")), "Canary")["spec"]["service"]
    app = fraud_service.APP
    rules = [
        {
            "apiVersion": "networking.istio.io/v1beta1",
            "kind": "DestinationRule",
            "metadata": {"name": f"{app}-{role}", "namespace": NS},
            "spec": {"host": f"{app}-{role}", "trafficPolicy": service["trafficPolicy"]},
        }
        for role in ("primary", "canary")
    ]
    virtual_service = {
        "apiVersion": "networking.istio.io/v1beta1",
        "kind": "VirtualService",
        "metadata": {"name": app, "namespace": NS},
        "spec": {
            "hosts": service["hosts"],
            "gateways": service["gateways"],
            "http": [
                {
                    "route": [
                        {"destination": {"host": f"{app}-primary", "port": {"number": service["port"]}}, "weight": 95},
                        {"destination": {"host": f"{app}-canary", "port": {"number": service["port"]}}, "weight": 5},
                    ]
                }
            ],
        },
    }
    assert validate_objects([*rules, virtual_service]) == []
    broken = {**rules[0], "spec": {**rules[0]["spec"], "trafficPolicy": {"tls": {"mode": "MUTUAL_ISTIO"}}}}
    assert validate_objects([broken]) != []
