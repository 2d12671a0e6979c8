"""A small generated dataset with the creditcard.csv schema, for fast tests of the real code paths.

Two days of ``Time`` like the original, legitimate traffic following a daily cycle, and frauds that
are more frequent at night and separated from legitimate traffic in the components that carry the
signal in the real data (V14, V12, V10, V17, V4, ...), with a share of hard frauds that look legit.
It is not a stand-in for the real data in any measurement: benchmarks and the demo use the real file.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

from model.data import LABEL_COLUMN, PCA_COLUMNS, RAW_COLUMNS

if TYPE_CHECKING:
    import pandas as pd

TWO_DAYS = 172_792
_FRAUD_SHIFT = {"V14": -4.0, "V12": -3.0, "V10": -2.5, "V17": -3.0, "V4": 2.5, "V11": 2.0, "V3": -2.0, "V16": -2.0}


def generate_transactions(n_rows: int = 40_000, *, fraud_rate: float = 0.01, seed: int = 0) -> pd.DataFrame:
    """``n_rows`` transactions (``Class`` 1 for about ``fraud_rate`` of them), sorted by ``Time``."""
    import numpy as np
    import pandas as pd

    if n_rows < 100 or not 0.0 < fraud_rate < 0.5:
        raise ValueError(
            f"generate_transactions: need n_rows >= 100 and 0 < fraud_rate < 0.5, got {n_rows}, {fraud_rate}"
        )
    rng = np.random.default_rng(seed)
    labels = (rng.random(n_rows) < fraud_rate).astype(np.int8)
    frauds = labels == 1

    # Legit traffic peaks in the afternoon; fraud is spread over the clock (so relatively more at night).
    legit_hour = np.mod(rng.normal(14.0, 4.5, n_rows), 24.0)
    fraud_hour = rng.uniform(0.0, 24.0, n_rows)
    hour = np.where(frauds, fraud_hour, legit_hour)
    day = rng.integers(0, 2, n_rows)
    time = np.minimum(np.floor(day * 86_400 + hour * 3600), TWO_DAYS)

    spread = np.linspace(2.0, 0.4, len(PCA_COLUMNS))  # PCA components: decreasing variance
    pca = rng.normal(0.0, 1.0, (n_rows, len(PCA_COLUMNS))) * spread
    hard = frauds & (rng.random(n_rows) < 0.25)  # frauds that look like legit traffic
    strength = np.where(hard, 0.15, rng.uniform(0.5, 1.3, n_rows))
    for name, shift in _FRAUD_SHIFT.items():
        column = PCA_COLUMNS.index(name)
        pca[:, column] += np.where(frauds, shift * strength * spread[column], 0.0)

    amount = np.where(frauds, rng.lognormal(3.0, 1.8, n_rows), rng.lognormal(3.2, 1.2, n_rows))
    frame = pd.DataFrame(pca, columns=list(PCA_COLUMNS))
    frame.insert(0, "Time", time.astype(np.float64))
    frame["Amount"] = np.round(np.clip(amount, 0.0, 20_000.0), 2)
    frame[LABEL_COLUMN] = labels
    return frame.sort_values("Time", kind="stable").reset_index(drop=True)[list(RAW_COLUMNS)]


def frame_sha256(frame: pd.DataFrame) -> str:
    """A content hash of a transactions frame, standing in for the file sha256 of generated data."""
    import pandas as pd

    hashed = pd.util.hash_pandas_object(frame[list(RAW_COLUMNS)], index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()
