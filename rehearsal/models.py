"""Step 1 of the rehearsal: data, v1 and v2 trained and registered (reused when valid), the offline gate."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.config import StackConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreparedModels:
    stable_uri: str
    candidate_uri: str
    feature_names: list[str]
    holdout_rows: list[list[float]]
    holdout_labels: list[int]
    gate_summary: dict[str, Any]
    reports_dir: Path
    reused: dict[str, bool]
    serving_options: dict[str, Any] = field(default_factory=dict)


def prepare_models(
    config: StackConfig,
    *,
    data_source: str | None = None,
    home: str | Path | None = None,
    scenario: Any = None,
    train_params: Any = None,
) -> PreparedModels:
    """Train or reuse v1/v2 in the embedded MLflow registry, run the gate, and pick the holdout to replay.

    ``scenario`` replaces the real dataset (tests use a generated one); otherwise the verified ULB file.
    """
    from model.data import FEATURE_COLUMNS, LABEL_COLUMN
    from model.lifecycle import ensure_models, evaluate_models
    from model.paths import reports_dir
    from model.registry import tracking_uri
    from model.scenario import load_scenario

    settings = config.gate
    if scenario is None:
        scenario = load_scenario(data_source, home=home)
    registered = ensure_models(scenario=scenario, home=home, gate=settings, train_params=train_params)
    outcome = evaluate_models(settings=settings, scenario=scenario, home=home, train_params=train_params)
    decision = outcome.decision
    log.info(f"rehearse: gate: {'passed' if decision.passed else 'FAILED'} ({'; '.join(decision.reasons)})")
    holdout = scenario.holdout
    stable, candidate = registered[config.model.stable_version], registered[config.model.candidate_version]
    return PreparedModels(
        stable_uri=stable.model_uri,
        candidate_uri=candidate.model_uri,
        feature_names=list(FEATURE_COLUMNS),
        holdout_rows=holdout[list(FEATURE_COLUMNS)].to_numpy(dtype="float64").tolist(),
        holdout_labels=holdout[LABEL_COLUMN].astype(int).tolist(),
        gate_summary={"passed": decision.passed, "reasons": list(decision.reasons)},
        reports_dir=reports_dir(home),
        reused={version: model.reused for version, model in registered.items()},
        # The servers load models:/ URIs from the same embedded registry.
        serving_options={"env": {"MLFLOW_TRACKING_URI": tracking_uri(home)}},
    )
