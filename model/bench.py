"""``fraudctl bench model``: measured figures on the real data, as JSON.

* the drift scenario: v1 and v2 trained from scratch (``train_seconds`` covers both, fit + threshold),
  their holdout metrics and the gate decision;
* the standard ULB temporal split (first 80 % of the original file by ``Time`` to train, last 20 % to
  test): AUPRC of the same pipeline and of a plain logistic regression, measured side by side.

Nothing is read from or written to MLflow: this measures, it does not register.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from model.data import FEATURE_COLUMNS, LABEL_COLUMN, load_dataset
from model.gate import GateSettings, decide, holdout_metrics
from model.scenario import MODEL_VERSIONS, ScenarioParams, build_scenario
from model.train import TrainParams, build_pipeline, train_model

if TYPE_CHECKING:
    import pandas as pd

TEMPORAL_TRAIN_SHARE = 0.8

log = logging.getLogger(__name__)


@contextmanager
def _step(what: str) -> Iterator[None]:
    """Log ``what ...`` before and ``what: done in N s`` after a block of work."""
    log.info("%s ...", what)
    started = time.perf_counter()
    yield
    log.info("%s: done in %.1f s", what, time.perf_counter() - started)


def temporal_split(raw: pd.DataFrame, train_share: float = TEMPORAL_TRAIN_SHARE) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The original file ordered by ``Time``: the first ``train_share`` of rows, then the rest."""
    ordered = raw.sort_values("Time", kind="stable")
    cut = int(len(ordered) * train_share)
    return ordered.iloc[:cut], ordered.iloc[cut:]


def logistic_baseline() -> Any:
    """Plain logistic regression on the standardized raw columns: the usual reference."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))


def run_model_bench(
    *,
    source: str | Path | None = None,
    home: str | Path | None = None,
    params: TrainParams | None = None,
    scenario_params: ScenarioParams | None = None,
    settings: GateSettings | None = None,
) -> dict[str, Any]:
    from sklearn.metrics import average_precision_score

    settings = settings or GateSettings()
    params = params or TrainParams(
        cost_missed_fraud=settings.cost_missed_fraud, cost_false_positive=settings.cost_false_positive
    )
    raw, sha = load_dataset(source, home=home)
    scenario = build_scenario(raw, data_sha256=sha, params=scenario_params)
    holdout = scenario.holdout
    labels = holdout[LABEL_COLUMN].to_numpy()
    features = list(FEATURE_COLUMNS)

    result: dict[str, Any] = {"data_sha256": sha}
    metrics = {}
    train_seconds = 0.0
    for version in MODEL_VERSIONS:
        trained = train_model(scenario, version, params=params)
        train_seconds += trained.train_seconds
        scores = trained.fraud_probability(holdout)
        metrics[version] = holdout_metrics(version, labels, scores, trained.threshold, settings)
        result[version] = {
            key: getattr(metrics[version], key)
            for key in ("auprc", "precision", "recall", "threshold", "cost", "tp", "fp", "fn")
        } | {"validation_auprc": trained.validation["auprc"], "train_seconds": round(trained.train_seconds, 2)}
    decision = decide(metrics["v1"], metrics["v2"], settings)
    result["gate"] = {"passed": decision.passed, "reasons": decision.reasons}
    result["holdout"] = {"transactions": len(holdout), "frauds": int(labels.sum())}
    result["train_seconds"] = round(train_seconds, 2)

    train, test = temporal_split(raw)
    with _step(f"bench: ULB temporal split, pipeline on {len(train):,} rows, test {len(test):,}"):
        started = time.perf_counter()
        model = build_pipeline(params).fit(train[features], train[LABEL_COLUMN].to_numpy())
        fit_seconds = time.perf_counter() - started
        auprc = average_precision_score(test[LABEL_COLUMN], model.predict_proba(test[features])[:, 1])
    with _step("bench: ULB temporal split, logistic-regression baseline"):
        baseline = logistic_baseline().fit(train[features], train[LABEL_COLUMN].to_numpy())
        auprc_logreg = average_precision_score(test[LABEL_COLUMN], baseline.predict_proba(test[features])[:, 1])
    result["ulb_temporal_auprc"] = round(float(auprc), 4)
    result["ulb_temporal_auprc_logreg"] = round(float(auprc_logreg), 4)
    result["ulb_temporal_auprc_ratio"] = round(float(auprc / auprc_logreg), 4)
    result["ulb_temporal"] = {
        "train_rows": len(train),
        "test_rows": len(test),
        "test_frauds": int(test[LABEL_COLUMN].sum()),
        "fit_seconds": round(fit_seconds, 2),
    }
    for version in MODEL_VERSIONS:
        result[version] = {k: round(v, 4) if isinstance(v, float) else v for k, v in result[version].items()}
    return result
