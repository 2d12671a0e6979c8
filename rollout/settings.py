"""The rollout analysis settings (stack key ``analysis``): what Flagger, Argo Rollouts and the rehearsal judge
a candidate by. infra/config.py reads them from the stack; rollout/analysis.py turns them into checks."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AnalysisSettings:
    """Rollout analysis knobs; rollout/analysis.py turns them into checks for every engine."""

    interval_seconds: int
    threshold: int
    step_weights: tuple[int, ...]
    min_success_rate: float
    max_latency_p99_ms: float
    min_precision: float
    min_recall: float
    min_labelled_frauds: int
    confidence: float
    manual_promotion: bool
    auto_promotion: bool
    scale_down_delay_seconds: int
    feedback_window_seconds: int = 600
