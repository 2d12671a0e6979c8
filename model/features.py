"""Request columns -> model features, as one stateless sklearn transformer that skops can load.

Requests carry ``Time`` (seconds since the scenario epoch), ``V1``..``V28`` and ``Amount``. Absolute
``Time`` is dropped on purpose: a model must not learn "later means riskier", which would not carry over
to a future holdout. What it keeps from ``Time`` is the time of day (hour, plus its sine and cosine so
that 23:59 and 00:00 are neighbours for linear models). ``Amount`` enters as ``log1p``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from model.data import FEATURE_COLUMNS, PCA_COLUMNS

DAY_SECONDS = 86_400.0
OUTPUT_FEATURES = (*PCA_COLUMNS, "log_amount", "hour_of_day", "hour_sin", "hour_cos")


def engineer(values: np.ndarray) -> np.ndarray:
    """The engineered matrix for a float64 array whose columns are in ``FEATURE_COLUMNS`` order.

    Plain numpy, so serving's compiled path (model/compiled.py) calls it without scikit-learn's wrappers.
    """
    time, pca, amount = values[:, 0], values[:, 1:-1], values[:, -1]
    hour = np.mod(time, DAY_SECONDS) / 3600.0
    angle = hour * (2.0 * np.pi / 24.0)
    return np.column_stack([pca, np.log1p(np.clip(amount, 0.0, None)), hour, np.sin(angle), np.cos(angle)])


class TransactionFeatures(TransformerMixin, BaseEstimator):
    """Stateless: ``fit`` checks the input width; ``transform`` returns the engineered numeric matrix.

    Accepts a DataFrame with the request columns (any order, extra columns ignored) or an array whose
    columns are in ``FEATURE_COLUMNS`` order.
    """

    def fit(self, X: Any, y: Any = None) -> TransactionFeatures:
        self._columns(X)
        self.n_features_in_ = len(FEATURE_COLUMNS)
        return self

    def transform(self, X: Any) -> np.ndarray:
        return engineer(self._columns(X))

    def get_feature_names_out(self, input_features: Any = None) -> np.ndarray:
        return np.asarray(OUTPUT_FEATURES, dtype=object)

    def __sklearn_is_fitted__(self) -> bool:
        return True

    @staticmethod
    def _columns(X: Any) -> np.ndarray:
        if hasattr(X, "columns"):
            missing = [c for c in FEATURE_COLUMNS if c not in X.columns]
            if missing:
                raise ValueError(f"missing feature columns {', '.join(missing)}; required {', '.join(FEATURE_COLUMNS)}")
            return X[list(FEATURE_COLUMNS)].to_numpy(dtype=np.float64)
        values = np.asarray(X, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != len(FEATURE_COLUMNS):
            raise ValueError(
                f"expected a 2-D array with {len(FEATURE_COLUMNS)} columns ({', '.join(FEATURE_COLUMNS)}), "
                f"got shape {values.shape}"
            )
        return values
