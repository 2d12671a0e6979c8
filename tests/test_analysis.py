"""The shared rollout analysis: one definition rendered for Flagger, Argo Rollouts and the rehearsal, with
PromQL that the real Prometheus tooling accepts, that selects pods by identity (never by version label) and
that never passes on missing data."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from render_support import STACKS

from infra import charts, observability
from infra.config import load_stack
from rollout import analysis
from rollout.settings import AnalysisSettings

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
FLAGGER_VALUES = {"{{ namespace }}": "fraud", "{{ target }}": "fraud-detector"}
ARGO_VALUES = {
    "{{args.namespace}}": "fraud",
    "{{args.candidate_hash}}": "6d4f9c7b8",
    "{{args.stable_hash}}": "5c8d7f6a1",
}


def settings(**changes: object) -> AnalysisSettings:
    overrides = {"analysis": changes} if changes else None
    return load_stack("dev", overrides=overrides).analysis


def fill(text: str, values: dict[str, str]) -> str:
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text


@pytest.mark.parametrize("stack", STACKS)
def test_flagger_and_argo_forms_are_the_same_checks_thresholds_and_promql(stack: str) -> None:
    a = load_stack(stack).analysis
    checks = analysis.analysis_checks(a)
    templates = analysis.flagger_metric_templates(a, "fraud", charts.PROMETHEUS_URL, {})
    canary_metrics = analysis.flagger_canary_metrics(a, "fraud")
    argo = analysis.argo_analysis_template(a, "fraud", charts.PROMETHEUS_URL, {}, looks=a.horizon)
    argo_metrics = argo["spec"]["metrics"]
    assert [c.name for c in checks] == [m["name"] for m in canary_metrics] == [m["name"] for m in argo_metrics]
    assert [c.name for c in checks] == ["success-rate", "latency-p99"]  # model quality: the decision service
    for check, template, flagger_metric, argo_metric in zip(
        checks, templates, canary_metrics, argo_metrics, strict=True
    ):
        assert flagger_metric["thresholdRange"] == {check.direction: check.threshold}
        op = ">=" if check.direction == "min" else "<="
        assert argo_metric["successCondition"] == f"result[0] {op} {analysis._number(check.threshold)}"
        flagger_query = fill(
            template["spec"]["query"].replace("{{ interval }}", flagger_metric["interval"]), FLAGGER_VALUES
        )
        argo_query = fill(argo_metric["provider"]["prometheus"]["query"], ARGO_VALUES)
        # The same PromQL; only the pod identity differs (the canary's name, the new ReplicaSet's hash).
        flagger_expected = analysis.concrete_query(
            check, analysis.FLAGGER, analysis.CANDIDATE, target="fraud-detector", namespace="fraud"
        )
        argo_expected = analysis.concrete_query(
            check, analysis.ARGO, analysis.CANDIDATE, candidate_hash="6d4f9c7b8", stable_hash="5c8d7f6a1",
            namespace="fraud",
        )  # fmt: skip
        assert flagger_query == flagger_expected and argo_query == argo_expected
        assert flagger_query.replace('app_kubernetes_io_name="fraud-detector"', "X") == argo_query.replace(
            'rollouts_pod_template_hash="6d4f9c7b8"', "X"
        )
        assert "{{" not in flagger_query and "{{" not in argo_query
    assert argo["spec"]["args"] == [
        {"name": "candidate_hash"},
        {"name": "stable_hash"},
        {"name": "namespace", "value": "fraud"},
    ]
    assert all(m["count"] == a.horizon and m["failureLimit"] == a.threshold - 1 for m in argo_metrics)


def test_checks_select_the_candidates_pods_never_the_version_label() -> None:
    """Issue 10 #4: with primary and canary under one model_version the gate read blended traffic."""
    for check in analysis.analysis_checks(settings()):
        for identity in (analysis.FLAGGER, analysis.ARGO):
            query = analysis.render_query(check, identity.selector(analysis.CANDIDATE))
            assert "model_version" not in query
            assert f'{identity.label}="' in query
    flagger_candidate = analysis.FLAGGER.selector(analysis.CANDIDATE)
    flagger_primary = analysis.FLAGGER.selector(analysis.PRIMARY)
    assert flagger_candidate == 'namespace="{{ namespace }}",app_kubernetes_io_name="{{ target }}"'
    assert flagger_primary == 'namespace="{{ namespace }}",app_kubernetes_io_name="{{ target }}-primary"'
    assert analysis.ARGO.selector(analysis.CANDIDATE).endswith('rollouts_pod_template_hash="{{args.candidate_hash}}"')
    assert analysis.ARGO.selector(analysis.PRIMARY).endswith('rollouts_pod_template_hash="{{args.stable_hash}}"')
    # The labels the selectors use are the pod labels the ServiceMonitor carries, as Prometheus names them.
    assert analysis.POD_TARGET_LABELS == ("app.kubernetes.io/name", "rollouts-pod-template-hash")
    assert [analysis.series_label(label) for label in analysis.POD_TARGET_LABELS] == [
        analysis.FLAGGER.label,
        analysis.ARGO.label,
    ]
    assert analysis.argo_rollout_hash_args() == [
        {"name": "candidate_hash", "valueFrom": {"podTemplateHashValue": "Latest"}},
        {"name": "stable_hash", "valueFrom": {"podTemplateHashValue": "Stable"}},
    ]
    with pytest.raises(ValueError, match="role: must be one of candidate, primary"):
        analysis.FLAGGER.selector("canary")


def test_thresholds_and_windows_come_from_the_analysis_settings() -> None:
    a = settings(minSuccessRate=99.5, maxLatencyP99Ms=80, interval=30)
    by_name = {c.name: c for c in analysis.analysis_checks(a)}
    assert {n: (c.threshold, c.direction) for n, c in by_name.items()} == {
        "success-rate": (99.5, "min"),
        "latency-p99": (80.0, "max"),
    }
    assert by_name["success-rate"].window == "30s" and by_name["latency-p99"].window == "30s"
    primary = analysis.primary_health_check(a)
    assert primary.threshold == 99.5 and primary.direction == "min" and primary.window == "30s"
    assert primary.query_template == by_name["success-rate"].query_template


def test_no_data_sentinels_fail_every_threshold_even_permissive_ones() -> None:
    for a in (settings(), settings(maxLatencyP99Ms=60000, minSuccessRate=50)):
        for check in [*analysis.analysis_checks(a), analysis.primary_health_check(a)]:
            assert check.query_template.endswith(f"or on() vector({analysis._number(check.no_data_value)})")
            assert not check.passes(check.no_data_value)
            assert not analysis.passes(check, None) and not analysis.passes(check, math.nan)


def test_rehearsal_api_gives_runnable_queries_for_a_side_and_window() -> None:
    check = analysis.analysis_checks(settings())[0]
    query = analysis.concrete_query(
        check, analysis.FLAGGER, analysis.PRIMARY, window_seconds=10, target="fraud-detector", namespace="fraud"
    )
    assert 'app_kubernetes_io_name="fraud-detector-primary"' in query and "[10s]" in query and "${" not in query
    assert "[2500ms]" in analysis.concrete_query(check, analysis.FLAGGER, analysis.CANDIDATE, window_seconds=2.5)
    with pytest.raises(ValueError, match="positive number of seconds"):
        analysis.concrete_query(check, analysis.FLAGGER, analysis.CANDIDATE, window_seconds=0)


def test_argo_conditions_are_written_from_the_verdict_sets() -> None:
    assert analysis.ARGO_SUCCESS_CONDITION == 'result == "pass" || result == "undecided"'
    assert analysis.ARGO_FAILURE_CONDITION == 'result == "fail"'
    assert set(analysis.ARGO_SUCCESS_VERDICTS).isdisjoint(analysis.ARGO_FAILURE_VERDICTS)
    assert "halt" not in analysis.ARGO_SUCCESS_VERDICTS + analysis.ARGO_FAILURE_VERDICTS  # halt: Inconclusive
    assert analysis.flagger_hook_path("rollback") == "/flagger/rollback"
    with pytest.raises(ValueError, match="endpoint: must be one of"):
        analysis.flagger_hook_path("promote")


def test_every_query_rule_and_panel_parses_with_promtool(tmp_path: Path) -> None:
    """promtool (the real Prometheus parser) on one rules file holding every PromQL we generate."""
    rules = []
    for stack in STACKS:
        for strategy in ("canary", "blue-green"):
            config = load_stack(stack, overrides={"strategy": strategy})
            a = config.analysis
            for check in [*analysis.analysis_checks(a), analysis.primary_health_check(a)]:
                for role in analysis.ROLES:
                    query = analysis.concrete_query(
                        check, analysis.FLAGGER, role, target="fraud-detector", namespace="fraud"
                    )
                    rules.append({"record": f"fraud:check:{check.name.replace('-', '_')}", "expr": query})
            for template in analysis.flagger_metric_templates(a, "fraud", charts.PROMETHEUS_URL, {}):
                query = fill(template["spec"]["query"].replace("{{ interval }}", "1m"), FLAGGER_VALUES)
                rules.append({"record": "fraud:flagger:query", "expr": query})
            argo = analysis.argo_analysis_template(a, "fraud", charts.PROMETHEUS_URL, {}, looks=a.horizon)
            for metric in argo["spec"]["metrics"]:
                rules.append(
                    {"record": "fraud:argo:query", "expr": fill(metric["provider"]["prometheus"]["query"], ARGO_VALUES)}
                )
            board = observability.dashboard(a, namespace="fraud", workload="fraud-detector")
            rules += [{"record": "fraud:dashboard:panel", "expr": q} for q in observability.dashboard_queries(board)]
            rules += observability.alert_rules(
                a, strategy=strategy, namespace="fraud", metrics_job="fraud-detector-metrics",
                workload="fraud-detector",
            )  # fmt: skip
    for i, rule in enumerate(rules):  # unique names: promtool reports duplicates
        key = "record" if "record" in rule else "alert"
        rule[key] = f"{rule[key]}_{i}"
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "fraud", "rules": rules}]}))
    run = subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"SUCCESS: {len(rules)} rules found" in run.stdout
    # And a broken query is caught, so the check is not vacuous.
    path.write_text(
        yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "x", "expr": "sum(rate(x[1m]) or"}]}]})
    )
    assert subprocess.run([PROMTOOL, "check", "rules", str(path)], capture_output=True, timeout=60).returncode != 0


def _feedback_series(version: str, per_hour: dict[str, float]) -> list[dict[str, str]]:
    """Counters of labelled feedback growing at ``per_hour`` per outcome, one sample a minute for 2 h."""
    return [
        {
            "series": f'fraud_feedback_total{{namespace="fraud",model_version="{version}",outcome="{outcome}"}}',
            "values": f"0+{count / 60:g}x120",
        }
        for outcome, count in per_hour.items()
    ]


def test_the_precision_alert_reads_precision_at_the_stated_share_not_the_feedback_mix(tmp_path: Path) -> None:
    """Issue 11: a floor on precision must not fire because labelled feedback holds few frauds. Prometheus'
    own rule tester (promtool test rules) evaluates the alert on feedback counters over 2 h."""
    a = load_stack("dev").analysis
    (rule,) = [
        r
        for r in observability.alert_rules(
            a, strategy="canary", namespace="fraud", metrics_job="fraud-detector-metrics", workload="fraud-detector"
        )
        if r["alert"] == "FraudModelPrecisionDrop"
    ]
    (tmp_path / "rules.yml").write_text(yaml.safe_dump({"groups": [{"name": "fraud", "rules": [rule]}]}))
    # v2: recall 0.75 and 1 false positive in 1,000 legitimate transactions, at production's mix (1 fraud per
    # 1,000): raw precision 75 / 175 = 0.43, but at the stated share 0.2 it is 0.15 / 0.1508 = 0.995: healthy.
    healthy = {"tp": 75, "fn": 25, "fp": 100, "tn": 99_900}
    # v3: the same recall, 1 false positive in 10 legitimate ones: 0.15 / (0.15 + 0.08) = 0.652 < 0.85.
    degraded = {"tp": 75, "fn": 25, "fp": 10_000, "tn": 90_000}
    share = a.replay_fraud_share
    expected = share * 0.75 / (share * 0.75 + (1 - share) * 0.1)
    assert expected < a.min_precision < share * 0.75 / (share * 0.75 + (1 - share) * 0.001)
    tests = {
        "rule_files": ["rules.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": _feedback_series("v2", healthy) + _feedback_series("v3", degraded),
                "alert_rule_test": [
                    {
                        "eval_time": "100m",
                        "alertname": "FraudModelPrecisionDrop",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "warning", "model_version": "v3"},
                                "exp_annotations": {
                                    "summary": "Fraud model v3 precision dropped",
                                    "description": f"Precision at a {share:g} fraud share, from labelled feedback "
                                    f"over 1h is {expected:.3f} (the rollout's floor is {a.min_precision:g}).",
                                },
                            }
                        ],
                    }
                ],
            }
        ],
    }
    (tmp_path / "tests.yml").write_text(yaml.safe_dump(tests))
    run = subprocess.run(
        [PROMTOOL, "test", "rules", "tests.yml"], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert run.returncode == 0, run.stdout + run.stderr
