"""The analysis against the real thing: MLServer serving the fraud runtime, the replay webhook posting labelled
feedback, and Prometheus (Debian package) scraping both servers and evaluating the very queries Flagger and
Argo Rollouts are given. Also checks every metric name we query is one the runtime really exports."""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from infra import observability
from infra.config import load_stack
from infra.service import names as fraud_service
from ops.replay import ReplayServer, scenario_holdout, synthetic_holdout
from rehearsal.prometheus import PrometheusProcess, ScrapeTarget
from rollout import analysis
from serving.client import parse_metrics
from serving.metrics import METRIC_NAMES
from serving.process import MLServerProcess
from serving.synthetic_model import train_synthetic_model

pytestmark = pytest.mark.slow

SIGNING_KEY = "analysis-live-test-signing-key-0123456789"
UNREACHABLE = "http://127.0.0.1:9"  # discard port: nothing listens
NAMESPACE = "fraud"
_SERIES = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{")


@dataclass
class Live:
    healthy: MLServerProcess
    faulty: MLServerProcess
    prometheus: PrometheusProcess
    replay_url: str
    smoke: httpx.Response
    replay: httpx.Response
    faulty_replay: httpx.Response
    before: Any
    after: Any

    def query(self, promql: str, at: float | None = None) -> float | None:
        """Instant query; ``at`` pins the evaluation time so several queries see the same data."""
        if at is None:
            return self.prometheus.query(promql)
        body = httpx.get(f"{self.prometheus.url}/api/v1/query", params={"query": promql, "time": at}).json()
        assert body["status"] == "success", body
        result = body["data"]["result"]
        return float(result[0]["value"][1]) if result else None


def _address(server: MLServerProcess) -> str:
    return server.metrics_url.split("//", 1)[1].split("/", 1)[0]


def _flagger_payload(target: str, **metadata: str) -> dict[str, Any]:
    """What Flagger POSTs to a webhook: the canary, the phase and the webhook's metadata (strings)."""
    return {
        "name": "fraud-detector",
        "namespace": NAMESPACE,
        "phase": "Progressing",
        "metadata": {"target": target, "model": "fraud-detector", **metadata},
    }


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Any:
    model_dir = train_synthetic_model(tmp_path_factory.mktemp("model") / "v2", model_version="v2", rows=4000)
    healthy = MLServerProcess(
        model_dir, version_label="v2", signing_key=SIGNING_KEY, max_batch_size=32, max_batch_time_seconds=0.005
    )
    # The fault drill's candidate: the same model, answering half its requests with 500.
    faulty = MLServerProcess(model_dir, version_label="v3", signing_key=SIGNING_KEY, env={"SIMULATE_ERROR": "true"})
    starters = [threading.Thread(target=s.start) for s in (healthy, faulty)]
    for thread in starters:
        thread.start()
    for thread in starters:
        thread.join()
    prometheus = replay_server = None
    try:
        assert healthy.running and faulty.running, healthy.log_text()[-2000:] + faulty.log_text()[-2000:]
        # namespace= as the ServiceMonitor scrape adds it in the cluster.
        targets = [ScrapeTarget("fraud-model", _address(s), {"namespace": NAMESPACE}) for s in (healthy, faulty)]
        prometheus = PrometheusProcess(targets, scrape_interval_seconds=0.5).start()
        prometheus.wait_for_targets()
        replay_server = ReplayServer(
            synthetic_holdout,
            host="127.0.0.1",
            port=0,
            allowed_targets=[healthy.http_url, faulty.http_url, UNREACHABLE],
        )
        replay_server.start_background()
        url = f"http://127.0.0.1:{replay_server.port}"
        with httpx.Client(timeout=120) as client:
            smoke = client.post(f"{url}/smoke", json=_flagger_payload(healthy.http_url))
            before = parse_metrics(httpx.get(healthy.metrics_url).text)
            replay = client.post(f"{url}/replay", json=_flagger_payload(healthy.http_url, minFrauds="40"))
            after = parse_metrics(httpx.get(healthy.metrics_url).text)
            # A first failure creates the runtime's code="500" series; Prometheus can only see increases
            # after its first sample, as in a cluster where the fault persists across scrapes.
            client.post(f"{url}/replay", json=_flagger_payload(faulty.http_url, minFrauds="0", maxTransactions="64"))
            time.sleep(1.5)
            faulty_replay = client.post(
                f"{url}/replay", json=_flagger_payload(faulty.http_url, minFrauds="0", maxTransactions="640")
            )
        # Wait until Prometheus holds the final counts of both servers.
        want = after.value("fraud_feedback_total", model_version="v2")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            got = prometheus.query('sum(fraud_feedback_total{model_version="v2"})')
            errors = prometheus.query('sum(fraud_requests_total{model_version="v3",code="500"})')
            if got == want and errors:
                break
            time.sleep(0.25)
        time.sleep(1.0)  # a couple more samples after the last increment, for rate()/increase()
        yield Live(healthy, faulty, prometheus, url, smoke, replay, faulty_replay, before, after)
    finally:
        if replay_server is not None:
            replay_server.shutdown()
        if prometheus is not None:
            prometheus.stop()
        healthy.stop()
        faulty.stop()


def test_replay_webhook_posts_labelled_feedback_the_runtime_counts(live: Live) -> None:
    assert live.smoke.status_code == 200, live.smoke.text
    assert live.smoke.json()["model_version"] == "v2"
    assert live.replay.status_code == 200, live.replay.text
    result = live.replay.json()
    assert result["ok"] and result["labelled_frauds"] >= 40 and result["server_errors"] == 0
    assert result["labelled"] == result["transactions"]

    def delta(**labels: str) -> float:
        return live.after.value("fraud_feedback_total", model_version="v2", **labels) - live.before.value(
            "fraud_feedback_total", model_version="v2", **labels
        )

    assert delta() == result["labelled"]
    assert delta(outcome="tp") + delta(outcome="fn") == result["labelled_frauds"]
    requests = live.after.value("fraud_requests_total", model_version="v2") - live.before.value(
        "fraud_requests_total", model_version="v2"
    )
    assert requests == result["requests"]
    # The faulty candidate's 500s are the analysis' business: the replay itself succeeded.
    faulty = live.faulty_replay.json()
    assert live.faulty_replay.status_code == 200 and faulty["requests"] == 20
    assert faulty["server_errors"] == 10 and faulty["labelled"] == 10 * 32


def test_replay_webhook_refuses_bad_requests_and_reports_unreachable_targets(live: Live) -> None:
    with httpx.Client(timeout=60) as client:
        assert client.get(f"{live.replay_url}/healthz").status_code == 200
        other = client.post(f"{live.replay_url}/replay", json=_flagger_payload("http://evil.example:8080"))
        assert other.status_code == 400 and "is not allowed here" in other.json()["error"]
        bad = client.post(f"{live.replay_url}/replay", json=_flagger_payload(live.healthy.http_url, minFrauds="many"))
        assert bad.status_code == 400 and bad.json()["error"].startswith("minFrauds: must be a number")
        typo = client.post(f"{live.replay_url}/replay", json={"target": live.healthy.http_url, "minFraud": 1})
        assert typo.status_code == 400 and "unknown parameter(s) minFraud" in typo.json()["error"]
        down = client.post(f"{live.replay_url}/replay", json=_flagger_payload(UNREACHABLE, minFrauds="1"))
        assert down.status_code == 502 and not down.json()["ok"] and "unreachable" in down.json()["error"]
        smoke_down = client.post(f"{live.replay_url}/smoke", json=_flagger_payload(UNREACHABLE))
        assert smoke_down.status_code == 502


def test_flagger_queries_on_real_prometheus_pass_a_good_candidate_and_fail_a_faulty_one(live: Live) -> None:
    a = load_stack("dev", overrides={"analysis": {"feedbackWindow": 120}}).analysis
    checks = {c.name: c for c in analysis.analysis_checks(a)}
    templates = {t["metadata"]["name"]: t for t in analysis.flagger_metric_templates(a, NAMESPACE, "", {})}
    canary_metrics = {m["name"]: m for m in analysis.flagger_canary_metrics(a, NAMESPACE, "v2")}

    at = time.time()

    def flagger(name: str, version: str) -> float | None:
        """The MetricTemplate query as Flagger renders it (namespace, variables, interval)."""
        metric = canary_metrics[name]
        query = templates[metric["templateRef"]["name"]]["spec"]["query"]
        for placeholder, value in {
            "{{ namespace }}": NAMESPACE,
            "{{ variables.candidate_version }}": version,
            "{{ interval }}": metric["interval"],
        }.items():
            query = query.replace(placeholder, value)
        return live.query(query, at)

    values = {name: flagger(name, "v2") for name in checks}
    assert values["success-rate"] == 100.0 and checks["success-rate"].passes(values["success-rate"])
    assert values["latency-p99"] is not None and 0 < values["latency-p99"] < 2500
    # Precision and recall equal the Wilson bound of the counts Prometheus holds.
    window = checks["precision"].window
    selector = analysis.candidate_selector("v2", namespace=NAMESPACE)

    def count(outcomes: str) -> float:
        value = live.query(f'sum(increase(fraud_feedback_total{{{selector},outcome=~"{outcomes}"}}[{window}]))', at)
        assert value is not None
        return value

    tp, fp, fn = count("tp"), count("fp"), count("fn")
    assert tp + fn >= a.min_labelled_frauds
    assert values["precision"] == pytest.approx(analysis.wilson_lower_bound(tp, tp + fp, a.confidence), abs=1e-4)
    assert values["recall"] == pytest.approx(analysis.wilson_lower_bound(tp, tp + fn, a.confidence), abs=1e-4)
    assert values["precision"] < tp / (tp + fp)  # a lower bound, below the point estimate
    assert 0.5 < values["precision"] < 1 and 0.5 < values["recall"] < 1

    # SIMULATE_ERROR=true: half the requests fail, the success-rate check fails.
    faulty_rate = flagger("success-rate", "v3")
    assert faulty_rate is not None and 40 < faulty_rate < 60 and not checks["success-rate"].passes(faulty_rate)
    # A version with no data: every check returns its failing sentinel.
    for name, check in checks.items():
        value = flagger(name, "v9")
        assert value == check.no_data_value and not check.passes(value)
    # Labelled evidence below the minimum: precision and recall fail however good the ratio.
    strict = load_stack("dev", overrides={"analysis": {"minLabelledFrauds": 100000, "feedbackWindow": 120}})
    for check in analysis.rollout_checks(strict.analysis)[2:]:
        value = live.query(analysis.concrete_query(check, version="v2", namespace=NAMESPACE))
        assert value == analysis.NO_DATA_MIN and not analysis.passes(check, value)


def test_every_metric_we_query_is_exported_by_the_runtime(live: Live) -> None:
    exposition = httpx.get(live.healthy.metrics_url, timeout=10).text
    exported = {name for name, _, _ in parse_metrics(exposition).samples}
    assert {n for n in METRIC_NAMES.values() if n.endswith("_total")} <= exported
    queries: list[str] = []
    for strategy in ("canary", "blue-green"):
        config = load_stack("dev", overrides={"strategy": strategy})
        queries += analysis.concrete_queries(config.analysis, "v2", namespace=NAMESPACE).values()
        board = observability.dashboard(config.analysis, namespace=NAMESPACE, workload=fraud_service.APP)
        queries += observability.dashboard_queries(board)
        rules = observability.alert_rules(
            config.analysis,
            strategy=strategy,
            namespace=NAMESPACE,
            metrics_job=fraud_service.METRICS_SERVICE,
            workload=fraud_service.APP,
        )
        queries += [rule["expr"] for rule in rules]
    referenced = {name for query in queries for name in _SERIES.findall(query)}
    ours = {name for name in referenced if name.startswith("fraud_")}
    assert ours and ours <= exported, f"not exported by the runtime: {sorted(ours - exported)}"
    assert referenced - ours <= set(observability.EXTERNAL_METRICS), sorted(referenced - ours)
    # The selector's label values exist too: the v2 series carry the labels the queries match on.
    series = [labels for name, labels, _ in parse_metrics(exposition).samples if name == "fraud_feedback_total"]
    assert {s["outcome"] for s in series} == {"tp", "fp", "tn", "fn"} and {s["model_version"] for s in series} == {"v2"}


def test_replay_service_replays_the_real_holdout_in_time_order(ulb_dataset: Any) -> None:
    from model.data import FEATURE_COLUMNS
    from model.scenario import MIN_FRAUDS, ScenarioParams, seconds_at

    params = ScenarioParams()
    holdout = scenario_holdout(str(ulb_dataset))
    times = [t.features["Time"] for t in holdout.transactions]
    assert holdout.feature_names == list(FEATURE_COLUMNS)
    assert list(holdout.transactions[0].features) == list(FEATURE_COLUMNS)
    assert seconds_at(params.v2_train_end) <= min(times) and max(times) < seconds_at(params.calendar_end)
    assert times == sorted(times)
    assert holdout.frauds >= MIN_FRAUDS["holdout"] and {t.label for t in holdout.transactions} == {0, 1}
    # Taking wraps around, so a long rollout keeps replaying.
    first = holdout.take(3)
    holdout.take(len(holdout.transactions) - 3)
    assert holdout.take(3) == first
