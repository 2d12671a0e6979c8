"""Propose a model version as a change to a stack's config: a pull request, or a commit, on the repo.

``propose`` clones the repository (git CLI; https auth from a token passed through the environment,
never on a command line), sets ``model.candidateVersion``, ``model.candidateUri`` and
``model.candidateImage`` (the serving image the pipeline built from the same revision, by digest: the
model and the code serving it roll out together) in ``Pulumi.<stack>.yaml`` with a round-trip YAML edit
(comments and layout stay), validates the
resulting stack config exactly as the Pulumi program would, then either pushes a commit to the base
branch or pushes a branch and opens a pull request through the GitHub REST API. A config that would
not validate is never committed; a change already on the base branch is reported and not repeated.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fraudctl.files import write_text
from infra.config import PROJECT, ConfigError

MODES = ("pull-request", "commit")
AUTHOR_NAME = "fraud-pipeline"
AUTHOR_EMAIL = "fraud-pipeline@users.noreply.github.com"


class ProposeError(RuntimeError):
    """The proposal could not be made (git, GitHub API or the stack file); nothing was changed upstream."""


@dataclass(frozen=True)
class Proposal:
    stack: str
    model_version: str
    model_uri: str
    image: str
    mode: str
    base: str
    branch: str
    commit: str
    url: str
    changed: bool

    def to_json(self) -> dict[str, Any]:
        return self.__dict__.copy()


# ---------------------------------------------------------------------------------------------------
# The stack file


def set_candidate(text: str, model_version: str, model_uri: str, image: str = "") -> str:
    """``Pulumi.<stack>.yaml`` text with the candidate set, everything else as it was. ``image``: the serving
    image built for it (by digest); without one, an image set for an earlier candidate is cleared (that
    candidate's code must not serve this model), and none is added."""
    from ruamel.yaml import YAML
    from ruamel.yaml.comments import CommentedMap
    from ruamel.yaml.util import load_yaml_guess_indent

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 4096
    doc = None
    if text.strip():
        # Keep the file's own indentation of mappings and of "- " list items.
        _, indent, dash_offset = load_yaml_guess_indent(text)
        yaml.indent(mapping=2, sequence=indent or 2, offset=dash_offset or 0)
        doc = yaml.load(text)
    if doc is None:
        doc = CommentedMap()
    if not isinstance(doc, dict):
        raise ProposeError("stack file: not a YAML mapping")
    config = doc.get("config")
    if config is None:
        config = doc["config"] = CommentedMap()
    key = f"{PROJECT}:model"
    model = config.get(key)
    if model is None:
        model = config[key] = CommentedMap()
    if not isinstance(model, dict):
        raise ProposeError(f"stack file: {key} is not a mapping")
    model["candidateVersion"] = model_version
    model["candidateUri"] = model_uri
    if image or "candidateImage" in model:
        model["candidateImage"] = image
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def validate_stack_text(text: str, stack: str, root: Path) -> None:
    """Raise ConfigError when the stack file is invalid, exactly as ``fraudctl check-config`` would say in the
    checkout ``root`` (relative file keys such as registry.caCertFile are read there)."""
    from infra.config import validate_stack_text as validate

    validate(text, stack, root)


# ---------------------------------------------------------------------------------------------------
# git


class Git:
    """The git CLI in one working copy; https credentials via GIT_CONFIG_* environment variables."""

    def __init__(self, workdir: Path, *, username: str | None, token: str | None):
        self.workdir = workdir
        self.env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ASKPASS": "true"}
        if token:
            basic = base64.b64encode(f"{username or 'x-access-token'}:{token}".encode()).decode()
            self.env.update(
                {
                    "GIT_CONFIG_COUNT": "1",
                    "GIT_CONFIG_KEY_0": "http.extraHeader",
                    "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
                }
            )
        self._secret = token

    def run(self, *args: str, cwd: Path | None = None) -> str:
        try:
            proc = subprocess.run(
                ["git", *args], cwd=cwd or self.workdir, env=self.env, capture_output=True, text=True, timeout=300
            )
        except FileNotFoundError as exc:
            raise ProposeError("git is not installed in this image (the proposal step needs the git CLI)") from exc
        except subprocess.TimeoutExpired as exc:
            raise ProposeError(f"git {args[0]}: timed out after 300s") from exc
        if proc.returncode != 0:
            message = (proc.stderr or proc.stdout).strip()
            if self._secret:
                message = message.replace(self._secret, "***")
            raise ProposeError(f"git {args[0]} failed (exit {proc.returncode}): {message}")
        return proc.stdout.strip()


# ---------------------------------------------------------------------------------------------------
# GitHub


def _github(method: str, url: str, token: str | None, body: Any = None) -> tuple[int, Any]:
    import httpx

    headers = {"Accept": "application/vnd.github+json", "X-GitHub-Api-Version": "2022-11-28", "User-Agent": "fraudctl"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        response = httpx.request(method, url, json=body, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise ProposeError(f"GitHub API {method} {url}: unreachable ({exc})") from exc
    try:
        payload = response.json()
    except ValueError:
        payload = response.text
    return response.status_code, payload


def open_pull_request(
    api_url: str, repository: str, *, token: str | None, head: str, base: str, title: str, body: str
) -> str:
    """Open a pull request (or find the open one for ``head``); return its URL."""
    api = api_url.rstrip("/")
    status, payload = _github(
        "POST", f"{api}/repos/{repository}/pulls", token, {"title": title, "head": head, "base": base, "body": body}
    )
    if status == 201:
        return str(payload["html_url"])
    if status == 422:
        owner = repository.split("/", 1)[0]
        found_status, found = _github("GET", f"{api}/repos/{repository}/pulls?state=open&head={owner}:{head}", token)
        if found_status == 200 and isinstance(found, list) and found:
            return str(found[0]["html_url"])
    message = payload.get("message") if isinstance(payload, dict) else str(payload)[:200]
    hint = " (the token needs pull-request write access to the repository)" if status in (401, 403, 404) else ""
    raise ProposeError(f"GitHub API: opening a pull request {head} -> {base} failed: HTTP {status}: {message}{hint}")


# ---------------------------------------------------------------------------------------------------


def image_from_build_metadata(metadata: str | None) -> str:
    """``name@digest`` from BuildKit's --metadata-file JSON (empty when not given)."""
    if not metadata:
        return ""
    try:
        data = json.loads(metadata)
    except json.JSONDecodeError as exc:
        raise ProposeError(f"--build-metadata: not JSON ({exc.msg})") from exc
    name = str(data.get("image.name", "") if isinstance(data, dict) else "").split(",")[0]
    digest = data.get("containerimage.digest", "") if isinstance(data, dict) else ""
    if not name or not re.fullmatch(r"sha256:[0-9a-f]{64}", str(digest)):
        raise ProposeError(
            "--build-metadata: no pushed image (image.name) with its digest (containerimage.digest); the "
            "candidate's image cannot be pinned"
        )
    return f"{name.rsplit(':', 1)[0] if ':' in name.rsplit('/', 1)[-1] else name}@{digest}"


def _describe(model_version: str, model_uri: str, image: str, workflow: str, gate: Mapping[str, Any] | None) -> str:
    lines = [
        f"The training pipeline proposes model **{model_version}** (`{model_uri}`) as the candidate to roll out.",
        "",
        f"- model URI: `{model_uri}`",
    ]
    if image:
        lines.append(f"- serving image built from this revision (rolls out with the model): `{image}`")
    if workflow:
        lines.append(f"- workflow: `{workflow}`")
    if gate:
        decision = gate.get("gate", gate)
        passed = decision.get("passed")
        lines.append(f"- offline gate: {'passed' if passed else 'not passed' if passed is False else 'see report'}")
        for reason in decision.get("reasons") or []:
            lines.append(f"  - {reason}")
    lines += ["", "Merging this rolls the candidate out (`pulumi up` on merge; canary analysis decides)."]
    return "\n".join(lines)


def propose(
    *,
    stack: str,
    model_version: str,
    model_uri: str,
    mode: str,
    repo: str,
    base: str,
    github_api: str | None = None,
    github_repo: str | None = None,
    username: str | None = None,
    token: str | None = None,
    image: str = "",
    workflow: str = "",
    gate: Mapping[str, Any] | None = None,
    branch: str | None = None,
) -> Proposal:
    if mode not in MODES:
        raise ProposeError(f"mode {mode!r}: allowed {', '.join(MODES)}")
    if mode == "pull-request" and not (github_api and github_repo):
        raise ProposeError("pull-request mode needs --github-api and --github-repo (owner/name)")
    if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", stack):
        raise ProposeError(f"stack {stack!r}: not a stack name")
    with tempfile.TemporaryDirectory(prefix="fraud-propose-") as scratch:
        workdir = Path(scratch) / "repo"
        git = Git(workdir, username=username, token=token)
        git.run("clone", "--quiet", "--depth", "1", "--branch", base, "--", repo, str(workdir), cwd=Path(scratch))
        stack_file = workdir / f"Pulumi.{stack}.yaml"
        if not stack_file.exists():
            known = sorted(p.name for p in workdir.glob("Pulumi.*.yaml"))
            raise ProposeError(f"{stack_file.name} is not in {repo}@{base} (stack files there: {', '.join(known)})")
        before = stack_file.read_text()
        after = set_candidate(before, model_version, model_uri, image)
        try:
            validate_stack_text(after, stack, workdir)
        except ConfigError as error:
            raise ProposeError(f"{stack_file.name} with candidate {model_version} would be invalid: {error}") from error
        if after == before:
            head = git.run("rev-parse", "HEAD")
            return Proposal(stack, model_version, model_uri, image, mode, base, base, head, "", changed=False)
        write_text(stack_file, after)
        title = f"model: roll out {model_version} ({model_uri}) on stack {stack}"
        body = _describe(model_version, model_uri, image, workflow, gate)
        author = ["-c", f"user.name={AUTHOR_NAME}", "-c", f"user.email={AUTHOR_EMAIL}"]
        git.run(*author, "commit", "--quiet", "-m", title, "-m", body, "--", stack_file.name)
        commit = git.run("rev-parse", "HEAD")
        if mode == "commit":
            git.run("push", "--quiet", "origin", f"HEAD:refs/heads/{base}")
            return Proposal(stack, model_version, model_uri, image, mode, base, base, commit, commit, changed=True)
        suffix = re.sub(r"[^A-Za-z0-9._-]+", "-", workflow) if workflow else commit[:12]
        branch = branch or f"model/{stack}/{model_version}-{suffix}"
        git.run("push", "--quiet", "origin", f"HEAD:refs/heads/{branch}")
        assert github_api and github_repo
        try:
            url = open_pull_request(
                github_api, github_repo, token=token, head=branch, base=base, title=title, body=body
            )
        except ProposeError:
            # No pull request: take the branch back, so a retry starts from the same place.
            with contextlib.suppress(ProposeError):
                git.run("push", "--quiet", "origin", "--delete", branch)
            raise
        return Proposal(stack, model_version, model_uri, image, mode, base, branch, commit, url, changed=True)
