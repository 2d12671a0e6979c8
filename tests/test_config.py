"""Stack config: defaults from Pulumi.yaml, deep merge, and every validation error named by key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from infra.config import (
    ConfigError,
    deep_merge,
    load_stack,
    parse_config,
    parse_set_overrides,
    project_defaults,
    project_schema,
)

ROOT = Path(__file__).resolve().parent.parent


def problems_for(**overrides: object) -> list[str]:
    raw = deep_merge(project_defaults(), {"regions": [{"name": "eu", "context": "ctx-eu"}]})
    raw = deep_merge(raw, overrides)
    with pytest.raises(ConfigError) as info:
        parse_config(raw, stack="test")
    return info.value.problems


def test_every_key_in_pulumi_yaml_has_a_description_and_object_defaults_are_complete() -> None:
    schema = project_schema()
    for key, spec in schema.items():
        assert spec.get("description"), f"{key} has no description"
    # regions has no default on purpose: every stack must say where its clusters are.
    assert "default" not in schema["regions"]
    assert set(project_defaults()) == set(schema) - {"regions"}
    assert {key: spec["default"] for key, spec in schema.items() if "default" in spec} == project_defaults()


def test_pulumi_yaml_config_is_what_the_models_declare() -> None:
    """Defaults and descriptions are stated once, in the models; Pulumi.yaml's config: block is generated
    (`fraudctl config-schema --write`) and must not drift from them."""
    from infra.config.schema import MARKER, pulumi_yaml

    text = (ROOT / "Pulumi.yaml").read_text()
    assert MARKER in text
    assert text == pulumi_yaml(text), "Pulumi.yaml is stale: run `fraudctl config-schema --write`"
    # And what the file states is what a stack gets when it says nothing (project_defaults: the models').
    config = load_stack("dev")
    assert config.serving.max_batch_time == project_schema()["serving"]["default"]["maxBatchTime"]


def test_kubernetes_quantities_are_compared_by_value() -> None:
    from infra.config import quantity_value

    assert quantity_value("250m") == quantity_value("0.25") == quantity_value("2.5e-1")
    assert quantity_value("1Gi") == 1024 * quantity_value("1Mi") == 2**30
    assert quantity_value("1G") == 10**9 < quantity_value("1Gi")
    for bad in ("lots", "1.5.2", "Gi", "1 Gi", "1gi"):
        with pytest.raises(ValueError):
            quantity_value(bad)


def test_stack_files_load() -> None:
    dev = load_stack("dev")
    assert dev.strategy == "canary" and len(dev.regions) == 1
    assert dev.serving.replicas == 1 and dev.serving.max_batch_size == 1  # merged over defaults
    multi = load_stack("multiregion")
    assert len(multi.regions) >= 2
    assert len({r.context for r in multi.regions}) == len(multi.regions)


def test_switching_strategy_is_one_edit() -> None:
    assert load_stack("dev", overrides=parse_set_overrides(["strategy=blue-green"])).strategy == "blue-green"


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"strategy": "rolling"}, "strategy: must be one of canary, blue-green; got 'rolling'"),
        ({"delivery": "flux"}, "delivery: must be one of pulumi, argocd; got 'flux'"),
        ({"analysis": {"stepWeights": [5, 50, 10]}}, "analysis.stepWeights: must be strictly increasing"),
        ({"analysis": {"stepWeights": [5, 100]}}, "analysis.stepWeights[1]: must be in [1, 99], got 100"),
        ({"analysis": {"minPrecision": 1.5}}, "analysis.minPrecision: must be in [0, 1], got 1.5"),
        ({"analysis": {"minSuccessRate": "high"}}, "analysis.minSuccessRate: must be a number in [50, 100]"),
        ({"analysis": {"threshold": 2.5}}, "analysis.threshold: must be a whole number"),
        ({"platform": {"harbor": {"version": "^1.16"}}}, "platform.harbor.version: must be an exact version"),
        ({"platform": {"argocd": {"version": "latest"}}}, "platform.argocd.version: must be an exact version"),
        ({"platform": {"flagger": {"repository": "flagger.app"}}}, "platform.flagger.repository: must be an https://"),
        ({"serving": {"minReplicas": 5, "maxReplicas": 2}}, "serving.minReplicas: must not exceed serving.maxReplicas"),
        ({"serving": {"cpuRequest": "lots"}}, "serving.cpuRequest: 'lots' is not valid"),
        ({"serving": {"imageTag": "latest"}}, "serving.imageTag: 'latest' is not valid"),
        ({"serving": {"replicaz": 2}}, "serving.replicaz: unknown key (did you mean replicas?); allowed keys are"),
        ({"model": {"candidateVersion": "v1"}}, "model.candidateVersion: must differ from model.stableVersion"),
        ({"model": {"stableUri": "http://x"}}, "model.stableUri: 'http://x' is not valid"),
        ({"mlflow": {"artifactStore": "bucket", "endpoint": ""}}, "mlflow.endpoint: is required when"),
        ({"mlflow": {"postgresImage": "postgres:latest"}}, "mlflow.postgresImage: must not use the 'latest' tag"),
        ({"gate": {"precisionBand": 2}}, "gate.precisionBand: must be in [0, 1], got 2"),
        ({"typo": 1}, "typo: unknown key; known keys are"),
    ],
)
def test_invalid_values_are_reported_with_key_and_allowed_values(overrides: dict, expected: str) -> None:
    problems = problems_for(**overrides)
    assert any(p.startswith(expected) for p in problems), problems


@pytest.mark.parametrize(
    ("regions", "expected"),
    [
        ([], "regions: must have at least 1 item(s), got []"),
        ([{"name": "eu"}], "regions[0].context: is required"),
        ([{"name": "EU_1", "context": "c"}], "regions[0].name: 'EU_1' is not valid"),
        (
            [{"name": "eu", "context": "a"}, {"name": "eu", "context": "b"}],
            "regions[1].name: duplicate region name 'eu'",
        ),
        (
            [{"name": "eu", "context": "a"}, {"name": "us", "context": "a"}],
            "regions[1].context: 'a' is already regions[0]'s cluster",
        ),
    ],
)
def test_region_errors(regions: list, expected: str) -> None:
    raw = deep_merge(project_defaults(), {"regions": regions})
    with pytest.raises(ConfigError) as info:
        parse_config(raw, stack="test")
    assert any(p.startswith(expected) for p in info.value.problems), info.value.problems


def test_all_problems_are_reported_at_once() -> None:
    problems = problems_for(strategy="x", delivery="y", analysis={"minRecall": -1}, serving={"replicas": 0})
    keys = {p.split(":")[0] for p in problems}
    assert {"strategy", "delivery", "analysis.minRecall", "serving.replicas"} <= keys


def test_set_overrides_parse_dotted_keys_and_reject_garbage() -> None:
    assert parse_set_overrides(["serving.replicas=3", "analysis.stepWeights=[1,2]"]) == {
        "serving": {"replicas": 3},
        "analysis": {"stepWeights": [1, 2]},
    }
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_set_overrides(["strategy"])
    # Values are YAML 1.2, as in stack files: `on` is a string (and then refused by simulateError).
    assert parse_set_overrides(["serving.simulateError=on"]) == {"serving": {"simulateError": "on"}}
    with pytest.raises(ConfigError, match="--set serving: a key is given twice"):
        parse_set_overrides(["serving={replicas: 1, replicas: 2}"])


def test_unknown_stack_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match="known stacks are dev, multiregion"):
        load_stack("nope")


def test_a_user_stack_file_with_partial_objects_merges_over_defaults(tmp_path: Path) -> None:
    shutil.copy(ROOT / "Pulumi.yaml", tmp_path / "Pulumi.yaml")
    (tmp_path / "Pulumi.staging.yaml").write_text(
        yaml.safe_dump(
            {
                "config": {
                    "fraud-platform:environment": "staging",
                    "fraud-platform:regions": [{"name": "eu", "context": "eu-ctx"}],
                    "fraud-platform:analysis": {"stepWeights": [10, 20, 40]},
                    "fraud-platform:platform": {"harbor": {"enabled": False}},
                }
            }
        )
    )
    config = load_stack("staging", root=tmp_path)
    assert config.analysis.step_weights == (10, 20, 40)
    assert config.analysis.min_precision == 0.85  # untouched keys keep their defaults
    assert not config.enabled("harbor") and config.components["harbor"].version == "1.16.2"
