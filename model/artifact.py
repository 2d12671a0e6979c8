"""The fraud model as an artifact: what training writes and serving reads.

A fraud model is an MLflow sklearn-flavour model whose MLmodel ``metadata`` carries what serving
needs besides the estimator: the decision threshold chosen on validation data, the model version
label used in metrics, and the ordered feature names that requests must carry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Pinned runtime requirements logged with every model: inferring them costs seconds per log.
MODEL_PIP_REQUIREMENTS = ["scikit-learn==1.9.1", "numpy", "pandas"]
# skops refuses unknown types on load; these are the ones a fraud pipeline is built from.
SKOPS_TRUSTED_TYPES = [
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn._loss.link.LogitLink",
    "sklearn._loss.link.Interval",
    "sklearn._loss.loss.HalfBinomialLoss",
    "sklearn._loss._loss.CyHalfBinomialLoss",
    "numpy.dtype",
    "builtins.slice",
    # The project's own pipeline steps (model/features.py, model/ensemble.py): loading needs `model` importable.
    "model.features.TransactionFeatures",
    "model.ensemble.UndersampledBoosting",
]


class ModelArtifactError(ValueError):
    """A model artifact is missing, unreadable or lacks fraud-model metadata."""


@dataclass(frozen=True)
class FraudModel:
    """A loaded fraud model: ``predict_proba`` gives P(fraud); ``decide`` applies the stored threshold."""

    estimator: Any
    threshold: float
    model_version: str
    feature_names: tuple[str, ...]

    def fraud_probability(self, frame: Any) -> Any:
        return self.estimator.predict_proba(frame[list(self.feature_names)])[:, 1]


def fraud_metadata(*, threshold: float, model_version: str, feature_names: list[str]) -> dict[str, Any]:
    if not (0.0 < threshold < 1.0) or math.isnan(threshold):
        raise ModelArtifactError(f"threshold: must be in (0, 1), got {threshold!r}")
    if not model_version:
        raise ModelArtifactError("model_version: must be a non-empty label such as 'v1'")
    if not feature_names:
        raise ModelArtifactError("feature_names: at least one feature is required")
    return {
        "fraud_threshold": float(threshold),
        "fraud_model_version": model_version,
        "fraud_feature_names": list(feature_names),
    }


def save_fraud_model(
    estimator: Any, path: str | Path, *, threshold: float, model_version: str, feature_names: list[str]
) -> Path:
    """Write the model to a local MLflow model directory (no tracking server involved)."""
    import mlflow.sklearn

    metadata = fraud_metadata(threshold=threshold, model_version=model_version, feature_names=feature_names)
    mlflow.sklearn.save_model(
        estimator,
        str(path),
        serialization_format="skops",
        skops_trusted_types=SKOPS_TRUSTED_TYPES,
        pip_requirements=MODEL_PIP_REQUIREMENTS,
        pyfunc_predict_fn="predict_proba",
        metadata=metadata,
    )
    return Path(path)


def log_fraud_model(
    estimator: Any,
    *,
    threshold: float,
    model_version: str,
    feature_names: list[str],
    registered_model_name: str | None = None,
    name: str = "model",
) -> Any:
    """Log the model to the active MLflow run (and register it when a name is given)."""
    import mlflow.sklearn

    metadata = fraud_metadata(threshold=threshold, model_version=model_version, feature_names=feature_names)
    return mlflow.sklearn.log_model(
        estimator,
        name=name,
        serialization_format="skops",
        skops_trusted_types=SKOPS_TRUSTED_TYPES,
        pip_requirements=MODEL_PIP_REQUIREMENTS,
        pyfunc_predict_fn="predict_proba",
        metadata=metadata,
        registered_model_name=registered_model_name,
    )


def load_fraud_model(uri: str | Path) -> FraudModel:
    """Load from a local directory, ``runs:/...``, ``models:/name@alias`` or ``models:/name/version``."""
    import mlflow.sklearn
    from mlflow.models import Model

    uri = str(uri)
    try:
        local = Path(uri) if Path(uri).exists() else Path(_download(uri))
        mlmodel = Model.load(str(local))
        estimator = mlflow.sklearn.load_model(str(local))
    except ModelArtifactError:
        raise
    except Exception as exc:  # mlflow raises many types; name the URI in one clear error
        raise ModelArtifactError(f"model {uri!r}: cannot be loaded ({exc})") from exc
    meta = mlmodel.metadata or {}
    missing = [k for k in ("fraud_threshold", "fraud_model_version", "fraud_feature_names") if k not in meta]
    if missing:
        raise ModelArtifactError(f"model {uri!r}: not a fraud model, metadata lacks {', '.join(missing)}")
    return FraudModel(
        estimator=estimator,
        threshold=float(meta["fraud_threshold"]),
        model_version=str(meta["fraud_model_version"]),
        feature_names=tuple(meta["fraud_feature_names"]),
    )


def _download(uri: str) -> str:
    from mlflow.artifacts import download_artifacts

    return download_artifacts(artifact_uri=uri)
