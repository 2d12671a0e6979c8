"""docs/CLUSTER.md and .github/workflows/e2e.yml: the same commands, and every name, path, key and version
they use is the one the program, `fraudctl cluster ca` and the pinned tools have (the e2e itself needs docker
and a kind cluster, so it runs on GitHub, not here)."""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from render_support import rendered

from fraudctl.cli import build_parser
from infra.config import load_stack
from infra.service.names import APP, NS, VERSION_POD_LABEL
from infra.verify.checks import platform_of, run_checks
from ops import registry_ca
from serving.faults import MODE_ENV

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "CLUSTER.md"
E2E = ROOT / ".github" / "workflows" / "e2e.yml"


def doc_sections(text: str) -> list[tuple[str, str]]:
    """(### heading, its bash commands) in order; a bash block outside a ### section is an error."""
    sections: list[tuple[str, str]] = []
    heading, block = None, None
    for line in text.splitlines():
        if block is not None:
            if line.startswith("```"):
                assert heading is not None, "a bash block before any ### section"
                if sections and sections[-1][0] == heading:
                    sections[-1] = (heading, sections[-1][1] + "\n".join(block) + "\n")
                else:
                    sections.append((heading, "\n".join(block) + "\n"))
                block = None
            else:
                block.append(line)
        elif line.startswith("### "):
            heading = line[4:].strip()
        elif line.startswith("## "):
            heading = None
        elif line.strip() == "```bash":
            block = []
    return sections


def e2e_steps() -> list[tuple[str, str]]:
    doc = yaml.safe_load(E2E.read_text())
    (job,) = doc["jobs"].values()
    return [(s["name"], s["run"]) for s in job["steps"] if "run" in s and not s["name"].startswith("CI: ")]


def commands(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_the_e2e_workflow_runs_exactly_the_docs_commands() -> None:
    sections = doc_sections(DOC.read_text())
    steps = e2e_steps()
    assert [name for name, _ in steps] == [heading for heading, _ in sections]
    for (name, run), (_heading, script) in zip(steps, sections, strict=True):
        assert commands(run) == commands(script), name
    # And the comparison is not vacuous: a changed command is a difference.
    assert commands(sections[1][1].replace("v0.25.0", "v0.26.0")) != commands(steps[1][1])


def test_the_e2e_asserts_a_promotion_and_a_rollback() -> None:
    steps = dict(e2e_steps())
    rollout = steps["Roll out v2 by canary"]
    drill = steps["Fault drill: a degraded model is rolled back"]
    assert f"-n {NS} wait canary/{APP} --for=jsonpath='{{.status.phase}}'=Succeeded" in rollout
    assert f"-n {NS} wait canary/{APP} --for=jsonpath='{{.status.phase}}'=Failed" in drill
    assert "serving.simulateError degrade" in drill
    doc = yaml.safe_load(E2E.read_text())
    (job,) = doc["jobs"].values()
    assert job["defaults"]["run"]["shell"] == "bash"  # -eo pipefail: every assertion fails the step
    teardown = job["steps"][-1]
    assert teardown["name"] == "Tear down" and teardown["if"] == "always()"


def test_the_names_the_commands_use_are_the_programs() -> None:
    text = "\n".join(script for _h, script in doc_sections(DOC.read_text()))
    config = load_stack("dev")
    cluster = registry_ca.kind_cluster_name(config.regions[0].context)
    assert f"kind get nodes --name {cluster}" in text and f"kind delete cluster --name {cluster}" in text
    # Flagger's primary of our target, the version label, the drill's variable.
    assert f"deploy {APP}-primary" in text and f"labels['{VERSION_POD_LABEL}']" in text
    assert f"@.name=='{MODE_ENV}'" in text
    # The port-forward reaches the tracking Service on a host MLflow allows.
    result = rendered("dev")
    objects = result.manifests("local")
    (service,) = [o for o in objects if o["kind"] == "Service" and o["metadata"]["name"] == "mlflow"]
    assert service["metadata"]["namespace"] == "mlflow" and service["spec"]["ports"][0]["port"] == 5000
    assert "kubectl -n mlflow port-forward svc/mlflow 5000:5000" in text
    (tracking,) = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == "mlflow"]
    args = tracking["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "localhost:5000" in args[args.index("--allowed-hosts") + 1].split(",")
    assert "MLFLOW_TRACKING_URI=http://localhost:5000" in text
    (canary,) = [o for o in objects if o["kind"] == "Canary"]
    assert (canary["metadata"]["namespace"], canary["metadata"]["name"]) == (NS, APP)


def test_the_config_the_commands_set_is_valid_at_each_pulumi_up(tmp_path: Path) -> None:
    """The page's `pulumi config set`s, applied in order to stack dev in a checkout where `fraudctl cluster ca`
    ran, give a config the program accepts at every `pulumi up`."""
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ("Pulumi.yaml", "Pulumi.dev.yaml"):
        (checkout / name).write_text((ROOT / name).read_text())
    registry_ca.write_kind_files(load_stack("dev"), None, checkout / ".cluster")
    overrides: dict = {}
    ups = 0
    for _h, script in doc_sections(DOC.read_text()):
        for line in commands(script):
            words = shlex.split(line)
            if words[:3] == ["pulumi", "config", "set"]:
                if "--secret" in words:
                    overrides[words[words.index("--secret") + 1]] = "ciphertext"
                    continue
                key, value = words[words.index("--path") + 1], words[words.index("--path") + 2]
                node = overrides
                *parents, leaf = key.split(".")
                for part in parents:
                    node = node.setdefault(part, {})
                node[leaf] = {"true": True, "false": False}.get(value, value)
            elif words[:2] == ["pulumi", "up"]:
                ups += 1
                config = load_stack("dev", overrides=overrides, root=checkout)  # ConfigError if refused
                assert config.registry_ca is not None and config.registry_ca.path == str(checkout / ".cluster/ca.crt")
    assert ups == 4 and overrides["serving"] == {"enabled": True, "simulateError": "degrade"}


def test_the_files_the_commands_read_are_those_cluster_ca_writes(tmp_path: Path) -> None:
    files = registry_ca.write_kind_files(load_stack("dev"), None, tmp_path / ".cluster")
    written = {str(p.relative_to(tmp_path)) for p in files.paths()}
    text = "\n".join(script for _h, script in doc_sections(DOC.read_text()))
    used = set(re.findall(r"\.cluster/[\w./:-]+", text))
    made_by_steps = {".cluster/bin", ".cluster/bin/kubectl", ".cluster/pulumi", ".cluster/port-forward.log"}
    folders = {".cluster/docker/certs.d/."}
    assert used - made_by_steps - folders <= written, sorted(used - made_by_steps - folders - written)
    assert (tmp_path / ".cluster" / "docker" / "certs.d").is_dir()
    # env.sh puts the tools the steps install, and the project's fraudctl, on PATH, and names the passphrase.
    shell = subprocess.run(
        ["bash", "-c", f". {files.env} && echo $PULUMI_CONFIG_PASSPHRASE_FILE && echo $PATH && command -v fraudctl"],
        capture_output=True,
        text=True,
        check=True,
    )
    passphrase, path, fraudctl = shell.stdout.splitlines()
    assert passphrase == str(files.passphrase) and files.passphrase.stat().st_mode & 0o077 == 0
    assert path.startswith(f"{files.folder}/bin:{files.folder}/pulumi/bin:{ROOT}/.venv/bin:")
    assert fraudctl == str(ROOT / ".venv" / "bin" / "fraudctl")


def test_the_tools_are_the_pinned_versions() -> None:
    text = "\n".join(script for _h, script in doc_sections(DOC.read_text()))
    assert f"sigs.k8s.io/kind@{registry_ca.KIND_VERSION}" in text
    node_version = re.search(r"kindest/node:(v[\d.]+)@", registry_ca.KIND_NODE_IMAGE)[1]
    assert f"release/{node_version}/bin/linux/amd64/kubectl" in text  # kubectl at the node's version
    assert f"--version {importlib.metadata.version('pulumi')} " in text  # the CLI at the SDK's version


def test_the_fraudctl_commands_exist_with_those_flags() -> None:
    parser = build_parser()
    for _h, script in doc_sections(DOC.read_text()):
        for line in commands(script):
            words = shlex.split(line)
            if words[0] in ("fraudctl", ".venv/bin/fraudctl"):
                parser.parse_args(words[1:])  # exits on an unknown command or flag


def test_the_readme_tutorial_points_at_the_cluster_page() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Tutorial, step by step", 1)[1].split("\n## ", 1)[0]
    assert "docs/CLUSTER.md" in table


@pytest.mark.parametrize("strategy", ["canary", "blue-green"])
def test_a_fresh_clusters_first_up_declares_the_platform_without_the_fraud_service(strategy: str) -> None:
    """serving.enabled false: nothing waits on a model that is not registered yet; the pipeline is there, and
    the fraud namespace (the same resource once the service arrives)."""
    result = rendered("dev", strategy, serving__enabled=False)
    objects = result.manifests("local")
    assert not [o for o in objects if o["metadata"].get("namespace") == NS]
    assert [o["metadata"]["name"] for o in objects if o["kind"] == "Namespace" and o["metadata"]["name"] == NS]
    (namespace,) = [
        r for r in result.resources if r.type == "kubernetes:core/v1:Namespace" and r.name.endswith("fraud-ns")
    ]
    enabled = rendered("dev", strategy)
    assert namespace.urn in {r.urn for r in enabled.resources}
    assert [o for o in objects if o["kind"] == "WorkflowTemplate"]
    assert "fraud" not in result.stack_outputs["regions"]["local"]
    for check in run_checks(platform_of(result, "local"), ["references", "hardening", "namespaces", "unique"]):
        assert check.failures == [], (check.name, check.failures[:3])
