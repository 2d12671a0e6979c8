"""Every way a rehearsal can end leaves a report and nothing running (issue 11, item 6; the crash paths of 5).

In process, fast: the real run orchestration, signal handling, report and child-lifetime code, with a scripted
fake rig (its "servers" are real ``sleep`` processes, so stopping and reaping are real) and fake model
preparation. Each script point can send this process a real signal, so SIGTERM, SIGINT and SIGHUP go through
the real handlers at each phase.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import rehearsal.run as run_module
from fraudctl.lifetime import parent_death_signal
from infra.config import load_stack
from rehearsal import processes
from rehearsal.engine import CheckResult
from rehearsal.models import PreparedModels
from rehearsal.processes import RUN_ENV, Interrupted, RunScope, StopSignals, reap_abandoned_runs
from rehearsal.prometheus import PrometheusProcess, PrometheusUnavailable
from rehearsal.report import new_run_folder
from rehearsal.run import RehearsalOptions, rehearse
from serving.process import ServerStartError

ROOT = Path(__file__).resolve().parent.parent


def wait_until(condition: Callable[[], bool], what: str, seconds: float = 30.0) -> None:
    """Bounded wait: fails with ``what`` if ``condition`` does not hold within ``seconds``."""
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still not true after {seconds:.0f}s: {what}")
        time.sleep(0.05)


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


# -- the scripted fakes ----------------------------------------------------------------------------------


class Script:
    """What the fakes do at named points: send this process a signal, or raise an error."""

    def __init__(self, **actions: int | BaseException) -> None:
        self.actions = actions
        self.reached: list[str] = []

    def hit(self, point: str) -> None:
        self.reached.append(point)
        action = self.actions.get(point)
        if action is None:
            return
        if isinstance(action, BaseException):
            raise action
        os.kill(os.getpid(), action)  # the run's handler raises here, as it would mid-anything
        for _ in range(20):  # should the interpreter deliver it a few instructions later
            time.sleep(0.01)


class FakeRig:
    """The rig's lifecycle with real ``sleep`` processes for "servers" and "Prometheus" (started like the real
    ones, own session), and the scripted rollout rig of tests/rollout_rig.py (virtual time, the real decision
    service logic) for what the engine asks."""

    script = Script()
    leak: bool = False  # stop() forgets its children, as a rig with a bug would
    instances: list[FakeRig] = []

    def __init__(self, **kwargs: Any) -> None:
        from rollout_rig import Script as RigScript
        from rollout_rig import ScriptedRig

        self.kwargs = kwargs
        self.children: list[subprocess.Popen[bytes]] = []
        self.started_pids: list[int] = []
        self.evaluations = 0
        self.scripted = ScriptedRig(RigScript(), 10.0, kwargs["settings"])
        type(self).instances.append(self)

    def _child(self) -> None:
        child = subprocess.Popen(["sleep", "300"], start_new_session=True)
        self.children.append(child)
        self.started_pids.append(child.pid)

    def start(self) -> FakeRig:
        self._child()
        self._child()
        self.script.hit("servers")
        self._child()
        self.script.hit("prometheus")
        return self

    def stop(self) -> None:
        self.script.hit("stop")
        if self.leak:
            return
        for child in self.children:
            child.terminate()
            child.wait()

    def decisions(self, holdout: Any, replay: Any, *, interval_seconds: float) -> Any:
        from rollout_rig import make_service

        self.scripted.interval = interval_seconds
        return make_service(self.scripted, self.kwargs["settings"])

    def system_checks(self, window_seconds: float) -> list[CheckResult]:
        self.evaluations += 1
        self.script.hit(f"step{self.evaluations}")
        return self.scripted.system_checks(window_seconds)

    def __getattr__(self, name: str) -> Any:  # the rest of the Rig protocol: the scripted rig's
        return getattr(self.scripted, name)


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[type[FakeRig]]:
    class Rig(FakeRig):
        script = Script()
        instances: list[FakeRig] = []

    def prepare_models(config: Any, *, home: Any = None, **kwargs: Any) -> PreparedModels:
        Rig.script.hit("prepare")
        return PreparedModels(
            stable_uri="models:/fraud-detector/1",
            candidate_uri="models:/fraud-detector/2",
            feature_names=["a", "b"],
            holdout_rows=[[0.0, 0.0], [1.0, 1.0]],
            holdout_labels=[0, 1],
            gate_summary={"passed": Rig.script.actions.get("gate") is None, "reasons": ["scripted"]},
            reports_dir=Path(home) / "reports",
            reused={"v1": True, "v2": True},
        )

    monkeypatch.setattr("rehearsal.models.prepare_models", prepare_models)
    monkeypatch.setattr(run_module, "LocalRig", Rig)
    # Whatever a test does, the handlers and environment it started with come back.
    previous = {sig: signal.getsignal(sig) for sig in StopSignals.HANDLED}
    yield Rig
    for child in (c for rig in Rig.instances for c in rig.children):
        if child.poll() is None:
            child.kill()
            child.wait()
    assert {sig: signal.getsignal(sig) for sig in StopSignals.HANDLED} == previous
    assert RUN_ENV not in os.environ


def config(strategy: str = "canary") -> Any:
    return load_stack("dev", overrides={"strategy": strategy})


def options(home: Path, **kwargs: Any) -> RehearsalOptions:
    return RehearsalOptions(interval_seconds=10.0, home=home, **kwargs)


def assert_nothing_left(home: Path, data: dict[str, Any], rig: FakeRig | None) -> None:
    for child in rig.children if rig is not None else []:
        child.poll()  # reap it if it is ours and gone
        assert not running(child.pid), f"child {child.pid} still running"
    assert list((home / "run").iterdir()) == [], "the run folder (lock, owner) is removed"
    assert not processes.scratch_folder(data["run_id"]).exists(), "the run's temporary folder is removed"


def report_folder(data: dict[str, Any]) -> Path:
    return Path(data["report"][0]).parent


# -- endings ---------------------------------------------------------------------------------------------


def test_a_decision_gets_its_own_report_folder_and_the_latest_link(fakes, tmp_path):
    home = tmp_path / "home"
    first = rehearse(config(), options(home))
    second = rehearse(config("blue-green"), options(home, fault="error", at_step=1))
    assert first["decision"] == "promoted" and first["exit_code"] == 0 and first["signal"] is None
    base = home / "reports" / "rehearsal"
    one, two = report_folder(first), report_folder(second)
    assert one.parent == two.parent == base and one != two
    assert one.name.endswith("-canary") and two.name.endswith("-blue-green-error")
    assert (base / "latest").is_symlink() and (base / "latest").resolve() == two.resolve()
    for data, folder in ((first, one), (second, two)):  # the second run did not overwrite the first
        assert json.loads((folder / "rehearsal.json").read_text())["run_id"] == data["run_id"]
        assert (folder / "summary.md").read_text().startswith(f"# Rollout rehearsal: {data['decision']}")
        assert (folder / "weight.png").stat().st_size > 0
    assert_nothing_left(home, second, fakes.instances[-1])


def test_run_folders_are_unique_within_one_second_even_when_created_at_once(tmp_path):
    now = time.time()
    made: list[Path] = []
    threads = [
        threading.Thread(target=lambda: made.append(new_run_folder(tmp_path, "canary", "degrade", now=now)))
        for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(made)) == 8 and all(folder.is_dir() for folder in made)
    assert sorted(f.name for f in made)[0] == time.strftime("%Y%m%dT%H%M%SZ-canary-degrade", time.gmtime(now))


SIGNAL_POINTS = [
    ("prepare", signal.SIGTERM, "preparing models", 0),
    ("servers", signal.SIGTERM, "starting the servers and Prometheus", 0),
    ("prometheus", signal.SIGTERM, "starting the servers and Prometheus", 0),
    ("step2", signal.SIGTERM, "analysing", 2),  # the pre-rollout interval asks no system checks
    ("step3", signal.SIGINT, "analysing", 3),
    ("step1", signal.SIGHUP, "analysing", 1),
]


@pytest.mark.parametrize(("point", "sig", "phase", "steps"), SIGNAL_POINTS)
def test_a_signal_at_any_phase_reports_what_was_done_and_stops_every_child(fakes, tmp_path, point, sig, phase, steps):
    home = tmp_path / "home"
    fakes.script = Script(**{point: sig})
    data = rehearse(config(), options(home))
    name = signal.Signals(sig).name
    assert data["decision"] == "interrupted"
    assert data["reason"].startswith(f"{name} while {phase}")
    assert data["exit_code"] == 128 + sig and data["signal"] == name
    assert data["stopped_during"] == phase
    assert len(data["steps"]) == steps
    on_disk = json.loads((report_folder(data) / "rehearsal.json").read_text())
    assert on_disk["decision"] == "interrupted" and len(on_disk["steps"]) == steps
    assert "interrupted" in (report_folder(data) / "summary.md").read_text()
    assert_nothing_left(home, data, fakes.instances[-1] if fakes.instances else None)


def test_a_signal_while_the_report_is_written_finishes_the_report_and_keeps_the_decision(
    fakes, tmp_path, monkeypatch
):
    home = tmp_path / "home"
    real = run_module.write_report

    def write_report_then_signalled(*args: Any, **kwargs: Any) -> list[Path]:
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(run_module, "write_report", write_report_then_signalled)
    data = rehearse(config(), options(home))
    assert data["decision"] == "promoted" and data["exit_code"] == 128 + signal.SIGTERM
    folder = report_folder(data)
    assert json.loads((folder / "rehearsal.json").read_text())["decision"] == "promoted"
    assert (folder / "summary.md").exists() and (folder / "weight.png").exists()
    assert_nothing_left(home, data, fakes.instances[-1])


def test_a_second_signal_while_stopping_does_not_cut_the_stop_or_the_report_short(fakes, tmp_path):
    home = tmp_path / "home"
    fakes.script = Script(step2=signal.SIGTERM, stop=signal.SIGINT)
    data = rehearse(config(), options(home))
    assert data["decision"] == "interrupted" and data["exit_code"] == 128 + signal.SIGTERM
    assert (report_folder(data) / "summary.md").exists()
    assert_nothing_left(home, data, fakes.instances[-1])


@pytest.mark.parametrize("point", ["none", "step2"])
def test_processes_the_rig_forgets_to_stop_are_stopped_all_the_same(fakes, tmp_path, point):
    home = tmp_path / "home"
    fakes.leak = True
    fakes.script = Script(**({point: signal.SIGTERM} if point != "none" else {}))
    data = rehearse(config(), options(home))
    assert_nothing_left(home, data, fakes.instances[-1])


def test_prometheus_gone_mid_analysis_is_an_error_with_a_report_never_a_promotion(fakes, tmp_path):
    home = tmp_path / "home"
    gone = PrometheusUnavailable("Prometheus on http://127.0.0.1:1 stopped answering (killed by SIGKILL)")
    fakes.script = Script(step2=gone)
    data = rehearse(config(), options(home))
    assert data["decision"] == "error" and data["exit_code"] == 1
    assert "stopped answering" in data["reason"] and "no promotion" in data["reason"]
    assert len(data["steps"]) == 2 and data["stopped_during"] == "analysing"
    assert (report_folder(data) / "error.log").exists()
    assert_nothing_left(home, data, fakes.instances[-1])


@pytest.mark.parametrize(
    ("error", "shown", "exit_code"),
    [
        (ServerStartError("MLServer (serving, port 1) exited with code 1\nlog line 1\nlog line 2"), "exited", 1),
        (ZeroDivisionError("a bug"), "unexpected ZeroDivisionError: a bug", 1),
    ],
)
def test_an_error_starting_or_analysing_ends_in_one_line_and_a_report(fakes, tmp_path, caplog, error, shown, exit_code):
    caplog.set_level(logging.INFO, logger="rehearsal")
    home = tmp_path / "home"
    fakes.script = Script(prometheus=error)
    data = rehearse(config(), options(home))
    assert data["decision"] == "error" and data["exit_code"] == exit_code
    assert shown in data["reason"] and "\n" not in data["reason"]
    err = caplog.text
    assert "Traceback" not in err and f"error: {data['reason']}" in err
    detail = (report_folder(data) / "error.log").read_text()
    assert ("Traceback" in detail) == isinstance(error, ZeroDivisionError)
    assert_nothing_left(home, data, fakes.instances[-1])


def test_a_candidate_the_gate_rejects_is_reported_without_starting_anything(fakes, tmp_path):
    home = tmp_path / "home"
    fakes.script = Script(gate=RuntimeError("unused: marks the gate as failed"))
    data = rehearse(config(), options(home))
    assert data["decision"] == "gate_rejected" and data["exit_code"] == 1
    assert fakes.instances == [] and (report_folder(data) / "summary.md").exists()


# -- bad local state -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["corrupt registry", "unwritable models"])
def test_bad_local_state_found_while_preparing_models_is_exit_2_with_a_report(fakes, tmp_path, kind):
    from model.registry import RegistryError

    home = tmp_path / "home"
    if kind == "corrupt registry":
        error: Exception = RegistryError(f"{home}/mlflow.db: file is not a database")
    else:
        error = PermissionError(13, "Permission denied", str(home / "mlruns" / "1" / "model.skops"))
    fakes.script = Script(prepare=error)
    data = rehearse(config(), options(home))
    assert data["decision"] == "error" and data["exit_code"] == 2 and fakes.instances == []
    assert ("not a database" if kind == "corrupt registry" else "model.skops: Permission denied") in data["reason"]


@pytest.mark.parametrize("broken", ["home is a file", "reports is a file", "latest is a folder", "run is a file"])
def test_bad_local_state_is_one_line_and_exit_2_before_anything_starts(fakes, tmp_path, monkeypatch, capsys, broken):
    from fraudctl.cli import main

    home = tmp_path / "home"
    if broken == "home is a file":
        home.write_text("not a folder")
    else:
        (home / "reports" / "rehearsal").mkdir(parents=True)
        if broken == "reports is a file":
            (home / "reports" / "rehearsal").rmdir()
            (home / "reports" / "rehearsal").write_text("")
        elif broken == "latest is a folder":
            (home / "reports" / "rehearsal" / "latest").mkdir()
        else:
            (home / "run").write_text("")
    monkeypatch.setenv("FRAUD_HOME", str(home))
    assert main(["rehearse"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("fraudctl rehearse: ") and not any("Traceback" in line for line in err), err
    assert [line for line in err if not line.startswith("rehearse: plan:")] == err[-1:], err
    assert fakes.instances == []


def test_a_corrupt_previous_report_and_a_stale_run_do_not_stop_the_next_run(fakes, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="rehearsal")
    home = tmp_path / "home"
    base = home / "reports" / "rehearsal"
    old = base / "20200101T000000Z-canary"
    old.mkdir(parents=True)
    (old / "rehearsal.json").write_text("{ not json")
    os.symlink("20190101T000000Z-gone", base / "latest")  # dangling
    stale = home / "run" / "20200101T000000Z-canary-abcdef"
    stale.mkdir(parents=True)
    (stale / "lock").write_text("")  # nobody holds it: its rehearsal is gone
    (stale / "owner.json").write_text("garbage")
    data = rehearse(config(), options(home))
    assert data["decision"] == "promoted"
    assert (base / "latest").resolve() == report_folder(data).resolve()
    assert "a previous rehearsal (run 20200101T000000Z-canary-abcdef" in caplog.text
    assert_nothing_left(home, data, fakes.instances[-1])


# -- child lifetime --------------------------------------------------------------------------------------


def tagged_sleep(run_id: str, **popen: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(["sleep", "300"], env={**os.environ, RUN_ENV: run_id}, start_new_session=True, **popen)


def test_the_next_run_reaps_a_dead_runs_processes_but_never_a_live_runs_or_an_untagged_one(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="rehearsal.processes")
    home = tmp_path / "home"
    report = tmp_path / "report"
    report.mkdir()
    (report / "rehearsal.json").write_text(json.dumps({"decision": "running", "reason": "in progress", "steps": []}))
    dead, live = home / "run" / "dead-run", home / "run" / "live-run"
    for folder in (dead, live):
        folder.mkdir(parents=True)
        (folder / "lock").write_text("")
    orphan, other_run, untagged = tagged_sleep("dead-run"), tagged_sleep("live-run"), tagged_sleep("")
    # owner.json names the untagged process: a pid alone is never reason enough to signal a process.
    (dead / "owner.json").write_text(json.dumps({"pid": untagged.pid, "report_folder": str(report)}))
    scratch = processes.scratch_folder("dead-run")
    scratch.mkdir()
    holder = open(live / "lock")  # noqa: SIM115 - the live rehearsal's lock
    import fcntl

    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        reaped = reap_abandoned_runs(home)
        said = [r.getMessage() for r in caplog.records if r.name == "rehearsal.processes"]
        assert [r.run_id for r in reaped] == ["dead-run"] and len(said) == 1, said
        assert orphan.wait(timeout=10) == -signal.SIGTERM
        assert other_run.poll() is None and untagged.poll() is None
        assert not dead.exists() and live.exists() and not scratch.exists()
        killed = json.loads((report / "rehearsal.json").read_text())
        assert killed["decision"] == "killed" and "killed before it could finish" in killed["reason"]
        assert (report / "summary.md").read_text().startswith("# Rollout rehearsal: killed")
    finally:
        holder.close()
        for proc in (orphan, other_run, untagged):
            proc.kill()
            proc.wait()


WATCHED_RUN = """
import os, subprocess, sys, time
from pathlib import Path
from rehearsal.processes import RunScope
home, report = Path(sys.argv[1]), Path(sys.argv[2])
(report / "rehearsal.json").write_text('{"decision": "running", "reason": "in progress", "steps": []}')
with RunScope(home, "watched-run", report):
    # No parent-death signal here: the watchdog alone must stop it.
    child = subprocess.Popen(["sleep", "300"], start_new_session=True)
    Path(os.environ["TMPDIR"], "prometheus-data").mkdir()
    print(child.pid, os.environ["TMPDIR"], flush=True)
    time.sleep(300)
"""


def test_the_watchdog_cleans_up_after_a_rehearsal_killed_outright(tmp_path):
    home, report = tmp_path / "home", tmp_path / "report"
    report.mkdir()
    owner = subprocess.Popen(
        [sys.executable, "-c", WATCHED_RUN, str(home), str(report)], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert owner.stdout is not None
    pid, scratch = owner.stdout.readline().split()
    child = int(pid)
    try:
        owner.kill()
        owner.wait()
        wait_until(lambda: not running(child), f"the run's child {child} to be stopped by the watchdog")
        wait_until(lambda: not (home / "run" / "watched-run").exists(), "the watchdog to remove the run folder")
        assert not Path(scratch).exists()
        assert json.loads((report / "rehearsal.json").read_text())["decision"] == "killed"
        assert "watchdog: a previous rehearsal (run watched-run" in (report / "watchdog.log").read_text()
    finally:
        if running(child):
            os.kill(child, signal.SIGKILL)


PARENT = """
import subprocess, sys, time
from fraudctl.lifetime import parent_death_signal
child = subprocess.Popen(["sleep", "300"], preexec_fn=parent_death_signal(), start_new_session=True)
print(child.pid, flush=True)
time.sleep(300)
"""


def test_a_child_started_with_the_parent_death_signal_ends_when_its_parent_is_killed(tmp_path):
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    try:
        parent.kill()
        parent.wait()
        wait_until(lambda: not running(child), f"the child {child} to get SIGTERM when its parent died")
    finally:
        if running(child):
            os.kill(child, signal.SIGKILL)


def test_no_parent_death_signal_from_a_worker_thread_whose_end_would_fire_it():
    found: list[object] = []
    worker = threading.Thread(target=lambda: found.append(parent_death_signal()))
    worker.start()
    worker.join()
    assert found == [None] and callable(parent_death_signal())


def test_a_run_scope_tags_its_children_and_keeps_their_temporary_files_in_one_folder(tmp_path):
    with RunScope(tmp_path / "home", "scoped-run", tmp_path, watchdog=False) as scope:
        assert os.environ[RUN_ENV] == "scoped-run" and tempfile.gettempdir() == str(scope.scratch)
        child = subprocess.Popen(["sleep", "300"])
        folder = Path(tempfile.mkdtemp(prefix="fraud-prometheus-"))
        wait_until(lambda: [c.pid for c in scope.children()] == [child.pid], "the child to carry the run's id")
    assert child.wait(timeout=10) == -signal.SIGTERM and [c.pid for c in scope.stopped] == [child.pid]
    assert not folder.exists() and not scope.scratch.exists() and RUN_ENV not in os.environ
    assert tempfile.gettempdir() != str(scope.scratch)


# -- signals ---------------------------------------------------------------------------------------------


def test_stop_signals_raise_once_inside_the_work_and_are_only_noted_outside_it(caplog):
    caplog.set_level(logging.INFO, logger="rehearsal.processes")
    with StopSignals() as signals:
        os.kill(os.getpid(), signal.SIGHUP)  # before the work: held until it starts
        with pytest.raises(Interrupted) as caught, signals.interruptible():
            pytest.fail("the pending signal should stop the work before it starts")
        assert caught.value.signum == signal.SIGHUP and caught.value.exit_code == 129
        os.kill(os.getpid(), signal.SIGTERM)  # after: noted
    said = [r.getMessage() for r in caplog.records if r.name == "rehearsal.processes"]
    assert signals.received == [signal.SIGHUP, signal.SIGTERM] and len(said) == 1, said
    with StopSignals() as signals:
        with pytest.raises(Interrupted), signals.interruptible():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)  # not reached: the first one already stopped the work
        os.kill(os.getpid(), signal.SIGTERM)
    assert signals.received == [signal.SIGINT, signal.SIGTERM]


# -- Prometheus ------------------------------------------------------------------------------------------


def test_prometheus_killed_is_a_typed_no_data_error_and_a_start_cut_short_leaves_nothing(monkeypatch):
    prometheus = PrometheusProcess([], scrape_interval_seconds=1.0).start()
    try:
        assert prometheus.query("vector(1)") == 1.0
        assert prometheus.pid is not None
        os.kill(prometheus.pid, signal.SIGKILL)
        wait_until(lambda: prometheus._proc is not None and prometheus._proc.poll() is not None, "prometheus to die")
        with pytest.raises(PrometheusUnavailable, match="killed by SIGKILL"):
            prometheus.query("vector(1)")
    finally:
        prometheus.stop()

    cut = PrometheusProcess([], scrape_interval_seconds=1.0)
    seen: list[tuple[int, Path]] = []

    def signalled_get(*args: Any, **kwargs: Any) -> Any:
        assert cut._proc is not None and cut._dir is not None
        seen.append((cut._proc.pid, cut._dir))
        raise Interrupted(signal.SIGTERM)  # as the handler does when SIGTERM comes during the ready wait

    monkeypatch.setattr(cut._client, "get", signalled_get)
    with pytest.raises(Interrupted):
        cut.start()
    (pid, folder), = seen
    assert not running(pid) and not folder.exists() and cut.pid is None


def test_the_stop_benchmark_refuses_bad_flags_in_one_line(capsys):
    from fraudctl.cli import main

    assert main(["bench", "rehearsal-stop", "--runs", "0"]) == 2
    assert capsys.readouterr().err.strip() == "fraudctl bench: --runs: must be between 1 and 20, got 0"


def test_at_step_without_a_fault_is_refused_from_the_parsed_flags(capsys):
    from fraudctl.cli import main

    # Called in process (argv given, sys.argv is pytest's): the flags parsed decide, not the process's argv.
    assert main(["rehearse", "--at-step", "3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "fraudctl rehearse: --at-step: only meaningful with --inject-fault error|degrade"
