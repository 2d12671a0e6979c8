"""What the real rehearsals of the suite share (tests/test_rehearsal.py, tests/test_rehearsal_robust_live.py): a
generated scenario, quick training params, and v1/v2 trained and registered once per session.

A rehearsal finds its models in the registry by data sha256 and params hash and reuses them (model.lifecycle),
as a second ``fraudctl rehearse`` does. Each test gets its own $FRAUD_HOME holding a copy of the session's
registry database (``mlflow.db``); the artifacts stay in the session's folder, which the copied database
names by absolute path. So every rehearsal reuses the same trained files, and the writes each makes (its gate
run, aliases, reports) go to its own database and folders, never to another worker's.
"""

from __future__ import annotations

import fcntl
import functools
import sqlite3
from pathlib import Path
from typing import Any

SCENARIO_ROWS = 12_000
SCENARIO_FRAUD_RATE = 0.03
SCENARIO_SEED = 21
# One boosted member of 40 rounds: a model in a second, good enough for v2 to beat v1 on the scenario.
QUICK_TRAINING = {"members": 1, "max_iter": 40}


@functools.cache
def rehearsal_scenario() -> Any:
    """The generated scenario every real rehearsal of the suite runs on (built once per process)."""
    from model.scenario import build_scenario
    from model.synthetic import frame_sha256, generate_transactions

    raw = generate_transactions(SCENARIO_ROWS, fraud_rate=SCENARIO_FRAUD_RATE, seed=SCENARIO_SEED)
    return build_scenario(raw, data_sha256=frame_sha256(raw))


def quick_training() -> Any:
    from model.train import TrainParams

    return TrainParams(**QUICK_TRAINING)


def register_once(shared: Path) -> Path:
    """v1 and v2 trained and registered in ``shared`` (a $FRAUD_HOME), by the first caller of the session; the
    others wait on the lock and find them there. Returns the registry database."""
    from infra.config import load_stack
    from model.lifecycle import ensure_models

    shared.mkdir(parents=True, exist_ok=True)
    done = shared / "registered"
    with open(shared / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            # The gate's costs are part of the params hash: the stack's, as prepare_models passes them.
            ensure_models(
                scenario=rehearsal_scenario(), home=shared, gate=load_stack("dev").gate, train_params=quick_training()
            )
            done.write_text("v1 v2\n")
    database = shared / "mlflow.db"
    assert database.is_file(), f"v1 and v2 were registered somewhere else than {database}"
    return database


def home_with_registry(database: Path, home: Path) -> Path:
    """A fresh $FRAUD_HOME whose registry is a copy of ``database`` (its artifacts where they are)."""
    home.mkdir(parents=True)
    source, copy = sqlite3.connect(database), sqlite3.connect(home / "mlflow.db")
    try:
        source.backup(copy)  # a consistent copy, whatever the source connection state
    finally:
        source.close()
        copy.close()
    return home
