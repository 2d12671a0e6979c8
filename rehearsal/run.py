"""Orchestrates a rehearsal: models, rig, engine, report."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from infra.config import StackConfig
from ops.decision_service import ReplayParameters
from ops.replay import holdout_from_rows
from rehearsal.engine import FaultPlan, RolloutEngine, StepRecord, plan_rehearsal
from rehearsal.report import record, write_report
from rehearsal.rig import LocalRig, RigModels
from rehearsal.traffic import ProductionTraffic
from rollout import analysis


class GateRejected(RuntimeError):
    """The candidate failed the offline gate: the platform would not roll it out."""


@dataclass(frozen=True)
class RehearsalOptions:
    fault: str | None = None
    at_step: int = 2
    interval_seconds: float | None = None
    fraud_share: float = 0.2
    report_dir: Path | None = None
    data_source: str | None = None
    scrape_interval: float = 1.0
    ignore_gate: bool = False
    # Where the registry and reports live (default $FRAUD_HOME); a generated scenario and quicker training
    # params replace the real dataset in the test suite's compressed rehearsals.
    home: Path | None = None
    scenario: Any = None
    train_params: Any = None


def _log(message: str) -> None:
    print(f"rehearse: {message}", file=sys.stderr, flush=True)


def _progress(step: StepRecord, total: int) -> None:
    checks = " | ".join(c.describe() for c in step.checks)
    fault = " [fault active]" if step.fault_active else ""
    where = f"step {step.index} ({step.phase}, weight {step.weight}%){fault}"
    # A pass says little more than "pass"; anything else says why.
    verdict = step.verdict or "no verdict"
    if step.reason and step.verdict != "pass":
        verdict += f": {step.reason}"
    _log(f"{where}: {verdict}{' | ' + checks if checks else ''} -> {step.action}, failed checks {step.failed_checks}")


def rehearse(config: StackConfig, options: RehearsalOptions) -> dict[str, Any]:
    from rehearsal.models import prepare_models

    started = time.time()
    # The plan first: a configuration that cannot decide at this interval is refused before anything starts.
    interval = options.interval_seconds or min(float(config.analysis.interval_seconds), 10.0)
    planned = plan_rehearsal(config.analysis, interval)
    _log(planned.note)
    prepared = prepare_models(
        config,
        data_source=options.data_source,
        home=options.home,
        scenario=options.scenario,
        train_params=options.train_params,
        log=_log,
    )
    if not prepared.gate_summary["passed"] and not options.ignore_gate:
        raise GateRejected(
            f"the offline gate rejected {config.model.candidate_version}, so it would never be rolled out; "
            "fix the model or rehearse anyway with --ignore-gate"
        )
    traffic = ProductionTraffic(prepared.feature_names, prepared.holdout_rows, model_name=config.model.name)
    rig = LocalRig(
        models=RigModels(
            stable_uri=prepared.stable_uri,
            stable_version=config.model.stable_version,
            candidate_uri=prepared.candidate_uri,
            candidate_version=config.model.candidate_version,
            model_name=config.model.name,
        ),
        settings=config.analysis,
        traffic=traffic,
        strategy=config.strategy,
        fault_mode=options.fault,
        scrape_interval=options.scrape_interval,
        log=_log,
        # The servers run with the stack's own adaptive batching, as the cluster's would.
        serving_options={
            **prepared.serving_options,
            "max_batch_size": config.serving.max_batch_size,
            "max_batch_time_seconds": config.serving.max_batch_time,
        },
    )
    fault = FaultPlan(options.fault, options.at_step) if options.fault else None
    try:
        rig.start()
        _log(
            f"{config.strategy} rollout of {config.model.candidate_version}: interval {interval:g}s, "
            f"threshold {config.analysis.threshold}, steps {list(config.analysis.step_weights)}"
        )
        holdout = holdout_from_rows(
            prepared.feature_names, prepared.holdout_rows, prepared.holdout_labels, fraud_share=options.fraud_share
        )
        replay = ReplayParameters(
            model=config.model.name, transactions=planned.pairs_per_interval, timeout_seconds=0.75 * interval
        )
        decisions = rig.decisions(holdout, replay, interval_seconds=interval)
        engine = RolloutEngine(
            config.analysis, rig, decisions, interval_seconds=interval, looks=config.analysis.horizon, fault=fault,
            progress=_progress, revision=f"{config.model.candidate_version}-rehearsal",
        )  # fmt: skip
        outcome = engine.run(config.strategy)
    finally:
        rig.stop()
    _log(f"decision: {outcome.decision} ({outcome.reason})")
    extra = {
        "stack": config.stack,
        "stable_version": config.model.stable_version,
        "candidate_version": config.model.candidate_version,
        "fault": f"{options.fault} at step {options.at_step}" if options.fault else None,
        "gate": prepared.gate_summary,
        "interval_seconds": interval,
        "total_seconds": round(time.time() - started, 2),
        "models_reused": prepared.reused,
        "process_ids": rig.started_pids,  # all stopped by now; kept to prove it
        "decision_reason": outcome.reason,
        "primary_healthy": outcome.primary_healthy,
        "bad_answers_after_switch": outcome.bad_answers_after_switch,
        "plan": planned.plan.to_json(),
        "decisions": outcome.decision_log(),
    }
    data = record(outcome, traffic.tally, extra)
    out = options.report_dir or prepared.reports_dir / "rehearsal"
    thresholds = {check.name: check.threshold for check in analysis.analysis_checks(config.analysis)}
    written = write_report(outcome, data, thresholds, Path(out))
    data["report"] = [str(p) for p in written]
    _log(f"report: {written[0]}")
    return data
