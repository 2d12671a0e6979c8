"""The decision service's HTTP contract, in process (Starlette's test client on the real app): what Flagger's
webhooks and Argo Rollouts' web metrics get for every verdict, and clear 4xx JSON for bad input."""

from __future__ import annotations

import re
from typing import Any

import pytest
from rollout_rig import CANDIDATE_HASH, DEGRADED, STABLE_HASH, Script, ScriptedRig, make_service
from starlette.testclient import TestClient

from infra.config import load_stack
from infra.service.bluegreen import ARGO_DECISION, ARGO_SMOKE, argo_templates
from ops.decision_service import DecisionService, ReplayParameters, create_app
from ops.replay import Holdout, Transaction
from rollout.settings import AnalysisSettings

UNREACHABLE = "http://127.0.0.1:9"  # discard port: nothing listens


def flagger(checksum: str = "rev-1", **metadata: str) -> dict[str, Any]:
    """Flagger's CanaryWebhookPayload (pkg/apis/flagger/v1beta1, CallWebhook in pkg/controller/webhook.go)."""
    return {"name": "fraud-detector", "namespace": "fraud", "phase": "Progressing", "checksum": checksum,
            "metadata": metadata}  # fmt: skip


REPLAY = {"stable": "http://stable.test", "candidate": "http://candidate.test"}


def client_for(script: Script | None = None, **changes: Any) -> tuple[TestClient, ScriptedRig, DecisionService]:
    settings = AnalysisSettings(**changes)
    rig = ScriptedRig(script or Script(), 60.0, settings)
    service = make_service(rig, settings)
    return TestClient(create_app(service)), rig, service


# -- the mini Argo Rollouts evaluator: only the forms our templates use, with Argo's truth table ----------

_LITERAL = re.compile(r'^result == ("(?P<string>[^"]*)"|(?P<bool>true|false))$')


def _condition(expression: str, result: Any) -> bool:
    """``result == <literal>`` terms joined by ``||`` (expr-lang syntax); anything else is refused."""
    outcome = False
    for term in expression.split(" || "):
        match = _LITERAL.match(term.strip())
        assert match, f"condition term {term!r} is outside what this evaluator (and our templates) use"
        literal: Any = match["string"] if match["string"] is not None else match["bool"] == "true"
        outcome = outcome or result == literal
    return outcome


def argo_phase(metric: dict[str, Any], status: int, body: Any) -> str:
    """The measurement phase Argo Rollouts v1.7.2 records: non-2xx is Error (metricproviders/webmetric/
    webmetric.go); the jsonPath value; failureCondition wins, neither Inconclusive (utils/evaluate/evaluate.go)."""
    if not 200 <= status < 300:
        return "Error"
    web = metric["provider"]["web"]
    key = re.fullmatch(r"\{\$\.(\w+)\}", web["jsonPath"])
    assert key, web["jsonPath"]
    result = body[key[1]]
    success = _condition(metric["successCondition"], result)
    failure = _condition(metric["failureCondition"], result) if "failureCondition" in metric else not success
    if failure:
        return "Failed"
    return "Successful" if success else "Inconclusive"


def metric_of(template_name: str) -> dict[str, Any]:
    config = load_stack("dev", overrides={"strategy": "blue-green"})
    templates = argo_templates(config.analysis, config.model.name)
    (template,) = [t for t in templates if t["metadata"]["name"] == template_name]
    (metric,) = template["spec"]["metrics"]
    return metric


def argo_body(metric: dict[str, Any], phase: str = "pre") -> dict[str, Any]:
    """The metric's body as Argo sends it once the Rollout's args are substituted."""
    import json

    text = metric["provider"]["web"]["body"]
    for name, value in {"namespace": "fraud", "candidate_hash": CANDIDATE_HASH, "stable_hash": STABLE_HASH,
                        "phase": phase}.items():  # fmt: skip
        text = text.replace(f"{{{{args.{name}}}}}", value)
    return json.loads(text)


# -- Flagger -----------------------------------------------------------------------------------------------


def test_flagger_gates_open_only_on_the_verdict_they_stand_for() -> None:
    client, _, _ = client_for()
    # Before any interval: undecided, every gate closed.
    for hook in ("confirm-traffic-increase", "confirm-promotion", "rollback"):
        answer = client.post(f"/flagger/{hook}", json=flagger())
        assert answer.status_code == 403 and answer.json()["verdict"] == "undecided"
        assert answer.json()["reason"].startswith("no evidence yet")
    replayed = client.post("/flagger/replay", json=flagger(**REPLAY))
    assert replayed.status_code == 200
    body = replayed.json()
    assert body["verdict"] == "pass" and body["primary_healthy"] is True and body["replay"]["transactions"] == 600
    assert client.post("/flagger/confirm-traffic-increase", json=flagger()).status_code == 200
    assert client.post("/flagger/confirm-promotion", json=flagger()).status_code == 200
    assert client.post("/flagger/rollback", json=flagger()).status_code == 403
    # A new revision (Flagger's checksum) starts afresh: no evidence, gates closed again.
    fresh = client.post("/flagger/confirm-traffic-increase", json=flagger(checksum="rev-2"))
    assert fresh.status_code == 403 and fresh.json()["looks"] == 0


def test_flagger_rollback_opens_on_a_decisive_failure_and_the_replay_hook_still_answers_200() -> None:
    client, _, _ = client_for(Script(candidate=DEGRADED))
    replayed = client.post("/flagger/replay", json=flagger(**REPLAY))
    assert replayed.status_code == 200 and replayed.json()["verdict"] == "fail"
    assert replayed.json()["final"] is True
    assert client.post("/flagger/rollback", json=flagger()).status_code == 200
    for hook in ("confirm-traffic-increase", "confirm-promotion"):
        assert client.post(f"/flagger/{hook}", json=flagger()).status_code == 403


def test_a_failing_primary_holds_every_gate_with_its_reason() -> None:
    client, _, _ = client_for(Script(stable_down_from=1))
    body = client.post("/flagger/replay", json=flagger(**REPLAY)).json()
    assert body["verdict"] == "halt" and body["primary_healthy"] is False
    assert "primary" in body["reason"] and "40.00%" in body["reason"]
    for hook in ("confirm-traffic-increase", "confirm-promotion", "rollback"):
        answer = client.post(f"/flagger/{hook}", json=flagger())
        assert answer.status_code == 403 and answer.json()["reason"] == body["reason"]


def test_a_dead_target_is_a_clear_halt_never_a_promotion() -> None:
    """The real paired replay against a port nothing listens on: the stable never answers."""
    settings = AnalysisSettings()
    holdout = Holdout([Transaction({"x": 1.0}, i % 2) for i in range(64)], ["x"])
    service = DecisionService(settings, holdout, replay=ReplayParameters(transactions=64, timeout_seconds=10))
    client = TestClient(create_app(service))
    answer = client.post("/flagger/replay", json=flagger(stable=UNREACHABLE, candidate=UNREACHABLE))
    assert answer.status_code == 200
    body = answer.json()
    assert body["verdict"] == "halt" and body["primary_healthy"] is False
    assert body["replay"]["stable"]["down"] and "did not answer" in body["replay"]["stable"]["error"]
    assert client.post("/flagger/confirm-promotion", json=flagger()).status_code == 403


def test_flagger_smoke_fails_with_a_non_2xx_naming_what_is_broken() -> None:
    settings = AnalysisSettings()
    holdout = Holdout([Transaction({"x": 1.0}, 0)], ["x"])
    client = TestClient(create_app(DecisionService(settings, holdout)))
    answer = client.post("/flagger/smoke", json=flagger(candidate=UNREACHABLE))
    assert answer.status_code == 502  # Flagger fails a pre-rollout hook on any status above 202
    assert answer.json()["ok"] is False and "unreachable" in answer.json()["error"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ([1, 2], "body must be a JSON object"),
        ({"namespace": "fraud", "metadata": {}}, "name: must be a non-empty string"),
        (flagger(stable="ftp://x", candidate="http://candidate.test"), "stable: must be the http(s) base URL"),
        (flagger(**REPLAY, transactions="many"), "transactions: must be a number in [1, 1e+07]"),
        (flagger(**REPLAY, transaction="10"), "metadata: unknown key(s) transaction"),
        ({**flagger(), "metadata": "x"}, "metadata: must be an object of strings"),
    ],
)
def test_bad_flagger_input_is_a_400_with_the_field_named(body: Any, message: str) -> None:
    client, _, _ = client_for()
    answer = client.post("/flagger/replay", json=body)
    assert answer.status_code == 400 and answer.json()["error"].startswith(message), answer.json()


def test_transport_level_bad_input_is_json_too() -> None:
    client, _, _ = client_for()
    not_json = client.post("/flagger/replay", content=b"{not json", headers={"content-type": "application/json"})
    assert not_json.status_code == 400 and not_json.json()["error"].startswith("body: not JSON")
    unknown = client.post("/flagger/promote-now", json=flagger())
    assert unknown.status_code == 404 and "unknown Flagger hook" in unknown.json()["error"]
    unknown = client.post("/argo/promote-now", json={})
    assert unknown.status_code == 404 and "unknown Argo endpoint" in unknown.json()["error"]
    nowhere = client.get("/nowhere")
    assert nowhere.status_code == 404 and "no route GET /nowhere" in nowhere.json()["error"]
    wrong_method = client.get("/flagger/replay")
    assert wrong_method.status_code == 405 and "error" in wrong_method.json()
    big = client.post("/flagger/replay", content=b" " * (2 << 20), headers={"content-type": "application/json"})
    assert big.status_code == 400 and "larger than" in big.json()["error"]


def test_allowed_targets_and_a_loading_holdout() -> None:
    settings = AnalysisSettings()

    def slow() -> Holdout:
        raise OSError("dataset download failed: network unreachable")

    service = DecisionService(settings, slow, allowed_targets=["http://stable.test", "http://candidate.test"])
    client = TestClient(create_app(service))
    loading = client.get("/healthz")
    assert loading.status_code == 503 and loading.json()["error"] == "holdout is still loading"
    assert client.post("/flagger/replay", json=flagger(**REPLAY)).status_code == 503
    service.load()
    failed = client.get("/healthz")
    assert failed.status_code == 503 and "network unreachable" in failed.json()["error"]
    evil = client.post("/flagger/replay", json=flagger(stable="http://evil.test", candidate="http://candidate.test"))
    assert evil.status_code == 400 and "is not allowed here" in evil.json()["error"]


# -- Argo Rollouts -------------------------------------------------------------------------------------------


def test_argo_decisions_are_always_200_and_the_templates_conditions_decide() -> None:
    metric = metric_of(ARGO_DECISION)
    assert metric["failureLimit"] == 0 and metric["inconclusiveLimit"] == 0
    for script, verdict, phase in (
        (Script(), "pass", "Successful"),
        (Script(candidate=DEGRADED), "fail", "Failed"),
        (Script(stable_down_from=1), "halt", "Inconclusive"),
        (Script(transactions=60), "undecided", "Successful"),
    ):
        client, _, _ = client_for(script)
        answer = client.post("/argo/decision", json=argo_body(metric))
        assert answer.status_code == 200 and answer.json()["verdict"] == verdict, answer.json()
        assert argo_phase(metric, answer.status_code, answer.json()) == phase


def test_argo_run_ending_undecided_pauses_instead_of_counting_a_success() -> None:
    """60 pairs hold 12 labelled frauds, below minLabelledFrauds (20): the first look cannot decide. As the
    run's last measurement it would count as a success; the service pauses the run instead."""
    metric = metric_of(ARGO_DECISION)
    client, _, _ = client_for(Script(transactions=60))
    running = client.post("/argo/decision", json={**argo_body(metric), "measurements": "2"}).json()
    assert running["verdict"] == "undecided" and argo_phase(metric, 200, running) == "Successful"
    client, _, _ = client_for(Script(transactions=60))
    last = client.post("/argo/decision", json={**argo_body(metric), "measurements": "1"}).json()
    assert last["verdict"] == "halt" and "measurements ended before the analysis decided" in last["reason"]
    assert argo_phase(metric, 200, last) == "Inconclusive"


def test_argo_pre_and_post_promotion_are_judged_afresh() -> None:
    metric = metric_of(ARGO_DECISION)
    client, _, service = client_for()
    client.post("/argo/decision", json=argo_body(metric, "pre"))
    client.post("/argo/decision", json=argo_body(metric, "post"))
    keys = sorted(str(k) for k in service._rollouts)
    assert keys == [
        f"argo:fraud/fraud-detector@{CANDIDATE_HASH}/post",
        f"argo:fraud/fraud-detector@{CANDIDATE_HASH}/pre",
    ]
    listed = client.get("/rollouts").json()["rollouts"]
    assert {r["rollout"] for r in listed} == set(keys) and all(r["looks"] == 1 for r in listed)


def test_a_failed_argo_smoke_test_is_a_failed_measurement_not_an_error() -> None:
    """Issue 10 #6: the old endpoint answered 502, which Argo Rollouts records as an Error (so failureLimit
    never applied). Now the answer is 200 with ``ok: false`` and the template's condition fails it."""
    metric = metric_of(ARGO_SMOKE)
    settings = AnalysisSettings()
    holdout = Holdout([Transaction({"x": 1.0}, 0)], ["x"])
    resolver = type("R", (), {"urls": staticmethod(lambda namespace, pod_hash: [UNREACHABLE])})()
    client = TestClient(create_app(DecisionService(settings, holdout, resolver=resolver)))
    answer = client.post("/argo/smoke", json=argo_body(metric))
    assert answer.status_code == 200 and answer.json()["ok"] is False
    assert argo_phase(metric, answer.status_code, answer.json()) == "Failed"
    # No pod at all for the hash: also a Failed measurement with the reason.
    none = type("R", (), {"urls": staticmethod(lambda namespace, pod_hash: [])})()
    client = TestClient(create_app(DecisionService(settings, holdout, resolver=none)))
    answer = client.post("/argo/smoke", json=argo_body(metric))
    assert argo_phase(metric, answer.status_code, answer.json()) == "Failed"
    assert "no ready pod with rollouts-pod-template-hash" in answer.json()["error"]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"phase": "during"}, "phase: must be one of pre, post"),
        ({"candidateHash": "{{args.candidate_hash}}"}, "candidateHash: must be a non-empty string"),
        ({"stableHashes": "x"}, "unknown key(s) stableHashes"),
        ({"measurements": "0"}, "measurements: must be 1 or more"),
    ],
)
def test_bad_argo_input_is_a_400(change: dict[str, str], message: str) -> None:
    client, _, _ = client_for()
    answer = client.post("/argo/decision", json={**argo_body(metric_of(ARGO_DECISION)), **change})
    assert answer.status_code == 400 and answer.json()["error"].startswith(message), answer.json()


def test_the_kubernetes_resolver_finds_the_ready_model_pods_of_a_hash_through_the_api_server(tmp_path) -> None:
    """``replay serve --kubernetes`` (Argo's blue-green): the pods of a pod-template hash, asked of a real HTTPS
    API server (tests/fake_kube.py) through ops.cluster; only ready, running model servers are replay targets."""
    from fake_kube import FakeKube

    from ops.cluster import connect
    from ops.decision_service import KubePodResolver

    def pod(name: str, pod_hash: str, ip: str, *, ready: bool = True, workload: str = "model-server") -> None:
        labels = {"fraud-platform/workload": workload, "rollouts-pod-template-hash": pod_hash}
        status = {"podIP": ip, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}
        metadata = {"name": name, "labels": labels}
        kube.put(f"/api/v1/namespaces/fraud/pods/{name}", {"metadata": metadata, "status": status})

    with FakeKube() as kube:
        pod("b", "h1", "10.0.0.2")
        pod("a", "h1", "10.0.0.1")
        pod("c", "h1", "10.0.0.3", ready=False)  # starting: not yet a target
        pod("d", "h2", "10.0.0.4")  # the other side
        pod("e", "h1", "10.0.0.5", workload="decision")  # not a model server
        with connect(kube.write_kubeconfig(tmp_path / "kubeconfig"), "fake") as cluster:
            resolver = KubePodResolver(cluster, port=8080, workload_selector="fraud-platform/workload=model-server")
            assert resolver.urls("fraud", "h1") == ["http://10.0.0.1:8080", "http://10.0.0.2:8080"]
            assert resolver.urls("fraud", "h3") == [] and resolver.urls("other", "h1") == []
        # The selection is the API server's (label selector), not a list of every pod filtered here.
        asked = sorted(r.query["labelSelector"][0] for r in kube.recorded("GET", "/pods"))
        assert asked == [f"fraud-platform/workload=model-server,rollouts-pod-template-hash=h{n}" for n in "113"]
