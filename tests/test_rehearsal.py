"""Real rehearsals, one per strategy, with real parts: MLServer processes, the Debian Prometheus, the embedded
MLflow, the decision service's logic. Every decision path is covered in process by tests/test_rollout_engine.py
(scripted rig); these prove the real parts behave as the script says.

A generated dataset and quick training params stand in for the ULB file (the benchmark and the demo use
the real one); everything else is what `fraudctl rehearse` runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from infra.config import load_stack
from model.scenario import build_scenario
from model.synthetic import frame_sha256, generate_transactions
from model.train import TrainParams
from rehearsal.run import RehearsalOptions, rehearse

pytestmark = pytest.mark.slow

# The compressed run: a short horizon keeps it to a few intervals, and a drop of 20 points (the degrade fault
# is far worse) keeps the replay the plan sizes for 3 s intervals small. The machine running the suite is
# shared, so a p99 over a few seconds is noise here: latency is not under test (tests/test_rollout_engine.py
# covers the latency check's path), the decision service is.
COMPRESSED = {"analysis": {"horizon": 4, "minDetectableDrop": 0.2, "threshold": 2, "maxLatencyP99Ms": 5000}}
INTERVAL = 3.0


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
        interval_seconds=INTERVAL,
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
    assert {p.name for p in report.glob("check-*.png")} >= {"check-success-rate.png", "check-latency-p99.png"}
    return data


def test_canary_promotes_a_healthy_candidate_on_real_servers(scenario, home, tmp_path):
    """Flagger's walk against two real MLServers and a real Prometheus: the decision service's paired replay
    passes v2 against v1, the weight climbs the steps, and the primary stays healthy throughout."""
    data = run("canary", scenario, home, tmp_path)
    assert data["decision"] == "promoted", data["decision_reason"]
    assert data["decision_reason"].startswith("pass after")
    advanced = [d for d in data["decisions"] if d["action"].startswith("advance")]
    assert [d["action"] for d in advanced] == ["advance to 5%", "advance to 10%", "advance to 50%"]
    assert [s["weight"] for s in data["steps"]][: len(advanced)] == [0, 5, 10]  # each interval's weight
    assert all(d["hooks"]["confirm-traffic-increase"] == 200 and d["verdict"] == "pass" for d in advanced)
    assert data["primary_healthy"] is True and data["primary_failed"] == 0 and data["candidate_failed"] == 0
    # Labels went to both servers: one per replayed transaction each.
    assert data["feedback_posted"] > 2 * data["plan"]["pairs_per_interval"] and data["feedback_rejected"] == 0
    # The candidate's system checks read its own pods (app_kubernetes_io_name), with data at every step.
    checked = [s for s in data["steps"] if s["checks"]]
    assert checked and all(c["passed"] and c["value"] is not None for s in checked for c in s["checks"])


def test_blue_green_switches_back_within_one_interval_of_a_post_switch_fault(scenario, home, tmp_path):
    """Argo's phases on real servers: pre-promotion passes, the active Service switches, the candidate turns
    degraded, and the post-promotion decision fails at once: traffic returns to the still-warm stable."""
    looks = COMPRESSED["analysis"]["horizon"]
    at_step = looks + 3  # the second interval after the switch
    data = run("blue-green", scenario, home, tmp_path, fault="degrade", at_step=at_step)
    assert data["decision"] == "rolled_back", data["decision_reason"]
    assert "post-promotion analysis failed" in data["reason"] and "switched back" in data["reason"]
    phases = [s["phase"] for s in data["steps"]]
    assert phases.index("post-promotion") > phases.index("pre-promotion")
    fault_steps = [d for d in data["decisions"] if d["index"] >= at_step]
    assert fault_steps[0]["verdict"] == "fail" and fault_steps[0]["action"] == "abort"  # the same interval
    assert data["bad_answers_after_switch"] is not None and data["bad_answers_after_switch"] > 0
    assert data["primary_healthy"] is True and data["primary_failed"] == 0
