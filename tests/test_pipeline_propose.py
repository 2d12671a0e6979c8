"""``fraudctl propose-version``: a real git repository (bare, on disk) and a fake GitHub REST API server."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from fake_kube import JsonRequestHandler

from fraudctl.cli import main
from infra.render import run_program
from ops.propose import ProposeError, image_from_build_metadata, set_candidate

ROOT = Path(__file__).resolve().parent.parent
APP = "fraud-detector"
GIT_ENV = {
    "GIT_AUTHOR_NAME": "seed",
    "GIT_AUTHOR_EMAIL": "seed@example.com",
    "GIT_COMMITTER_NAME": "seed",
    "GIT_COMMITTER_EMAIL": "seed@example.com",
}


def git(*args: str, cwd: Path) -> str:
    env = {**os.environ, **GIT_ENV}
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def remote(tmp_path: Path) -> Path:
    """A bare repository whose main branch holds the project's Pulumi.yaml and stack files."""
    bare = tmp_path / "remote.git"
    git("init", "--quiet", "--bare", "-b", "main", str(bare), cwd=tmp_path)
    seed = tmp_path / "seed"
    seed.mkdir()
    for path in ROOT.glob("Pulumi*.yaml"):
        shutil.copy(path, seed / path.name)
    git("init", "--quiet", "-b", "main", cwd=seed)
    git("add", ".", cwd=seed)
    git("commit", "--quiet", "-m", "seed", cwd=seed)
    git("push", "--quiet", str(bare), "main", cwd=seed)
    return bare


def show(bare: Path, ref: str, path: str) -> str:
    return git("show", f"{ref}:{path}", cwd=bare)


class FakeGitHub:
    """POST /repos/<o>/<n>/pulls and GET of the open ones, recording what it was sent."""

    def __init__(self, *, status: int = 201, token: str = "gh-token"):
        self.status, self.token = status, token
        self.requests: list[tuple[str, str, dict[str, str], Any]] = []
        fake = self

        class Handler(JsonRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append(("POST", self.path, dict(self.headers), body))
                if self.headers.get("Authorization") != f"Bearer {fake.token}":
                    self._json(401, {"message": "Bad credentials"})
                elif fake.status == 201:
                    self._json(201, {"number": 7, "html_url": f"https://github.test/o/r/pull/7?head={body['head']}"})
                else:
                    self._json(fake.status, {"message": "A pull request already exists for o:branch."})

            def do_GET(self) -> None:
                fake.requests.append(("GET", self.path, dict(self.headers), None))
                self._json(200, [{"number": 3, "html_url": "https://github.test/o/r/pull/3"}])

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def github():
    fake = FakeGitHub()
    yield fake
    fake.close()


IMAGE = "harbor.fraud.local:30003/fraud/fraud-serving@sha256:" + "a" * 64
BUILD = json.dumps(
    {"image.name": IMAGE.split("@")[0] + ":v2-wf-1", "containerimage.digest": IMAGE.split("@")[1]}
)


def propose(remote: Path, *extra: str, monkeypatch: pytest.MonkeyPatch, token: str = "gh-token") -> int:
    monkeypatch.setenv("GIT_TOKEN", token)
    monkeypatch.setenv("GIT_USERNAME", "x-access-token")
    return main(
        [
            "propose-version", "--stack", "dev", "--model-version", "v2", "--model-uri", "models:/fraud-detector/7",
            "--repo", remote.as_uri(), "--base", "main", *extra,
        ]
    )  # fmt: skip


def test_commit_mode_pushes_the_validated_change_to_the_base_branch(
    remote: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    before = show(remote, "main", "Pulumi.dev.yaml")
    code = propose(remote, "--mode", "commit", "--outputs", str(tmp_path / "out"), monkeypatch=monkeypatch)
    assert code == 0, capsys.readouterr().err
    after = show(remote, "main", "Pulumi.dev.yaml")
    model = yaml.safe_load(after)["config"]["fraud-platform:model"]
    assert model == {"candidateVersion": "v2", "candidateUri": "models:/fraud-detector/7"}
    # Everything else, comments included, is as it was.
    assert after.startswith(before.splitlines()[0]) and before.strip() in after
    assert git("log", "-1", "--format=%an %s", "main", cwd=remote).startswith("fraud-pipeline model: roll out v2")
    result = json.loads(capsys.readouterr().out)
    assert result["changed"] and result["commit"] == git("rev-parse", "main", cwd=remote)
    assert (tmp_path / "out" / "proposal-url").read_text() == result["commit"]

    # The same proposal again changes nothing and says so.
    head = git("rev-parse", "main", cwd=remote)
    assert propose(remote, "--mode", "commit", monkeypatch=monkeypatch) == 0
    assert json.loads(capsys.readouterr().out)["changed"] is False
    assert git("rev-parse", "main", cwd=remote) == head


def test_pull_request_mode_pushes_a_branch_and_opens_a_pull_request(
    remote: Path, github: FakeGitHub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    main_before = git("rev-parse", "main", cwd=remote)
    gate = remote.parent / "gate.json"
    gate.write_text(json.dumps({"passed": True, "reasons": ["recall +0.08 over v1"]}))
    code = propose(
        remote, "--mode", "pull-request", "--github-api", github.url, "--github-repo", "o/r",
        "--build-metadata", BUILD, "--workflow", "fraud-model-training-x1", "--gate-report", str(gate),
        monkeypatch=monkeypatch,
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    branch = "model/dev/v2-fraud-model-training-x1"
    assert git("rev-parse", "main", cwd=remote) == main_before  # base untouched
    proposed = yaml.safe_load(show(remote, branch, "Pulumi.dev.yaml"))["config"]["fraud-platform:model"]
    assert proposed == {"candidateVersion": "v2", "candidateUri": "models:/fraud-detector/7", "candidateImage": IMAGE}
    ((method, path, headers, body),) = github.requests
    assert (method, path) == ("POST", "/repos/o/r/pulls")
    assert headers["Authorization"] == "Bearer gh-token"
    assert body["head"] == branch and body["base"] == "main"
    assert "v2" in body["title"] and "models:/fraud-detector/7" in body["title"]
    assert IMAGE in body["body"]
    assert "recall +0.08 over v1" in body["body"] and "fraud-model-training-x1" in body["body"]
    assert json.loads(capsys.readouterr().out)["url"].startswith("https://github.test/o/r/pull/7")


def test_an_existing_pull_request_is_found_not_duplicated(
    remote: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    github = FakeGitHub(status=422)
    try:
        code = propose(remote, "--github-api", github.url, "--github-repo", "o/r", monkeypatch=monkeypatch)
    finally:
        github.close()
    assert code == 0
    assert json.loads(capsys.readouterr().out)["url"] == "https://github.test/o/r/pull/3"
    assert github.requests[-1][1].startswith("/repos/o/r/pulls?state=open&head=o:model/dev/v2-")


def test_a_refused_pull_request_leaves_no_branch_behind(
    remote: Path, github: FakeGitHub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code = propose(remote, "--github-api", github.url, "--github-repo", "o/r", monkeypatch=monkeypatch, token="expired")
    assert code == 1
    err = capsys.readouterr().err
    assert "HTTP 401: Bad credentials" in err and "expired" not in err
    assert git("branch", "--list", "model/*", cwd=remote) == ""


def test_a_proposal_that_would_break_the_config_is_never_pushed(
    remote: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    head = git("rev-parse", "main", cwd=remote)
    code = main(
        ["propose-version", "--stack", "dev", "--model-version", "v1", "--model-uri", "models:/fraud-detector/1",
         "--repo", remote.as_uri(), "--mode", "commit"]
    )  # fmt: skip
    assert code == 1
    assert "model.candidateVersion: must differ from model.stableVersion ('v1')" in capsys.readouterr().err
    assert git("rev-parse", "main", cwd=remote) == head
    assert main(
        ["propose-version", "--stack", "nope", "--model-version", "v2", "--model-uri", "models:/fraud-detector/7",
         "--repo", remote.as_uri(), "--mode", "commit"]
    ) == 1  # fmt: skip
    assert "Pulumi.nope.yaml is not in" in capsys.readouterr().err
    # Pull-request mode without the API is refused before anything is cloned.
    assert propose(remote, monkeypatch=monkeypatch) == 1
    assert "needs --github-api and --github-repo" in capsys.readouterr().err


def test_a_stack_whose_registry_ca_is_committed_is_validated_in_its_checkout(
    remote: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """registry.caCertFile is relative to the checkout: the proposal reads it from the clone it edits."""
    from ops.registry_ca import new_ca

    work = tmp_path / "work"
    git("clone", "--quiet", str(remote), str(work), cwd=tmp_path)
    (work / "certs").mkdir()
    (work / "certs" / "registry-ca.crt").write_bytes(new_ca("team CA")[0])
    stack = yaml.safe_load((work / "Pulumi.dev.yaml").read_text())
    stack["config"]["fraud-platform:registry"] = {"caCertFile": "certs/registry-ca.crt"}
    stack["config"]["fraud-platform:registryCaKey"] = {"secure": "v1:ciphertext"}
    (work / "Pulumi.dev.yaml").write_text(yaml.safe_dump(stack, sort_keys=False))
    git("add", ".", cwd=work)
    git("commit", "--quiet", "-m", "team CA", cwd=work)
    git("push", "--quiet", "origin", "main", cwd=work)
    assert not (ROOT / "certs").exists()  # not beside the program: only in the repository proposed to
    code = propose(remote, "--mode", "commit", "--build-metadata", BUILD, monkeypatch=monkeypatch)
    assert code == 0, capsys.readouterr().err
    assert yaml.safe_load(show(remote, "main", "Pulumi.dev.yaml"))["config"]["fraud-platform:model"] == {
        "candidateVersion": "v2",
        "candidateUri": "models:/fraud-detector/7",
        "candidateImage": IMAGE,
    }


def test_set_candidate_keeps_layout_and_adds_missing_keys() -> None:
    text = "# header\nconfig:\n  fraud-platform:model:\n    name: fraud-detector  # keep\n    candidateVersion: v1b\n"
    out = set_candidate(text, "v2", "models:/fraud-detector/9")
    assert out.startswith("# header\n") and "name: fraud-detector  # keep" in out
    assert yaml.safe_load(out)["config"]["fraud-platform:model"]["candidateVersion"] == "v2"
    assert "fraud-platform:model" in set_candidate("config: {}\n", "v2", "models:/x/1")
    assert image_from_build_metadata(BUILD) == IMAGE
    assert image_from_build_metadata("") == ""
    for broken in ("{}", '{"image.name": "h/x:1"}', '{"image.name": "h/x:1", "containerimage.digest": "sha256:1"}'):
        with pytest.raises(ProposeError, match="cannot be pinned"):
            image_from_build_metadata(broken)


def test_the_proposal_carries_the_built_image_and_the_proposed_stack_runs_it() -> None:
    """Defect 7: the image the pipeline builds is the one the rollout deploys."""
    text = (ROOT / "Pulumi.dev.yaml").read_text()
    proposed = set_candidate(text, "v3", "models:/fraud-detector/9", IMAGE)
    model = yaml.safe_load(proposed)["config"]["fraud-platform:model"]
    assert model["candidateImage"] == IMAGE
    for strategy in ("canary", "blue-green"):
        result = run_program("dev", overrides={"model": model, "strategy": strategy})
        (server,) = [
            o
            for o in result.manifests("local")
            if o["kind"] in ("Deployment", "Rollout") and o["metadata"]["name"] == "fraud-detector"
        ]
        assert server["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE
        assert server["spec"]["template"]["metadata"]["labels"]["fraud-platform/model-version"] == "v3"
    # Seeding the stable version runs the image this program built, not the candidate's.
    stable = run_program("dev", overrides={"model": {**model, "target": "stable"}})
    (server,) = [o for o in stable.manifests("local") if o["kind"] == "Deployment" and o["metadata"]["name"] == APP]
    built = server["spec"]["template"]["spec"]["containers"][0]["image"]
    assert built.startswith("harbor.fraud.local:30003/fraud/fraud-serving@sha256:") and built != IMAGE
    # A later candidate proposed without an image does not inherit this one's.
    again = yaml.safe_load(set_candidate(proposed, "v4", "models:/fraud-detector/10"))["config"]["fraud-platform:model"]
    assert again["candidateImage"] == ""
