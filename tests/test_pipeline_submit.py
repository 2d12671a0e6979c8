"""``fraudctl pipeline submit [--follow]`` against a fake Kubernetes API server (HTTPS, its own CA) that plays
Argo's controller, through the official kubernetes client: token and exec-plugin credentials, kubeconfig
merging, the in-cluster service account, and every way of failing as one line."""

from __future__ import annotations

import base64
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import certifi
import pytest
import yaml
from fake_kube import FakeKube, argo_pod_name, fnv1a_32, tls_files

from fraudctl.cli import main
from infra import charts, pipeline
from ops import cluster, pipeline_contract, workflow_run

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = cluster.WORKFLOWS.path("argo")
assert WORKFLOWS == "/apis/argoproj.io/v1alpha1/namespaces/argo/workflows"


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


def test_rejected_credentials_are_one_line_with_a_hint(kube: FakeKube, capsys: pytest.CaptureFixture[str]) -> None:
    # The kubeconfig's current-context is elsewhere; this one points here with a wrong token.
    kube.token = "rotated"
    assert submit(kube, "--model-version", "v2") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "HTTP 401" in err and "check the credentials of context 'fake'" in err


def test_an_unreachable_or_untrusted_api_server_is_one_line(
    kube: FakeKube, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The current-context points at a closed port.
    code = main(["pipeline", "submit", "--model-version", "v2", "--kubeconfig", str(kube.kubeconfig)])  # type: ignore[attr-defined]
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "cannot reach the API server http://127.0.0.1:9 ([Errno 111] Connection refused)" in err
    # A server whose certificate the kubeconfig's CA did not sign (public CAs instead of the fake's own).
    config = yaml.safe_load(kube.kubeconfig.read_text())  # type: ignore[attr-defined]
    public_cas = base64.b64encode(Path(certifi.where()).read_bytes()).decode()
    config["clusters"][0]["cluster"]["certificate-authority-data"] = public_cas
    untrusted = tmp_path / "untrusted"
    untrusted.write_text(yaml.safe_dump(config))
    code = main(["pipeline", "submit", "--model-version", "v2", "--kubeconfig", str(untrusted), "--context", "fake"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "CERTIFICATE_VERIFY_FAILED" in err
    assert not kube.recorded("POST")


def test_an_argo_less_cluster_is_named(kube: FakeKube, capsys: pytest.CaptureFixture[str]) -> None:
    kube.missing_collections.add(WORKFLOWS)
    assert submit(kube, "--model-version", "v2") == 2
    assert "HTTP 404" in (err := capsys.readouterr().err) and "is Argo Workflows installed in this cluster?" in err


def test_exec_plugin_credentials_are_run_and_refreshed(
    kube: FakeKube, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """EKS/GKE/AKS kubeconfigs: a credential plugin process prints the token; an expired one is run again."""
    config = kube.write_kubeconfig(tmp_path / "exec", auth="exec", token_expires="2000-01-01T00:00:00Z", extra=False)
    assert main(["pipeline", "submit", "--model-version", "v2", "--kubeconfig", str(config)]) == 0
    assert capsys.readouterr().out.startswith("fraud-model-training-")
    # The cloud rotates the credential: the plugin now prints the new token, which the server wants.
    kube.token = "rotated"
    (tmp_path / "exec.token").write_text("rotated")
    assert main(["pipeline", "submit", "--model-version", "v2", "--kubeconfig", str(config)]) == 0
    assert [r.headers["Authorization"] for r in kube.recorded("POST")] == ["Bearer fake-token", "Bearer rotated"]
    capsys.readouterr()
    # A plugin that fails (an expired login): one line with its own message; nothing is sent.
    (tmp_path / "exec.token").write_text("")
    assert main(["pipeline", "submit", "--model-version", "v2", "--kubeconfig", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "context 'fake' has no credentials" in err, err
    assert "exec: process returned 1. fake-plugin: no token (the login expired)" in err
    assert len(kube.recorded("POST")) == 2


def test_kubeconfig_files_merge_and_the_pods_service_account_works(
    kube: FakeKube, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # $KUBECONFIG lists several files, merged like kubectl: the first file's current-context wins.
    first = kube.write_kubeconfig(tmp_path / "first", context="here", namespace="argo", extra=False)
    second = tmp_path / "second"
    second.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "Config", "current-context": "x"}))
    monkeypatch.setenv("KUBECONFIG", f"{first}:{second}:{tmp_path / 'absent'}")
    assert main(["pipeline", "submit", "--model-version", "v2"]) == 0
    assert "on here" in capsys.readouterr().err

    # In a pod: no kubeconfig, the service account's token, CA and namespace.
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(kube.token)
    (account / "ca.crt").write_bytes(tls_files()[0])
    (account / "namespace").write_text("argo\n")
    monkeypatch.setattr(cluster, "SERVICE_ACCOUNT_DIR", account)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "127.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", kube.url.rsplit(":", 1)[1])
    assert main(["pipeline", "submit", "--model-version", "v2"]) == 0
    assert "on in-cluster" in capsys.readouterr().err
    assert kube.recorded("POST")[-1].headers["Authorization"].lower() == f"bearer {kube.token}"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    assert main(["pipeline", "submit", "--model-version", "v2"]) == 2
    assert "no kubeconfig found" in capsys.readouterr().err


def test_bad_kubeconfigs_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cases = {
        "broken": ("clusters: [", "cannot be read"),
        "a-list": ("- a\n- b\n", "not a kubeconfig"),
        "no-current": (
            yaml.safe_dump({"contexts": [{"name": "a", "context": {"cluster": "a"}}]}),
            "no current-context",
        ),
        "no-cluster": (
            yaml.safe_dump({"current-context": "a", "contexts": [{"name": "a", "context": {"cluster": "gone"}}]}),
            "context 'a' cannot be used",
        ),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        assert main(["pipeline", "submit", "--model-version", "v2", "--kubeconfig", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1, (name, err)


def test_quiet_and_verbose_set_how_much_progress_shows(kube: FakeKube, capsys: pytest.CaptureFixture[str]) -> None:
    config = ["--kubeconfig", str(kube.kubeconfig), "--context", "fake"]  # type: ignore[attr-defined]
    assert main(["pipeline", "submit", "--model-version", "v2", *config]) == 0
    err = capsys.readouterr().err
    assert err.startswith("submitted workflow argo/fraud-model-training-") and err.endswith(" on fake\n")
    assert main(["--quiet", "pipeline", "submit", "--model-version", "v2", *config]) == 0
    quiet_out, quiet_err = capsys.readouterr()
    assert quiet_err == "" and quiet_out.startswith("fraud-model-training-")  # results stay on stdout
    assert main(["--verbose", "pipeline", "submit", "--model-version", "v2", *config]) == 0
    lines = capsys.readouterr().err.splitlines()
    assert any(" INFO ops.cli: submitted workflow argo/" in line for line in lines), lines
    # Errors show whatever the flags; bad ones are usage errors.
    assert main(["--quiet", "pipeline", "submit", "--model-version", "v1", *config]) == 2
    assert "allowed v2" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--quiet", "--verbose", "pipeline", "submit", "--model-version", "v2", *config])


def test_the_submission_contract_matches_the_declared_template() -> None:
    assert pipeline_contract.DEFAULT_NAMESPACE == pipeline.NAMESPACE == charts.NAMESPACES["argoWorkflows"]
    assert pipeline.TEMPLATE_NAME is pipeline_contract.TEMPLATE_NAME
    with pytest.raises(ValueError, match="unknown workflow parameter"):
        pipeline_contract.submission("v2", parameters={"bogus": "x"})


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


def test_the_fraudctl_command_runs_as_a_process(kube: FakeKube) -> None:
    """The installed console script, as the pipeline's pods and users run it; --quiet leaves only results."""
    play_controller(kube, lines=1)
    fraudctl = Path(sys.executable).parent / "fraudctl"
    proc = subprocess.run(
        [str(fraudctl), "--quiet", "pipeline", "submit", "--model-version", "v2", "--follow",
         "--kubeconfig", str(kube.kubeconfig), "--context", "fake"],  # type: ignore[attr-defined]
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "propose | propose line 0" in proc.stdout
    assert proc.stderr == ""
