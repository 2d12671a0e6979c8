"""Training into the real embedded MLflow store: registration, tags, reuse, aliases, the gate's promotion."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest

from model.artifact import load_fraud_model
from model.gate import GateSettings
from model.lifecycle import LifecycleError, ensure_models, evaluate_models
from model.registry import (
    CHALLENGER,
    CHAMPION,
    REGISTERED_MODEL_NAME,
    TAG_DATA_SHA,
    TAG_GATE,
    TAG_MODEL_VERSION,
    TAG_PARAMS_HASH,
    aliases,
    connect,
    make_champion,
)
from model.scenario import Scenario, build_scenario
from model.synthetic import frame_sha256, generate_transactions
from model.train import TrainParams

# Far fewer rounds than production, two boosted members (the ensemble the compiled scorer must match): these
# tests check the lifecycle, not model quality (the real-data test below trains with production's params).
FAST = TrainParams(members=2, max_iter=40, learning_rate=0.1)
ROWS = 12_000


@pytest.fixture(scope="module")
def scenario() -> Scenario:
    raw = generate_transactions(ROWS, fraud_rate=0.03, seed=12)
    return build_scenario(raw, data_sha256=frame_sha256(raw))


def assert_compiled_scores_like_scikit_learn(uri: str, holdout: Any) -> None:
    """The compiled ensemble shipped with a registered model decides exactly as scikit-learn on every
    holdout row, with probabilities within 1e-6 (issue 12's bar for serving it)."""
    from model.compiled import MAX_ABS_DIFF, load_compiled, reference_probabilities

    model = load_fraud_model(uri)
    assert model.compiled_info and model.compiled_info["max_abs_diff"] <= MAX_ABS_DIFF, model.compiled_info
    scorer = load_compiled(
        model.compiled_info, model.compiled_onnx, model.estimator, model.feature_names, model.threshold
    )
    rows = holdout[list(model.feature_names)].to_numpy(dtype=np.float64)
    compiled, reference = scorer.probabilities(rows), reference_probabilities(model.estimator, rows)
    assert np.max(np.abs(compiled - reference)) <= 1e-6
    assert np.array_equal(compiled >= model.threshold, reference >= model.threshold)


def versions_of(home: Path) -> list:
    client, _ = connect(home)
    return sorted(client.search_model_versions(f"name='{REGISTERED_MODEL_NAME}'"), key=lambda v: int(v.version))


def test_lifecycle_registers_reuses_gates_and_promotes(scenario: Scenario, fraud_home: Path) -> None:
    models = ensure_models(home=fraud_home, scenario=scenario, train_params=FAST)
    assert [m.model_version for m in models.values()] == ["v1", "v2"]
    assert not any(m.reused for m in models.values())
    assert (fraud_home / "mlflow.db").is_file() and (fraud_home / "mlartifacts").is_dir()

    registered = versions_of(fraud_home)
    assert [v.tags[TAG_MODEL_VERSION] for v in registered] == ["v1", "v2"]
    for version, model in zip(registered, models.values(), strict=True):
        assert version.tags[TAG_DATA_SHA] == scenario.data_sha256
        assert version.tags[TAG_PARAMS_HASH] == model.params_hash
    assert models["v1"].params_hash != models["v2"].params_hash
    client, _ = connect(fraud_home)
    assert aliases(client) == {CHAMPION: models["v1"].registry_version}  # first v1: champion, no gate needed

    # The champion loads through the artifact contract and scores with its stored threshold.
    champion = load_fraud_model(f"models:/{REGISTERED_MODEL_NAME}@{CHAMPION}")
    assert champion.model_version == "v1" and champion.threshold == pytest.approx(models["v1"].threshold)
    scores = champion.fraud_probability(scenario.holdout)
    assert ((scores >= 0) & (scores <= 1)).all() and np.ptp(scores) > 0.5
    for model in models.values():
        assert_compiled_scores_like_scikit_learn(model.model_uri, scenario.holdout)
        # What ensure_models hands back in memory is the model the registry holds (a fresh registration
        # included: `fraudctl analysis simulate` scores the holdout with it).
        logged = load_fraud_model(model.model_uri)
        assert np.array_equal(
            model.model.fraud_probability(scenario.holdout), logged.fraud_probability(scenario.holdout)
        )
        assert model.model.threshold == logged.threshold

    again = ensure_models(home=fraud_home, scenario=scenario, train_params=FAST)
    assert all(m.reused for m in again.values())
    assert {v: m.registry_version for v, m in again.items()} == {v: m.registry_version for v, m in models.items()}
    assert len(versions_of(fraud_home)) == 2  # nothing retrained

    # The gate with default settings: v2 saw January's new fraud pattern, v1 did not.
    passed = evaluate_models(home=fraud_home, scenario=scenario, train_params=FAST)
    assert passed.decision.passed, passed.decision.reasons
    assert passed.aliases == {CHAMPION: models["v1"].registry_version, CHALLENGER: models["v2"].registry_version}
    assert client.get_model_version(REGISTERED_MODEL_NAME, models["v2"].registry_version).tags[TAG_GATE] == "passed"
    reports = fraud_home / "reports"
    metrics_v2 = json.loads((reports / "metrics-v2.json").read_text())
    assert metrics_v2["registry_version"] == models["v2"].registry_version
    assert metrics_v2["recall"] == passed.decision.candidate.recall
    gate_run = client.get_run(passed.run_id)
    assert gate_run.data.metrics["v2_auprc"] == pytest.approx(passed.decision.candidate.auprc)
    logged = {f.path for f in client.list_artifacts(passed.run_id, "gate")}
    assert {"gate/gate.json", "gate/pr_curves.png", "gate/metrics-v1.json"} <= logged

    # An impossible recall requirement: the same v2 fails and loses the challenger alias.
    strict = GateSettings(min_recall_gain=1.0)
    rejected = evaluate_models(home=fraud_home, scenario=scenario, settings=strict, train_params=FAST)
    assert not rejected.decision.passed
    assert [c.name for c in rejected.decision.checks if not c.passed] == ["recall_gain"]
    assert rejected.aliases == {CHAMPION: models["v1"].registry_version}
    assert client.get_model_version(REGISTERED_MODEL_NAME, models["v2"].registry_version).tags[TAG_GATE] == "failed"

    # The rollout's final step: the candidate becomes champion and stops being challenger.
    evaluate_models(home=fraud_home, scenario=scenario, train_params=FAST)
    make_champion(client, models["v2"].registry_version)
    assert aliases(client) == {CHAMPION: models["v2"].registry_version}
    # Ensuring again keeps the promoted champion unless a reset is asked for (the rehearsal's fresh start).
    ensure_models(home=fraud_home, scenario=scenario, train_params=FAST)
    assert aliases(client)[CHAMPION] == models["v2"].registry_version
    ensure_models(home=fraud_home, scenario=scenario, train_params=FAST, reset_champion=True)
    assert aliases(client)[CHAMPION] == models["v1"].registry_version


def test_changed_params_or_a_broken_artifact_mean_retraining(
    scenario: Scenario, fraud_home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = ensure_models(versions=("v1",), home=fraud_home, scenario=scenario, train_params=FAST)["v1"]
    other = TrainParams(members=2, max_iter=20, learning_rate=0.1)
    changed = ensure_models(versions=("v1",), home=fraud_home, scenario=scenario, train_params=other)["v1"]
    assert not changed.reused and changed.registry_version != first.registry_version
    assert changed.params_hash != first.params_hash

    # Delete the stored artifact of the newest version: it no longer verifies, so it is retrained.
    client, _ = connect(fraud_home)
    source = client.get_model_version(REGISTERED_MODEL_NAME, changed.registry_version).source
    location = client.get_logged_model(source.removeprefix("models:/")).artifact_location
    shutil.rmtree(urlparse(location).path)
    caplog.set_level(logging.INFO, logger="model.registry")
    rebuilt = ensure_models(versions=("v1",), home=fraud_home, scenario=scenario, train_params=other)["v1"]
    assert not rebuilt.reused and int(rebuilt.registry_version) > int(changed.registry_version)
    notes = [r.getMessage() for r in caplog.records if r.name == "model.registry"]
    assert any("cannot be loaded, not reusable" in n for n in notes)

    # Same inputs, other data: the data sha256 is part of what is matched.
    raw = generate_transactions(ROWS, fraud_rate=0.03, seed=13)
    other_data = build_scenario(raw, data_sha256=frame_sha256(raw))
    fresh = ensure_models(versions=("v1",), home=fraud_home, scenario=other_data, train_params=FAST)["v1"]
    assert not fresh.reused and fresh.data_sha256 != first.data_sha256


def test_mlflow_tracking_uri_from_the_environment_is_used(
    scenario: Scenario, fraud_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{elsewhere}")
    model = ensure_models(versions=("v1",), home=fraud_home, scenario=scenario, train_params=FAST)["v1"]
    assert elsewhere.is_file() and not (fraud_home / "mlflow.db").exists()
    assert load_fraud_model(model.model_uri).model_version == "v1"
    assert (fraud_home / "mlartifacts").is_dir()  # not ./mlruns in the working directory


def test_evaluate_before_training_says_what_to_run(scenario: Scenario, fraud_home: Path) -> None:
    with pytest.raises(LifecycleError, match="run `fraudctl train --model-version v1` first"):
        evaluate_models(home=fraud_home, scenario=scenario, train_params=FAST)


def test_unknown_version_is_rejected(scenario: Scenario, fraud_home: Path) -> None:
    with pytest.raises(LifecycleError, match="allowed v1, v2"):
        ensure_models(versions=("v3",), home=fraud_home, scenario=scenario)


def test_cli_flags_are_validated(fraud_home: Path, capsys) -> None:
    from fraudctl.cli import main

    assert main(["evaluate", "--precision-band", "2"]) == 2
    assert "gate.precisionBand: must be in [0, 1], got 2" in capsys.readouterr().err


@pytest.mark.slow
def test_real_data_train_then_evaluate_through_the_cli(
    ulb_dataset: Path, fraud_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The demo path on the real data: v1 and v2 trained and registered, v2 passes the gate honestly."""
    from fraudctl.cli import main

    monkeypatch.setenv("FRAUD_DATA_SOURCE", str(ulb_dataset))
    assert main(["train", "--model-version", "v1"]) == 0
    assert capsys.readouterr().out.startswith("v1: models:/fraud-detector/1 (trained)")
    assert main(["train", "--model-version", "v2", "--json"]) == 0
    trained = json.loads(capsys.readouterr().out)
    assert trained["v2"]["reused"] is False
    assert main(["evaluate", "--json"]) == 0
    outcome = json.loads(capsys.readouterr().out)
    assert outcome["gate"]["passed"], outcome["gate"]["reasons"]
    v1, v2 = outcome["metrics"]["v1"], outcome["metrics"]["v2"]
    assert v2["recall"] > v1["recall"] and v2["auprc"] > v1["auprc"]
    assert outcome["aliases"] == {
        CHAMPION: outcome["baseline"]["registry_version"],
        CHALLENGER: trained["v2"]["registry_version"],
    }
    assert (fraud_home / "reports" / "pr_curves.png").is_file()
    # Both registered models carry a compiled ensemble that decides like scikit-learn on the whole holdout.
    from model.scenario import load_scenario

    holdout = load_scenario(ulb_dataset, home=fraud_home).holdout
    for role in ("baseline", "candidate"):  # v1 and v2
        assert_compiled_scores_like_scikit_learn(outcome[role]["model_uri"], holdout)


def test_a_corrupt_tracking_store_is_one_clear_line(fraud_home: Path, capsys: pytest.CaptureFixture) -> None:
    from fraudctl.cli import main

    (fraud_home / "mlflow.db").write_bytes(b"not a database" * 400)
    assert main(["evaluate"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    assert f"{fraud_home / 'mlflow.db'} cannot be used (file is not a database)" in err
    assert "move it aside or delete it" in err
