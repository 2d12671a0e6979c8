"""The training pipeline: an Argo ``WorkflowTemplate`` that turns fresh data into a proposed model version.

Steps (each a pod running the project's own code in the project image, except the image build):

  fetch-data -> validate-data -> train-baseline -> train -> evaluate (the gate) -> register
  -> build-image -> propose

* ``fetch-data``: ``fraudctl pipeline fetch-data`` copies the training CSV from the region's own data
  bucket (its in-cluster MinIO or S3 endpoint) into the verified dataset cache on the workspace volume.
* ``validate-data``: ``fraudctl data`` checks schema, ranges, label rates and time-disjointness.
* ``train-baseline`` / ``train``: ``fraudctl train --model-version``; the baseline (v1) is reused when
  it is already registered from the same data and code, so this is cheap after the first run.
* ``evaluate``: ``fraudctl evaluate`` gates the candidate against the baseline on the holdout; a
  rejected candidate exits 1, which fails the workflow here (nothing is registered or proposed).
* ``register``: ``fraudctl pipeline register-challenger`` checks the gate moved the ``challenger``
  alias onto this candidate, tags it with the workflow and source revision, and hands the registry
  version on.
* ``build-image``: rootless BuildKit builds the Dockerfile's ``serving`` target from the same source
  revision and pushes it to this region's Harbor by its one name (host:port mapped to the registry's
  ClusterIP, the registry CA trusted through buildkitd.toml; credentials: the Harbor admin Secret, as a
  docker config). BuildKit's metadata file names the pushed digest.
* ``propose``: ``fraudctl propose-version`` edits ``Pulumi.<stack>.yaml`` (model.candidateVersion,
  candidateUri and candidateImage, the digest just pushed) and opens a pull request, or pushes a commit,
  per ``pipeline.propose``.

MLflow receives every run's params, metrics and plots (the tracking server proxies artifacts to the
region's store). Endpoints come from the platform components; credentials only as files of mounted Secrets
(boto3's shared credentials file, the git token, the registry's docker config), never as environment values.
"""

from __future__ import annotations

import base64
import json
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

# infra.k8s is imported where used: it loads the Pulumi SDK, which fraudctl's run-time commands
# (in the project image) do without.
from infra import charts
from infra.config import GateSettings, GitSettings, PipelineSettings, Region

# The runtime contract (template name, parameters, the Workflow that runs it) lives with its client in ops/.
from ops.pipeline_contract import PARAMETERS, PROPOSE_MODES, TEMPLATE_NAME, baseline_and_candidates, submission

if TYPE_CHECKING:
    import pulumi

    from infra import k8s

__all__ = ["PARAMETERS", "TEMPLATE_NAME", "baseline_and_candidates", "submission"]
NAMESPACE = charts.NAMESPACES["argoWorkflows"]
SERVICE_ACCOUNT = "fraud-training"
EXECUTOR_ROLE = "fraud-training-executor"
S3_SECRET = "fraud-pipeline-s3"
HARBOR_SECRET = "fraud-pipeline-harbor"
# buildkitd.toml and the registry CA for the build step.
BUILDKIT_CONFIG = "fraud-pipeline-buildkit"
BUILDKIT_CONFIG_DIR = "/etc/buildkit"
# Created from the secret config key gitToken, or by an operator when it is not set (docs/PIPELINE.md).
GIT_SECRET = "fraud-pipeline-git"
GIT_SECRET_USERNAME_KEY = "username"
GIT_SECRET_TOKEN_KEY = "token"
GIT_SECRET_DIR = "/etc/fraud-git"
S3_SECRET_DIR = "/etc/fraud-s3"
S3_CREDENTIALS_KEY = "credentials"  # boto3's shared credentials file (infra/mlflow.py aws_credentials)
WORKSPACE = "/workspace"
FRAUD_HOME = f"{WORKSPACE}/fraud"
REPORTS_DIR = f"{FRAUD_HOME}/reports"
SOURCE_PATH = f"{WORKSPACE}/src"
OUTPUTS_DIR = "/tmp/outputs"
DOCKERFILE = "Dockerfile"
BUILD_TARGET = "serving"  # the model server's image: what the proposal rolls out with the model
IMAGE_NAME = f"fraud-{BUILD_TARGET}"  # infra.registry.image_name (not imported: it loads the Pulumi SDK)
BUILDKIT_UID = 1000  # the rootless BuildKit image's user
STEPS = (
    "fetch-data",
    "validate-data",
    "train-baseline",
    "train",
    "evaluate",
    "register",
    "build-image",
    "propose",
)


@dataclass(frozen=True)
class PipelineEndpoints:
    """Where the steps reach the platform, from the region's components."""

    image: Any  # the tools image (fraudctl), a tag or a pushed digest
    tracking_url: str
    registry: str  # this region's Harbor, host:port
    registry_project: str  # its project the images are pushed to
    # hostAliases that map the registry's host to its ClusterIP (none: DNS resolves it)
    registry_aliases: tuple[Mapping[str, Any], ...]
    s3_endpoint: str
    s3_region: str
    # Secret (in the pipeline namespace) with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY; None: pod identity.
    s3_secret: str | None

    @property
    def image_repository(self) -> str:
        return f"{self.registry}/{self.registry_project}/{IMAGE_NAME}"


def _param(name: str) -> str:
    return "{{workflow.parameters.%s}}" % name  # noqa: UP031 - Argo's braces, not a format string


def _gate_flags(gate: GateSettings, *, costs_only: bool) -> list[str]:
    """The stack's gate settings as ``fraudctl train/evaluate`` flags (model/cli.py GATE_FLAGS)."""
    from model.cli import COST_FLAGS, GATE_FLAGS

    flags = COST_FLAGS if costs_only else tuple(GATE_FLAGS)
    return [part for flag in flags for part in (flag, f"{getattr(gate, GATE_FLAGS[flag]):g}")]


def _step_container(
    endpoints: PipelineEndpoints,
    args: Sequence[str],
    *,
    env: Sequence[Mapping[str, Any]] = (),
    cpu: tuple[str, str] = ("100m", "1"),
    memory: tuple[str, str] = ("512Mi", "2Gi"),
) -> dict[str, Any]:
    from infra import k8s

    base_env = [
        {"name": "FRAUD_HOME", "value": FRAUD_HOME},
        {"name": "MLFLOW_TRACKING_URI", "value": endpoints.tracking_url},
        {"name": "HOME", "value": "/tmp"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
        # The steps' numeric work is single-threaded per pod; see docs/STYLE.md for the MLServer note.
        {"name": "OMP_NUM_THREADS", "value": "1"},
    ]
    container = k8s.container(
        "main",
        endpoints.image,
        command=["fraudctl"],
        args=list(args),
        env=[*base_env, *env],
        requests={"cpu": cpu[0], "memory": memory[0]},
        limits={"cpu": cpu[1], "memory": memory[1]},
        volume_mounts=[{"name": "workspace", "mountPath": WORKSPACE}, {"name": "tmp", "mountPath": "/tmp"}],
    )
    container.pop("name")  # Argo names a template's container "main" itself
    return container


def _s3_env(endpoints: PipelineEndpoints) -> list[dict[str, Any]]:
    env = [
        {"name": "AWS_ENDPOINT_URL_S3", "value": endpoints.s3_endpoint},
        {"name": "AWS_DEFAULT_REGION", "value": endpoints.s3_region},
    ]
    if endpoints.s3_secret:
        env.append({"name": "AWS_SHARED_CREDENTIALS_FILE", "value": f"{S3_SECRET_DIR}/{S3_CREDENTIALS_KEY}"})
    return env


def _with_secret_files(template: dict[str, Any], volume: str, secret: str, path: str, keys: list[str]) -> None:
    """Mount ``secret``'s ``keys`` read-only under ``path`` in ``template``'s container."""
    from infra import k8s

    secret_volume, mount = k8s.secret_files(volume, secret, path, keys)
    template.setdefault("volumes", []).append(secret_volume)
    template["container"]["volumeMounts"].append(mount)


def _output(name: str) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"path": f"{OUTPUTS_DIR}/{name}"}}


def _git_artifact(git: GitSettings) -> dict[str, Any]:
    return {
        "name": "source",
        "path": SOURCE_PATH,
        "git": {
            "repo": git.url,
            "revision": _param("revision"),
            "depth": 1,
            "usernameSecret": {"name": GIT_SECRET, "key": GIT_SECRET_USERNAME_KEY},
            "passwordSecret": {"name": GIT_SECRET, "key": GIT_SECRET_TOKEN_KEY},
        },
    }


def workflow_template(
    region: Region,
    endpoints: PipelineEndpoints,
    *,
    stack: str,
    settings: PipelineSettings,
    gate: GateSettings,
    git: GitSettings,
    candidate_version: str,
) -> dict[str, Any]:
    """The ``fraud-model-training`` WorkflowTemplate for one region (its data bucket, MLflow and Harbor) of
    ``stack``; ``candidate_version``: the stack's model.candidateVersion, the default version to train."""
    from infra import k8s

    baseline, candidates = baseline_and_candidates()
    train_cpu = (settings.TRAIN_CPU_REQUEST, settings.train_cpu_limit)
    train_memory = (settings.TRAIN_MEMORY_REQUEST, settings.train_memory_limit)
    fetch_args = ["pipeline", "fetch-data"]
    if region.data_bucket:
        fetch_args += ["--bucket", region.data_bucket, "--key", settings.data_key]
    fetch: dict[str, Any] = {
        "name": "fetch-data",
        "retryStrategy": {"limit": "2", "retryPolicy": "OnError"},
        "container": _step_container(endpoints, fetch_args, env=_s3_env(endpoints)),
    }
    if endpoints.s3_secret:
        _with_secret_files(fetch, "s3", endpoints.s3_secret, S3_SECRET_DIR, [S3_CREDENTIALS_KEY])
    templates: list[dict[str, Any]] = [
        fetch,
        {"name": "validate-data", "container": _step_container(endpoints, ["data", "--json"], memory=("1Gi", "3Gi"))},
        {
            "name": "train-baseline",
            "container": _step_container(
                endpoints,
                ["train", "--model-version", baseline, *_gate_flags(gate, costs_only=True)],
                cpu=train_cpu,
                memory=train_memory,
            ),
        },
        {
            "name": "train",
            "container": _step_container(
                endpoints,
                ["train", "--model-version", _param("model-version"), *_gate_flags(gate, costs_only=True)],
                cpu=train_cpu,
                memory=train_memory,
            ),
        },
        {
            "name": "evaluate",
            "container": _step_container(
                endpoints,
                ["evaluate", "--json", "--out", REPORTS_DIR, *_gate_flags(gate, costs_only=False)],
                cpu=train_cpu,
                memory=train_memory,
            ),
        },
        {
            "name": "register",
            "outputs": {"parameters": [_output("registry-version"), _output("model-uri")]},
            "container": _step_container(
                endpoints,
                [
                    "pipeline",
                    "register-challenger",
                    "--model-version",
                    _param("model-version"),
                    "--workflow",
                    "{{workflow.name}}",
                    "--revision",
                    _param("revision"),
                    "--outputs",
                    OUTPUTS_DIR,
                ],
            ),
        },
        _build_template(endpoints, settings, git),
        _propose_template(endpoints, stack, git),
    ]
    steps = [
        [
            {
                "name": step,
                "template": step,
                **(
                    {
                        "arguments": {
                            "parameters": [
                                {"name": "model-uri", "value": "{{steps.register.outputs.parameters.model-uri}}"},
                                {"name": "build", "value": "{{steps.build-image.outputs.parameters.build}}"},
                            ]
                        }
                    }
                    if step == "propose"
                    else {}
                ),
            }
        ]
        for step in STEPS
    ]
    tmp_volume, _ = k8s.tmp_volume()
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "WorkflowTemplate",
        "metadata": {
            "name": TEMPLATE_NAME,
            "namespace": NAMESPACE,
            "labels": k8s.labels(TEMPLATE_NAME, "pipeline", **{"fraud-platform/region": region.name}),
        },
        "spec": {
            "entrypoint": "train-and-propose",
            "serviceAccountName": SERVICE_ACCOUNT,
            "arguments": {
                "parameters": [
                    {
                        "name": "model-version",
                        "description": PARAMETERS["model-version"],
                        "enum": list(candidates),
                        "value": candidate_version if candidate_version in candidates else candidates[-1],
                    },
                    {"name": "revision", "description": PARAMETERS["revision"], "value": git.revision},
                    {
                        "name": "propose",
                        "description": PARAMETERS["propose"],
                        "enum": list(PROPOSE_MODES),
                        "value": settings.propose,
                    },
                ]
            },
            "securityContext": k8s.pod_security_context(),
            "volumes": [tmp_volume],
            "volumeClaimTemplates": [
                {
                    "metadata": {"name": "workspace"},
                    "spec": {
                        "accessModes": ["ReadWriteOnce"],
                        "resources": {"requests": {"storage": settings.workspace_size}},
                    },
                }
            ],
            "activeDeadlineSeconds": 4 * 3600,
            "ttlStrategy": {"secondsAfterSuccess": 7 * 86400, "secondsAfterFailure": 14 * 86400},
            "podMetadata": {
                "labels": {"app.kubernetes.io/part-of": "fraud-platform", "fraud-platform/pipeline": "training"}
            },
            "templates": [{"name": "train-and-propose", "steps": steps}, *templates],
        },
    }


def _build_template(endpoints: PipelineEndpoints, settings: PipelineSettings, git: GitSettings) -> dict[str, Any]:
    """Rootless BuildKit: no root, no privileged pod; it needs only unconfined seccomp/AppArmor for its
    user namespaces. The image is tagged ``<model-version>-<workflow name>`` (unique per run); the registry is
    reached by its name (hostAliases) and trusted through buildkitd.toml (``--config``)."""
    image = f"{endpoints.image_repository}:{_param('model-version')}-{{{{workflow.name}}}}"
    dockerfile_dir, dockerfile = posixpath.split(DOCKERFILE)
    unconfined = {
        "allowPrivilegeEscalation": True,  # newuidmap/newgidmap are setuid: rootless needs them
        "runAsNonRoot": True,
        "runAsUser": BUILDKIT_UID,
        "runAsGroup": BUILDKIT_UID,
        "seccompProfile": {"type": "Unconfined"},
        "appArmorProfile": {"type": "Unconfined"},
    }
    template: dict[str, Any] = {
        "name": "build-image",
        "inputs": {"artifacts": [_git_artifact(git)]},
        "outputs": {"parameters": [{"name": "build", "valueFrom": {"path": "/tmp/build/metadata.json"}}]},
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": BUILDKIT_UID,
            "fsGroup": BUILDKIT_UID,
        },
        "volumes": [
            {
                "name": "harbor-auth",
                "secret": {"secretName": HARBOR_SECRET, "items": [{"key": ".dockerconfigjson", "path": "config.json"}]},
            },
            {"name": "buildkit-config", "configMap": {"name": BUILDKIT_CONFIG}},
            {"name": "buildkit-state", "emptyDir": {}},
            {"name": "build-out", "emptyDir": {}},
        ],
        "container": {
            "image": settings.buildkit_image,
            "imagePullPolicy": "IfNotPresent",
            "command": ["buildctl-daemonless.sh"],
            "args": [
                "build",
                "--frontend",
                "dockerfile.v0",
                "--local",
                f"context={SOURCE_PATH}",
                "--local",
                f"dockerfile={posixpath.join(SOURCE_PATH, dockerfile_dir) if dockerfile_dir else SOURCE_PATH}",
                "--opt",
                f"filename={dockerfile}",
                "--opt",
                f"target={BUILD_TARGET}",
                "--opt",
                "platform=linux/amd64",
                "--output",
                f"type=image,name={image},push=true",
                "--metadata-file",
                "/tmp/build/metadata.json",
            ],
            "env": [
                {
                    "name": "BUILDKITD_FLAGS",
                    "value": f"--oci-worker-no-process-sandbox --config {BUILDKIT_CONFIG_DIR}/buildkitd.toml",
                },
                {"name": "DOCKER_CONFIG", "value": "/home/user/.docker"},
            ],
            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}},
            "securityContext": unconfined,
            "volumeMounts": [
                {"name": "harbor-auth", "mountPath": "/home/user/.docker", "readOnly": True},
                {"name": "buildkit-config", "mountPath": BUILDKIT_CONFIG_DIR, "readOnly": True},
                {"name": "buildkit-state", "mountPath": "/home/user/.local/share/buildkit"},
                {"name": "build-out", "mountPath": "/tmp/build"},
            ],
        },
    }
    if endpoints.registry_aliases:
        template["hostAliases"] = [dict(alias) for alias in endpoints.registry_aliases]
    return template


def buildkit_config(registry: str, ca_cert: pulumi.Input[str]) -> k8s.Manifest:
    """The build step's ConfigMap: buildkitd.toml trusting the registry CA ``ca_cert`` (PEM, public)."""
    from infra import k8s
    from infra.registry import buildkitd_toml

    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": BUILDKIT_CONFIG,
            "namespace": NAMESPACE,
            "labels": k8s.labels(BUILDKIT_CONFIG, "pipeline"),
        },
        "data": {"buildkitd.toml": buildkitd_toml(registry, f"{BUILDKIT_CONFIG_DIR}/ca.crt"), "ca.crt": ca_cert},
    }


def _propose_template(endpoints: PipelineEndpoints, stack: str, git: GitSettings) -> dict[str, Any]:
    args = [
        "propose-version",
        "--stack",
        stack,
        "--model-version",
        _param("model-version"),
        "--model-uri",
        "{{inputs.parameters.model-uri}}",
        "--mode",
        _param("propose"),
        "--repo",
        git.url,
        "--base",
        _param("revision"),
        "--build-metadata",
        "{{inputs.parameters.build}}",
        "--gate-report",
        f"{REPORTS_DIR}/gate.json",
        "--workflow",
        "{{workflow.name}}",
        "--outputs",
        OUTPUTS_DIR,
    ]
    repository = git.github_repository
    if repository:
        args += ["--github-api", git.api_url, "--github-repo", repository]
    env = [
        {"name": "GIT_USERNAME_FILE", "value": f"{GIT_SECRET_DIR}/{GIT_SECRET_USERNAME_KEY}"},
        {"name": "GIT_TOKEN_FILE", "value": f"{GIT_SECRET_DIR}/{GIT_SECRET_TOKEN_KEY}"},
    ]
    template = {
        "name": "propose",
        "inputs": {"parameters": [{"name": "model-uri"}, {"name": "build"}]},
        "outputs": {"parameters": [_output("proposal-url")]},
        "container": _step_container(endpoints, args, env=env),
    }
    _with_secret_files(template, "git", GIT_SECRET, GIT_SECRET_DIR, [GIT_SECRET_USERNAME_KEY, GIT_SECRET_TOKEN_KEY])
    return template


def rbac_objects() -> list[k8s.Manifest]:
    """The workflow pods' identity: Argo's executor reports step results through WorkflowTaskResults."""
    from infra import k8s

    obj_labels = k8s.labels(SERVICE_ACCOUNT, "pipeline")
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": SERVICE_ACCOUNT, "namespace": NAMESPACE, "labels": obj_labels},
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": EXECUTOR_ROLE, "namespace": NAMESPACE, "labels": obj_labels},
            "rules": [
                {"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"], "verbs": ["create", "patch"]},
                {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "watch", "patch"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": EXECUTOR_ROLE, "namespace": NAMESPACE, "labels": obj_labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": EXECUTOR_ROLE},
            "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}],
        },
    ]


def docker_config_json(host: str, username: str, password: str) -> str:
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    return json.dumps({"auths": {host: {"username": username, "password": password, "auth": auth}}})
