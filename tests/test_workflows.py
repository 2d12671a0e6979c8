"""GitHub Actions workflows: valid against the GitHub workflow JSON schema (SchemaStore's, vendored by
check-jsonschema, offline), pinned actions, expressions that resolve, and the jobs the project promises."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from render_support import STACKS

ROOT = Path(__file__).resolve().parent.parent
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))
# pulumi/actions v6 inputs (action.yml of the v6 tag) that these workflows may use.
PULUMI_ACTION_INPUTS = {
    "command", "stack-name", "work-dir", "cloud-url", "comment-on-pr", "comment-on-pr-number", "comment-on-summary",
    "github-token", "parallel", "message", "expect-no-changes", "diff", "target", "replace", "target-dependents",
    "refresh", "secrets-provider", "color", "upsert", "remove", "edit-pr-comment", "config-map", "plan",
    "suppress-outputs", "suppress-progress", "policyPacks", "policyPackConfigs", "always-include-summary",
    "pulumi-version", "pulumi-version-file", "exclude-protected", "debug",
}  # fmt: skip
CONTEXTS = {
    "github",
    "env",
    "vars",
    "job",
    "jobs",
    "steps",
    "runner",
    "secrets",
    "strategy",
    "matrix",
    "needs",
    "inputs",
}
EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}", re.S)


def load(path: Path) -> dict[str, Any]:
    # YAML 1.1 reads the key `on` as True; GitHub reads it as "on".
    doc = yaml.safe_load(path.read_text())
    if True in doc:
        doc["on"] = doc.pop(True)
    return doc


def workflow(name: str) -> dict[str, Any]:
    return load(ROOT / ".github" / "workflows" / f"{name}.yml")


def steps(doc: dict[str, Any]) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    return [(job_id, job, step) for job_id, job in doc["jobs"].items() for step in job.get("steps", [])]


def check_schema(*paths: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows", *map(str, paths)],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )  # fmt: skip


def test_every_workflow_is_valid_against_the_github_workflow_schema(tmp_path: Path) -> None:
    assert {p.stem for p in WORKFLOWS} == {"pull-request", "deploy", "drift", "e2e"}
    proc = check_schema(*WORKFLOWS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # The schema does catch mistakes: a misspelt key and a wrong trigger fail.
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOWS[0].read_text().replace("runs-on:", "run-on:", 1))
    assert check_schema(broken).returncode == 1
    broken.write_text(WORKFLOWS[0].read_text().replace("timeout-minutes: 60", "timeout-minutes: soon", 1))
    assert check_schema(broken).returncode == 1


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned_and_expressions_resolve(path: Path) -> None:
    doc = load(path)
    for job_id, _job, step in steps(doc):
        uses = step.get("uses")
        if uses:
            assert re.match(r"^[\w.-]+/[\w.-]+@(v\d+(\.\d+){0,2}|[0-9a-f]{40})$", uses), (
                f"{job_id}: {uses} is not pinned"
            )
        if uses and uses.startswith("pulumi/actions@"):
            assert set(step.get("with", {})) <= PULUMI_ACTION_INPUTS, set(step["with"]) - PULUMI_ACTION_INPUTS
    step_ids = {job_id: {s["id"] for s in job.get("steps", []) if "id" in s} for job_id, job in doc["jobs"].items()}
    for job_id, job in doc["jobs"].items():
        needs = job.get("needs", [])
        needs = [needs] if isinstance(needs, str) else needs
        assert set(needs) <= set(doc["jobs"]), f"{job_id} needs an unknown job"
        text = json.dumps(job)
        for expression in EXPRESSION.findall(text):
            for ref in re.findall(r"\b([a-z_]+)\.([\w-]+)", expression):
                if ref[0] in ("needs",):
                    assert ref[1] in needs, f"{job_id}: ${{{{ {expression} }}}} uses a job it does not need"
                elif ref[0] == "steps":
                    assert ref[1] in step_ids[job_id], f"{job_id}: no step with id {ref[1]}"
            names = re.findall(r"(?<![\w.'\"-])([a-zA-Z_]\w*)(?=\.)", expression)
            assert set(names) <= CONTEXTS, f"{job_id}: unknown context in ${{{{ {expression} }}}}"
        for expression in EXPRESSION.findall(json.dumps(job.get("outputs", {}))):
            assert "steps." in expression


def test_stack_matrices_are_the_repositorys_stacks(tmp_path: Path) -> None:
    """The `stacks` job's script run here lists exactly the stacks the tests render."""
    for name in ("pull-request", "deploy", "drift"):
        doc = workflow(name)
        (step,) = [s for s in doc["jobs"]["stacks"]["steps"] if s.get("id") == "list"]
        output = tmp_path / f"{name}.out"
        env = {**os.environ, "GITHUB_OUTPUT": str(output)}
        subprocess.run(["bash", "-euo", "pipefail", "-c", step["run"]], cwd=ROOT, env=env, check=True, timeout=30)
        key, _, value = output.read_text().strip().partition("=")
        assert key == "stacks" and json.loads(value) == list(STACKS)
        matrix_jobs = [j for j in doc["jobs"].values() if "matrix" in j.get("strategy", {})]
        assert matrix_jobs and all(
            j["strategy"]["matrix"]["stack"] == "${{ fromJSON(needs.stacks.outputs.list) }}" for j in matrix_jobs
        )


def pulumi_step(doc: dict[str, Any], job: str) -> dict[str, Any]:
    (step,) = [s for s in doc["jobs"][job]["steps"] if s.get("uses", "").startswith("pulumi/actions@")]
    return step["with"]


def test_pull_requests_run_the_tests_and_comment_a_preview_of_each_stack() -> None:
    doc = workflow("pull-request")
    assert "pull_request" in doc["on"]
    assert any(s.get("run") == "./dev test" for s in doc["jobs"]["test"]["steps"])
    assert set(doc["jobs"]["preview"]["needs"]) == {"test", "stacks"}
    preview = pulumi_step(doc, "preview")
    assert preview["command"] == "preview" and preview["comment-on-pr"] is True
    assert preview["github-token"] == "${{ secrets.GITHUB_TOKEN }}" and preview["policyPacks"] == "policy"
    assert doc["permissions"]["pull-requests"] == "write"
    assert (ROOT / ".ci" / "run").read_text().strip().endswith("./dev test")
    # Beside the preview, every stack is rendered with real Helm and checked as one system, before it.
    steps = doc["jobs"]["preview"]["steps"]
    runs = [s.get("run", "") for s in steps]
    verify = next(i for i, run in enumerate(runs) if run.startswith(".venv/bin/fraudctl verify"))
    assert runs[verify] == '.venv/bin/fraudctl verify --stack "${{ matrix.stack }}"'
    assert verify < next(i for i, s in enumerate(steps) if "pulumi/actions" in s.get("uses", ""))


def test_merges_to_main_run_pulumi_up_and_commit_gitops_manifests() -> None:
    doc = workflow("deploy")
    assert doc["on"]["push"]["branches"] == ["main"]
    up = pulumi_step(doc, "up")
    assert up["command"] == "up" and up["policyPacks"] == "policy"
    strategy = doc["jobs"]["up"]["strategy"]
    # One stack at a time, and one stack's failure never cancels another's deploy.
    assert strategy["max-parallel"] == 1 and strategy["fail-fast"] is False
    assert "[skip ci]" in gitops_step()["run"]


def test_the_scheduled_drift_check_fails_loudly() -> None:
    doc = workflow("drift")
    assert doc["on"]["schedule"][0]["cron"]
    check = pulumi_step(doc, "drift")
    assert check["command"] == "preview" and check["expect-no-changes"] is True and check["refresh"] is True
    alarm = next(s for s in doc["jobs"]["drift"]["steps"] if s.get("if") == "failure()")
    assert "gh issue create" in alarm["run"] and doc["permissions"]["issues"] == "write"


# ---------------------------------------------------------------------------------------------------
# The deploy workflow's gitops commit step, run for real: a bare remote, checkouts as actions/checkout makes
# them (shallow, at the merged commit), the step's shell and env as the runner gives them.

EXPRESSION_VALUE = re.compile(r"\$\{\{\s*([\w.]+)\s*\}\}")


def gitops_step() -> dict[str, Any]:
    (step,) = [s for s in workflow("deploy")["jobs"]["up"]["steps"] if "gitops/" in s.get("run", "")]
    return step


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def remote(tmp_path: Path) -> tuple[Path, str]:
    """A bare repository with one commit on main (the merge that triggered the deploy) and its sha."""
    bare = tmp_path / "remote.git"
    git("init", "--quiet", "--bare", "-b", "main", str(bare), cwd=tmp_path)
    seed = tmp_path / "seed"
    seed.mkdir()
    (seed / "Pulumi.yaml").write_text("name: fraud-platform\n")
    git("init", "--quiet", "-b", "main", cwd=seed)
    git("add", ".", cwd=seed)
    git("commit", "--quiet", "-m", "merge", cwd=seed)
    git("push", "--quiet", bare.as_uri(), "main", cwd=seed)
    return bare, git("rev-parse", "HEAD", cwd=seed)


def checkout(remote: tuple[Path, str], where: Path) -> Path:
    """What actions/checkout@v4 leaves: a depth-1 fetch of the event's sha on branch main, no git identity."""
    bare, sha = remote
    where.mkdir()
    git("init", "--quiet", cwd=where)
    git("remote", "add", "origin", bare.as_uri(), cwd=where)
    git("fetch", "--quiet", "--depth=1", "origin", f"+{sha}:refs/remotes/origin/main", cwd=where)
    git("checkout", "--quiet", "--force", "-B", "main", "refs/remotes/origin/main", cwd=where)
    return where


def run_gitops_step(workdir: Path, stack: str, sha: str, home: Path) -> subprocess.CompletedProcess[str]:
    step = gitops_step()
    values = {"matrix.stack": stack, "github.sha": sha}

    def resolve(text: str) -> str:
        return EXPRESSION_VALUE.sub(lambda m: values[m.group(1)], text)

    # A runner's environment: no git identity beyond what the step sets itself.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(HOME=str(home), GIT_CONFIG_NOSYSTEM="1")
    env.update({k: resolve(str(v)) for k, v in (step.get("env") or {}).items()})
    # GitHub's `shell: bash` is `bash --noprofile --norc -eo pipefail {0}`; without `shell:` it is `bash -e {0}`.
    shell = ["bash", "--noprofile", "--norc", "-eo", "pipefail"] if step.get("shell") == "bash" else ["bash", "-e"]
    return subprocess.run([*shell, "-c", resolve(step["run"])], cwd=workdir, env=env, capture_output=True,
                          text=True, timeout=60)  # fmt: skip


def render(workdir: Path, stack: str, text: str) -> None:
    """What `pulumi up` of an argocd stack leaves: manifests under gitops/<stack>/<region>."""
    path = workdir / "gitops" / stack / "eu-west" / "1-manifest" / "apps_v1-deployment-fraud-detector.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_deploy_commits_gitops_only_when_a_stack_rendered_a_change(remote: tuple[Path, str], tmp_path: Path) -> None:
    bare, sha = remote
    work = checkout(remote, tmp_path / "work")
    # delivery: pulumi renders no gitops/: nothing to commit, and the step succeeds.
    proc = run_gitops_step(work, "dev", sha, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert git("rev-parse", "main", cwd=bare) == sha

    render(work, "dev", "replicas: 2\n")
    proc = run_gitops_step(work, "dev", sha, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    head = git("rev-parse", "main", cwd=bare)
    assert git("rev-parse", "main~1", cwd=bare) == sha
    assert git("log", "-1", "--format=%s", "main", cwd=bare) == f"gitops: manifests of stack dev at {sha} [skip ci]"
    assert git("show", "main:gitops/dev/eu-west/1-manifest/apps_v1-deployment-fraud-detector.yaml", cwd=bare) == (
        "replicas: 2"
    )
    # The same manifests again: no empty commit.
    proc = run_gitops_step(work, "dev", sha, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert git("rev-parse", "main", cwd=bare) == head


def test_two_argocd_stacks_of_one_merge_both_push(remote: tuple[Path, str], tmp_path: Path) -> None:
    """Each stack's job checks out the merged commit; the second finds main moved by the first."""
    bare, sha = remote
    first, second = checkout(remote, tmp_path / "dev"), checkout(remote, tmp_path / "multiregion")
    render(first, "dev", "dev\n")
    render(second, "multiregion", "multiregion\n")
    for work, stack in ((first, "dev"), (second, "multiregion")):
        proc = run_gitops_step(work, stack, sha, tmp_path)
        assert proc.returncode == 0, f"{stack}: {proc.stdout}{proc.stderr}"
    log = git("log", "--format=%s", "main", cwd=bare).splitlines()
    assert log == [
        f"gitops: manifests of stack multiregion at {sha} [skip ci]",
        f"gitops: manifests of stack dev at {sha} [skip ci]",
        "merge",
    ]
    files = git("ls-tree", "-r", "--name-only", "main", cwd=bare).splitlines()
    assert {f.split("/")[1] for f in files if f.startswith("gitops/")} == {"dev", "multiregion"}
