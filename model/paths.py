"""Where the platform keeps its local state: ``$FRAUD_HOME`` (default ``<repo>/.fraud``)."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def fraud_home(home: str | Path | None = None) -> Path:
    """The state directory: ``home`` if given, else ``$FRAUD_HOME``, else ``<repo>/.fraud``."""
    chosen = home if home is not None else os.environ.get("FRAUD_HOME") or PROJECT_ROOT / ".fraud"
    return Path(chosen).expanduser().resolve()


def data_dir(home: str | Path | None = None) -> Path:
    return fraud_home(home) / "data"


def reports_dir(home: str | Path | None = None) -> Path:
    return fraud_home(home) / "reports"
