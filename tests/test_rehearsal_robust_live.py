"""Two real rehearsals stopped while their processes run: real MLServers, the Debian Prometheus, the embedded MLflow.

A rehearsal runs in a child interpreter (a compressed one: generated data, quick training, v1/v2 from the
session's registry, tests/rehearsal_support.py) and is stopped by SIGKILL once both servers and Prometheus
listen on their seven ports (nothing of it may stay running: the kernel's parent-death signal and the watchdog
stop its children), and by SIGTERM as soon as Prometheus is launched (a report, exit 143, ports free, nothing
orphaned). What a stop does at each phase, analysis included, is tests/test_rehearsal_robust.py's (in process).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from rehearsal_support import home_with_registry

from rehearsal.processes import listening_sockets, processes_of_run, scratch_folder

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
COMPRESSED = {"analysis": {"minLabelledFrauds": 5, "threshold": 2, "minPrecision": 0.5, "minRecall": 0.4}}
REHEARSAL = f"""
import sys
from pathlib import Path
sys.path.insert(0, {str(ROOT / "tests")!r})
from infra.config import load_stack
from fraudctl.cli import setup_logging
from rehearsal.run import RehearsalOptions, rehearse
from rehearsal_support import quick_training, rehearsal_scenario

setup_logging()  # not fraudctl: this process sets up the logging its progress lines go through
options = RehearsalOptions(
    interval_seconds=3.0,
    home=Path(sys.argv[1]),
    scenario=rehearsal_scenario(),
    train_params=quick_training(),
    ignore_gate=True,
)
sys.exit(rehearse(load_stack("dev", overrides={COMPRESSED!r}), options)["exit_code"])
"""


def wait_until(condition: Any, what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still not true after {seconds:.0f}s: {what}")
        time.sleep(0.1)


def sockets_of(children: list[Any]) -> set[str]:
    """The listening sockets (inodes) of a run's processes."""
    return {socket for child in children for socket in child.sockets}


def listening(sockets: set[str]) -> set[str]:
    """Which of ``sockets`` still listen. Sockets, not port numbers: a freed port may be bound again at once by
    any other process on the machine (another test's server), which says nothing about this run."""
    return listening_sockets().keys() & sockets


@pytest.fixture
def home(rehearsal_registry: Path, tmp_path: Path) -> Path:
    """A $FRAUD_HOME with v1 and v2 registered (the session's), so the rehearsal starts at once."""
    return home_with_registry(rehearsal_registry, tmp_path / "fraud-home")


def start_rehearsal(home: Path, log: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    """The rehearsal, once its record names its run: (process, run id, report folder)."""
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", REHEARSAL, str(home)], cwd=ROOT, stderr=stderr, start_new_session=True
        )
    records = home / "reports" / "rehearsal"
    wait_until(lambda: any(records.glob("*/rehearsal.json")) or proc.poll() is not None, "the run's record", 120)
    assert proc.poll() is None, log.read_text()
    (folder,) = [p.parent for p in records.glob("*/rehearsal.json")]
    return proc, json.loads((folder / "rehearsal.json").read_text())["run_id"], folder


def wait_for_processes(proc: subprocess.Popen[bytes], run_id: str, log: Path, enough: Any) -> list[Any]:
    """The run's processes (with their ports) once ``enough(children)`` holds; the rehearsal must still run."""
    found: list[Any] = []

    def ready() -> bool:
        found[:] = processes_of_run(run_id, with_ports=True)
        return enough(found) or proc.poll() is not None

    wait_until(ready, "the run's servers and Prometheus", 120)
    assert proc.poll() is None, log.read_text()
    return found


def test_a_rehearsal_killed_outright_leaves_nothing_running(home: Path, tmp_path: Path) -> None:
    log = tmp_path / "rehearse.log"
    proc, run_id, folder = start_rehearsal(home, log)
    try:
        # Two MLServers (HTTP, gRPC, metrics each) and Prometheus: seven ports.
        children = wait_for_processes(proc, run_id, log, lambda found: sum(len(c.ports) for c in found) >= 7)
        ports, sockets = {port for child in children for port in child.ports}, sockets_of(children)
        assert len(children) >= 3 and len(ports) >= 7, children
        assert len(sockets) >= len(ports)
        proc.kill()
        proc.wait()
        wait_until(lambda: not processes_of_run(run_id), "every process of the run to stop", 60)
        wait_until(lambda: not listening(sockets), f"the sockets on ports {sorted(ports)} to be closed", 30)
        wait_until(lambda: not (home / "run" / run_id).exists(), "the watchdog to remove the run folder", 30)
        assert not scratch_folder(run_id).exists()
        killed = json.loads((folder / "rehearsal.json").read_text())
        assert killed["decision"] == "killed", killed
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for child in processes_of_run(run_id):
            os.kill(child.pid, signal.SIGKILL)


def test_sigterm_as_prometheus_starts_writes_the_report_and_frees_the_ports(home: Path, tmp_path: Path) -> None:
    log = tmp_path / "rehearse.log"
    proc, run_id, folder = start_rehearsal(home, log)
    try:
        # The moment the issue named: SIGTERM just as Prometheus starts (it was orphaned with its port and folder).
        children = wait_for_processes(proc, run_id, log, lambda found: any("prometheus" in c.command for c in found))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM, log.read_text()
        assert not processes_of_run(run_id)
        assert not listening(sockets_of(children))  # those that listened when the signal came
        report = json.loads((folder / "rehearsal.json").read_text())
        assert report["decision"] == "interrupted" and report["reason"].startswith("SIGTERM while "), report
        assert (folder / "summary.md").exists()
        assert (folder.parent / "latest").resolve() == folder.resolve()
        assert not (home / "run" / run_id).exists() and not scratch_folder(run_id).exists()
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
