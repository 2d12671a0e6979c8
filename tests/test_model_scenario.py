"""The drift scenario: calendar mapping, drift injection, disjoint time splits, data validation."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from model.data import DATASET_SHA256, FEATURE_COLUMNS, PCA_COLUMNS, read_transactions
from model.scenario import (
    DAY_SECONDS,
    Scenario,
    ScenarioError,
    ScenarioParams,
    build_scenario,
    seconds_at,
    timestamp_at,
)
from model.synthetic import frame_sha256, generate_transactions
from model.validation import DataValidationError, check_disjoint, validate_slice


@pytest.fixture(scope="module")
def real_scenario(ulb_dataset: Path) -> tuple[pd.DataFrame, Scenario]:
    raw = read_transactions(ulb_dataset)
    return raw, build_scenario(raw, data_sha256=DATASET_SHA256)


@pytest.fixture(scope="module")
def small_scenario() -> Scenario:
    raw = generate_transactions(20_000, fraud_rate=0.02, seed=5)
    return build_scenario(raw, data_sha256=frame_sha256(raw))


def test_real_calendar_spans_15_months_with_every_hour_every_month(real_scenario) -> None:
    raw, scenario = real_scenario
    frame = scenario.frame
    assert frame["transaction_id"].is_unique
    original = frame["transaction_id"] < len(raw)
    assert original.sum() == len(raw)  # every original transaction is there once
    added = frame[~original]  # the fraud wave: drift_extra new-pattern frauds per drifted original
    drifted_originals = int((frame["drifted"] & original).sum())
    assert len(added) == scenario.params.drift_extra * drifted_originals > 0
    assert added["drifted"].all() and (added["Class"] == 1).all()
    assert timestamp_at(frame["Time"].min()).date().isoformat() == "2023-01-01"
    assert timestamp_at(frame["Time"].max()).date().isoformat() == "2024-03-31"
    assert frame["Time"].is_monotonic_increasing
    months = pd.to_datetime(frame["Time"], unit="s", origin="2023-01-01").dt.to_period("M")
    hours = (np.mod(frame["Time"], DAY_SECONDS) // 3600).astype(int)
    assert months.nunique() == 15
    assert (hours.groupby(months).nunique() == 24).all()  # no tie between date and hour of day


def test_real_mapping_keeps_time_of_day_and_features_of_untouched_rows(real_scenario) -> None:
    raw, scenario = real_scenario
    frame = scenario.frame.set_index("transaction_id").sort_index().iloc[: len(raw)]
    kept = ~frame["drifted"].to_numpy()
    time_of_day = np.mod(frame["Time"].to_numpy(), DAY_SECONDS)
    assert np.array_equal(time_of_day[kept], np.mod(raw["Time"].to_numpy(), DAY_SECONDS)[kept])
    assert np.array_equal(frame[list(PCA_COLUMNS)].to_numpy()[kept], raw[list(PCA_COLUMNS)].to_numpy()[kept])
    assert np.array_equal(frame["Class"].to_numpy(), raw["Class"].to_numpy())  # labels never change


def test_real_drift_only_touches_q1_2024_frauds_and_changes_them(real_scenario) -> None:
    _, scenario = real_scenario
    frame = scenario.frame
    drifted = frame[frame["drifted"]]
    assert len(drifted) > 40
    assert (drifted["Class"] == 1).all()
    assert (drifted["Time"] >= seconds_at("2024-01-01")).all()
    summary = scenario.summary()
    before, after = summary["fraud_before_drift"], summary["fraud_after_drift"]
    assert after["night_share"] > before["night_share"] + 0.3
    assert after["median_amount"] > 10 * before["median_amount"]
    # v1 never sees the new pattern; v2 does (January), and so does the holdout.
    assert summary["v1_fit"]["drifted_frauds"] == summary["v1_validation"]["drifted_frauds"] == 0
    assert summary["v2_fit"]["drifted_frauds"] > 0 and summary["holdout"]["drifted_frauds"] > 0


def test_real_splits_are_disjoint_in_time_and_ids(real_scenario) -> None:
    _, scenario = real_scenario
    holdout = scenario.holdout
    assert timestamp_at(holdout["Time"].min()).date().isoformat() == "2024-02-01"
    for version in ("v1", "v2"):
        scenario.validate_for_training(version)  # raises on any problem
        train = scenario.training(version)
        assert not set(train["transaction_id"]) & set(holdout["transaction_id"])
        assert train["Time"].max() < holdout["Time"].min()
        fit, validation = scenario.fit_and_validation(version)
        assert len(fit) + len(validation) == len(train)
        assert fit["Time"].max() < validation["Time"].min()
        days = (validation["Time"].max() - validation["Time"].min()) / DAY_SECONDS
        assert 13 < days <= 14
    assert timestamp_at(scenario.training("v1")["Time"].max()).year == 2023
    assert timestamp_at(scenario.training("v2")["Time"].max()).date().isoformat() == "2024-01-31"


def test_scenario_is_deterministic_and_seeded(small_scenario: Scenario) -> None:
    raw = generate_transactions(20_000, fraud_rate=0.02, seed=5)
    again = build_scenario(raw, data_sha256="x")
    pd.testing.assert_frame_equal(again.frame, small_scenario.frame)
    other = build_scenario(raw, data_sha256="x", params=ScenarioParams(seed=7))
    assert not other.frame.equals(small_scenario.frame)
    assert ScenarioParams(seed=7).digest() != ScenarioParams().digest()


def test_iter_holdout_replays_labelled_rows_in_time_order(small_scenario: Scenario) -> None:
    rows = list(small_scenario.iter_holdout())
    holdout = small_scenario.holdout
    assert len(rows) == len(holdout)
    assert [r.label for r in rows] == holdout["Class"].tolist()
    assert all(tuple(r.features) == FEATURE_COLUMNS for r in rows)
    assert rows[0].timestamp.date().isoformat() >= "2024-02-01" and rows[-1].timestamp.year == 2024
    assert all(a.timestamp <= b.timestamp for a, b in itertools.pairwise(rows))
    assert sum(r.drifted for r in rows) == int(holdout["drifted"].sum())
    assert len(list(small_scenario.iter_holdout(limit=5))) == 5


def test_overlap_between_training_and_holdout_is_caught(small_scenario: Scenario) -> None:
    train, holdout = small_scenario.training("v2"), small_scenario.holdout
    leaked = pd.concat([train, holdout.iloc[:3]])
    with pytest.raises(DataValidationError, match=r"share 3 transactions .*the holdout must be unseen"):
        check_disjoint(leaked, holdout, first_name="v2 training data", second_name="holdout")
    late = train.assign(Time=train["Time"] + 40 * DAY_SECONDS)
    with pytest.raises(DataValidationError, match="not before holdout starts"):
        check_disjoint(late, holdout, first_name="v2 training data", second_name="holdout")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.assign(Class=0), "0 frauds among .* need at least 5"),
        (lambda f: f.assign(Class=1), r"fraud rate 100\.0000%; allowed"),
        (lambda f: f.assign(Amount=-f["Amount"] - 1), r"Amount ranges over .*allowed \[0, 1000000\]"),
        (lambda f: f.assign(V3=f["V3"] * 1e6), r"V3 reach \|value\|"),
        (lambda f: f.assign(Time=f["Time"] + 365 * DAY_SECONDS), "Time outside"),
        (lambda f: pd.concat([f, f.iloc[:2]]), "2 repeated transaction ids"),
    ],
)
def test_slice_validation_names_the_problem(small_scenario: Scenario, mutate, message: str) -> None:
    start, end = small_scenario.holdout_range
    with pytest.raises(DataValidationError, match=message):
        validate_slice(mutate(small_scenario.holdout), where="holdout", time_range=(start, end), min_frauds=5)


def test_bad_scenario_params_are_rejected() -> None:
    with pytest.raises(ScenarioError, match=r"scenario\.drift_share: must be in"):
        ScenarioParams(drift_share=1.5)
    with pytest.raises(ScenarioError, match="v1_train_end < v2_train_end"):
        ScenarioParams(v1_train_end="2024-03-01")
    with pytest.raises(ScenarioError, match="unknown components"):
        ScenarioParams(feature_shift=(("V99", 1.0),))
    with pytest.raises(ScenarioError, match="ISO date"):
        ScenarioParams(calendar_end="next year")
