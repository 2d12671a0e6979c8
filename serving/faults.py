"""Fault injection for the rollback demo (docs/CONTRACTS.md, "Fault injection").

``SIMULATE_ERROR=true``: a share ``SIMULATE_ERROR_RATE`` (default 0.5) of inference requests fail with 500.
The failing requests are spread evenly and deterministically (request i fails when floor((i+1)*rate)
passes an integer), so any window of N requests holds floor(N*rate) +- 1 failures.

``SIMULATE_ERROR=degrade``: the server answers normally but with a corrupted model: every score s becomes
1 - s. Legit traffic (low scores) is then flagged and fraud is passed, so precision and recall collapse
while latency and error rate stay healthy; only ground-truth feedback (or the decision mix) shows it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np

MODE_ENV = "SIMULATE_ERROR"
RATE_ENV = "SIMULATE_ERROR_RATE"
DEFAULT_ERROR_RATE = 0.5
MODES = ("none", "error", "degrade")
_OFF = {"", "false", "0", "no", "off", "none"}


class FaultConfigError(ValueError):
    """SIMULATE_ERROR or SIMULATE_ERROR_RATE holds a value that is not allowed."""


@dataclass
class FaultInjector:
    mode: str = "none"
    error_rate: float = DEFAULT_ERROR_RATE
    _handled: int = field(default=0, repr=False)
    _rate: Fraction = field(default=Fraction(1, 2), repr=False)

    def __post_init__(self) -> None:
        self._rate = Fraction(self.error_rate).limit_denominator(10_000)

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> FaultInjector:
        env = os.environ if env is None else env
        raw = env.get(MODE_ENV, "").strip().lower()
        if raw in _OFF:
            mode = "none"
        elif raw == "true":
            mode = "error"
        elif raw == "degrade":
            mode = "degrade"
        else:
            raise FaultConfigError(
                f"{MODE_ENV}={env.get(MODE_ENV)!r} is not allowed; use 'true' (a share of requests fail "
                "with 500), 'degrade' (corrupted scores) or leave it unset / 'false'"
            )
        raw_rate = env.get(RATE_ENV, "").strip()
        try:
            rate = float(raw_rate) if raw_rate else DEFAULT_ERROR_RATE
        except ValueError:
            rate = float("nan")
        if not 0.0 < rate <= 1.0:
            raise FaultConfigError(f"{RATE_ENV}={raw_rate!r} is not allowed; use a number in (0, 1]")
        return cls(mode=mode, error_rate=rate)

    @property
    def active(self) -> bool:
        return self.mode != "none"

    @property
    def corrupts_scores(self) -> bool:
        return self.mode == "degrade"

    def describe(self) -> str:
        if self.mode == "error":
            return f"{MODE_ENV}=true: {self.error_rate:.0%} of inference requests fail with 500"
        if self.mode == "degrade":
            return f"{MODE_ENV}=degrade: scores are inverted (1 - p), precision collapses"
        return "no fault injection"

    def should_fail(self) -> bool:
        """Whether the next inference request fails (mode 'error' only)."""
        if self.mode != "error":
            return False
        index = self._handled
        self._handled += 1
        return (self._rate * (index + 1)).__floor__() > (self._rate * index).__floor__()

    @staticmethod
    def corrupt(probabilities: np.ndarray) -> np.ndarray:
        """The degraded model's scores: deterministic inversion."""
        return 1.0 - probabilities
