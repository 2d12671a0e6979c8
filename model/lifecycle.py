"""The model lifecycle end to end: make sure v1 and v2 exist in the registry, then gate v2 against v1.

``ensure_models`` is idempotent: a version already registered from the same data (sha256) and the
same scenario/training params and code (``params_hash``) whose artifact loads is reused, not retrained.
``evaluate_models`` scores both registered artifacts on the holdout (February-March 2024, seen by
neither), applies the gate, writes ``$FRAUD_HOME/reports`` (metrics-v1.json, metrics-v2.json,
gate.json, pr_curves.png, confusion_matrices.png), logs it all as an MLflow run, and moves the
``challenger`` alias: set to v2 when the gate passes, removed from v2 when it fails.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fraudctl.errors import UsageError
from model.data import DATASET_SHA256, FEATURE_COLUMNS, LABEL_COLUMN, ensure_dataset, read_transactions
from model.gate import GateDecision, GateSettings, decide, holdout_metrics, write_gate_report
from model.paths import reports_dir
from model.registry import (
    CHALLENGER,
    CHAMPION,
    REGISTERED_MODEL_NAME,
    TAG_GATE,
    TAG_GATE_RUN,
    RegisteredModel,
    aliases,
    clear_alias,
    connect,
    find_registered,
    register_trained,
    set_alias,
)
from model.scenario import MODEL_VERSIONS, Scenario, ScenarioParams, build_scenario, timestamp_at
from model.train import TrainParams, fingerprint, train_model

log = logging.getLogger(__name__)


class LifecycleError(UsageError, RuntimeError):
    """A lifecycle step cannot run with what is registered (e.g. evaluate before train)."""


@dataclass(frozen=True)
class GateOutcome:
    decision: GateDecision
    baseline: RegisteredModel
    candidate: RegisteredModel
    report_paths: dict[str, Path]
    run_id: str
    aliases: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "gate": self.decision.to_json(),
            "baseline": self.baseline.to_json(),
            "candidate": self.candidate.to_json(),
            "metrics": {m.model_version: m.to_json() for m in (self.decision.baseline, self.decision.candidate)},
            "reports": {name: str(path) for name, path in self.report_paths.items()},
            "run_id": self.run_id,
            "aliases": self.aliases,
        }


def train_params_for(settings: GateSettings | None, params: TrainParams | None = None) -> TrainParams:
    """Training params whose threshold costs are the gate's: one cost model for both decisions."""
    from dataclasses import replace

    params = params or TrainParams()
    if settings is None:
        return params
    return replace(
        params, cost_missed_fraud=settings.cost_missed_fraud, cost_false_positive=settings.cost_false_positive
    )


class _ScenarioSource:
    """Loads the scenario at most once, and only if some step needs the data."""

    def __init__(self, scenario: Scenario | None, source: Any, home: Any, params: ScenarioParams) -> None:
        self._scenario, self._source, self._home, self._params = scenario, source, home, params
        self._path: Path | None = None

    @property
    def data_sha256(self) -> str:
        if self._scenario is not None:
            return self._scenario.data_sha256
        if self._path is None:  # verifies the cache (or fetches) once
            self._path = ensure_dataset(self._source, home=self._home)
        return DATASET_SHA256

    def get(self) -> Scenario:
        if self._scenario is None:
            sha = self.data_sha256
            assert self._path is not None
            log.info("dataset: reading %s", self._path.name)
            raw = read_transactions(self._path)
            self._scenario = build_scenario(raw, data_sha256=sha, params=self._params)
        return self._scenario


def ensure_models(
    *,
    versions: tuple[str, ...] = MODEL_VERSIONS,
    source: str | Path | None = None,
    home: str | Path | None = None,
    scenario: Scenario | None = None,
    scenario_params: ScenarioParams | None = None,
    train_params: TrainParams | None = None,
    gate: GateSettings | None = None,
    force: bool = False,
    reset_champion: bool = False,
) -> dict[str, RegisteredModel]:
    """Make sure each of ``versions`` is trained and registered; reuse valid registered ones.

    ``scenario`` (e.g. built from generated data) replaces the real dataset; ``gate`` supplies the
    business costs used for thresholds. ``force`` retrains even when a reusable version exists.
    The first v1 becomes ``champion`` when no champion exists (or always, with ``reset_champion``).
    """
    unknown = [v for v in versions if v not in MODEL_VERSIONS]
    if unknown or not versions:
        raise LifecycleError(f"model versions {list(versions)}: allowed {', '.join(MODEL_VERSIONS)}")
    if scenario is not None and scenario_params is not None and scenario.params != scenario_params:
        raise LifecycleError("scenario_params differ from the given scenario's params; give one of them")
    scenario_params = scenario.params if scenario is not None else (scenario_params or ScenarioParams())
    params = train_params_for(gate, train_params)
    data = _ScenarioSource(scenario, source, home, scenario_params)
    client, experiment_id = connect(home)
    data_sha = data.data_sha256
    result: dict[str, RegisteredModel] = {}
    for version in versions:
        params_hash = fingerprint(version, scenario_params, params)
        found = None if force else find_registered(client, version, data_sha256=data_sha, params_hash=params_hash)
        if found is not None:
            log.info(
                "%s: reusing %s (same data sha256 and params hash %s...)", version, found.model_uri, params_hash[:12]
            )
            result[version] = found
            continue
        trained = train_model(data.get(), version, params=params)
        result[version] = register_trained(client, experiment_id, trained)
    if "v1" in result:
        current = aliases(client)
        if reset_champion or CHAMPION not in current:
            set_alias(client, CHAMPION, result["v1"].registry_version)
            log.info("registry: %s -> version %s (v1)", CHAMPION, result["v1"].registry_version)
    return result


def evaluate_models(
    *,
    settings: GateSettings | None = None,
    source: str | Path | None = None,
    home: str | Path | None = None,
    scenario: Scenario | None = None,
    scenario_params: ScenarioParams | None = None,
    train_params: TrainParams | None = None,
    out_dir: str | Path | None = None,
) -> GateOutcome:
    """Gate the registered v2 against the registered v1 on the holdout and move ``challenger``.

    Both must be registered for the current data and params (``ensure_models`` or ``fraudctl train``).
    """
    import mlflow

    settings = settings or GateSettings()
    scenario_params = scenario.params if scenario is not None else (scenario_params or ScenarioParams())
    params = train_params_for(settings, train_params)
    data = _ScenarioSource(scenario, source, home, scenario_params)
    client, experiment_id = connect(home)
    data_sha = data.data_sha256
    registered = {}
    for version in MODEL_VERSIONS:
        found = find_registered(
            client, version, data_sha256=data_sha, params_hash=fingerprint(version, scenario_params, params)
        )
        if found is None or found.model is None:
            raise LifecycleError(
                f"{version} is not registered for this data and these params/code (or its costs differ from the "
                f"gate's); run `fraudctl train --model-version {version}` first"
            )
        registered[version] = found
    baseline, candidate = registered["v1"], registered["v2"]
    current = data.get()
    current.validate_holdout(against="v2")  # v2's training period contains v1's: one check covers both
    holdout = current.holdout
    labels = holdout[LABEL_COLUMN].to_numpy()
    start, end = current.holdout_range
    log.info(f"gate: scoring {len(holdout):,} holdout transactions ({int(labels.sum())} frauds) with both models")
    scores, metrics = {}, {}
    for version, model in registered.items():
        assert model.model is not None
        scores[version] = model.model.fraud_probability(holdout[list(FEATURE_COLUMNS)])
        metrics[version] = holdout_metrics(
            version, labels, scores[version], model.threshold, settings,
            extra={
                "registry_version": model.registry_version,
                "model_uri": model.model_uri,
                "data_sha256": model.data_sha256,
                "params_hash": model.params_hash,
                "holdout_first_day": str(timestamp_at(start).date()),
                "holdout_last_day": str(timestamp_at(end - 1).date()),
            },
        )  # fmt: skip
    decision = decide(metrics["v1"], metrics["v2"], settings)
    out = Path(out_dir) if out_dir is not None else reports_dir(home)
    paths = write_gate_report(out, decision, labels, scores["v1"], scores["v2"])

    with mlflow.start_run(experiment_id=experiment_id, run_name="gate-v2-vs-v1") as run:
        mlflow.set_tags({
            "fraud.gate_passed": str(decision.passed).lower(),
            "fraud.baseline_version": baseline.registry_version,
            "fraud.candidate_version": candidate.registry_version,
        })  # fmt: skip
        mlflow.log_params({f"gate.{k}": v for k, v in settings.to_config().items()})
        mlflow.log_metrics(
            {
                f"{version}_{name}": float(getattr(m, name))
                for version, m in metrics.items()
                for name in ("auprc", "precision", "recall", "cost", "tp", "fp", "fn", "tn")
            }
            | {"gate_passed": float(decision.passed)}
        )
        for path in paths.values():
            mlflow.log_artifact(str(path), artifact_path="gate")
    client.set_model_version_tag(
        REGISTERED_MODEL_NAME, candidate.registry_version, TAG_GATE, "passed" if decision.passed else "failed"
    )
    client.set_model_version_tag(REGISTERED_MODEL_NAME, candidate.registry_version, TAG_GATE_RUN, run.info.run_id)
    if decision.passed:
        set_alias(client, CHALLENGER, candidate.registry_version)
        log.info("gate: PASSED; %s -> version %s (v2)", CHALLENGER, candidate.registry_version)
    else:
        if aliases(client).get(CHALLENGER) == candidate.registry_version:
            clear_alias(client, CHALLENGER)
        log.info("gate: FAILED; version %s (v2) is not the %s", candidate.registry_version, CHALLENGER)
    return GateOutcome(
        decision=decision,
        baseline=baseline,
        candidate=candidate,
        report_paths=paths,
        run_id=run.info.run_id,
        aliases=aliases(client),
    )
