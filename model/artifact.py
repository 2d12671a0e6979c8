"""The fraud model as an artifact: what training writes and serving reads.

A fraud model is an MLflow sklearn-flavour model whose MLmodel ``metadata`` carries what serving
needs besides the estimator: the decision threshold chosen on validation data, the model version
label used in metrics, and the ordered feature names that requests must carry.

Saving or logging also compiles the ensemble (model/compiled.py) and ships the graph in the same MLflow
model (``extra_files/fraud-ensemble.onnx``, described by metadata ``fraud_compiled``), after checking it
against scikit-learn on ``check_rows``. A model that cannot be compiled is still saved, without it.
"""

from __future__ import annotations

import logging
import math
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fraudctl.errors import UsageError

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


log = logging.getLogger(__name__)


class ModelArtifactError(UsageError, ValueError):
    """A model artifact is missing, unreadable or lacks fraud-model metadata."""


@dataclass(frozen=True)
class FraudModel:
    """A loaded fraud model: ``predict_proba`` gives P(fraud); ``decide`` applies the stored threshold."""

    estimator: Any
    threshold: float
    model_version: str
    feature_names: tuple[str, ...]
    compiled_info: dict[str, Any] | None = None  # metadata fraud_compiled (model/compiled.py)
    compiled_onnx: bytes | None = field(default=None, repr=False, compare=False)

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


def _compiled_extras(
    estimator: Any, threshold: float, feature_names: list[str], check_rows: Any, scratch: Path
) -> tuple[list[str], dict[str, Any]]:
    """(extra_files, metadata) carrying the compiled ensemble, or nothing when it cannot be compiled."""
    import numpy as np

    from model.compiled import ONNX_FILENAME, CompileError, compile_estimator, probe_rows

    if check_rows is None:
        rows = probe_rows(feature_names)
    elif hasattr(check_rows, "columns"):
        rows = check_rows[list(feature_names)].to_numpy(dtype=np.float64)
    else:
        rows = np.asarray(check_rows, dtype=np.float64)
    try:
        compiled = compile_estimator(estimator, rows, threshold)
    except (CompileError, ImportError) as exc:
        log.warning("model: not compiled, serving will use scikit-learn (%s)", exc)
        return [], {}
    path = scratch / ONNX_FILENAME
    path.write_bytes(compiled.onnx_bytes)
    info = compiled.metadata
    log.info(
        f"model: ensemble compiled ({info['runtime']}), checked on {info['checked_rows']:,} rows, "
        f"max difference {info['max_abs_diff']:.1e}"
    )
    return [str(path)], {"fraud_compiled": info}


@contextmanager
def _flavour_arguments(
    estimator: Any, *, threshold: float, model_version: str, feature_names: list[str], check_rows: Any
) -> Iterator[dict[str, Any]]:
    """The sklearn-flavour arguments every fraud model is saved or logged with: skops, pinned requirements,
    the fraud metadata and the compiled ensemble (its file lives while the block runs)."""
    metadata = fraud_metadata(threshold=threshold, model_version=model_version, feature_names=feature_names)
    with tempfile.TemporaryDirectory(prefix="fraud-compile-") as scratch:
        extra_files, compiled = _compiled_extras(estimator, threshold, feature_names, check_rows, Path(scratch))
        yield {
            "serialization_format": "skops",
            "skops_trusted_types": SKOPS_TRUSTED_TYPES,
            "pip_requirements": MODEL_PIP_REQUIREMENTS,
            "pyfunc_predict_fn": "predict_proba",
            "metadata": metadata | compiled,
            "extra_files": extra_files or None,
        }


def save_fraud_model(
    estimator: Any,
    path: str | Path,
    *,
    threshold: float,
    model_version: str,
    feature_names: list[str],
    check_rows: Any = None,
) -> Path:
    """Write the model to a local MLflow model directory (no tracking server involved)."""
    import mlflow.sklearn

    with _flavour_arguments(
        estimator, threshold=threshold, model_version=model_version, feature_names=feature_names, check_rows=check_rows
    ) as arguments:
        mlflow.sklearn.save_model(estimator, str(path), **arguments)
    return Path(path)


def log_fraud_model(
    estimator: Any,
    *,
    threshold: float,
    model_version: str,
    feature_names: list[str],
    registered_model_name: str | None = None,
    name: str = "model",
    check_rows: Any = None,
) -> Any:
    """Log the model to the active MLflow run (and register it when a name is given).

    ``check_rows`` (feature rows, e.g. the validation slice) are what the compiled ensemble is checked on
    against scikit-learn before it is shipped; without them, generated probe rows are used.
    """
    import mlflow.sklearn

    with _flavour_arguments(
        estimator, threshold=threshold, model_version=model_version, feature_names=feature_names, check_rows=check_rows
    ) as arguments:
        return mlflow.sklearn.log_model(
            estimator, name=name, registered_model_name=registered_model_name, **arguments
        )


def load_fraud_model(uri: str | Path) -> FraudModel:
    """Load from a local directory, ``runs:/...``, ``models:/name@alias`` or ``models:/name/version``.

    A remote model is downloaded into a temporary directory that is removed once it is in memory.
    """
    uri = str(uri)
    if Path(uri).exists():
        return _load_local(Path(uri), uri)
    with tempfile.TemporaryDirectory(prefix="fraud-model-") as scratch:
        try:
            local = _download(uri, scratch)
        except Exception as exc:  # mlflow raises many types for a missing or broken artifact
            raise ModelArtifactError(f"model {uri!r}: cannot be loaded ({exc})") from exc
        return _load_local(Path(local), uri)


def _load_local(local: Path, uri: str) -> FraudModel:
    import mlflow.sklearn
    from mlflow.models import Model

    try:
        mlmodel = Model.load(str(local))
        estimator = mlflow.sklearn.load_model(str(local))
    except Exception as exc:  # mlflow raises many types; name the URI in one clear error
        raise ModelArtifactError(f"model {uri!r}: cannot be loaded ({exc})") from exc
    meta = mlmodel.metadata or {}
    missing = [k for k in ("fraud_threshold", "fraud_model_version", "fraud_feature_names") if k not in meta]
    if missing:
        raise ModelArtifactError(f"model {uri!r}: not a fraud model, metadata lacks {', '.join(missing)}")
    compiled_info = meta.get("fraud_compiled")
    compiled_onnx = None
    if isinstance(compiled_info, dict) and isinstance(compiled_info.get("file"), str):
        onnx_path = local / compiled_info["file"]
        if onnx_path.resolve().is_relative_to(local.resolve()) and onnx_path.is_file():
            compiled_onnx = onnx_path.read_bytes()
    return FraudModel(
        estimator=estimator,
        threshold=float(meta["fraud_threshold"]),
        model_version=str(meta["fraud_model_version"]),
        feature_names=tuple(meta["fraud_feature_names"]),
        compiled_info=compiled_info,
        compiled_onnx=compiled_onnx,
    )


def _download(uri: str, destination: str) -> str:
    from mlflow.artifacts import download_artifacts

    return download_artifacts(artifact_uri=uri, dst_path=destination)
