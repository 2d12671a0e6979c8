"""Data checks that run before anything is trained or evaluated, with errors that say what is wrong.

Every check collects all problems of a frame and raises one ``DataValidationError`` listing them, each
as ``<where>: <what is wrong>; allowed <what is allowed>``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fraudctl.errors import UsageError
from model.data import FEATURE_COLUMNS, LABEL_COLUMN, PCA_COLUMNS, RAW_COLUMNS

if TYPE_CHECKING:
    import pandas as pd

MAX_AMOUNT = 1_000_000.0
MAX_ABS_PCA = 1_000.0
# Fraud share a usable slice may have: the ULB data has 0.17 %; far outside means a broken label column.
MIN_FRAUD_RATE = 0.0002
MAX_FRAUD_RATE = 0.2


class DataValidationError(UsageError, ValueError):
    """A data frame breaks the schema, a range, the label-rate rule or split disjointness."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("data validation failed:\n  " + "\n  ".join(self.problems))


def schema_problems(frame: pd.DataFrame, *, where: str, columns: tuple[str, ...] = RAW_COLUMNS) -> list[str]:
    import numpy as np
    import pandas as pd

    problems: list[str] = []
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        problems.append(f"{where}: missing columns {', '.join(missing)}; required {', '.join(columns)}")
    for name in (c for c in columns if c in frame.columns):
        series = frame[name]
        if not pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
            problems.append(f"{where}: column {name} has type {series.dtype}; allowed numeric")
            continue
        bad = int((~np.isfinite(series.to_numpy(dtype="float64"))).sum())
        if bad:
            problems.append(f"{where}: column {name} has {bad} missing or infinite values; allowed finite numbers")
    if LABEL_COLUMN in columns and LABEL_COLUMN in frame.columns and not problems:
        labels = frame[LABEL_COLUMN]
        wrong = labels[~labels.isin([0, 1])]
        if len(wrong):
            problems.append(
                f"{where}: column {LABEL_COLUMN} has {len(wrong)} values other than 0/1 "
                f"(e.g. {wrong.iloc[0]!r}); allowed 0 (legit) or 1 (fraud)"
            )
    return problems


def check_raw_schema(frame: pd.DataFrame, *, where: str) -> None:
    problems = schema_problems(frame, where=where)
    extra = [c for c in frame.columns if c not in RAW_COLUMNS]
    if extra:
        problems.append(f"{where}: unexpected columns {', '.join(map(str, extra))}; allowed {', '.join(RAW_COLUMNS)}")
    if problems:
        raise DataValidationError(problems)


def range_problems(
    frame: pd.DataFrame, *, where: str, time_range: tuple[float, float] | None = None
) -> list[str]:
    problems: list[str] = []
    if time_range is not None:
        low, high = time_range
        outside = frame[(frame["Time"] < low) | (frame["Time"] >= high)]
        if len(outside):
            problems.append(
                f"{where}: {len(outside)} transactions with Time outside [{low:.0f}, {high:.0f}) s "
                f"(e.g. {outside['Time'].iloc[0]:.0f}); allowed only this slice's period"
            )
    amount = frame["Amount"]
    if (amount < 0).any() or (amount > MAX_AMOUNT).any():
        problems.append(
            f"{where}: Amount ranges over [{amount.min():.2f}, {amount.max():.2f}]; allowed [0, {MAX_AMOUNT:.0f}]"
        )
    pca = frame[list(PCA_COLUMNS)].abs().max()
    wild = pca[pca > MAX_ABS_PCA]
    if len(wild):
        problems.append(
            f"{where}: {', '.join(wild.index)} reach |value| {wild.max():.1f}; allowed within +-{MAX_ABS_PCA:.0f}"
        )
    return problems


def label_problems(frame: pd.DataFrame, *, where: str, min_frauds: int) -> list[str]:
    frauds = int(frame[LABEL_COLUMN].sum())
    rows = len(frame)
    if rows == 0:
        return [f"{where}: no transactions; allowed a non-empty slice"]
    rate = frauds / rows
    problems = []
    if frauds < min_frauds:
        problems.append(f"{where}: {frauds} frauds among {rows} transactions; need at least {min_frauds}")
    if not MIN_FRAUD_RATE <= rate <= MAX_FRAUD_RATE:
        problems.append(
            f"{where}: fraud rate {rate:.4%}; allowed [{MIN_FRAUD_RATE:.2%}, {MAX_FRAUD_RATE:.0%}] "
            "(a label column outside this is broken)"
        )
    return problems


def disjoint_problems(first: pd.DataFrame, second: pd.DataFrame, *, first_name: str, second_name: str) -> list[str]:
    """Two slices share no transaction and ``first`` ends before ``second`` starts."""
    problems = []
    shared = set(first["transaction_id"]).intersection(second["transaction_id"])
    if shared:
        sample = ", ".join(str(i) for i in sorted(shared)[:5])
        problems.append(
            f"{first_name} and {second_name} share {len(shared)} transactions (ids {sample}); "
            "allowed none: the holdout must be unseen"
        )
    if len(first) and len(second) and first["Time"].max() >= second["Time"].min():
        problems.append(
            f"{first_name} ends at Time {first['Time'].max():.0f} s, not before {second_name} starts "
            f"({second['Time'].min():.0f} s); allowed only strictly earlier training data"
        )
    return problems


def validate_slice(
    frame: pd.DataFrame, *, where: str, time_range: tuple[float, float] | None, min_frauds: int
) -> None:
    """Schema, ranges and label rate of one slice; raise listing every problem."""
    problems = schema_problems(frame, where=where, columns=(*FEATURE_COLUMNS, LABEL_COLUMN))
    if not problems:
        problems += range_problems(frame, where=where, time_range=time_range)
        problems += label_problems(frame, where=where, min_frauds=min_frauds)
    if "transaction_id" in frame.columns and frame["transaction_id"].duplicated().any():
        problems.append(f"{where}: {int(frame['transaction_id'].duplicated().sum())} repeated transaction ids")
    if problems:
        raise DataValidationError(problems)


def check_disjoint(first: pd.DataFrame, second: pd.DataFrame, *, first_name: str, second_name: str) -> None:
    problems = disjoint_problems(first, second, first_name=first_name, second_name=second_name)
    if problems:
        raise DataValidationError(problems)
