"""Orchestrates a rehearsal: models, rig, engine, report; and ends every way it can end with a report.

Phases: preparing models, starting the servers and Prometheus, analysing. Whatever ends a run (a decision,
the offline gate, an error, Ctrl-C, SIGTERM or SIGHUP at any moment) the rig is stopped, every process the
run started is stopped (``RunScope``), and the run's own report folder gets a report of what was decided so far
(decision ``interrupted`` or ``error`` with the reason, the phase and the steps done). Bad local state found
before anything starts is a ``UsageError`` (one line, exit 2); during the run it is an ``error`` report with
exit code 2.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import signal
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fraudctl.errors import UsageError
from infra.config import StackConfig
from ops.decision_service import DecisionService, ReplayParameters
from ops.replay import holdout_from_rows
from rehearsal.engine import FaultPlan, RehearsalPlan, RolloutEngine, RolloutOutcome, StepRecord, plan_rehearsal
from rehearsal.processes import Interrupted, RunScope, StopSignals, reap_abandoned_runs
from rehearsal.prometheus import PrometheusError, PrometheusUnavailable
from rehearsal.report import check_report_base, new_run_folder, point_latest, record, write_record, write_report
from rehearsal.rig import LocalRig, RigModels
from rehearsal.traffic import ProductionTraffic
from rollout import analysis
from serving.process import ServerStartError

EXIT_DECIDED = 0
EXIT_FAILED = 1  # the gate rejected the candidate, or something broke: no rollout decision
EXIT_LOCAL_STATE = 2  # bad local state ($FRAUD_HOME, the registry, the data): the user can fix it

log = logging.getLogger(__name__)


class GateRejected(RuntimeError):
    """The candidate failed the offline gate: the platform would not roll it out."""


@dataclass(frozen=True)
class RehearsalOptions:
    fault: str | None = None
    at_step: int = 2
    interval_seconds: float | None = None
    fraud_share: float = 0.2
    # The folder that holds one folder per run and the ``latest`` link (default $FRAUD_HOME/reports/rehearsal).
    report_dir: Path | None = None
    data_source: str | None = None
    scrape_interval: float = 1.0
    ignore_gate: bool = False
    # Where the registry and reports live (default $FRAUD_HOME); a generated scenario and quicker training
    # params replace the real dataset in the test suite's compressed rehearsals.
    home: Path | None = None
    scenario: Any = None
    train_params: Any = None


@dataclass(frozen=True)
class Ending:
    """How a run ended: the decision the report records, its reason, and the exit code."""

    decision: str  # promoted | rolled_back (the engine's) | gate_rejected | interrupted | error
    reason: str
    exit_code: int
    detail: str | None = None  # the full error text or traceback, kept in the report folder's error.log


def _one_line(error: BaseException) -> str:
    """The first line of an error's message (the rest, e.g. a server's log tail, goes to error.log)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextlib.contextmanager
def _decision_service_lines_as_detail() -> Iterator[None]:
    """The decision service logs every interval it decides; the rehearsal's step lines say the same and more,
    so here its progress shows with ``--verbose`` only (its warnings always)."""
    service = logging.getLogger(DecisionService.__module__)
    saved = service.level
    if not service.isEnabledFor(logging.DEBUG):
        service.setLevel(logging.WARNING)
    try:
        yield
    finally:
        service.setLevel(saved)


def check_local_state(home: Path, reports: Path) -> None:
    """$FRAUD_HOME and the report folder are usable directories; else one clear line (UsageError)."""
    if home.exists() and not home.is_dir():
        raise UsageError(f"FRAUD_HOME={home}: is not a directory")
    try:
        (home / "run").mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"FRAUD_HOME={home}: cannot create {home / 'run'}: {error.strerror or error}") from None
    check_report_base(reports)


class _Run:
    """One rehearsal: what it has done so far, so that any ending can report it."""

    def __init__(
        self, config: StackConfig, options: RehearsalOptions, home: Path, folder: Path, planned: RehearsalPlan
    ) -> None:
        self.config = config
        self.planned = planned
        self.home = home
        self.options = options
        self.folder = folder
        self.run_id = f"{folder.name}-{secrets.token_hex(3)}"
        self.phase = "preparing models"
        self.started = time.time()
        self.analysis_started: float | None = None
        self.interval = options.interval_seconds or min(float(config.analysis.interval_seconds), 10.0)
        self.steps: list[StepRecord] = []
        self.prepared: Any = None
        self.traffic: ProductionTraffic | None = None
        self.rig: LocalRig | None = None
        self.outcome: RolloutOutcome | None = None
        self.stopped_during: str | None = None  # the phase the work was in when it ended without a decision

    # -- the work, interruptible ------------------------------------------------------------------------
    def work(self) -> None:
        from rehearsal.models import prepare_models

        config, options = self.config, self.options
        self._enter("preparing models")
        self.prepared = prepare_models(
            config,
            data_source=options.data_source,
            home=options.home,
            scenario=options.scenario,
            train_params=options.train_params,
        )
        if not self.prepared.gate_summary["passed"] and not options.ignore_gate:
            raise GateRejected(
                f"the offline gate rejected {config.model.candidate_version}, so it would never be rolled out; "
                "fix the model or rehearse anyway with --ignore-gate"
            )
        self.traffic = ProductionTraffic(
            self.prepared.feature_names, self.prepared.holdout_rows, model_name=config.model.name
        )
        self.rig = LocalRig(
            models=RigModels(
                stable_uri=self.prepared.stable_uri,
                stable_version=config.model.stable_version,
                candidate_uri=self.prepared.candidate_uri,
                candidate_version=config.model.candidate_version,
                model_name=config.model.name,
            ),
            settings=config.analysis,
            traffic=self.traffic,
            strategy=config.strategy,
            fault_mode=options.fault,
            scrape_interval=options.scrape_interval,
            # The servers run with the stack's own adaptive batching, as the cluster's would.
            serving_options={
                **self.prepared.serving_options,
                "max_batch_size": config.serving.max_batch_size,
                "max_batch_time_seconds": config.serving.max_batch_time,
            },
        )
        self._enter("starting the servers and Prometheus")
        self.rig.start()
        self._enter("analysing")
        log.info(
            f"rehearse: {config.strategy} rollout of {config.model.candidate_version}: interval {self.interval:g}s, "
            f"threshold {config.analysis.threshold}, steps {list(config.analysis.step_weights)}"
        )
        fault = FaultPlan(options.fault, options.at_step) if options.fault else None
        holdout = holdout_from_rows(
            self.prepared.feature_names,
            self.prepared.holdout_rows,
            self.prepared.holdout_labels,
            fraud_share=options.fraud_share,
        )
        replay = ReplayParameters(
            model=config.model.name,
            transactions=self.planned.pairs_per_interval,
            timeout_seconds=0.75 * self.interval,
        )
        decisions = self.rig.decisions(holdout, replay, interval_seconds=self.interval)
        engine = RolloutEngine(
            config.analysis, self.rig, decisions, interval_seconds=self.interval, looks=config.analysis.horizon,
            fault=fault, progress=self._progress, revision=f"{config.model.candidate_version}-rehearsal",
        )  # fmt: skip
        self.analysis_started = self.rig.now()  # the engine's clock: step times are relative to it
        self.outcome = engine.run(config.strategy)

    def _enter(self, phase: str) -> None:
        self.phase = phase
        self.save_progress()

    def _progress(self, step: StepRecord, total: int) -> None:
        self.steps.append(step)
        checks = "".join(f" | {c.describe()}" for c in step.checks)
        fault = " [fault active]" if step.fault_active else ""
        where = f"step {step.index} ({step.phase}, weight {step.weight}%){fault}"
        # A pass says little more than "pass"; anything else says why.
        verdict = step.verdict or "no verdict"
        if step.reason and step.verdict != "pass":
            verdict += f": {step.reason}"
        log.info(f"rehearse: {where}: {verdict}{checks} -> {step.action}, failed checks {step.failed_checks}")
        self.save_progress()

    def save_progress(self) -> None:
        """The record so far (decision ``running`` until decided): what a run killed outright leaves behind."""
        if self.outcome is not None:
            ending = Ending(self.outcome.decision, self.outcome.reason, EXIT_DECIDED)
        else:
            ending = Ending("running", f"in progress: {self.phase}", EXIT_FAILED)
        data = self.data(ending, stopped=[])
        try:
            write_record(self.folder, data)
        except OSError as error:  # a full disk must not stop the rollout; the final report says the rest
            log.warning(f"rehearse: could not save progress to {self.folder}: {error.strerror or error}")

    def attempt(self, signals: StopSignals, scope: RunScope) -> Ending:
        """The work, interruptible; then the rig stopped (not interruptible). Never raises."""
        error: BaseException | None = None
        try:
            with signals.interruptible():
                self.work()
        except Exception as failure:
            error = failure
        except KeyboardInterrupt as stop:  # Interrupted, or Ctrl-C where no handler could be installed
            error = stop if isinstance(stop, Interrupted) else Interrupted(signal.SIGINT)
        ending = self.ending(error)
        if self.outcome is None and self.rig is not None:
            log.info(f"rehearse: {ending.decision}: stopping the servers and Prometheus")
        try:
            scope.terminate()  # all at once: the rig then waits for each, as long as the slowest takes
            self.stop_rig()
        except Exception as failure:  # RunScope stops whatever this leaves running
            log.warning(f"rehearse: stopping the rig: {type(failure).__name__}: {failure}")
        return ending

    # -- endings ----------------------------------------------------------------------------------------
    def ending(self, error: BaseException | None) -> Ending:
        """The ending for the exception that left ``work`` (None: it returned)."""
        self.stopped_during = None if self.outcome is not None else self.phase
        if self.outcome is not None:  # decided; a signal that came right after does not undo it
            return Ending(self.outcome.decision, self.outcome.reason, EXIT_DECIDED)
        steps = f"; {len(self.steps)} analysis step(s) done, no decision" if self.steps else ""
        if isinstance(error, Interrupted):
            return Ending("interrupted", f"{error.name} while {self.phase}{steps}", error.exit_code)
        if isinstance(error, GateRejected):
            return Ending("gate_rejected", str(error), EXIT_FAILED)
        if isinstance(error, PrometheusUnavailable):
            verdict = ": no data, so no promotion" if self.phase == "analysing" else ""
            return Ending("error", f"{error} while {self.phase}{verdict}{steps}", EXIT_FAILED, str(error))
        if isinstance(error, PrometheusError | ServerStartError):
            return Ending("error", f"{_one_line(error)} (while {self.phase}){steps}", EXIT_FAILED, str(error))
        if isinstance(error, UsageError):  # the model package's errors for bad local state or data among them
            return Ending("error", f"{_one_line(error)} (while {self.phase})", EXIT_LOCAL_STATE, str(error))
        assert error is not None
        detail = "".join(traceback.format_exception(error))
        if isinstance(error, OSError) and error.filename and Path(error.filename).is_relative_to(self.home):
            where = f"{error.filename}: {error.strerror or error}"
            return Ending("error", f"{where} (local state, while {self.phase})", EXIT_LOCAL_STATE, detail)
        return Ending(
            "error",
            f"unexpected {type(error).__name__}: {_one_line(error)} (while {self.phase}){steps}",
            EXIT_FAILED,
            detail,
        )

    def stop_rig(self) -> None:
        self._enter("stopping the servers and Prometheus")
        if self.rig is not None:
            self.rig.stop()
        elif self.traffic is not None:
            self.traffic.close()

    def data(self, ending: Ending, *, stopped: list[Any], signals: list[int] | None = None) -> dict[str, Any]:
        config, options = self.config, self.options
        outcome = self.outcome or self._partial(ending)
        extra = {
            "run_id": self.run_id,
            "stack": config.stack,
            "stable_version": config.model.stable_version,
            "candidate_version": config.model.candidate_version,
            "fault": f"{options.fault} at step {options.at_step}" if options.fault else None,
            "gate": self.prepared.gate_summary if self.prepared is not None else None,
            "interval_seconds": self.interval,
            "total_seconds": round(time.time() - self.started, 2),
            "models_reused": self.prepared.reused if self.prepared is not None else None,
            "process_ids": list(self.rig.started_pids) if self.rig is not None else [],  # all stopped by now
            "stopped_during": self.stopped_during,
            "signal": signal.Signals(signals[0]).name if signals else None,
            "children_left_running": [child.to_json() for child in stopped],
            "exit_code": ending.exit_code,
            "decision_reason": outcome.reason,
            "primary_healthy": outcome.primary_healthy,
            "bad_answers_after_switch": outcome.bad_answers_after_switch,
            "plan": self.planned.plan.to_json(),
            "decisions": outcome.decision_log(),
        }
        return record(outcome, self.traffic.tally if self.traffic is not None else None, extra)

    def _partial(self, ending: Ending) -> RolloutOutcome:
        """An outcome for a run without a decision: the steps done so far."""
        faulty = [step for step in self.steps if step.fault_active]
        return RolloutOutcome(
            strategy=self.config.strategy,
            decision=ending.decision,
            reason=ending.reason,
            steps=list(self.steps),
            started=self.analysis_started or self.started,
            ended=time.time(),
            fault_injected_at=faulty[0].started if faulty else None,
        )

    @staticmethod
    def _signalled(ending: Ending, signals: list[int]) -> Ending:
        """Asked to stop: the exit code says so (128+N), whatever else happened; bad local state keeps its 2."""
        if signals and ending.exit_code in (EXIT_DECIDED, EXIT_FAILED):
            return Ending(ending.decision, ending.reason, 128 + signals[0], ending.detail)
        return ending

    def write_report(self, ending: Ending, stopped: list[Any], signals: list[int]) -> dict[str, Any]:
        self.phase = "writing the report"
        seen = len(signals)
        ending = self._signalled(ending, signals)
        data = self.data(ending, stopped=stopped, signals=signals)
        thresholds = {check.name: check.threshold for check in analysis.analysis_checks(self.config.analysis)}
        written = write_report(self.outcome or self._partial(ending), data, thresholds, self.folder)
        if ending.detail:
            (self.folder / "error.log").write_text(ending.detail)
            written.append(self.folder / "error.log")
        if len(signals) > seen and not seen:  # a signal came while writing: the record says so too
            ending = self._signalled(ending, signals)
            data = self.data(ending, stopped=stopped, signals=signals)
            write_record(self.folder, data)
        point_latest(self.folder.parent, self.folder)
        data["report"] = [str(path) for path in written]
        return data


def rehearse(config: StackConfig, options: RehearsalOptions) -> dict[str, Any]:
    """Run one rehearsal and return its record; the record's ``exit_code`` is what ``fraudctl rehearse`` exits
    with. Every ending writes the run's report folder; bad local state found first raises UsageError."""
    from model.paths import fraud_home, reports_dir

    home = fraud_home(options.home)
    base = Path(options.report_dir) if options.report_dir else reports_dir(home) / "rehearsal"
    # The plan first: a configuration that cannot decide at this interval is refused before anything starts.
    interval = options.interval_seconds or min(float(config.analysis.interval_seconds), 10.0)
    planned = plan_rehearsal(config.analysis, interval)
    log.info(f"rehearse: {planned.note}")
    with StopSignals() as signals:
        check_local_state(home, base)
        reap_abandoned_runs(home)
        run = _Run(config, options, home, new_run_folder(base, config.strategy, options.fault), planned)
        run.save_progress()  # from the first moment on, the folder says what this run is and how far it got
        scope = RunScope(home, run.run_id, run.folder)
        with contextlib.ExitStack() as lifetime:
            try:
                lifetime.enter_context(scope)
            except OSError as error:
                ending = Ending("error", f"cannot track the run's processes: {error}", EXIT_LOCAL_STATE, str(error))
            else:
                with _decision_service_lines_as_detail():
                    ending = run.attempt(signals, scope)
        # The scope is left: every process of the run is stopped. Signals now are noted, never raised.
        try:
            data = run.write_report(ending, scope.stopped, signals.received)
        except OSError as error:
            log.error(f"rehearse: could not write the report to {run.folder}: {error.strerror or error}")
            data = run.data(ending, stopped=scope.stopped, signals=signals.received)
            data["exit_code"] = EXIT_LOCAL_STATE
    log.info(f"rehearse: {data['decision']}: {data['reason']}; report: {run.folder}")
    return data
