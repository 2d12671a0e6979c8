"""The training pipeline and rollout waves as the real program declares them (offline render)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from render_support import STACKS, STRATEGIES, rendered

from fraudctl.cli import build_parser
from fraudctl.errors import UsageError
from infra import pipeline, waves
from infra.config import load_stack
from infra.render import SECRET_MARKER, SECRET_SIG, SECRET_VALUE_SIG, RenderResult, run_program
from infra.verify.k8s_schema import validate_objects

SAMPLE_PARAMETERS = {
    "{{workflow.parameters.model-version}}": "v2",
    "{{workflow.parameters.revision}}": "main",
    "{{workflow.parameters.propose}}": "pull-request",
    "{{workflow.name}}": "fraud-model-training-abcde",
    "{{inputs.parameters.model-uri}}": "models:/fraud-detector/7",
    "{{inputs.parameters.build}}": "{}",
}


def tools_image(result: RenderResult, region: str) -> str:
    """The tools image as the replay webhook runs it: the digest the program pushed to the region's Harbor."""
    (replay,) = [
        o
        for o in result.manifests(region)
        if o["kind"] == "Deployment" and o["metadata"]["name"] == "fraud-detector-replay"
    ]
    image = replay["spec"]["template"]["spec"]["containers"][0]["image"]
    assert re.fullmatch(r"[a-z0-9.-]+:30003/fraud/fraud-tools@sha256:[0-9a-f]{64}", image), image
    return image


def template_of(result: RenderResult, region: str) -> dict[str, Any]:
    (template,) = [o for o in result.manifests(region) if o["kind"] == "WorkflowTemplate"]
    return template


def templates_by_name(template: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {t["name"]: t for t in template["spec"]["templates"]}


def substitute(arg: str) -> str:
    for placeholder, value in SAMPLE_PARAMETERS.items():
        arg = arg.replace(placeholder, value)
    assert "{{" not in arg, f"unresolved Argo expression in {arg!r}"
    return arg


@pytest.mark.parametrize("stack", STACKS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_region_declares_the_training_template_and_it_is_valid(stack: str, strategy: str) -> None:
    result = rendered(stack, strategy)
    for region in result.config.regions:
        objects = result.manifests(region.name)
        template = template_of(result, region.name)
        assert template["metadata"]["name"] == pipeline.TEMPLATE_NAME
        assert template["metadata"]["namespace"] == pipeline.NAMESPACE
        pipeline_objects = [o for o in objects if o["metadata"].get("namespace") == pipeline.NAMESPACE]
        assert validate_objects(pipeline_objects) == []
        # The steps run in order, one after the other.
        steps = templates_by_name(template)["train-and-propose"]["steps"]
        assert [group[0]["name"] for group in steps] == list(pipeline.STEPS)
        assert all(len(group) == 1 for group in steps)
        kinds = {(o["kind"], o["metadata"]["name"]) for o in pipeline_objects}
        assert {("ServiceAccount", pipeline.SERVICE_ACCOUNT), ("Role", pipeline.EXECUTOR_ROLE)} <= kinds
        assert ("Secret", pipeline.HARBOR_SECRET) in kinds and ("Secret", pipeline.S3_SECRET) in kinds


def test_every_step_runs_a_fraudctl_command_that_exists_with_those_flags() -> None:
    """The template's argv is parsed by the real fraudctl parser: a renamed flag breaks this test."""
    result = rendered("multiregion")
    parser = build_parser()
    checked = []
    for region in result.config.regions:
        for name, spec in templates_by_name(template_of(result, region.name)).items():
            container = spec.get("container")
            if not container or container["command"] != ["fraudctl"]:
                continue
            args = parser.parse_args([substitute(a) for a in container["args"]])
            assert callable(args.handler), name
            checked.append(name)
    assert set(checked) == set(pipeline.STEPS) - {"build-image"}


def test_project_steps_use_the_tools_image_and_the_build_uses_pinned_rootless_buildkit() -> None:
    result = rendered("multiregion")
    for region in result.config.regions:
        templates = templates_by_name(template_of(result, region.name))
        project_image = tools_image(result, region.name)
        for step in pipeline.STEPS:
            container = templates[step]["container"]
            if step == "build-image":
                assert container["image"] == result.config.pipeline.buildkit_image
                assert re.search(r":v\d+\.\d+\.\d+-rootless$", container["image"])
                assert container["securityContext"]["runAsNonRoot"] is True
                assert container["securityContext"]["runAsUser"] == pipeline.BUILDKIT_UID
                output = next(a for a in container["args"] if a.startswith("type=image"))
                assert output.startswith(f"type=image,name={region.registry_host}:30003/fraud/fraud-serving:")
                assert container["args"][container["args"].index("target=serving") - 1] == "--opt"
                assert output.endswith(",push=true")
            else:
                assert container["image"] == project_image
                assert container["securityContext"]["runAsNonRoot"] is True
            assert container["resources"]["limits"]["cpu"] and container["resources"]["limits"]["memory"]


def mounted(spec: dict[str, Any], variable: str) -> tuple[str, str]:
    """(Secret, key) whose file the environment variable ``variable`` names in the template ``spec``."""
    path = {e["name"]: e["value"] for e in spec["container"]["env"]}[variable]
    mount = next(m for m in spec["container"]["volumeMounts"] if path.startswith(m["mountPath"] + "/"))
    assert mount["readOnly"] is True
    volume = next(v for v in spec["volumes"] if v["name"] == mount["name"])["secret"]
    return volume["secretName"], path.rsplit("/", 1)[1]


def test_credentials_reach_the_steps_only_as_files_of_mounted_secrets() -> None:
    for stack in STACKS:
        result = rendered(stack)
        for region in result.config.regions:
            templates = templates_by_name(template_of(result, region.name))
            for name, spec in templates.items():
                for env in (spec.get("container") or {}).get("env", []):
                    assert "valueFrom" not in env, (name, env)  # never a Secret as an environment value
                    if re.search(r"KEY|TOKEN|PASSWORD|SECRET", env["name"]):
                        assert env["name"].endswith("_FILE"), (name, env)

            assert mounted(templates["propose"], "GIT_TOKEN_FILE") == (pipeline.GIT_SECRET, "token")
            assert mounted(templates["propose"], "GIT_USERNAME_FILE") == (pipeline.GIT_SECRET, "username")
            s3 = mounted(templates["fetch-data"], "AWS_SHARED_CREDENTIALS_FILE")
            assert s3 == (pipeline.S3_SECRET, "credentials")
            build = templates["build-image"]
            assert build["volumes"][0]["secret"]["secretName"] == pipeline.HARBOR_SECRET
            secrets = {o["metadata"]["name"]: o for o in result.manifests(region.name) if o["kind"] == "Secret"}
            assert secrets[pipeline.HARBOR_SECRET]["type"] == "kubernetes.io/dockerconfigjson"
            assert secrets[pipeline.HARBOR_SECRET]["stringData"][".dockerconfigjson"] == SECRET_MARKER
            assert secrets[pipeline.S3_SECRET]["stringData"] == {"credentials": SECRET_MARKER}
            # No git token configured: the operator's Secret is referenced, none is declared.
            assert pipeline.GIT_SECRET not in secrets


def test_the_proposal_step_reads_its_git_credentials_from_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ops.cli import _credential

    token = tmp_path / "token"
    token.write_text("t0ken\n")
    monkeypatch.setenv("GIT_TOKEN_FILE", str(token))
    monkeypatch.delenv("GIT_TOKEN", raising=False)
    assert _credential("GIT_TOKEN") == "t0ken"
    monkeypatch.setenv("GIT_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(UsageError, match=r"GIT_TOKEN_FILE: .*missing cannot be read"):
        _credential("GIT_TOKEN")
    monkeypatch.delenv("GIT_TOKEN_FILE")
    monkeypatch.setenv("GIT_TOKEN", "from-env")
    assert _credential("GIT_TOKEN") == "from-env"


def test_a_configured_git_token_becomes_a_secret_for_the_proposal_step() -> None:
    result = rendered("dev", gitToken="ghp_example_token_value")
    (secret,) = [r for r in result.resources if r.name == "region-local-pipeline-git"]
    # Read with require_secret: the whole stringData travels as a Pulumi secret.
    assert secret.inputs["stringData"][SECRET_SIG] == SECRET_VALUE_SIG
    assert secret.inputs["stringData"]["value"]["username"] == "x-access-token"
    (repo,) = [r for r in rendered("dev", gitToken="t", delivery="argocd").resources if r.name.endswith("repository")]
    assert repo.inputs["stringData"][SECRET_SIG] == SECRET_VALUE_SIG


def test_the_stacks_gate_settings_are_what_the_evaluate_step_applies() -> None:
    result = rendered("dev", gate__minRecallGain=0.02, gate__costMissedFraud=300.0)
    args = templates_by_name(template_of(result, "local"))["evaluate"]["container"]["args"]
    assert args[args.index("--min-recall-gain") + 1] == "0.02"
    assert args[args.index("--cost-missed-fraud") + 1] == "300"
    train = templates_by_name(template_of(result, "local"))["train"]["container"]["args"]
    assert train[train.index("--cost-missed-fraud") + 1] == "300"


def test_each_regions_pipeline_keeps_its_data_in_its_region() -> None:
    """Data residency: a region's template reads its own bucket, logs to its own MLflow, pushes to its own
    Harbor, and nothing in that region's objects or chart values names another region's data stores."""
    result = rendered("multiregion")
    regions = result.config.regions
    assert len(regions) >= 2
    for region in regions:
        template = template_of(result, region.name)
        fetch = templates_by_name(template)["fetch-data"]["container"]
        assert fetch["args"][fetch["args"].index("--bucket") + 1] == region.data_bucket
        env = {e["name"]: e.get("value") for e in fetch["env"]}
        assert env["MLFLOW_TRACKING_URI"].startswith("http://mlflow.mlflow.svc.cluster.local")
        assert env["AWS_ENDPOINT_URL_S3"].startswith("http://mlflow-minio.mlflow.svc.cluster.local")
        everything = json.dumps([result.manifests(region.name), result.helm_releases(region.name)])
        for other in regions:
            if other is region:
                continue
            for store in (other.data_bucket, other.registry_host):
                assert store not in everything, f"{region.name} references {other.name}'s {store}"
            # The other region's name appears only where the rollout waves read its rollout status
            # (as a whole word: the S3 signing region "us-east-1" is not the region "us-east").
            name = re.compile(rf"(?<![-\w]){re.escape(other.name)}(?![-\w])")
            mentions = [o for o in result.manifests(region.name) if name.search(json.dumps(o))]
            assert all(o["metadata"].get("namespace") == waves.NAMESPACE for o in mentions), [
                (o["kind"], o["metadata"]["name"]) for o in mentions
            ]
            assert not name.search(json.dumps(template))


def test_multi_region_artifacts_must_stay_in_each_region() -> None:
    from infra.config import ConfigError

    with pytest.raises(ConfigError, match=r"mlflow\.artifactStore: bucket is one bucket for all regions"):
        rendered("multiregion", mlflow__artifactStore="bucket", mlflow__endpoint="https://s3.example.com")
    with pytest.raises(ConfigError, match=r"regions\[1\].dataBucket: 'same' is already region eu-west's"):
        load_stack(
            "multiregion",
            overrides={
                "regions": [
                    {"name": "eu-west", "context": "a", "dataBucket": "same", "apiServer": "https://a.example.com"},
                    {"name": "us-east", "context": "b", "dataBucket": "same"},
                ]
            },
        )


def test_stack_outputs_describe_each_regions_pipeline_and_wave() -> None:
    result = rendered("multiregion")
    outputs = result.stack_outputs["regions"]
    for region in result.config.regions:
        out = outputs[region.name]
        assert out["pipeline"]["workflow_template"] == f"argo/{pipeline.TEMPLATE_NAME}"
        assert out["pipeline"]["data_bucket"] == region.data_bucket
        assert f"--context {region.context}" in out["pipeline"]["submit"]
        assert out["waves"]["wave"] == region.wave
    assert outputs["us-east"]["waves"]["waits_for"] == ["eu-west"]
    assert outputs["eu-west"]["waves"]["read_by"] == ["us-east"]


def test_disabling_the_pipeline_or_harbor() -> None:
    off = rendered("dev", pipeline__enabled=False)
    assert not [o for o in off.manifests("local") if o["kind"] == "WorkflowTemplate"]
    no_harbor = rendered("dev", platform__harbor__enabled=False)
    names = {o["metadata"]["name"] for o in no_harbor.manifests("local")}
    assert pipeline.TEMPLATE_NAME in names and pipeline.HARBOR_SECRET not in names


def test_waves_declare_a_reader_upstream_and_a_gate_downstream() -> None:
    result = rendered("multiregion")
    first = {(o["kind"], o["metadata"]["name"]) for o in result.manifests("eu-west")}
    second = {(o["kind"], o["metadata"]["name"]) for o in result.manifests("us-east")}
    assert ("Secret", waves.READER_TOKEN) in first and ("Deployment", waves.GATE) not in first
    assert ("Deployment", waves.GATE) in second and ("Service", waves.GATE) in second
    assert ("Secret", waves.UPSTREAMS_SECRET) in second
    (role,) = [
        o for o in result.manifests("eu-west") if o["kind"] == "ClusterRole" and o["metadata"]["name"] == waves.READER
    ]
    assert all(rule["verbs"] == ["get"] and rule["resourceNames"] for rule in role["rules"])
    (gate,) = [
        o for o in result.manifests("us-east") if o["kind"] == "Deployment" and o["metadata"]["name"] == waves.GATE
    ]
    args = gate["spec"]["template"]["spec"]["containers"][0]["args"]
    parsed = build_parser().parse_args(args)
    assert parsed.upstream == ["eu-west"] and parsed.strategy == "canary"
    # The upstream kubeconfig is a Pulumi secret and names eu-west's API server.
    resource = next(r for r in result.resources if r.name == "region-us-east-waves-upstreams")
    assert resource.inputs["stringData"][SECRET_SIG] == SECRET_VALUE_SIG
    assert "https://api.fraud-prod-eu-west.example.com:6443" in json.dumps(resource.inputs)
    # It waits for the reader token of eu-west to exist.
    reader = next(r for r in result.resources if r.name == f"region-eu-west-waves-secret-{waves.READER_TOKEN}")
    assert reader.urn in resource.dependencies
    assert rendered("dev").stack_outputs["regions"]["local"].get("waves") is None


def test_wave_hooks_for_the_rollout_engines() -> None:
    config = rendered("multiregion").config
    eu, us = config.regions
    assert waves.confirm_rollout_webhook(config.upstream_regions(eu)) is None
    hook = waves.confirm_rollout_webhook(config.upstream_regions(us))
    assert hook == {
        "name": "rollout-wave",
        "type": "confirm-rollout",
        "url": f"{waves.GATE_URL}/gate",
        "timeout": "15s",
    }
    metric = waves.argo_wave_metric(config.upstream_regions(us))
    assert metric and metric["successCondition"] == "result.ready == true"
    assert metric["provider"]["web"]["url"] == f"{waves.GATE_URL}/status"


def test_wave_config_is_validated() -> None:
    from infra.config import ConfigError

    regions = [
        {"name": "eu-west", "context": "a", "wave": 0},
        {"name": "us-east", "context": "b", "wave": 1},
    ]
    with pytest.raises(ConfigError, match=r"regions\[0\].apiServer: is required: region us-east \(wave 1\) waits"):
        load_stack("multiregion", overrides={"regions": regions})
    reordered = [
        {**regions[1], "apiServer": "https://b.example.com"},
        {**regions[0], "apiServer": "https://a.example.com"},
    ]
    with pytest.raises(ConfigError, match=r"regions\[1\].wave: 0 comes after wave 1 of us-east"):
        load_stack("multiregion", overrides={"regions": reordered})
    same_wave = run_program("multiregion", overrides={"regions": [{**r, "wave": 0} for r in regions]})
    assert same_wave.config.waves() == [same_wave.config.regions]
    assert "waves" not in same_wave.stack_outputs["regions"]["eu-west"]
