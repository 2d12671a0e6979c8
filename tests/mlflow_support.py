"""MLflow's process-wide store selection, kept: what a block (a test, a fixture) points MLflow at stays in it."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

_MLFLOW_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@contextlib.contextmanager
def mlflow_store_kept() -> Iterator[None]:
    """The environment and MLflow globals as they were, whatever the block pointed MLflow at.

    ``mlflow.set_tracking_uri`` / ``set_registry_uri`` also export ``MLFLOW_TRACKING_URI`` /
    ``MLFLOW_REGISTRY_URI`` into ``os.environ``, so "putting back" the previous URI with the same call still
    leaves the variable set (to MLflow's default, ``sqlite:///mlflow.db`` in the working directory), and every
    later registry of the process silently goes there. Only restoring the environment itself undoes it.
    """
    saved_env = {name: os.environ.get(name) for name in _MLFLOW_ENV}
    saved_globals = _mlflow_globals()
    try:
        yield
    finally:
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        if "mlflow" in sys.modules:
            from mlflow.tracking._model_registry import utils as registry_utils
            from mlflow.tracking._tracking_service import utils as tracking_utils

            tracking_utils._tracking_uri, registry_utils._registry_uri = saved_globals


def _mlflow_globals() -> tuple[Any, Any]:
    if "mlflow" not in sys.modules:
        return None, None
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    return tracking_utils._tracking_uri, registry_utils._registry_uri
