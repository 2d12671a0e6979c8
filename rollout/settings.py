"""The rollout analysis settings (stack key ``analysis``): what Flagger, Argo Rollouts and the rehearsal judge
a candidate by. Declared once here (type, range, key as written in stack files); infra/config.py composes
this section into the stack config and rollout/analysis.py turns it into checks."""

from __future__ import annotations

from itertools import pairwise
from typing import Annotated

from pydantic import Field, StrictBool, field_validator

from fraudctl.settings import StrictSettings

Percent = Annotated[int, Field(ge=1, le=99)]


class AnalysisSettings(StrictSettings):
    """Rollout analysis knobs; rollout/analysis.py turns them into checks for every engine."""

    interval_seconds: int = Field(60, ge=5, le=3600, alias="interval", description="seconds per analysis step")
    threshold: int = Field(3, ge=1, le=100, description="failed checks that roll back")
    step_weights: tuple[Percent, ...] = Field((5, 10, 50), min_length=1, description="canary traffic steps, %")
    min_success_rate: float = Field(99.0, ge=50.0, le=100.0)
    max_latency_p99_ms: float = Field(100.0, ge=1.0, le=60000.0, alias="maxLatencyP99Ms")
    min_precision: float = Field(0.85, ge=0.0, le=1.0)
    min_recall: float = Field(0.60, ge=0.0, le=1.0)
    min_labelled_frauds: int = Field(20, ge=1, le=100000)
    confidence: float = Field(0.95, ge=0.5, le=0.999)
    manual_promotion: StrictBool = False
    auto_promotion: StrictBool = True
    scale_down_delay_seconds: int = Field(30, ge=0, le=86400)
    feedback_window_seconds: int = Field(600, ge=60, le=86400, alias="feedbackWindow")

    @field_validator("step_weights")
    @classmethod
    def _increasing(cls, weights: tuple[int, ...]) -> tuple[int, ...]:
        for before, after in pairwise(weights):
            if after <= before:
                raise ValueError(f"must be strictly increasing, but {after} follows {before} (e.g. [5, 10, 50])")
        return weights
