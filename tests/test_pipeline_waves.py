"""Rollout waves: ``fraudctl wave-gate`` against fake Kubernetes API servers for two regions."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fake_kube import FakeKube

from fraudctl.cli import main
from infra import waves
from ops import wave_gate
from ops.kube import KubeClient, load_credentials

NS = "fraud"
CANARY = f"/apis/flagger.app/v1beta1/namespaces/{NS}/canaries/fraud-detector"
DEPLOYMENT = f"/apis/apps/v1/namespaces/{NS}/deployments/fraud-detector"
PRIMARY = f"{DEPLOYMENT}-primary"
ROLLOUT = f"/apis/argoproj.io/v1alpha1/namespaces/{NS}/rollouts/fraud-detector"


def workload(version: str, **status: Any) -> dict[str, Any]:
    obj: dict[str, Any] = {
        "metadata": {"name": "fraud-detector", "namespace": NS},
        "spec": {"template": {"metadata": {"labels": {wave_gate.VERSION_LABEL: version}}}},
    }
    if status:
        obj["status"] = status
    return obj


def canary(phase: str, applied: str = "h2", promoted: str = "h2") -> dict[str, Any]:
    return {
        "metadata": {"name": "fraud-detector"},
        "status": {"phase": phase, "lastAppliedSpec": applied, "lastPromotedSpec": promoted},
    }


@pytest.fixture
def regions(tmp_path: Path):
    """(local, upstream) fake API servers and their kubeconfigs: this region us-east, the earlier eu-west."""
    with FakeKube(token="local") as local, FakeKube(token="eu") as upstream:
        local.write_kubeconfig(tmp_path / "local", context="us-east", extra=False)
        upstream.write_kubeconfig(tmp_path / "upstreams", context="eu-west", extra=False)
        yield local, upstream


def check(tmp_path: Path, strategy: str = "canary", upstream: str = "eu-west") -> int:
    return main(
        ["wave-gate", "check", "--strategy", strategy, "--kubeconfig", str(tmp_path / "upstreams"),
         "--upstream", upstream, "--local-kubeconfig", str(tmp_path / "local")]
    )  # fmt: skip


def test_canary_gate_opens_only_when_the_previous_wave_promoted_this_version(
    regions: tuple[FakeKube, FakeKube], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local, upstream = regions
    local.put(DEPLOYMENT, workload("v2"))
    # eu-west still serves v1 and its canary of v2 is analysing traffic.
    upstream.put(CANARY, canary("Progressing", applied="h2", promoted="h1"))
    upstream.put(PRIMARY, workload("v1"))
    assert check(tmp_path) == 1
    decision = json.loads(capsys.readouterr().out)
    assert decision["ready"] is False and decision["version"] == "v2"
    assert decision["regions"]["eu-west"]["reason"] == "canary is Progressing, not promoted"

    # Promoted: Flagger copied v2 to the primary and finished.
    upstream.put(CANARY, canary("Succeeded"))
    upstream.put(PRIMARY, workload("v2"))
    assert check(tmp_path) == 0
    decision = json.loads(capsys.readouterr().out)
    assert decision["ready"] is True and decision["regions"]["eu-west"]["promoted_version"] == "v2"

    # A finished canary of an older version does not open the gate for a newer one.
    local.put(DEPLOYMENT, workload("v3"))
    assert check(tmp_path) == 1
    assert "waiting for v3 to be promoted in eu-west: v2 promoted" in json.loads(capsys.readouterr().out)["reason"]

    # Reads are limited to what the reader's ClusterRole grants (get, by name).
    allowed = {CANARY, PRIMARY, DEPLOYMENT}
    assert {r.path for r in upstream.requests} <= allowed and {r.method for r in upstream.requests} == {"GET"}
    rule_names = {n for rule in waves.reader_rules() for n in rule["resourceNames"]}
    assert {p.rsplit("/", 1)[1] for p in allowed} <= rule_names


def test_blue_green_gate_reads_the_rollout(
    regions: tuple[FakeKube, FakeKube], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local, upstream = regions
    local.put(ROLLOUT, workload("v2"))
    upstream.put(ROLLOUT, workload("v2", phase="Paused", stableRS="a", currentPodHash="b"))
    assert check(tmp_path, "blue-green") == 1
    capsys.readouterr()
    upstream.put(ROLLOUT, workload("v2", phase="Healthy", stableRS="a", currentPodHash="b"))
    assert check(tmp_path, "blue-green") == 1
    assert "not the stable one yet" in capsys.readouterr().out
    upstream.put(ROLLOUT, workload("v2", phase="Healthy", stableRS="b", currentPodHash="b"))
    assert check(tmp_path, "blue-green") == 0


def test_an_unreachable_or_unknown_upstream_keeps_the_gate_closed(
    regions: tuple[FakeKube, FakeKube], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    local, _upstream = regions
    local.put(DEPLOYMENT, workload("v2"))
    config = yaml.safe_load((tmp_path / "upstreams").read_text())
    config["clusters"][0]["cluster"]["server"] = "http://127.0.0.1:9"
    (tmp_path / "upstreams").write_text(yaml.safe_dump(config))
    assert check(tmp_path) == 1
    assert "cannot read rollout state" in json.loads(capsys.readouterr().out)["regions"]["eu-west"]["reason"]
    assert check(tmp_path, upstream="ap-south") == 2
    assert "no context named 'ap-south'" in capsys.readouterr().err


def test_served_gate_answers_flagger_and_argo_rollouts(regions: tuple[FakeKube, FakeKube], tmp_path: Path) -> None:
    local, upstream = regions
    local.put(DEPLOYMENT, workload("v2"))
    upstream.put(CANARY, canary("Progressing", promoted="h1"))
    upstream.put(PRIMARY, workload("v1"))
    gate = wave_gate.WaveGate(
        wave_gate.ClusterReader(KubeClient(load_credentials(tmp_path / "local", "us-east")), "canary"),
        {"eu-west": wave_gate.ClusterReader(KubeClient(load_credentials(tmp_path / "upstreams", "eu-west")), "canary")},
        cache_seconds=0,
    )
    server = wave_gate.serve(gate, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    hook = {"name": "fraud-detector", "namespace": NS, "phase": "Progressing", "metadata": {}}
    try:
        # Flagger's confirm-rollout: non-2xx holds the canary.
        closed = httpx.post(f"{url}/gate", json=hook)
        assert closed.status_code == 403 and closed.json()["ready"] is False
        status = httpx.get(f"{url}/status")
        assert status.status_code == 200 and status.json()["ready"] is False
        upstream.put(CANARY, canary("Succeeded"))
        upstream.put(PRIMARY, workload("v2"))
        assert httpx.post(f"{url}/gate", json=hook).status_code == 200
        assert httpx.get(f"{url}/status").json()["ready"] is True
        assert httpx.get(f"{url}/healthz").status_code == 200
        assert httpx.post(f"{url}/gate", content=b"not json").status_code == 400
        assert httpx.get(f"{url}/nope").status_code == 404
    finally:
        server.shutdown()
        server.server_close()


def test_decisions_and_states_as_pure_functions() -> None:
    promoted = wave_gate.canary_state("eu", canary("Initialized"), workload("v2"))
    assert promoted.promoted == "v2"
    assert wave_gate.canary_state("eu", canary("Succeeded", applied="h3"), workload("v2")).promoted is None
    assert wave_gate.canary_state("eu", canary("Succeeded"), {"spec": {}}).promoted is None
    assert wave_gate.decide("v2", [promoted]).ready
    assert not wave_gate.decide(None, [promoted]).ready
    assert wave_gate.decide("v2", []).ready  # the first wave has nobody to wait for
    assert wave_gate.rollout_state("eu", workload("v2", phase="Degraded")).reason == "rollout is Degraded, not promoted"
