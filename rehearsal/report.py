"""The rehearsal report: a Markdown summary, a JSON record and PNG charts of the rollout over time."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from rehearsal.engine import RolloutOutcome


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.chmod(tmp, 0o644)  # mkstemp makes it private; a report is meant to be read
    os.replace(tmp, path)


def _series(outcome: RolloutOutcome) -> tuple[list[float], list[int], dict[str, dict[str, list[float | None]]]]:
    """Seconds since start, candidate weight, and per check per version the observed values, per step."""
    times = [round(step.ended - outcome.started, 2) for step in outcome.steps]
    weights = [step.weight for step in outcome.steps]
    checks: dict[str, dict[str, list[float | None]]] = {}
    for step in outcome.steps:
        for version, values in step.observations.items():
            for name, value in values.items():
                checks.setdefault(name, {}).setdefault(version, []).append(value)
    return times, weights, checks


def write_charts(outcome: RolloutOutcome, thresholds: dict[str, float], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times, weights, checks = _series(outcome)
    written: list[Path] = []
    fault_t = outcome.fault_injected_at - outcome.started if outcome.fault_injected_at else None

    def decorate(ax: Any, title: str) -> None:
        ax.set_title(title)
        ax.set_xlabel("seconds since rollout start")
        if fault_t is not None:
            ax.axvline(fault_t, color="red", linestyle="--", label="fault injected")
        ax.grid(alpha=0.3)

    def save(fig: Any, name: str) -> None:
        path = out / name
        tmp = out / f".{name}.tmp.png"
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, path)
        plt.close(fig)
        written.append(path)

    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.step([0, *times], [0, *weights], where="pre", color="tab:blue", label="candidate weight %")
    ax.set_ylim(-5, 105)
    ax.set_ylabel("traffic to candidate (%)")
    decorate(ax, f"{outcome.strategy}: {outcome.decision}")
    ax.legend(loc="upper left")
    save(fig, "weight.png")

    for name, by_version in checks.items():
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for version, values in by_version.items():
            ax.plot(times, [float("nan") if v is None else v for v in values], marker="o", label=version)
        if name in thresholds:
            ax.axhline(thresholds[name], color="grey", linestyle=":", label="threshold")
        ax.set_ylabel(name)
        decorate(ax, f"{name} per model version")
        ax.legend(loc="best")
        save(fig, f"check-{name}.png")
    return written


def record(outcome: RolloutOutcome, tally: Any, extra: dict[str, Any]) -> dict[str, Any]:
    """The JSON record (`fraudctl rehearse --json` prints it)."""
    return {
        "decision": outcome.decision,
        "reason": outcome.reason,
        "strategy": outcome.strategy,
        "steps": [
            {
                "index": s.index,
                "phase": s.phase,
                "weight": s.weight,
                "seconds": round(s.ended - outcome.started, 2),
                "failed_checks": s.failed_checks,
                "fault_active": s.fault_active,
                "checks": [
                    {
                        "name": c.name,
                        "value": c.value,
                        "threshold": c.threshold,
                        "direction": c.direction,
                        "passed": c.passed,
                    }
                    for c in s.checks
                ],
            }
            for s in outcome.steps
        ],
        "requests_total": tally.requests,
        "primary_failed": tally.failed.get(extra["stable_version"], 0),
        "candidate_failed": tally.failed.get(extra["candidate_version"], 0),
        "candidate_bad_served": tally.answered_while_faulty,
        "replay_to_faulty_candidate": tally.replayed_to_faulty,
        "feedback_posted": tally.feedback_posted,
        "feedback_rejected": tally.feedback_rejected,
        "seconds_to_rollback": outcome.seconds_to_rollback,
        "duration_seconds": round(outcome.ended - outcome.started, 2),
        **extra,
    }


def summary_markdown(data: dict[str, Any], charts: list[Path]) -> str:
    lines = [
        f"# Rollout rehearsal: {data['decision']}",
        "",
        f"- strategy: **{data['strategy']}**, {data['stable_version']} (stable) -> "
        f"{data['candidate_version']} (candidate)",
        f"- decision: **{data['decision']}**: {data['reason']}",
        f"- requests: {data['requests_total']} (stable failed {data['primary_failed']}, candidate failed "
        f"{data['candidate_failed']}, answered by a faulty candidate {data['candidate_bad_served']})",
        f"- labelled feedback posted: {data['feedback_posted']} (rejected {data['feedback_rejected']})",
    ]
    if data.get("fault"):
        lines.append(f"- fault: {data['fault']}; seconds to rollback: {data['seconds_to_rollback']}")
    lines += ["", "| step | phase | weight | checks | failed so far |", "|---|---|---|---|---|"]
    for step in data["steps"]:
        checks = "; ".join(
            f"{c['name']} {'no data' if c['value'] is None else format(c['value'], '.4g')} "
            f"{'>=' if c['direction'] == 'min' else '<='} {c['threshold']:g} {'ok' if c['passed'] else '**FAIL**'}"
            for c in step["checks"]
        )
        lines.append(f"| {step['index']} | {step['phase']} | {step['weight']}% | {checks} | {step['failed_checks']} |")
    lines += ["", "## Charts", ""]
    lines += [f"![{chart.stem}]({chart.name})" for chart in charts]
    return "\n".join(lines) + "\n"


def write_report(outcome: RolloutOutcome, data: dict[str, Any], thresholds: dict[str, float], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    charts = write_charts(outcome, thresholds, out)
    _atomic_write(out / "rehearsal.json", json.dumps(data, indent=2).encode())
    _atomic_write(out / "summary.md", summary_markdown(data, charts).encode())
    return [out / "summary.md", out / "rehearsal.json", *charts]
