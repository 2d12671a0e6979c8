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
    """Rollout analysis knobs: the system checks (PromQL, rollout/analysis.py) and the ML decision's error
    rates (rollout/decision.py, docs/ROLLOUT.md "How the decision is made")."""

    interval_seconds: int = Field(60, ge=5, le=3600, alias="interval", description="seconds per analysis step")
    threshold: int = Field(3, ge=1, le=100, description="failed checks that roll back")
    step_weights: tuple[Percent, ...] = Field((5, 10, 50), min_length=1, description="canary traffic steps, %")
    min_success_rate: float = Field(99.0, ge=50.0, le=100.0)
    max_latency_p99_ms: float = Field(100.0, ge=1.0, le=60000.0, alias="maxLatencyP99Ms")
    # The ML decision (rollout/decision.py): stated error rates and the smallest drop worth catching.
    false_rollback_rate: float = Field(
        0.01, gt=0.0, le=0.2, description="P(roll back a candidate as good as the stable), whole rollout"
    )
    miss_rate: float = Field(
        0.05, gt=0.0, le=0.5, description="P(promote a candidate worse by minDetectableDrop), per metric"
    )
    min_detectable_drop: float = Field(
        0.10, ge=0.01, le=0.5, description="smallest drop in recall or precision worth catching (0.10: 10 points)"
    )
    min_precision: float = Field(
        0.85, ge=0.0, le=1.0, description="floor on the candidate's precision at replayFraudShare"
    )
    min_recall: float = Field(0.60, ge=0.0, le=1.0, description="floor on the candidate's recall")
    min_labelled_frauds: int = Field(20, ge=1, le=100000, description="labelled frauds before any ML decision")
    horizon: int = Field(10, ge=1, le=1000, description="intervals with evidence after which every check is forced")
    replay_fraud_share: float = Field(
        0.2, ge=0.01, le=0.9, description="share of frauds in the labelled replay; precision is stated at it"
    )
    replay_rate: float = Field(
        20.0, gt=0.0, le=100000.0, description="labelled transactions per second the replay sends to both models"
    )
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
