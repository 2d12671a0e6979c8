"""The shared rollout analysis: one definition rendered for Flagger, Argo Rollouts and the rehearsal, with
PromQL that the real Prometheus tooling accepts and that never passes on missing data."""

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
FLAGGER_VALUES = {"{{ namespace }}": "fraud", "{{ variables.candidate_version }}": "v2"}
ARGO_VALUES = {"{{args.namespace}}": "fraud", "{{args.candidate_version}}": "v2"}


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
    canary_metrics = analysis.flagger_canary_metrics(a, "fraud", "v2")
    argo = analysis.argo_analysis_template(a, "fraud", charts.PROMETHEUS_URL, {})
    argo_metrics = argo["spec"]["metrics"]
    assert [c.name for c in checks] == [m["name"] for m in canary_metrics] == [m["name"] for m in argo_metrics]
    expected = analysis.concrete_queries(a, "v2", namespace="fraud")
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
        assert flagger_query == argo_query == expected[check.name]
        assert "{{" not in flagger_query
    # Argo gets the candidate from args; the namespace arg defaults to where the template lives.
    assert argo["spec"]["args"] == [{"name": "candidate_version"}, {"name": "namespace", "value": "fraud"}]


def test_thresholds_and_windows_come_from_the_analysis_settings() -> None:
    a = settings(minSuccessRate=99.5, maxLatencyP99Ms=80, minPrecision=0.9, minRecall=0.6, minLabelledFrauds=40,
                 interval=30, feedbackWindow=900)  # fmt: skip
    by_name = {c.name: c for c in analysis.analysis_checks(a)}
    assert {n: (c.threshold, c.direction) for n, c in by_name.items()} == {
        "success-rate": (99.5, "min"),
        "latency-p99": (80.0, "max"),
        "precision": (0.9, "min"),
        "recall": (0.6, "min"),
    }
    assert by_name["success-rate"].window == "30s" and by_name["precision"].window == "15m"
    assert ">= 40" in by_name["precision"].query_template and ">= 40" in by_name["recall"].query_template


def test_no_data_sentinels_fail_every_threshold_even_permissive_ones() -> None:
    # minPrecision 0 and minRecall 0 would let a 0 "no data" answer pass; the sentinel must still fail.
    for a in (settings(), settings(minPrecision=0.0, minRecall=0.0, maxLatencyP99Ms=60000, minSuccessRate=50)):
        for check in analysis.analysis_checks(a):
            assert check.query_template.endswith(f"or on() vector({analysis._number(check.no_data_value)})")
            assert not check.passes(check.no_data_value)
            assert not analysis.passes(check, None) and not analysis.passes(check, math.nan)


def test_wilson_lower_bound_is_conservative_and_converges() -> None:
    z95 = analysis.z_score(0.95)
    assert z95 == pytest.approx(1.644854, abs=1e-6)
    # The textbook form, which the PromQL's multiplied-through form must equal.
    for successes, trials in ((9, 10), (45, 50), (3, 40), (500, 510)):
        p, n = successes / trials, trials
        textbook = (p + z95**2 / (2 * n) - z95 * math.sqrt(p * (1 - p) / n + z95**2 / (4 * n * n))) / (1 + z95**2 / n)
        assert analysis.wilson_lower_bound(successes, trials, 0.95) == pytest.approx(textbook, rel=1e-12)
    assert analysis.wilson_lower_bound(9, 10, 0.95) == pytest.approx(0.65228, abs=1e-5)
    small, large = analysis.wilson_lower_bound(9, 10, 0.95), analysis.wilson_lower_bound(900, 1000, 0.95)
    assert small < large < 0.9 and large > 0.88
    assert analysis.wilson_lower_bound(0, 20, 0.95) == pytest.approx(0.0, abs=1e-12)
    assert math.isnan(analysis.wilson_lower_bound(0, 0, 0.95))


def test_argo_measurements_are_as_strict_as_flaggers_canary() -> None:
    for weights, threshold in (([5, 10, 50], 3), ([10, 20, 40, 80], 1), ([50], 5)):
        a = settings(stepWeights=weights, threshold=threshold)
        count, failure_limit = analysis.argo_measurements(a)
        assert failure_limit == threshold - 1  # Flagger rolls back at `threshold` failed checks
        assert count - failure_limit == len(weights)  # and needs one passing check per step


def test_rehearsal_api_gives_runnable_queries_for_a_version_and_window() -> None:
    a = settings()
    checks = analysis.rollout_checks(a)
    query = analysis.concrete_query(checks[2], version="v7", window_seconds=10)
    assert 'model_version="v7"' in query and "[10s]" in query and "${" not in query
    assert "[2500ms]" in analysis.concrete_query(checks[0], version="v7", window_seconds=2.5)
    with pytest.raises(ValueError, match="positive number of seconds"):
        analysis.concrete_query(checks[0], version="v7", window_seconds=0)


def test_every_query_rule_and_panel_parses_with_promtool(tmp_path: Path) -> None:
    """promtool (the real Prometheus parser) on one rules file holding every PromQL we generate."""
    rules = []
    for stack in STACKS:
        for strategy in ("canary", "blue-green"):
            config = load_stack(stack, overrides={"strategy": strategy})
            a = config.analysis
            for name, query in analysis.concrete_queries(a, "v2", namespace="fraud").items():
                rules.append({"record": f"fraud:check:{name.replace('-', '_')}", "expr": query})
            for template in analysis.flagger_metric_templates(a, "fraud", charts.PROMETHEUS_URL, {}):
                query = fill(template["spec"]["query"].replace("{{ interval }}", "1m"), FLAGGER_VALUES)
                rules.append({"record": "fraud:flagger:query", "expr": query})
            for metric in analysis.argo_analysis_template(a, "fraud", charts.PROMETHEUS_URL, {})["spec"]["metrics"]:
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
