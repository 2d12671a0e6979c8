"""A small fraud model trained on generated transactions: for serving tests and the serving benchmark
when no trained model is registered locally. Same pipeline (model.train.build_pipeline: TransactionFeatures
and the undersampled boosting ensemble, fewer rounds), features and artifact format as the real one
(Time, V1..V28, Amount; saved with model.artifact.save_fraud_model, so it is compiled too).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from model.data import FEATURE_COLUMNS

FEATURE_NAMES = list(FEATURE_COLUMNS)


def synthetic_transactions(rows: int, seed: int = 0, fraud_share: float = 0.02) -> tuple[Any, np.ndarray]:
    """(features DataFrame, 0/1 labels) with a learnable, imbalanced fraud signal."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    values = rng.normal(size=(rows, len(FEATURE_NAMES)))
    values[:, 0] = rng.uniform(0, 2 * 86_400, size=rows)
    values[:, -1] = np.round(rng.lognormal(3.0, 1.2, size=rows), 2)
    labels = (rng.random(rows) < fraud_share).astype(int)
    # Fraud rows drift on a few components and spend more, as in the card-fraud data set.
    shift = np.zeros(len(FEATURE_NAMES))
    shift[[1, 3, 10, 12, 14]] = [-2.5, 2.0, -2.0, -2.5, -3.0]
    values[labels == 1] += shift
    values[labels == 1, -1] *= 2.5
    return pd.DataFrame(values, columns=FEATURE_NAMES), labels


def train_synthetic_estimator(rows: int = 6000, *, seed: int = 0, max_iter: int = 60) -> tuple[Any, float]:
    """(fitted fraud pipeline, decision threshold with the best F1 on its training data)."""
    from model.train import TrainParams, build_pipeline

    frame, labels = synthetic_transactions(rows, seed)
    params = TrainParams(max_iter=max_iter, learning_rate=0.1, min_samples_leaf=20, random_state=seed)
    estimator = build_pipeline(params).fit(frame, labels)
    return estimator, _best_f1_threshold(estimator.predict_proba(frame)[:, 1], labels)


def train_synthetic_model(
    directory: str | Path, *, model_version: str = "v1", rows: int = 6000, seed: int = 0, max_iter: int = 60
) -> Path:
    """Train on generated data and save as a fraud model artifact (model.artifact.save_fraud_model)."""
    from model.artifact import save_fraud_model

    estimator, threshold = train_synthetic_estimator(rows, seed=seed, max_iter=max_iter)
    return save_fraud_model(
        estimator, directory, threshold=threshold, model_version=model_version, feature_names=FEATURE_NAMES
    )


def _best_f1_threshold(scores: np.ndarray, labels: np.ndarray) -> float:
    best, best_f1 = 0.5, -1.0
    for candidate in np.linspace(0.05, 0.95, 19):
        flagged = scores >= candidate
        tp = float(np.sum(flagged & (labels == 1)))
        precision = tp / max(float(flagged.sum()), 1.0)
        recall = tp / max(float(labels.sum()), 1.0)
        f1 = 2 * precision * recall / max(precision + recall, 1e-12)
        if f1 > best_f1:
            best, best_f1 = float(candidate), f1
    return best
