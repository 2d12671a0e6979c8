"""Strict checks of a V2 inference request against the model's features, before anything is scored.

A request carries exactly the model's feature names as V2 inputs, each a numeric tensor of shape [n] or
[n, 1] with the same n. Everything else is refused with a 4xx that names the problem and what is allowed;
the server keeps serving. Checks run per request before MLServer's adaptive batching merges requests, so
one bad request never fails the good ones batched with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from mlserver.errors import MLServerError
from mlserver.types import InferenceRequest, RequestInput

from serving.protocol import DEFAULT_MAX_ROWS, OUTPUT_NAMES

NUMERIC_DATATYPES = frozenset(
    {"FP16", "FP32", "FP64", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"}
)
_MAX_LISTED = 8


class RequestRejected(MLServerError):
    """A client error in an inference request (4xx, body ``{"error": message}``)."""

    def __init__(self, message: str, status_code: int = 400) -> None:
        super().__init__(message, status_code)
        self.message = message


def _listing(names: Sequence[str]) -> str:
    shown = ", ".join(names[:_MAX_LISTED])
    return shown + (f", ... ({len(names)} in all)" if len(names) > _MAX_LISTED else "")


def _rows_of(request_input: RequestInput) -> int:
    shape = request_input.shape
    if (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)) and shape[0] >= 0:
        return shape[0]
    raise RequestRejected(
        f"input {request_input.name!r}: shape {shape} is not allowed; use [n] or [n, 1] (one value per row)"
    )


def _values(request_input: RequestInput, rows: int) -> list[Any]:
    """The input's values as a flat list of ``rows`` plain numbers (JSON numbers, not bools or strings)."""
    name = request_input.name
    data = request_input.data.root if hasattr(request_input.data, "root") else request_input.data
    if not isinstance(data, list):
        raise RequestRejected(f"input {name!r}: data must be a JSON array of numbers")
    if len(data) == rows and rows and isinstance(data[0], list):
        # Nested [[v], [v], ...] is the row-major form of shape [n, 1].
        if not all(isinstance(cell, list) and len(cell) == 1 for cell in data):
            raise RequestRejected(f"input {name!r}: nested data must be [[value], [value], ...]")
        data = [cell[0] for cell in data]
    if len(data) != rows:
        raise RequestRejected(f"input {name!r}: shape says {rows} values but data has {len(data)}")
    # type() rather than isinstance(): JSON true/false arrive as bool, a subclass of int.
    if not _NUMBER_TYPES.issuperset(map(type, data)):
        bad = next(v for v in data if type(v) not in _NUMBER_TYPES)
        raise RequestRejected(
            f"input {name!r}: value {bad!r} ({type(bad).__name__}) is not a number; "
            "only finite JSON numbers are allowed"
        )
    return data


_NUMBER_TYPES = frozenset({float, int})


def features_from_request(
    payload: InferenceRequest, feature_names: Sequence[str], max_rows: int = DEFAULT_MAX_ROWS
) -> np.ndarray:
    """Return the request's rows as a float64 matrix with columns in ``feature_names`` order."""
    inputs = payload.inputs
    by_name: dict[str, RequestInput] = {}
    duplicates = []
    for request_input in inputs:
        if request_input.name in by_name:
            duplicates.append(request_input.name)
        by_name[request_input.name] = request_input
    if duplicates:
        raise RequestRejected(f"input(s) {_listing(duplicates)} given more than once; send each feature once")
    missing = [name for name in feature_names if name not in by_name]
    extra = [name for name in by_name if name not in set(feature_names)]
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing input(s): {_listing(missing)}")
        if extra:
            parts.append(f"unexpected input(s): {_listing(extra)}")
        raise RequestRejected(
            f"{'; '.join(parts)}. Requests must carry exactly the model's features as inputs: "
            f"{_listing(list(feature_names))}"
        )
    row_counts = {}
    for name in feature_names:
        request_input = by_name[name]
        datatype = getattr(request_input.datatype, "value", request_input.datatype)
        if datatype not in NUMERIC_DATATYPES:
            raise RequestRejected(
                f"input {name!r}: datatype {datatype} is not allowed; features are numbers "
                f"(FP64, FP32 or an INT type)"
            )
        row_counts[name] = _rows_of(request_input)
    counts = set(row_counts.values())
    if len(counts) > 1:
        summary = ", ".join(f"{name}: {count}" for name, count in list(row_counts.items())[:_MAX_LISTED])
        raise RequestRejected(f"inputs have different numbers of rows ({summary}); every feature needs one per row")
    rows = counts.pop()
    if rows == 0:
        raise RequestRejected("empty batch: send at least one row")
    if rows > max_rows:
        raise RequestRejected(
            f"batch of {rows} rows exceeds the limit of {max_rows} rows per request; split it", 413
        )
    columns = [_values(by_name[name], rows) for name in feature_names]
    try:
        # One conversion for the whole request: the values are plain numbers (checked above).
        matrix = np.array(columns, dtype=np.float64).T
    except OverflowError:
        raise RequestRejected("an integer is too large to be a float64 value") from None
    finite = np.isfinite(matrix)
    if not finite.all():
        row, column = (int(i) for i in np.argwhere(~finite)[0])
        raise RequestRejected(
            f"input {feature_names[column]!r}: non-finite value (NaN or infinity) at row {row}; "
            "only finite numbers are allowed"
        )
    return matrix


def requested_outputs(payload: InferenceRequest) -> list[str] | None:
    """The outputs the client asked for (None = all), refusing names the runtime does not produce."""
    if not payload.outputs:
        return None
    names = [output.name for output in payload.outputs]
    unknown = [name for name in names if name not in OUTPUT_NAMES]
    if unknown:
        raise RequestRejected(
            f"unknown output(s) requested: {_listing(unknown)}; available outputs: {', '.join(OUTPUT_NAMES)}"
        )
    return names

