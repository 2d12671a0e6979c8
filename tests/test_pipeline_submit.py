"""``fraudctl pipeline submit [--follow]`` against a fake Kubernetes API server that plays Argo's controller."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from fake_kube import FakeKube, argo_pod_name, fnv1a_32

from fraudctl.cli import main
from infra import pipeline
from ops import workflow_run

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = "/apis/argoproj.io/v1alpha1/namespaces/argo/workflows"


def play_controller(kube: FakeKube, *, fail_at: str | None = None, lines: int = 3, pending_only: str | None = None):
    """on_create hook: run the template's steps one by one, with pods, logs and phases, like Argo would."""

    def run(path: str, workflow: dict[str, Any]) -> None:
        name = workflow["metadata"]["name"]
        wf = kube.get(path)
        wf["status"] = {"phase": "Running", "startedAt": "2026-01-01T00:00:00Z", "nodes": {}}
        kube.put(path, wf)
        for index, step in enumerate(pipeline.STEPS):
            node_name = f"{name}[{index}].{step}"
            node_id = f"{name}-{fnv1a_32(node_name)}"
            node = {"id": node_id, "name": node_name, "displayName": step, "type": "Pod", "templateName": step}
            wf["status"]["nodes"][node_id] = {**node, "phase": "Pending"}
            kube.put(path, wf)
            pod = argo_pod_name(name, node_name, step)
            if step == pending_only:
                # The pod never starts (e.g. an image that cannot be pulled): no log, a message.
                wf["status"]["nodes"][node_id].update(phase="Failed", message="ImagePullBackOff")
                wf["status"].update(phase="Failed", message=f"step {step} failed")
                kube.put(path, wf)
                return
            kube.log_line("argo", pod, f"{step} starting")
            wf["status"]["nodes"][node_id].update(phase="Running", startedAt=f"2026-01-01T00:0{index}:00Z")
            kube.put(path, wf)
            for i in range(lines):
                time.sleep(0.01)
                kube.log_line("argo", pod, f"{step} line {i}")
            failed = step == fail_at
            if failed:
                kube.log_line("argo", pod, f"{step}: gate REJECTED")
            kube.close_log("argo", pod)
            wf["status"]["nodes"][node_id].update(
                phase="Failed" if failed else "Succeeded", finishedAt="2026-01-01T01:00:00Z"
            )
            if failed:
                wf["status"]["nodes"][node_id]["message"] = "Error (exit code 1)"
                wf["status"].update(phase="Failed", message=f"child '{node_id}' failed")
                kube.put(path, wf)
                return
            if step == "propose":
                wf["status"]["nodes"][node_id]["outputs"] = {
                    "parameters": [{"name": "proposal-url", "value": "https://github.test/o/r/pull/7"}]
                }
            kube.put(path, wf)
        wf["status"].update(phase="Succeeded")
        kube.put(path, wf)

    kube.on_create = lambda path, wf: threading.Thread(target=run, args=(path, wf), daemon=True).start()


@pytest.fixture
def kube(tmp_path: Path):
    with FakeKube() as fake:
        fake.kubeconfig = fake.write_kubeconfig(tmp_path / "kubeconfig")  # type: ignore[attr-defined]
        yield fake


def submit(kube: FakeKube, *extra: str) -> int:
    return main(["pipeline", "submit", "--kubeconfig", str(kube.kubeconfig), "--context", "fake", *extra])  # type: ignore[attr-defined]


def test_follow_streams_every_step_and_its_logs_until_success(
    kube: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    play_controller(kube)
    assert submit(kube, "--model-version", "v2", "--follow", "--revision", "abc123") == 0
    out, err = capsys.readouterr()
    for step in pipeline.STEPS:
        assert f"step {step}: Running" in err and f"step {step}: Succeeded" in err
        # Each step's log arrives in order, prefixed with the step.
        lines = [line for line in out.splitlines() if line.startswith(f"{step} | ")]
        assert lines == [f"{step} | {step} starting", *(f"{step} | {step} line {i}" for i in range(3))]
    assert err.index("step fetch-data: Succeeded") < err.index("step propose: Running")
    assert "Succeeded (proposal-url https://github.test/o/r/pull/7)" in err

    (post,) = kube.recorded("POST", WORKFLOWS)
    assert post.path == WORKFLOWS
    assert post.headers["Authorization"] == f"Bearer {kube.token}"
    workflow = post.body
    assert workflow["kind"] == "Workflow" and workflow["metadata"]["generateName"] == "fraud-model-training-"
    assert workflow["spec"]["workflowTemplateRef"] == {"name": pipeline.TEMPLATE_NAME}
    assert workflow["spec"]["arguments"]["parameters"] == [
        {"name": "model-version", "value": "v2"},
        {"name": "revision", "value": "abc123"},
    ]
    # Logs were followed for exactly the pods Argo names.
    logged = {r.path.split("/")[6] for r in kube.recorded("GET", "/log")}
    assert len(logged) == len(pipeline.STEPS)


def test_a_failed_step_fails_the_command_and_later_steps_never_run(
    kube: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    play_controller(kube, fail_at="evaluate")
    assert submit(kube, "--model-version", "v2", "--follow") == 1
    out, err = capsys.readouterr()
    assert "step evaluate: Failed (Error (exit code 1))" in err
    assert "evaluate | evaluate: gate REJECTED" in out
    assert "register" not in out and "step register" not in err
    assert ": Failed: child" in err


def test_a_step_whose_pod_never_started_is_reported_without_a_log(
    kube: FakeKube, capsys: pytest.CaptureFixture[str]
) -> None:
    play_controller(kube, pending_only="train")
    assert submit(kube, "--model-version", "v2", "--follow") == 1
    _, err = capsys.readouterr()
    assert "step train: Failed (ImagePullBackOff)" in err
    logged = [r.path.split("/")[6] for r in kube.recorded("GET", "/log")]
    assert logged and not [pod for pod in logged if pod.rsplit("-", 1)[0].endswith("-train")]


def test_follow_resumes_a_watch_the_server_ended(kube: FakeKube, capsys: pytest.CaptureFixture[str]) -> None:
    kube.watch_event_limit = 3  # every watch connection ends after three events
    play_controller(kube, lines=1)
    assert submit(kube, "--model-version", "v2", "--follow") == 0
    assert "Succeeded" in capsys.readouterr().err
    watches = kube.recorded("GET", WORKFLOWS)
    resumed = [w for w in watches if w.query.get("watch") == ["true"]]
    assert len(resumed) > 3
    versions = [int(w.query["resourceVersion"][0]) for w in resumed]
    assert versions == sorted(versions) and len(set(versions)) == len(versions)


def test_without_follow_prints_the_workflow_name(kube: FakeKube, capsys: pytest.CaptureFixture[str]) -> None:
    assert submit(kube, "--model-version", "v2", "--namespace", "argo", "--propose", "commit") == 0
    name = capsys.readouterr().out.strip()
    assert name.startswith("fraud-model-training-")
    (post,) = kube.recorded("POST", WORKFLOWS)
    assert {"name": "propose", "value": "commit"} in post.body["spec"]["arguments"]["parameters"]
    assert f"{WORKFLOWS}/{name}" in kube.objects


def test_bad_input_is_a_usage_error(kube: FakeKube, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert submit(kube, "--model-version", "v1") == 2
    assert "allowed v2" in capsys.readouterr().err
    assert main(["pipeline", "submit", "--model-version", "v2", "--kubeconfig", str(tmp_path / "none")]) == 2
    assert "no such file" in capsys.readouterr().err
    code = main(["pipeline", "submit", "--model-version", "v2", "--kubeconfig", str(kube.kubeconfig), "--context", "x"])  # type: ignore[attr-defined]
    assert code == 2 and "no context named 'x'" in capsys.readouterr().err
    assert not kube.recorded("POST")


def test_rejected_credentials_exit_1_with_a_hint(kube: FakeKube, capsys: pytest.CaptureFixture[str]) -> None:
    # The kubeconfig's current-context is elsewhere; this one points here with a wrong token.
    kube.token = "rotated"
    assert submit(kube, "--model-version", "v2") == 1
    err = capsys.readouterr().err
    assert "HTTP 401" in err and "check the credentials of context 'fake'" in err


def test_pod_names_follow_argos_scheme() -> None:
    # Test vectors of Argo's own pod-name tests (ui/src/shared/pod-name.test.ts).
    assert workflow_run.fnv32a("hello") == 1335831723
    assert workflow_run.fnv32a("You cannot alter your fate. However, you can rise to meet it.") == 827171719
    wf = {"metadata": {"name": "wf"}}
    node = {"id": "wf-123", "name": "wf[0].train", "templateName": "train"}
    assert workflow_run.pod_name(wf, node) == f"wf-train-{workflow_run.fnv32a('wf[0].train')}"
    assert (
        workflow_run.pod_name(
            {"metadata": {"name": "wf", "annotations": {workflow_run.POD_NAME_ANNOTATION: "v1"}}}, node
        )
        == "wf-123"
    )
    long = {"metadata": {"name": "w" * 250}}
    assert len(workflow_run.pod_name(long, node).rsplit("-", 1)[0]) == 242


def test_cli_entry_point_runs_as_a_process(kube: FakeKube) -> None:
    play_controller(kube, lines=1)
    proc = subprocess.run(
        [sys.executable, "-m", "fraudctl.cli", "pipeline", "submit", "--model-version", "v2", "--follow",
         "--kubeconfig", str(kube.kubeconfig), "--context", "fake"],  # type: ignore[attr-defined]
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "propose | propose line 0" in proc.stdout
