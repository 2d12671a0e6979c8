"""Two real rehearsals stopped mid-analysis: real MLServers, the Debian Prometheus, the embedded MLflow.

A rehearsal runs in a child interpreter (a compressed one: generated data, quick training, models trained once
here) and is stopped at its first analysis step: by SIGKILL (nothing of it may stay running: the kernel's
parent-death signal and the watchdog stop its children) and by SIGTERM (a report, exit 143, ports free).
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

from rehearsal.processes import listening_ports, processes_of_run, scratch_folder

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
COMPRESSED = {"analysis": {"minLabelledFrauds": 5, "threshold": 2, "minPrecision": 0.5, "minRecall": 0.4}}
REHEARSAL = f"""
import sys
from pathlib import Path
from infra.config import load_stack
from model.scenario import build_scenario
from model.synthetic import frame_sha256, generate_transactions
from model.train import TrainParams
from fraudctl.cli import setup_logging
from rehearsal.run import RehearsalOptions, rehearse

setup_logging()  # not fraudctl: this process sets up the logging its progress lines go through
raw = generate_transactions(12_000, fraud_rate=0.03, seed=21)
options = RehearsalOptions(
    interval_seconds=3.0,
    home=Path(sys.argv[1]),
    scenario=build_scenario(raw, data_sha256=frame_sha256(raw)),
    train_params=TrainParams(members=1, max_iter=40),
    ignore_gate=True,
)
if sys.argv[2] == "prepare":
    from rehearsal.models import prepare_models
    prepare_models(load_stack("dev"), home=options.home, scenario=options.scenario, train_params=options.train_params)
    sys.exit(0)
sys.exit(rehearse(load_stack("dev", overrides={COMPRESSED!r}), options)["exit_code"])
"""


def wait_until(condition: Any, what: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"still not true after {seconds:.0f}s: {what}")
        time.sleep(0.1)


def listening(ports: set[int]) -> set[int]:
    """Which of ``ports`` some process still listens on."""
    return listening_ports() & ports


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A $FRAUD_HOME with v1 and v2 trained and registered, so the rehearsals below start at once."""
    home = tmp_path_factory.mktemp("fraud-home")
    subprocess.run([sys.executable, "-c", REHEARSAL, str(home), "prepare"], cwd=ROOT, check=True, timeout=600)
    return home


def start_and_wait_for_analysis(home: Path, log: Path) -> tuple[subprocess.Popen[bytes], dict[str, Any], Path]:
    """The rehearsal, once its first analysis step is done: (process, its record so far, its report folder)."""
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", REHEARSAL, str(home), "run"], cwd=ROOT, stderr=stderr, start_new_session=True
        )
    wait_until(lambda: "step 1 (" in log.read_text() or proc.poll() is not None, "analysis step 1", 300)
    assert proc.poll() is None, log.read_text()
    (folder,) = [p.parent for p in (home / "reports" / "rehearsal").glob("*/rehearsal.json") if "killed" not in str(p)]
    return proc, json.loads((folder / "rehearsal.json").read_text()), folder


def test_a_rehearsal_killed_outright_leaves_nothing_running(home: Path, tmp_path: Path) -> None:
    proc, record, folder = start_and_wait_for_analysis(home, tmp_path / "rehearse.log")
    try:
        children = processes_of_run(record["run_id"], with_ports=True)
        ports = {port for child in children for port in child.ports}
        assert len(children) >= 3 and len(ports) >= 7, children  # two MLServers (3 ports each), Prometheus
        proc.kill()
        proc.wait()
        wait_until(lambda: not processes_of_run(record["run_id"]), "every process of the run to stop", 60)
        wait_until(lambda: not listening(ports), f"ports {sorted(ports)} to be free", 30)
        wait_until(lambda: not (home / "run" / record["run_id"]).exists(), "the watchdog to remove the run folder", 30)
        assert not scratch_folder(record["run_id"]).exists()
        killed = json.loads((folder / "rehearsal.json").read_text())
        assert killed["decision"] == "killed" and len(killed["steps"]) >= 1
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for child in processes_of_run(record["run_id"]):
            os.kill(child.pid, signal.SIGKILL)
        folder.rename(folder.with_name(folder.name + "-killed"))  # out of the next test's way


def test_sigterm_mid_analysis_writes_the_report_and_frees_the_ports(home: Path, tmp_path: Path) -> None:
    log = tmp_path / "rehearse.log"
    proc, record, folder = start_and_wait_for_analysis(home, log)
    try:
        ports = {port for child in processes_of_run(record["run_id"], with_ports=True) for port in child.ports}
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM, log.read_text()
        assert not processes_of_run(record["run_id"]) and not listening(ports)
        report = json.loads((folder / "rehearsal.json").read_text())
        assert report["decision"] == "interrupted" and report["reason"].startswith("SIGTERM while analysing")
        assert len(report["steps"]) >= 1 and (folder / "summary.md").exists()
        assert (folder.parent / "latest").resolve() == folder.resolve()
        assert not (home / "run" / record["run_id"]).exists() and not scratch_folder(record["run_id"]).exists()
        assert "Traceback" not in log.read_text()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
