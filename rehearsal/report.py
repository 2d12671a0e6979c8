"""The rehearsal report: a Markdown summary, a JSON record and PNG charts of the rollout over time.

Every run gets its own folder, ``<base>/<UTC timestamp>-<strategy>[-<fault>]`` (``-2``, ``-3``... when two
runs start within the same second), and ``<base>/latest`` points at the newest finished report. The record
(``rehearsal.json``) is written as soon as the folder exists (decision ``running``) and after every step, so
even a rehearsal killed outright leaves what it decided so far; its next run marks it ``killed``.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fraudctl.errors import UsageError
from fraudctl.files import atomic_path, write_json, write_text

if TYPE_CHECKING:
    from rehearsal.engine import RolloutOutcome

LATEST = "latest"
RECORD = "rehearsal.json"
SUMMARY = "summary.md"

log = logging.getLogger(__name__)


def _unusable(path: Path, error: OSError) -> UsageError:
    return UsageError(f"{path}: {error.strerror or error} (the rehearsal writes its reports there)")


def check_report_base(base: Path) -> None:
    """The folder that holds the run folders can be created and written, and ``latest`` is ours to replace."""
    try:
        base.mkdir(parents=True, exist_ok=True)
        probe = base / f".write-probe-{secrets.token_hex(4)}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        raise _unusable(base, error) from None
    latest = base / LATEST
    if latest.exists() and not latest.is_symlink():
        raise UsageError(
            f"{latest}: is not a symlink; move it away (the rehearsal keeps it pointing at the newest report)"
        )


def new_run_folder(base: Path, strategy: str, fault: str | None, now: float | None = None) -> Path:
    """A new, empty folder for one run; never one another run has (mkdir is the tie-breaker)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(time.time() if now is None else now))
    name = f"{stamp}-{strategy}" + (f"-{fault}" if fault else "")
    for attempt in range(1, 1000):
        folder = base / (name if attempt == 1 else f"{name}-{attempt}")
        try:
            folder.mkdir(parents=True)
            return folder
        except FileExistsError:
            continue
        except OSError as error:
            raise _unusable(folder, error) from None
    raise UsageError(f"{base}: 999 run folders named {name}; remove some")


def point_latest(base: Path, folder: Path) -> Path:
    """Make ``<base>/latest`` point at ``folder``, atomically (a new symlink renamed over the old one)."""
    latest = base / LATEST
    with atomic_path(latest) as link:
        os.symlink(os.path.relpath(folder, base), link)
    return latest


def write_record(folder: Path, data: dict[str, Any]) -> Path:
    """The JSON record alone (cheap: written after every step)."""
    return write_json(folder / RECORD, data, sort_keys=False)


def mark_killed(folder: Path, reason: str) -> bool:
    """Turn the record of a run that died mid-way (decision ``running``) into a ``killed`` report."""
    path = folder / RECORD
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(data, dict) or data.get("decision") != "running":
        return False
    data["decision"] = "killed"
    data["reason"] = reason
    write_record(folder, data)
    write_text(folder / SUMMARY, summary_markdown(data, []))
    return True


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
        with atomic_path(path) as temp:
            fig.savefig(temp, format="png", dpi=110, bbox_inches="tight")
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
    """The JSON record (`fraudctl rehearse --json` prints it). ``tally`` is None when no traffic was sent yet."""
    failed = tally.failed if tally is not None else {}
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
        "requests_total": tally.requests if tally is not None else 0,
        "primary_failed": failed.get(extra["stable_version"], 0),
        "candidate_failed": failed.get(extra["candidate_version"], 0),
        "candidate_bad_served": tally.answered_while_faulty if tally is not None else 0,
        "replay_to_faulty_candidate": tally.replayed_to_faulty if tally is not None else 0,
        "feedback_posted": tally.feedback_posted if tally is not None else 0,
        "feedback_rejected": tally.feedback_rejected if tally is not None else 0,
        "seconds_to_rollback": outcome.seconds_to_rollback,
        "duration_seconds": round(outcome.ended - outcome.started, 2),
        **extra,
    }


def _describe_check(check: dict[str, Any]) -> str:
    value = "no data" if check.get("value") is None else format(check["value"], ".4g")
    op = ">=" if check.get("direction") == "min" else "<="
    verdict = "ok" if check.get("passed") else "**FAIL**"
    return f"{check.get('name')} {value} {op} {check.get('threshold', 0):g} {verdict}"


def summary_markdown(data: dict[str, Any], charts: list[Path]) -> str:
    """The report a person reads; works on any record, also one cut short (no steps, no traffic yet)."""
    lines = [
        f"# Rollout rehearsal: {data.get('decision', '?')}",
        "",
        f"- strategy: **{data.get('strategy', '?')}**, {data.get('stable_version', '?')} (stable) -> "
        f"{data.get('candidate_version', '?')} (candidate)",
        f"- decision: **{data.get('decision', '?')}**: {data.get('reason', '')}",
    ]
    if data.get("stopped_during"):
        lines.append(f"- stopped while: {data['stopped_during']}")
    lines += [
        f"- requests: {data.get('requests_total', 0)} (stable failed {data.get('primary_failed', 0)}, candidate "
        f"failed {data.get('candidate_failed', 0)}, answered by a faulty candidate "
        f"{data.get('candidate_bad_served', 0)})",
        f"- labelled feedback posted: {data.get('feedback_posted', 0)} (rejected {data.get('feedback_rejected', 0)})",
    ]
    if data.get("fault"):
        lines.append(f"- fault: {data['fault']}; seconds to rollback: {data.get('seconds_to_rollback')}")
    if data.get("children_left_running"):
        described = ", ".join(f"{c['command']} (pid {c['pid']})" for c in data["children_left_running"])
        lines.append(f"- processes the rig left running, stopped at the end: {described}")
    steps = data.get("steps") or []
    if steps:
        lines += ["", "| step | phase | weight | checks | failed so far |", "|---|---|---|---|---|"]
        for step in steps:
            checks = "; ".join(_describe_check(c) for c in step.get("checks", []))
            lines.append(
                f"| {step.get('index')} | {step.get('phase')} | {step.get('weight')}% | {checks} "
                f"| {step.get('failed_checks')} |"
            )
    else:
        lines += ["", "No analysis step was completed."]
    if charts:
        lines += ["", "## Charts", ""]
        lines += [f"![{chart.stem}]({chart.name})" for chart in charts]
    return "\n".join(lines) + "\n"


def write_report(
    outcome: RolloutOutcome, data: dict[str, Any], thresholds: dict[str, float], out: Path
) -> list[Path]:
    """Record, summary and charts into ``out``. The record comes first; a chart that fails to draw is skipped
    (and logged) rather than costing the rest of the report."""
    out.mkdir(parents=True, exist_ok=True)
    write_record(out, data)
    charts: list[Path] = []
    if outcome.steps:
        try:
            charts = write_charts(outcome, thresholds, out)
        except Exception as error:  # matplotlib trouble must not cost the record and summary
            log.warning(f"rehearse: charts not drawn: {type(error).__name__}: {error}")
    write_text(out / SUMMARY, summary_markdown(data, charts))
    return [out / SUMMARY, out / RECORD, *charts]
