"""Rollout waves: ``fraudctl wave-gate`` against fake Kubernetes API servers for two regions; the served gate
through starlette's TestClient, and once as the real process (uvicorn on loopback) stopped by SIGTERM."""

from __future__ import annotations

import json
import logging
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fake_kube import FakeKube
from starlette.testclient import TestClient

from fraudctl.cli import main
from infra import waves
from ops import wave_gate
from ops.cluster import connect

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


@pytest.fixture
def served(regions: tuple[FakeKube, FakeKube], tmp_path: Path) -> Iterator[TestClient]:
    """The gate's ASGI app over both regions (no decision cache), as uvicorn would serve it."""
    gate = wave_gate.WaveGate(
        wave_gate.ClusterReader(connect(tmp_path / "local", "us-east"), "canary"),
        {"eu-west": wave_gate.ClusterReader(connect(tmp_path / "upstreams", "eu-west"), "canary")},
        cache_seconds=0,
    )
    with TestClient(wave_gate.create_app(gate)) as client:
        yield client
    gate.close()


HOOK = {"name": "fraud-detector", "namespace": NS, "phase": "Progressing", "metadata": {}}


def test_served_gate_answers_flagger_and_argo_rollouts(
    regions: tuple[FakeKube, FakeKube], served: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    # The gate logs each decision at INFO; capture it whatever level an earlier test left the logger at.
    caplog.set_level(logging.INFO, logger="ops.wave_gate")
    local, upstream = regions
    local.put(DEPLOYMENT, workload("v2"))
    upstream.put(CANARY, canary("Progressing", promoted="h1"))
    upstream.put(PRIMARY, workload("v1"))
    # Flagger's confirm-rollout: non-2xx holds the canary.
    closed = served.post("/gate", json=HOOK)
    assert closed.status_code == 403 and closed.json()["ready"] is False
    status = served.get("/status")
    assert status.status_code == 200 and status.json()["ready"] is False
    upstream.put(CANARY, canary("Succeeded"))
    upstream.put(PRIMARY, workload("v2"))
    opened = served.post("/gate", json=HOOK)
    assert opened.status_code == 200 and opened.json()["version"] == "v2"
    assert served.get("/status").json()["ready"] is True
    assert served.get("/healthz").json() == {"ok": True}
    # Each decision Flagger asked for is logged with the canary it was for.
    said = [r.getMessage() for r in caplog.records if r.name == "ops.wave_gate"]
    assert said[0].startswith("gate for fraud/fraud-detector: held: waiting for v2")
    assert said[1] == "gate for fraud/fraud-detector: open: v2 is promoted in eu-west"


def test_served_gate_keeps_its_status_contract_when_a_region_is_down(
    regions: tuple[FakeKube, FakeKube], served: TestClient
) -> None:
    local, upstream = regions
    local.put(DEPLOYMENT, workload("v2"))
    upstream.__exit__()  # eu-west's API server goes away
    status = served.get("/status")
    assert status.status_code == 200  # Argo Rollouts' web metric reads the decision, not the HTTP status
    assert status.json()["ready"] is False
    assert "cannot reach the API server" in status.json()["regions"]["eu-west"]["reason"]
    assert served.post("/gate", json=HOOK).status_code == 403


def test_served_gate_answers_bad_requests_with_json(served: TestClient) -> None:
    for body in (b"not json", b"[1, 2]", b"", b'"fraud-detector"'):
        bad = served.post("/gate", content=body, headers={"Content-Type": "application/json"})
        assert bad.status_code == 400 and "Flagger's webhook JSON object" in bad.json()["error"]
    missing = served.get("/nope")
    assert missing.status_code == 404 and missing.json()["error"].startswith("GET /nope: HTTP 404; use POST /gate")
    wrong_method = served.get("/gate")
    assert wrong_method.status_code == 405 and "HTTP 405" in wrong_method.json()["error"]


def test_wave_gate_serve_stops_gracefully_on_sigterm(regions: tuple[FakeKube, FakeKube], tmp_path: Path) -> None:
    """The real process (uvicorn on loopback): a request in flight when the pod is stopped still gets its
    answer, the gate stops listening, and the process exits 0."""
    local, upstream = regions
    local.put(DEPLOYMENT, workload("v2"))
    upstream.put(CANARY, canary("Succeeded"))
    upstream.put(PRIMARY, workload("v2"))
    fraudctl = Path(sys.executable).parent / "fraudctl"
    process = subprocess.Popen(
        [str(fraudctl), "wave-gate", "serve", "--host", "127.0.0.1", "--port", "0", "--cache-seconds", "0",
         "--strategy", "canary", "--kubeconfig", str(tmp_path / "upstreams"), "--upstream", "eu-west",
         "--local-kubeconfig", str(tmp_path / "local")],
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        first = process.stderr.readline()
        assert first.startswith("wave-gate: serving on 127.0.0.1:"), first
        url = f"http://127.0.0.1:{first.split()[3].rsplit(':', 1)[1]}"
        assert httpx.get(f"{url}/status", timeout=30).json()["ready"] is True

        local.answer_gets.clear()  # this region's API server stalls: the next decision stays in flight
        asked = len(local.recorded("GET"))
        answer: dict[str, Any] = {}
        flagger = threading.Thread(target=lambda: answer.update(r=httpx.post(f"{url}/gate", json=HOOK, timeout=60)))
        flagger.start()
        deadline = time.monotonic() + 30
        while len(local.recorded("GET")) == asked and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(local.recorded("GET")) > asked, "the gate never asked its API server"
        process.send_signal(signal.SIGTERM)
        # Graceful: the listening socket closes first, while the request in flight is still held.
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1])), timeout=1).close()
            except ConnectionRefusedError:
                break
            time.sleep(0.02)
        else:
            pytest.fail("the gate kept listening after SIGTERM")
        local.answer_gets.set()
        flagger.join(timeout=30)
        assert answer["r"].status_code == 200 and answer["r"].json()["ready"] is True
        assert process.wait(timeout=30) == 0
        rest = process.stderr.read()
        assert "wave-gate: stopped (SIGTERM)" in rest and "Traceback" not in rest, rest
    finally:
        local.answer_gets.set()
        if process.poll() is None:
            process.kill()
            process.wait()


def test_wave_gate_serve_refuses_a_port_in_use(
    regions: tuple[FakeKube, FakeKube], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code = main(
            ["wave-gate", "serve", "--host", "127.0.0.1", "--port", str(port), "--strategy", "canary",
             "--kubeconfig", str(tmp_path / "upstreams"), "--upstream", "eu-west",
             "--local-kubeconfig", str(tmp_path / "local")]
        )  # fmt: skip
    assert code == 2
    assert f"--port {port}: cannot listen there (Address already in use)" in capsys.readouterr().err


def test_decisions_and_states_as_pure_functions() -> None:
    promoted = wave_gate.canary_state("eu", canary("Initialized"), workload("v2"))
    assert promoted.promoted == "v2"
    assert wave_gate.canary_state("eu", canary("Succeeded", applied="h3"), workload("v2")).promoted is None
    assert wave_gate.canary_state("eu", canary("Succeeded"), {"spec": {}}).promoted is None
    assert wave_gate.decide("v2", [promoted]).ready
    assert not wave_gate.decide(None, [promoted]).ready
    assert wave_gate.decide("v2", []).ready  # the first wave has nobody to wait for
    assert wave_gate.rollout_state("eu", workload("v2", phase="Degraded")).reason == "rollout is Degraded, not promoted"
