"""The offline promotion gate: a candidate model against the baseline on the same unseen holdout.

Both models are scored on the holdout at their own stored thresholds. The candidate passes only when
every check holds (each is ``>=``/``<=`` against a configured allowance):

* recall gain:        recall(candidate) - recall(baseline) >= min_recall_gain
* precision band:     precision(candidate) >= precision(baseline) - precision_band
* AUPRC:              auprc(candidate) >= auprc(baseline) - max_auprc_loss
* business cost:      cost(candidate) <= cost(baseline), cost = missed frauds * cost_missed_fraud
                      + false positives * cost_false_positive

Settings come from the stack config keys ``gate.minRecallGain``, ``gate.precisionBand``,
``gate.maxAuprcLoss``, ``gate.costMissedFraud`` and ``gate.costFalsePositive``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, ValidationError

from fraudctl.errors import UsageError
from fraudctl.files import atomic_path, write_json
from fraudctl.settings import StrictSettings, problems

DEFAULT_COST_MISSED_FRAUD = 150.0
DEFAULT_COST_FALSE_POSITIVE = 25.0


class GateSettingsError(UsageError, ValueError):
    """Gate settings out of range; ``problems`` lists every ``gate.<key>: ...`` message."""

    def __init__(self, problems: list[str], validation_error: ValidationError | None = None):
        self.problems = problems
        # Read by fraudctl.settings.problems when the gate is validated inside the stack config.
        self.validation_error = validation_error
        super().__init__("; ".join(problems))


class GateSettings(StrictSettings):
    """The gate's allowances: stack config section ``gate`` and ``fraudctl train/evaluate`` flags."""

    min_recall_gain: float = Field(0.0, ge=-1.0, le=1.0)
    precision_band: float = Field(0.05, ge=0.0, le=1.0)  # candidate precision may drop at most this much
    max_auprc_loss: float = Field(0.0, ge=0.0, le=1.0)
    cost_missed_fraud: float = Field(DEFAULT_COST_MISSED_FRAUD, ge=0.0, le=1e9)
    cost_false_positive: float = Field(DEFAULT_COST_FALSE_POSITIVE, ge=0.0, le=1e9)

    def __init__(self, **values: Any) -> None:
        # Built in code (CLI flags, training): the same messages as the stack config, as GateSettingsError.
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise GateSettingsError(problems(error, "gate", type(self)), error) from None

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> GateSettings:
        """From the stack config's ``gate`` object (camelCase keys; missing keys keep their defaults)."""
        settings, found = cls.from_section("gate", config)
        if settings is None:
            raise GateSettingsError(found)
        return settings

    def to_config(self) -> dict[str, float]:
        return self.model_dump(by_alias=True)


def _config_keys() -> dict[str, tuple[str, float, float]]:
    keys = {}
    for name, info in GateSettings.model_fields.items():
        low = next(m.ge for m in info.metadata if getattr(m, "ge", None) is not None)
        high = next(m.le for m in info.metadata if getattr(m, "le", None) is not None)
        keys[name] = (info.alias or name, low, high)
    return keys


# GateSettings field -> stack config key (under ``gate.``) and allowed range, read from the model.
CONFIG_KEYS = _config_keys()


@dataclass(frozen=True)
class ModelMetrics:
    """One model's holdout figures at its stored threshold: the ``model-metrics-<version>`` payload."""

    model_version: str
    threshold: float
    auprc: float
    precision: float
    recall: float
    tp: int
    fp: int
    tn: int
    fn: int
    cost: float
    transactions: int
    frauds: int
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        payload = asdict(self)
        payload.update(payload.pop("extra"))
        return payload


@dataclass(frozen=True)
class GateCheck:
    name: str
    passed: bool
    observed: float
    required: float
    message: str


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    baseline: ModelMetrics
    candidate: ModelMetrics
    checks: tuple[GateCheck, ...]
    settings: GateSettings

    @property
    def reasons(self) -> list[str]:
        return [check.message for check in self.checks]

    def to_json(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "decision": "promote" if self.passed else "reject",
            "baseline": self.baseline.model_version,
            "candidate": self.candidate.model_version,
            "reasons": self.reasons,
            "checks": [asdict(check) for check in self.checks],
            "settings": self.settings.to_config(),
        }


def holdout_metrics(
    model_version: str,
    labels: Any,
    scores: Any,
    threshold: float,
    settings: GateSettings,
    extra: Mapping[str, Any] | None = None,
) -> ModelMetrics:
    """Confusion counts, precision, recall, AUPRC and cost of ``scores`` at ``threshold``."""
    import numpy as np
    from sklearn.metrics import average_precision_score

    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.shape != scores.shape or labels.ndim != 1:
        raise ValueError(f"labels and scores must be equal-length vectors, got {labels.shape} and {scores.shape}")
    if not labels.any():
        raise ValueError("holdout has no frauds: recall and AUPRC are undefined")
    flagged = scores >= threshold
    tp = int((flagged & labels).sum())
    fp = int((flagged & ~labels).sum())
    fn = int((~flagged & labels).sum())
    tn = int((~flagged & ~labels).sum())
    return ModelMetrics(
        model_version=model_version,
        threshold=float(threshold),
        auprc=float(average_precision_score(labels, scores)),
        precision=tp / (tp + fp) if tp + fp else 0.0,
        recall=tp / (tp + fn),
        tp=tp,
        fp=fp,
        tn=tn,
        fn=fn,
        cost=fn * settings.cost_missed_fraud + fp * settings.cost_false_positive,
        transactions=int(labels.size),
        frauds=int(labels.sum()),
        extra=dict(extra or {}),
    )


def decide(baseline: ModelMetrics, candidate: ModelMetrics, settings: GateSettings) -> GateDecision:
    """Apply every check; the candidate passes only if all pass. Messages carry the numbers."""
    b, c, s = baseline, candidate, settings
    tag = f"{c.model_version} vs {b.model_version}"
    gain = c.recall - b.recall
    floor = b.precision - s.precision_band
    auprc_floor = b.auprc - s.max_auprc_loss
    checks = (
        GateCheck(
            "recall_gain",
            gain >= s.min_recall_gain - 1e-12,
            gain,
            s.min_recall_gain,
            f"recall gain {gain:+.4f} ({tag}: {c.recall:.4f} vs {b.recall:.4f}); required >= {s.min_recall_gain:+.4f}",
        ),
        GateCheck(
            "precision_band",
            c.precision >= floor - 1e-12,
            c.precision,
            floor,
            f"precision {c.precision:.4f} ({tag}: baseline {b.precision:.4f}); required >= {floor:.4f} "
            f"(baseline - band {s.precision_band:g})",
        ),
        GateCheck(
            "auprc",
            c.auprc >= auprc_floor - 1e-12,
            c.auprc,
            auprc_floor,
            f"AUPRC {c.auprc:.4f} ({tag}: baseline {b.auprc:.4f}); required >= {auprc_floor:.4f} "
            f"(baseline - allowed loss {s.max_auprc_loss:g})",
        ),
        GateCheck(
            "business_cost",
            c.cost <= b.cost + 1e-9,
            c.cost,
            b.cost,
            f"business cost ${c.cost:,.0f} ({tag}: baseline ${b.cost:,.0f}; ${s.cost_missed_fraud:g} per missed "
            f"fraud, ${s.cost_false_positive:g} per false positive); required <= baseline",
        ),
    )
    checks = tuple(
        GateCheck(ch.name, ch.passed, ch.observed, ch.required, f"{'PASS' if ch.passed else 'FAIL'} {ch.message}")
        for ch in checks
    )
    return GateDecision(passed=all(ch.passed for ch in checks), baseline=b, candidate=c, checks=checks, settings=s)


def write_plots(out_dir: str | Path, labels: Any, scored: Mapping[str, tuple[Any, ModelMetrics]]) -> dict[str, Path]:
    """PR curves (operating points marked) and confusion matrices as PNGs; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.metrics import precision_recall_curve

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"pr_curves": out / "pr_curves.png", "confusion_matrices": out / "confusion_matrices.png"}

    fig, ax = plt.subplots(figsize=(6.5, 5))
    for name, (scores, metrics) in scored.items():
        precision, recall, _ = precision_recall_curve(labels, scores)
        (line,) = ax.plot(recall, precision, label=f"{name} (AUPRC {metrics.auprc:.3f})")
        ax.scatter([metrics.recall], [metrics.precision], color=line.get_color(), zorder=3, s=40,
                   label=f"{name} at threshold {metrics.threshold:.3f}")  # fmt: skip
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.01), ylim=(0, 1.02), title="Precision-recall on the holdout")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    with atomic_path(paths["pr_curves"]) as temp:
        fig.savefig(temp, format="png", dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, len(scored), figsize=(4.2 * len(scored), 3.9), squeeze=False)
    for ax, (name, (_, m)) in zip(axes[0], scored.items(), strict=True):
        grid = np.array([[m.tn, m.fp], [m.fn, m.tp]])
        ax.imshow(np.log1p(grid), cmap="Blues")
        for (row, col), count in np.ndenumerate(grid):
            ax.text(col, row, f"{count:,}", ha="center", va="center", fontsize=12,
                    color="white" if np.log1p(count) > np.log1p(grid).max() * 0.6 else "black")  # fmt: skip
        ax.set_xticks([0, 1], ["legit", "fraud"])
        ax.set_yticks([0, 1], ["legit", "fraud"])
        ax.set(xlabel="predicted", ylabel="actual", title=f"{name}: cost ${m.cost:,.0f}")
    fig.tight_layout()
    with atomic_path(paths["confusion_matrices"]) as temp:
        fig.savefig(temp, format="png", dpi=110)
    plt.close(fig)
    return paths


def write_gate_report(
    out_dir: str | Path, decision: GateDecision, labels: Any, baseline_scores: Any, candidate_scores: Any
) -> dict[str, Path]:
    """``metrics-<version>.json`` per model, ``gate.json`` and the two PNGs into ``out_dir``."""
    out = Path(out_dir)
    b, c = decision.baseline, decision.candidate
    paths = write_plots(out, labels, {b.model_version: (baseline_scores, b), c.model_version: (candidate_scores, c)})
    for metrics in (b, c):
        paths[f"metrics_{metrics.model_version}"] = write_json(
            out / f"metrics-{metrics.model_version}.json", metrics.to_json()
        )
    paths["gate"] = write_json(out / "gate.json", decision.to_json())
    return paths
