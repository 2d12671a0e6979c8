"""Real rehearsals, one per strategy, with real parts: MLServer processes, the Debian Prometheus, the embedded
MLflow, the decision service's logic. Every decision path is covered in process by tests/test_rollout_engine.py
(scripted rig); these prove the real parts behave as the script says.

A generated dataset and quick training params stand in for the ULB file (the benchmark and the demo use
the real one), and v1/v2 come trained and registered from the session's registry (tests/rehearsal_support.py;
training and registering are model/'s tests): the rehearsal reuses them, as a second `fraudctl rehearse`
does. Everything else is what `fraudctl rehearse` runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from rehearsal_support import home_with_registry, quick_training, rehearsal_scenario

from infra.config import load_stack
from rehearsal.run import RehearsalOptions, rehearse

pytestmark = pytest.mark.slow

# The compressed run: a horizon of 2 keeps blue-green's pre-promotion run to 3 intervals, and a drop of 30 points
# (the degrade fault is far worse; the healthy v2 is far better) keeps the replay the plan sizes for 3 s
# intervals small (293 pairs). The machine running the suite is
# shared, so a p99 over a few seconds is noise here: latency is not under test (tests/test_rollout_engine.py
# covers the latency check's path), the decision service is.
COMPRESSED = {"analysis": {"horizon": 2, "minDetectableDrop": 0.3, "threshold": 2, "maxLatencyP99Ms": 5000}}
INTERVAL = 3.0


@pytest.fixture
def home(rehearsal_registry: Path, tmp_path: Path) -> Path:
    return home_with_registry(rehearsal_registry, tmp_path / "fraud-home")


def run(strategy: str, home: Path, tmp_path: Path, fault: str | None = None, at_step: int = 2) -> dict:
    config = load_stack("dev", overrides={"strategy": strategy, **COMPRESSED})
    options = RehearsalOptions(
        fault=fault,
        at_step=at_step,
        interval_seconds=INTERVAL,
        report_dir=tmp_path / "report",
        home=home,
        scenario=rehearsal_scenario(),
        train_params=quick_training(),
        ignore_gate=True,
    )
    data = rehearse(config, options)
    assert data["models_reused"] == {"v1": True, "v2": True}  # the session's models, found by sha and params
    for pid in data["process_ids"]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # no leftover server or Prometheus
    report = Path(data["report"][0]).parent
    assert (report / "summary.md").exists() and (report / "rehearsal.json").exists()
    assert (report / "weight.png").stat().st_size > 1000
    assert {p.name for p in report.glob("check-*.png")} >= {"check-success-rate.png", "check-latency-p99.png"}
    return data


def test_canary_promotes_a_healthy_candidate_on_real_servers(home, tmp_path):
    """Flagger's walk against two real MLServers and a real Prometheus: the decision service's paired replay
    passes v2 against v1, the weight climbs the steps, and the primary stays healthy throughout."""
    data = run("canary", home, tmp_path)
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


def test_blue_green_switches_back_within_one_interval_of_a_post_switch_fault(home, tmp_path):
    """Argo's phases on real servers: pre-promotion passes, the active Service switches, the candidate turns
    degraded, and the post-promotion decision fails at once: traffic returns to the still-warm stable."""
    looks = COMPRESSED["analysis"]["horizon"]
    at_step = looks + 3  # the second interval after the switch
    data = run("blue-green", home, tmp_path, fault="degrade", at_step=at_step)
    assert data["decision"] == "rolled_back", data["decision_reason"]
    assert "post-promotion analysis failed" in data["reason"] and "switched back" in data["reason"]
    phases = [s["phase"] for s in data["steps"]]
    assert phases.index("post-promotion") > phases.index("pre-promotion")
    fault_steps = [d for d in data["decisions"] if d["index"] >= at_step]
    assert fault_steps[0]["verdict"] == "fail" and fault_steps[0]["action"] == "abort"  # the same interval
    assert data["bad_answers_after_switch"] is not None and data["bad_answers_after_switch"] > 0
    assert data["primary_healthy"] is True and data["primary_failed"] == 0
