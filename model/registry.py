"""MLflow tracking and the ``fraud-detector`` registry: where trained models live and which one is which.

Tracking defaults to an embedded store (``sqlite:///$FRAUD_HOME/mlflow.db``, artifacts under
``$FRAUD_HOME/mlartifacts``, no server); ``MLFLOW_TRACKING_URI`` points it anywhere else.

Every registered version carries tags ``fraud.model_version`` (v1/v2), ``fraud.data_sha256`` (the raw
dataset) and ``fraud.params_hash`` (scenario + training params + training code, see
``model.train.fingerprint``), so a later run can find and reuse a version trained from the same inputs.

Aliases (not stages) say what a version is for:
  * ``champion``: the model production serves. The first v1 becomes champion when none exists;
    afterwards only a completed rollout moves it (``make_champion``).
  * ``challenger``: a version that passed the offline gate against the champion's baseline and may
    be rolled out. The gate sets it on a pass and removes it from a version that fails.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fraudctl.errors import UsageError
from model.artifact import FraudModel, ModelArtifactError, load_fraud_model, log_fraud_model
from model.data import FEATURE_COLUMNS
from model.paths import fraud_home

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from model.train import TrainedModel

REGISTERED_MODEL_NAME = "fraud-detector"
EXPERIMENT_NAME = "fraud-detector"
CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_MODEL_VERSION = "fraud.model_version"
TAG_DATA_SHA = "fraud.data_sha256"
TAG_PARAMS_HASH = "fraud.params_hash"
TAG_THRESHOLD = "fraud.threshold"
TAG_GATE = "fraud.gate"
TAG_GATE_RUN = "fraud.gate_run_id"

log = logging.getLogger(__name__)


class RegistryError(UsageError, RuntimeError):
    """The tracking store or registry is unreachable or holds something unusable."""


@dataclass(frozen=True)
class RegisteredModel:
    """A registered ``fraud-detector`` version of one scenario model (v1 or v2)."""

    model_version: str  # the scenario label, v1 or v2
    registry_version: str  # MLflow's version number, as a string
    run_id: str
    threshold: float
    data_sha256: str
    params_hash: str
    reused: bool
    model: FraudModel | None = field(default=None, repr=False, compare=False)

    @property
    def model_uri(self) -> str:
        return f"models:/{REGISTERED_MODEL_NAME}/{self.registry_version}"

    def to_json(self) -> dict[str, Any]:
        payload = asdict(self)
        payload.pop("model")
        payload["model_uri"] = self.model_uri
        return payload


def tracking_uri(home: str | Path | None = None) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else the embedded sqlite store under ``$FRAUD_HOME``."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{fraud_home(home) / 'mlflow.db'}"


def connect(home: str | Path | None = None) -> tuple[MlflowClient, str]:
    """Point MLflow at the store, make sure the experiment exists; return (client, experiment id).

    An unusable store (a corrupt ``mlflow.db``, a tracking server that does not answer) raises
    RegistryError with one line naming the store and what to do.
    """
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri(home)
    # A tracking server keeps artifacts where it is configured to; a database store given directly
    # would default to ./mlruns in whatever directory this runs in, so it gets $FRAUD_HOME's instead.
    local_artifacts = not uri.startswith(("http://", "https://", "databricks"))
    if local_artifacts:
        fraud_home(home).mkdir(parents=True, exist_ok=True)
    try:
        # The client opens (and for sqlite, migrates) the store when it is created: inside the try.
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
        if experiment is None:
            location = (fraud_home(home) / "mlartifacts").as_uri() if local_artifacts else None
            experiment_id = client.create_experiment(EXPERIMENT_NAME, artifact_location=location)
        else:
            experiment_id = experiment.experiment_id
    except Exception as exc:  # mlflow, sqlalchemy and transport errors; name the store once
        raise RegistryError(_store_problem(uri, exc)) from exc
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return client, experiment_id


def _store_problem(uri: str, exc: BaseException) -> str:
    """One line: which store, what is wrong with it, what to do."""
    reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
    reason = reason.removeprefix("(sqlite3.DatabaseError) ")
    if uri.startswith("sqlite:///"):
        path = uri.removeprefix("sqlite:///")
        return (
            f"MLflow tracking store {path} cannot be used ({reason}); move it aside or delete it to start a "
            "fresh registry (models registered in it are then retrained), or set MLFLOW_TRACKING_URI to "
            "a working store"
        )
    return f"MLflow tracking store {uri} cannot be used ({reason}); check MLFLOW_TRACKING_URI and that the store is up"


def aliases(client: MlflowClient) -> dict[str, str]:
    """alias -> registry version of ``fraud-detector`` (empty when nothing is registered)."""
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(REGISTERED_MODEL_NAME)
    except MlflowException:
        return {}
    return {alias: str(version) for alias, version in (registered.aliases or {}).items()}


def set_alias(client: MlflowClient, alias: str, registry_version: str) -> None:
    client.set_registered_model_alias(REGISTERED_MODEL_NAME, alias, str(registry_version))


def clear_alias(client: MlflowClient, alias: str) -> None:
    if alias in aliases(client):
        client.delete_registered_model_alias(REGISTERED_MODEL_NAME, alias)


def make_champion(client: MlflowClient, registry_version: str) -> None:
    """A finished rollout: ``champion`` moves to this version, which stops being the challenger."""
    set_alias(client, CHAMPION, registry_version)
    if aliases(client).get(CHALLENGER) == str(registry_version):
        clear_alias(client, CHALLENGER)


def find_registered(
    client: MlflowClient, model_version: str, *, data_sha256: str, params_hash: str
) -> RegisteredModel | None:
    """The newest registered version with these tags whose artifact loads as the right fraud model."""
    from mlflow.exceptions import MlflowException

    try:
        versions = client.search_model_versions(f"name='{REGISTERED_MODEL_NAME}'")
    except MlflowException:
        return None
    wanted = {TAG_MODEL_VERSION: model_version, TAG_DATA_SHA: data_sha256, TAG_PARAMS_HASH: params_hash}
    matches = [v for v in versions if all((v.tags or {}).get(k) == value for k, value in wanted.items())]
    for candidate in sorted(matches, key=lambda v: int(v.version), reverse=True):
        uri = f"models:/{REGISTERED_MODEL_NAME}/{candidate.version}"
        if candidate.status != "READY":
            log.info("registry: %s is %s, not reusable", uri, candidate.status)
            continue
        try:
            loaded = load_fraud_model(uri)
        except ModelArtifactError as exc:
            log.info("registry: %s matches but cannot be loaded, not reusable (%s)", uri, exc)
            continue
        if loaded.model_version != model_version or loaded.feature_names != FEATURE_COLUMNS:
            log.info("registry: %s metadata does not describe %s, not reusable", uri, model_version)
            continue
        return RegisteredModel(
            model_version=model_version,
            registry_version=str(candidate.version),
            run_id=candidate.run_id or "",
            threshold=loaded.threshold,
            data_sha256=data_sha256,
            params_hash=params_hash,
            reused=True,
            model=loaded,
        )
    return None


def register_trained(client: MlflowClient, experiment_id: str, trained: TrainedModel) -> RegisteredModel:
    """Log params, metrics, validation plots and the model in one run, and register it with its tags."""
    import mlflow

    from model.gate import GateSettings, holdout_metrics, write_plots

    label = trained.model_version
    params = {"model_version": label}
    params.update({f"train.{k}": v for k, v in asdict(trained.params).items()})
    params.update({f"scenario.{k}": v for k, v in asdict(trained.scenario_params).items()})
    tags = {TAG_MODEL_VERSION: label, TAG_DATA_SHA: trained.data_sha256, TAG_PARAMS_HASH: trained.fingerprint}
    log.info("registry: logging %s to %s", label, mlflow.get_tracking_uri())
    with mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{label}", tags=tags) as run:
        mlflow.log_params(params)
        mlflow.log_metrics(
            {f"validation_{k}": float(v) for k, v in trained.validation.items()}
            | {"threshold": trained.threshold, "train_seconds": trained.train_seconds}
        )
        labels, scores = trained.validation_scores
        settings = GateSettings(
            cost_missed_fraud=trained.params.cost_missed_fraud, cost_false_positive=trained.params.cost_false_positive
        )
        metrics = holdout_metrics(f"{label} validation", labels, scores, trained.threshold, settings)
        with tempfile.TemporaryDirectory() as scratch:
            write_plots(scratch, labels, {metrics.model_version: (scores, metrics)})
            mlflow.log_artifacts(scratch, artifact_path="validation")
        info = log_fraud_model(
            trained.estimator,
            threshold=trained.threshold,
            model_version=label,
            feature_names=list(trained.feature_names),
            registered_model_name=REGISTERED_MODEL_NAME,
            check_rows=trained.validation_features,
        )
    version = str(info.registered_model_version)
    # Tags go on last: a version interrupted before this point is never mistaken for a reusable one.
    for key, value in (tags | {TAG_THRESHOLD: f"{trained.threshold:.10g}"}).items():
        client.set_model_version_tag(REGISTERED_MODEL_NAME, version, key, value)
    log.info("registry: %s registered as %s version %s", label, REGISTERED_MODEL_NAME, version)
    return RegisteredModel(
        model_version=label,
        registry_version=version,
        run_id=run.info.run_id,
        threshold=trained.threshold,
        data_sha256=trained.data_sha256,
        params_hash=trained.fingerprint,
        reused=False,
    )

