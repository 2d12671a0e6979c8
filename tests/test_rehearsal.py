"""Compressed rehearsals with real parts: MLServer processes, the Debian Prometheus, the embedded MLflow.

A generated dataset and quick training params stand in for the ULB file (the benchmark and the demo use
the real one); everything else is what `fraudctl rehearse` runs.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from infra.config import load_stack
from model.scenario import build_scenario
from model.synthetic import frame_sha256, generate_transactions
from model.train import TrainParams
from rehearsal.run import RehearsalOptions, rehearse

pytestmark = pytest.mark.slow

# Thresholds for the compressed run: short windows hold fewer labelled frauds, so the bounds are looser
# than production's; the faults still break them by a wide margin.
COMPRESSED = {"analysis": {"minLabelledFrauds": 5, "threshold": 2, "minPrecision": 0.5, "minRecall": 0.4}}


@pytest.fixture(scope="module")
def scenario():
    raw = generate_transactions(12_000, fraud_rate=0.03, seed=21)
    return build_scenario(raw, data_sha256=frame_sha256(raw))


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fraud-home")


def run(strategy: str, scenario, home: Path, tmp_path: Path, fault: str | None = None, at_step: int = 2) -> dict:
    config = load_stack("dev", overrides={"strategy": strategy, **COMPRESSED})
    options = RehearsalOptions(
        fault=fault,
        at_step=at_step,
        interval_seconds=3.0,
        report_dir=tmp_path / "report",
        home=home,
        scenario=scenario,
        train_params=TrainParams(members=1, max_iter=40),
        ignore_gate=True,
    )
    data = rehearse(config, options)
    for pid in data["process_ids"]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # no leftover server or Prometheus
    report = Path(data["report"][0]).parent
    assert (report / "summary.md").exists() and (report / "rehearsal.json").exists()
    assert (report / "weight.png").stat().st_size > 1000
    assert {p.name for p in report.glob("check-*.png")} >= {"check-precision.png", "check-success-rate.png"}
    return data


def checks_of(step: dict) -> dict[str, dict]:
    return {c["name"]: c for c in step["checks"]}


def test_canary_promotes_a_healthy_candidate_and_a_second_run_reuses_the_models(scenario, home, tmp_path):
    data = run("canary", scenario, home, tmp_path)
    assert data["decision"] == "promoted"
    assert [s["weight"] for s in data["steps"] if all(c["passed"] for c in s["checks"])] == [5, 10, 50]
    assert data["primary_failed"] == 0 and data["candidate_failed"] == 0
    assert data["feedback_posted"] > 100 and data["feedback_rejected"] == 0
    again = run("canary", scenario, home, tmp_path / "again")
    assert again["models_reused"] == {"v1": True, "v2": True}


def test_canary_rolls_back_on_errors_while_the_primary_keeps_answering(scenario, home, tmp_path):
    data = run("canary", scenario, home, tmp_path, fault="error", at_step=2)
    assert data["decision"] == "rolled_back"
    assert data["primary_failed"] == 0 and data["candidate_failed"] > 0
    faulty = [s for s in data["steps"] if s["fault_active"]]
    assert faulty and not checks_of(faulty[-1])["success-rate"]["passed"]
    assert data["seconds_to_rollback"] is not None and data["seconds_to_rollback"] < 30
    assert max(s["weight"] for s in data["steps"]) < 50  # never reached the last step


def test_canary_rolls_back_on_a_degraded_model_through_the_ml_gate(scenario, home, tmp_path):
    data = run("canary", scenario, home, tmp_path, fault="degrade", at_step=2)
    assert data["decision"] == "rolled_back"
    assert data["primary_failed"] == 0 and data["candidate_failed"] == 0
    faulty = [s for s in data["steps"] if s["fault_active"]]
    # The HTTP checks stay green: only the labelled-feedback precision catches a model that answers wrongly.
    assert all(checks_of(s)["success-rate"]["passed"] for s in faulty)
    assert not any(checks_of(s)["precision"]["passed"] for s in faulty)
    assert data["candidate_bad_served"] > 0


def test_blue_green_promotes_after_pre_and_post_promotion_analysis(scenario, home, tmp_path):
    data = run("blue-green", scenario, home, tmp_path)
    assert data["decision"] == "promoted"
    phases = [s["phase"] for s in data["steps"]]
    assert phases.count("pre-promotion") >= 1 and phases.count("post-promotion") >= 1
    assert phases.index("post-promotion") > phases.index("pre-promotion")


def test_blue_green_aborts_after_the_switch_and_returns_traffic_to_the_stable_model(scenario, home, tmp_path):
    data = run("blue-green", scenario, home, tmp_path, fault="error", at_step=4)
    assert data["decision"] == "rolled_back"
    assert "post-promotion" in data["reason"]
    assert data["steps"][-1]["phase"] == "post-promotion"
    assert data["primary_failed"] == 0


def _processes_mentioning(marker: str) -> list[int]:
    """PIDs whose environment or command line mentions ``marker`` (servers inherit FRAUD_HOME)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            blob = (entry / "environ").read_bytes() + (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in blob:
            found.append(int(entry.name))
    return found


def test_ctrl_c_stops_the_servers_and_prometheus(ulb_dataset: Path, tmp_path: Path) -> None:
    """The real CLI on the real data, interrupted mid-rollout: exit 130 and nothing left running."""
    home = tmp_path / "home"
    (home / "data").mkdir(parents=True)
    shutil.copy(ulb_dataset, home / "data" / ulb_dataset.name)
    env = {**os.environ, "FRAUD_HOME": str(home)}
    log = tmp_path / "rehearse.log"
    with log.open("w") as stderr:
        proc = subprocess.Popen(
            [str(Path(sys.executable).with_name("fraudctl")), "rehearse", "--interval", "3"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 300
            while "step 1 (canary" not in log.read_text():
                assert proc.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.5)
            assert len(_processes_mentioning(str(home))) >= 4  # fraudctl, two servers, Prometheus
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=60) == 130, log.read_text()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    assert "interrupted" in log.read_text()
    assert _processes_mentioning(str(home)) == []
