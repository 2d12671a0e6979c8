"""Hardened workloads: fraudctl verify's hardening check on the real renders, each rule on a deliberately
broken render, Pod Security levels as Kubernetes states them, every waiver still needed, and the files our
workloads read their secrets from."""

from __future__ import annotations

import configparser
import copy
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from render_support import rendered

from infra import charts, mlflow
from infra.verify import hardening
from infra.verify.checks import platform_of, run_checks
from infra.verify.platform import Platform, PlatformObject
from serving.feedback import PredictionSigner, SigningKeyError

STACKS = [("dev", {}), ("multiregion", {}), ("dev", {"strategy": "blue-green"}), ("dev", {"delivery": "argocd"})]


def platform(stack: str = "dev", **overrides: object) -> Platform:
    result = rendered(stack, **overrides)
    return platform_of(result, result.config.regions[0].name)


def changed(base: Platform, kind: str, name: str, edit: Callable[[dict], None]) -> Platform:
    objects, hits = [], 0
    for item in base.objects:
        if item.kind == kind and item.name == name:
            obj = copy.deepcopy(item.obj)
            edit(obj)
            item, hits = PlatformObject(obj, item.origin, item.source), hits + 1
        objects.append(item)
    assert hits == 1, f"{kind}/{name}: {hits}"
    return Platform(base.region, objects, base.registry, base.releases)


def open_findings(p: Platform) -> list[str]:
    _checked, found, _waived = hardening.judged(p)
    return [f.text() for f in found]


def pod(obj: dict) -> dict:
    return obj["spec"]["template"]["spec"]


# ---------------------------------------------------------------------------------------------------
# The stacks


@pytest.mark.parametrize(("stack", "overrides"), STACKS, ids=["dev", "multiregion", "blue-green", "argocd"])
def test_every_stack_is_hardened_but_for_the_waivers(stack: str, overrides: dict) -> None:
    result = rendered(stack, **overrides)
    for region in result.config.regions:
        (check,) = run_checks(platform_of(result, region.name), ["hardening"])
        assert check.failures == [] and check.checked > 100 and check.waived > 0


def test_every_waiver_covers_a_finding_in_some_stack() -> None:
    """A waiver that no longer matches anything is stale: the chart (or we) fixed it; drop it."""
    used: set[hardening.Waiver] = set()
    for stack, overrides in STACKS:
        result = rendered(stack, **overrides)
        for region in result.config.regions:
            _checked, _open, waived = hardening.judged(platform_of(result, region.name))
            used |= {waiver for _finding, waiver in waived}
    assert set(hardening.WAIVERS) - used == set()
    assert all(w.reason and w.rule in set(hardening.iter_rules()) for w in hardening.WAIVERS)


def test_our_own_workloads_need_no_waiver_but_rootless_buildkit() -> None:
    for stack, overrides in STACKS:
        result = rendered(stack, **overrides)
        for region in result.config.regions:
            _checked, _open, waived = hardening.judged(platform_of(result, region.name))
            ours = {f.workload for f, _w in waived if f.origin in ("program", "gitops")}
            assert ours <= {
                "WorkflowTemplate/argo/fraud-model-training.build-image",
                "Namespace/fraud",
                "Namespace/argo",
                "Namespace/monitoring",
            }, ours


def test_namespaces_enforce_restricted_where_every_pod_passes_it() -> None:
    p = platform("multiregion")
    levels = {o.name: o.labels.get(hardening.ENFORCE_LABEL) for o in p.of_kind("Namespace") if o.origin == "program"}
    assert levels == {
        "fraud": None,
        "fraud-waves": "restricted",
        "mlflow": "restricted",
        "harbor": "restricted",
        "istio-system": "restricted",
        "argocd": "restricted",
        "argo-rollouts": "restricted",
        "flagger-system": "restricted",
        "argo": None,
        "monitoring": None,
    }
    # The fraud namespace at least warns on restricted.
    (fraud,) = p.find("Namespace", "", "fraud")
    assert fraud.labels["pod-security.kubernetes.io/warn"] == "restricted"
    assert {c: lvl for c, lvl in charts.POD_SECURITY.items() if lvl} == {
        c: "restricted" for c in ("istio", "argocd", "argoRollouts", "flagger", "harbor", "mlflow")
    }


# ---------------------------------------------------------------------------------------------------
# Each rule on a broken render


def test_secret_env_catches_a_secret_given_as_an_environment_variable() -> None:
    base = platform()
    assert open_findings(base) == []

    def leak(obj: dict) -> None:
        pod(obj)["containers"][0].setdefault("env", []).append(
            {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "mlflow-postgres", "key": "password"}}}
        )

    assert open_findings(changed(base, "Deployment", "mlflow", leak)) == [
        "Deployment/mlflow/mlflow (program) container mlflow: takes Secrets as environment variables (DB_PASSWORD); "
        "mount them as files [secret-env]"
    ]


def test_token_catches_an_unused_service_account_token() -> None:
    base = platform()
    broken = changed(base, "Deployment", "mlflow", lambda obj: pod(obj).pop("automountServiceAccountToken"))
    assert open_findings(broken) == [
        "Deployment/mlflow/mlflow (program): mounts a service-account token it has no use for (no Role or "
        "ClusterRole is bound to ServiceAccount mlflow/default); set automountServiceAccountToken: false [token]"
    ]
    # A pod whose account is bound to a role uses its token: the decision service of blue-green reads pods.
    blue_green = platform("dev", strategy="blue-green")
    (replay,) = blue_green.find("Deployment", "fraud", "fraud-detector-replay")
    assert pod(replay.obj)["automountServiceAccountToken"] is True and open_findings(blue_green) == []


@pytest.mark.parametrize(
    ("user", "expected"),
    [(999, "runs as UID 999, below 10000"), (None, "runs as its image's user (runAsUser not set)")],
)
def test_uid_catches_a_low_or_unset_uid(user: int | None, expected: str) -> None:
    def run_as(obj: dict) -> None:
        context = pod(obj)["containers"][0]["securityContext"]
        if user is None:
            context.pop("runAsUser")
        else:
            context["runAsUser"] = user

    found = open_findings(changed(platform(), "StatefulSet", "mlflow-postgres", run_as))
    assert found == [f"StatefulSet/mlflow/mlflow-postgres (program) container postgres: {expected} [uid]"]


def test_probes_catch_a_long_running_container_without_one() -> None:
    broken = changed(
        platform(), "Deployment", "fraud-detector-replay", lambda obj: pod(obj)["containers"][0].pop("livenessProbe")
    )
    assert open_findings(broken) == [
        "Deployment/fraud/fraud-detector-replay (program) container replay: has no livenessProbe [probes]"
    ]


def test_pod_security_catches_a_namespace_that_does_not_enforce_restricted_and_a_pod_it_would_refuse() -> None:
    base = platform()
    unlabelled = changed(
        base, "Namespace", "mlflow", lambda obj: obj["metadata"]["labels"].pop(hardening.ENFORCE_LABEL)
    )
    assert open_findings(unlabelled) == [
        "Namespace/mlflow (program): enforces Pod Security nothing (privileged), not restricted [pod-security]"
    ]

    def escalate(obj: dict) -> None:
        pod(obj)["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True

    # A chart's pod in a namespace we label restricted would be refused at admission: caught, even from a chart.
    found = open_findings(changed(base, "Deployment", "harbor-portal", escalate))
    assert found == [
        "Deployment/harbor/harbor-portal (helm:harbor): would be refused by namespace harbor's Pod Security "
        "restricted: portal allowPrivilegeEscalation not false [pod-security]"
    ]


def test_pod_security_sees_the_sidecars_istio_would_inject() -> None:
    """The fraud namespace cannot enforce even baseline: Istio's injected istio-init needs NET_ADMIN as root."""
    base = platform()
    restricted = changed(
        base, "Namespace", "fraud", lambda obj: obj["metadata"]["labels"].update({hardening.ENFORCE_LABEL: "baseline"})
    )
    found = [f for f in open_findings(restricted) if "fraud-detector " in f or "fraud-detector (" in f]
    assert found == [
        "Deployment/fraud/fraud-detector (program): would be refused by namespace fraud's Pod Security baseline: "
        "istio-init adds capabilities NET_ADMIN, NET_RAW [pod-security]"
    ]
    # Istio's CNI plugin would take the privileged init container away.
    with_cni = changed(
        restricted,
        "ConfigMap",
        "istio-sidecar-injector",
        lambda obj: obj["data"].update(
            values=json.dumps({**json.loads(obj["data"]["values"]), "pilot": {"cni": {"enabled": True}}})
        ),
    )
    assert not [f for f in open_findings(with_cni) if "would be refused by namespace fraud" in f]


def test_a_waiver_covers_only_its_chart() -> None:
    """Harbor's chart passes secrets as environment variables (waived); our own object there may not."""
    base = platform()
    job = next(o for o in base.of_kind("Job") if o.name == "harbor-project")

    def leak(obj: dict) -> None:
        pod(obj)["containers"][0]["env"] = [
            {"name": "HARBOR_ADMIN_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "harbor-admin", "key": "x"}}}
        ]

    assert job.origin == "program"
    assert open_findings(changed(base, "Job", "harbor-project", leak)) == [
        "Job/harbor/harbor-project (program) container create-project: takes Secrets as environment variables "
        "(HARBOR_ADMIN_PASSWORD); mount them as files [secret-env]"
    ]


# ---------------------------------------------------------------------------------------------------
# Pod Security Standards, as k8s.io/pod-security-admission states them


RESTRICTED_POD = {
    "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
    "containers": [
        {
            "name": "app",
            "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        }
    ],
    "volumes": [{"name": "tmp", "emptyDir": {}}, {"name": "s", "secret": {"secretName": "s"}}],
}


@pytest.mark.parametrize(
    ("edit", "baseline", "restricted"),
    [
        (lambda spec: None, [], []),
        (lambda spec: spec["securityContext"].pop("runAsNonRoot"), [], ["app runAsNonRoot not true"]),
        (
            lambda spec: spec["containers"][0]["securityContext"]["capabilities"].update(add=["NET_BIND_SERVICE"]),
            [],
            [],
        ),
        (
            lambda spec: spec["containers"][0]["securityContext"]["capabilities"].update(add=["CHOWN"]),
            [],
            ["app adds CHOWN"],
        ),
        (
            lambda spec: spec["containers"][0]["securityContext"]["capabilities"].update(add=["SYS_ADMIN"]),
            ["app adds capabilities SYS_ADMIN"],
            ["app adds SYS_ADMIN"],
        ),
        (lambda spec: spec.update(hostNetwork=True), ["host namespaces (hostNetwork)"], []),
        (
            lambda spec: spec["volumes"].append({"name": "h", "hostPath": {"path": "/"}}),
            ["hostPath volume h"],
            ["volume h of type hostPath"],
        ),
        (
            lambda spec: spec["securityContext"].update(seccompProfile={"type": "Unconfined"}),
            ["pod seccompProfile Unconfined"],
            ["app seccompProfile not RuntimeDefault or Localhost"],
        ),
        (lambda spec: spec["containers"][0]["securityContext"].update(runAsUser=0), [], ["app runAsUser 0"]),
        (
            lambda spec: spec["containers"][0].update(ports=[{"containerPort": 80, "hostPort": 80}]),
            ["app host port"],
            [],
        ),
    ],
    ids=[
        "passes",
        "root-allowed",
        "bind-service",
        "chown",
        "sys-admin",
        "host-network",
        "host-path",
        "unconfined",
        "uid-0",
        "host-port",
    ],
)
def test_pod_security_levels(edit: Callable[[dict], None], baseline: list[str], restricted: list[str]) -> None:
    spec = copy.deepcopy(RESTRICTED_POD)
    edit(spec)
    assert hardening.pod_security_problems(spec, "baseline") == baseline
    assert hardening.pod_security_problems(spec, "restricted") == baseline + restricted
    assert hardening.pod_security_problems(spec, "privileged") == []


# ---------------------------------------------------------------------------------------------------
# Secrets as files: what our workloads read


def test_the_model_server_reads_its_signing_key_from_a_file(tmp_path: Path) -> None:
    key = tmp_path / "key"
    key.write_text("k" * 32 + "\n")
    signer = PredictionSigner.from_environment({"FEEDBACK_SIGNING_KEY_FILE": str(key)})
    same = PredictionSigner.from_environment({"FEEDBACK_SIGNING_KEY": "k" * 32})
    (token,) = signer.issue("v2", [True])
    assert same.verify(token).model_version == "v2"  # the file's trailing newline is not part of the key
    with pytest.raises(SigningKeyError, match="both set"):
        PredictionSigner.from_environment({"FEEDBACK_SIGNING_KEY_FILE": str(key), "FEEDBACK_SIGNING_KEY": "x" * 32})
    with pytest.raises(SigningKeyError, match="cannot be read"):
        PredictionSigner.from_environment({"FEEDBACK_SIGNING_KEY_FILE": str(tmp_path / "missing")})
    key.write_text("short")
    with pytest.raises(SigningKeyError, match="at least 16 bytes"):
        PredictionSigner.from_environment({"FEEDBACK_SIGNING_KEY_FILE": str(key)})


def test_the_mlflow_credentials_files_read_as_their_readers_read_them(tmp_path: Path) -> None:
    """boto3's shared credentials file, MinIO's KEY=value settings file, mc's config.json."""
    import botocore.session

    credentials = tmp_path / "credentials"
    credentials.write_text(mlflow.aws_credentials("AKIAEXAMPLE", "s3cr3t"))
    session = botocore.session.Session()
    session.set_config_variable("credentials_file", str(credentials))
    session.set_config_variable("config_file", str(tmp_path / "none"))
    found = session.get_credentials()
    assert (found.access_key, found.secret_key, found.method) == ("AKIAEXAMPLE", "s3cr3t", "shared-credentials-file")
    parsed = configparser.ConfigParser()
    parsed.read_string("[minio]\n" + mlflow.minio_env("AKIAEXAMPLE", "s3cr3t"))
    assert dict(parsed["minio"]) == {"minio_root_user": "AKIAEXAMPLE", "minio_root_password": "s3cr3t"}
    alias = json.loads(mlflow.mc_config("AKIAEXAMPLE", "s3cr3t"))["aliases"][mlflow.MC_ALIAS]
    assert alias["url"] == mlflow.MINIO_ENDPOINT and alias["accessKey"] == "AKIAEXAMPLE"
    assert mlflow.backend_store_uri("pw") == "postgresql://mlflow:pw@mlflow-postgres:5432/mlflow"


def test_no_workload_of_ours_takes_a_secret_from_its_environment() -> None:
    for stack, overrides in STACKS:
        result = rendered(stack, **overrides)
        for region in result.config.regions:
            for obj in result.manifests(region.name):
                text = json.dumps(obj)
                assert "secretKeyRef" not in text and '"secretRef"' not in text, (obj["kind"], obj["metadata"]["name"])
