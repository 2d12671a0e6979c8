"""Train one fraud model of the scenario: pipeline, out-of-time threshold, fingerprint.

A model version is fit on its training period minus the last ``validation_days`` (the validation
slice), and its decision threshold is the one that minimises the business cost (missed frauds and
false-positive reviews) on that later slice. The threshold is therefore chosen on data the
classifier did not see, in the direction time flows. The holdout is not touched here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fraudctl.errors import UsageError
from model.data import FEATURE_COLUMNS, LABEL_COLUMN
from model.gate import DEFAULT_COST_FALSE_POSITIVE, DEFAULT_COST_MISSED_FRAUD
from model.scenario import Scenario, ScenarioParams

if TYPE_CHECKING:
    import numpy as np
    from sklearn.pipeline import Pipeline

# Source files whose change changes what training produces: part of the fingerprint.
_FINGERPRINT_SOURCES = ("data.py", "ensemble.py", "features.py", "scenario.py", "train.py", "validation.py")

log = logging.getLogger(__name__)


class TrainingError(UsageError, ValueError):
    """Training parameters or inputs that cannot produce a model."""


@dataclass(frozen=True)
class TrainParams:
    """Classifier and threshold settings (see model/ensemble.py).

    Chosen on two inner time folds inside the training part of the ULB temporal split (never on its
    test part, nor on the scenario holdout).
    """

    members: int = 4  # boosted models, each on all frauds + a disjoint 1/members of legit transactions
    learning_rate: float = 0.05
    max_iter: int = 300
    max_leaf_nodes: int = 15
    min_samples_leaf: int = 100
    l2_regularization: float = 1.0
    max_features: float = 0.5
    random_state: int = 0
    cost_missed_fraud: float = DEFAULT_COST_MISSED_FRAUD
    cost_false_positive: float = DEFAULT_COST_FALSE_POSITIVE

    def __post_init__(self) -> None:
        problems = []
        if not 0.0 < self.learning_rate <= 1.0:
            problems.append(f"learning_rate: must be in (0, 1], got {self.learning_rate!r}")
        for key in ("members", "max_iter", "max_leaf_nodes", "min_samples_leaf"):
            value = getattr(self, key)
            least = 2 if key == "max_leaf_nodes" else 1
            if not isinstance(value, int) or value < least:
                problems.append(f"{key}: must be a whole number >= {least}, got {value!r}")
        if self.l2_regularization < 0:
            problems.append(f"l2_regularization: must be >= 0, got {self.l2_regularization!r}")
        if not 0.0 < self.max_features <= 1.0:
            problems.append(f"max_features: must be in (0, 1], got {self.max_features!r}")
        costs = (self.cost_missed_fraud, self.cost_false_positive)
        if min(costs) < 0 or max(costs) <= 0:
            problems.append(f"cost_missed_fraud, cost_false_positive: must be >= 0 and not both 0, got {costs}")
        if problems:
            raise TrainingError("; ".join(problems))


@dataclass(frozen=True)
class ThresholdChoice:
    threshold: float
    cost: float
    precision: float
    recall: float
    flagged: int


@dataclass(frozen=True)
class TrainedModel:
    """A trained model version with what the registry and the gate need to know about it."""

    model_version: str
    estimator: Any = field(repr=False)
    threshold: float
    feature_names: tuple[str, ...]
    params: TrainParams
    scenario_params: ScenarioParams
    data_sha256: str
    fingerprint: str
    validation: dict[str, float]
    train_seconds: float
    validation_scores: tuple[Any, Any] = field(repr=False, compare=False, default=((), ()))  # (labels, scores)
    # The validation slice's feature rows: what the compiled ensemble is checked on at registration.
    validation_features: Any = field(repr=False, compare=False, default=None)

    def fraud_probability(self, frame: Any) -> np.ndarray:
        return self.estimator.predict_proba(frame[list(self.feature_names)])[:, 1]


def build_pipeline(params: TrainParams) -> Pipeline:
    from sklearn.pipeline import Pipeline

    from model.ensemble import UndersampledBoosting
    from model.features import TransactionFeatures

    classifier = UndersampledBoosting(
        members=params.members,
        learning_rate=params.learning_rate,
        max_iter=params.max_iter,
        max_leaf_nodes=params.max_leaf_nodes,
        min_samples_leaf=params.min_samples_leaf,
        l2_regularization=params.l2_regularization,
        max_features=params.max_features,
        random_state=params.random_state,
    )
    return Pipeline([("features", TransactionFeatures()), ("classifier", classifier)])


def choose_threshold(
    labels: Any, scores: Any, *, cost_missed_fraud: float, cost_false_positive: float
) -> ThresholdChoice:
    """The score cut-off (flag when score >= threshold) with the lowest total cost on these labels.

    The threshold is placed halfway between the lowest flagged score and the next lower score, so it
    does not sit exactly on one validation example.
    """
    import numpy as np

    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    positives = int(labels.sum())
    if positives == 0:
        raise TrainingError("choose_threshold: the validation slice has no frauds; cannot weigh missed frauds")
    order = np.argsort(-scores, kind="stable")
    sorted_scores, sorted_labels = scores[order], labels[order]
    distinct = np.flatnonzero(np.r_[np.diff(sorted_scores) != 0, True])  # last index of each distinct score
    true_pos = np.cumsum(sorted_labels)[distinct]
    false_pos = (distinct + 1) - true_pos
    costs = cost_missed_fraud * (positives - true_pos) + cost_false_positive * false_pos
    best = int(np.argmin(costs))
    flag_nothing_cost = cost_missed_fraud * positives
    if flag_nothing_cost <= costs[best]:
        top = sorted_scores[0]
        threshold = float(np.nextafter(1.0, 0.0) if top >= 1.0 else (top + 1.0) / 2.0)
        return ThresholdChoice(threshold, float(flag_nothing_cost), 0.0, 0.0, 0)
    lowest_flagged = sorted_scores[distinct[best]]
    below = sorted_scores[distinct[best] + 1] if distinct[best] + 1 < len(sorted_scores) else 0.0
    threshold = float((lowest_flagged + below) / 2.0)
    if threshold <= 0.0:
        threshold = float(np.nextafter(lowest_flagged, 0.0)) if lowest_flagged > 0 else float(np.finfo(float).tiny)
    flagged = int(distinct[best] + 1)
    return ThresholdChoice(
        threshold=threshold,
        cost=float(costs[best]),
        precision=float(true_pos[best] / flagged),
        recall=float(true_pos[best] / positives),
        flagged=flagged,
    )


def code_digest() -> str:
    """Hash of the training code and the sklearn version: a change in either means a new model."""
    import sklearn

    digest = hashlib.sha256(f"scikit-learn=={sklearn.__version__}".encode())
    here = Path(__file__).resolve().parent
    for name in _FINGERPRINT_SOURCES:
        digest.update(name.encode())
        digest.update((here / name).read_bytes())
    return digest.hexdigest()


def fingerprint(model_version: str, scenario_params: ScenarioParams, params: TrainParams) -> str:
    """What makes two trainings of ``model_version`` on the same data give the same model."""
    payload = {
        "model_version": model_version,
        "scenario": asdict(scenario_params),
        "train": asdict(params),
        "code": code_digest(),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def train_model(
    scenario: Scenario, model_version: str, *, params: TrainParams | None = None
) -> TrainedModel:
    """Validate the data, fit on the fit slice, choose the threshold on the validation slice."""
    from sklearn.metrics import average_precision_score

    params = params or TrainParams()
    scenario.validate_for_training(model_version)
    fit, validation = scenario.fit_and_validation(model_version)
    features = list(FEATURE_COLUMNS)
    log.info(
        f"train {model_version}: fitting on {len(fit):,} transactions ({int(fit[LABEL_COLUMN].sum())} frauds), "
        f"threshold on {len(validation):,} later ones ({int(validation[LABEL_COLUMN].sum())} frauds)"
    )
    started = time.perf_counter()
    estimator = build_pipeline(params).fit(fit[features], fit[LABEL_COLUMN].to_numpy())
    scores = estimator.predict_proba(validation[features])[:, 1]
    labels = validation[LABEL_COLUMN].to_numpy()
    choice = choose_threshold(
        labels, scores, cost_missed_fraud=params.cost_missed_fraud, cost_false_positive=params.cost_false_positive
    )
    seconds = time.perf_counter() - started
    validation_metrics = {
        "auprc": float(average_precision_score(labels, scores)),
        "precision": choice.precision,
        "recall": choice.recall,
        "cost": choice.cost,
        "transactions": float(len(validation)),
        "frauds": float(labels.sum()),
        "fit_transactions": float(len(fit)),
        "fit_frauds": float(fit[LABEL_COLUMN].sum()),
    }
    log.info(
        f"train {model_version}: done in {seconds:.1f} s; threshold {choice.threshold:.4f}, validation "
        f"AUPRC {validation_metrics['auprc']:.3f}, precision {choice.precision:.3f}, recall {choice.recall:.3f}"
    )
    return TrainedModel(
        model_version=model_version,
        estimator=estimator,
        threshold=choice.threshold,
        feature_names=tuple(features),
        params=params,
        scenario_params=scenario.params,
        data_sha256=scenario.data_sha256,
        fingerprint=fingerprint(model_version, scenario.params, params),
        validation=validation_metrics,
        train_seconds=seconds,
        validation_scores=(labels, scores),
        validation_features=validation[features],
    )
