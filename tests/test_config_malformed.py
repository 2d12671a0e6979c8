"""The malformed stack files of issue 13, one stack file per case: each is refused with the key named.

Each case is a whole ``Pulumi.<stack>.yaml`` written to a temporary folder and read exactly as
``fraudctl check-config`` reads it (infra/config/sources.py), in process. The expected line is the start of
one problem: ``<key>: <what is wrong...>``. The last tests run the same checks through the CLI and through
the Pulumi engine's config (``load_from_pulumi``, as ``pulumi up`` would see the stack).
"""

from __future__ import annotations

import contextvars
import os
from pathlib import Path

import pytest

from fraudctl.settings import MAX_PROBLEM_CHARS, MAX_PROBLEMS
from infra.config import ConfigError, check_stack, read_stack_file
from infra.config.sources import MAX_STACK_FILE_BYTES

# A valid stack: one region. Cases add lines under `config:` (two-space indent) or replace the file.
BASE = """\
config:
  pulumi:disable-default-providers: ["*"]
  fraud-platform:regions:
    - name: local
      context: kind-fraud-dev
"""
TOKEN = "ghp_0123456789abcdefSECRET"


def stack(extra: str) -> str:
    return BASE + extra


CASES: dict[str, tuple[str, str]] = {
    # --- accepted before (exit 0): secrets in plain text --------------------------------------------------
    "plain-git-token": (
        stack(f"  fraud-platform:gitToken: {TOKEN}\n"),
        "gitToken: is set in plain text; it is a secret: set it with `pulumi config set --secret gitToken",
    ),
    "plain-alert-webhook": (
        stack("  fraud-platform:alertWebhookUrl: https://hooks.slack.com/services/T0/B0/SECRET\n"),
        "alertWebhookUrl: is set in plain text; it is a secret",
    ),
    "secure-not-a-string": (
        stack("  fraud-platform:gitToken:\n    secure: 12345\n"),
        "gitToken: has a secure: value that is not the ciphertext string Pulumi writes (got a number)",
    ),
    "secure-with-other-keys": (
        stack("  fraud-platform:gitToken:\n    secure: v1:abc\n    plain: x\n"),
        "gitToken: must be a secret, got an object",
    ),
    # --- credentials inside URLs ----------------------------------------------------------------------------
    "git-url-user-password": (
        stack(f"  fraud-platform:git:\n    url: https://bot:{TOKEN}@github.com/example-org/fraud-platform.git\n"),
        "git.url: carries credentials in the URL (user:password@ or token@)",
    ),
    "git-url-token-as-user": (
        stack(f"  fraud-platform:git:\n    url: https://{TOKEN}@github.com/example-org/fraud-platform.git\n"),
        "git.url: carries credentials in the URL",
    ),
    "git-url-ssh-password": (
        stack(f"  fraud-platform:git:\n    url: ssh://git:{TOKEN}@github.com/example-org/fraud-platform.git\n"),
        "git.url: carries credentials in the URL",
    ),
    "git-url-token-in-query": (
        stack(
            f"  fraud-platform:git:\n    url: https://github.com/example-org/fraud-platform.git?access_token={TOKEN}\n"
        ),
        "git.url: carries a credential in its query (access_token)",
    ),
    "mlflow-endpoint-credentials": (
        stack(
            "  fraud-platform:mlflow:\n    artifactStore: bucket\n"
            f"    endpoint: https://AKIAEXAMPLE:{TOKEN}@s3.eu-west-1.amazonaws.com\n"
        ),
        "mlflow.endpoint: carries credentials in the URL",
    ),
    "git-api-url-credentials": (
        stack(f"  fraud-platform:git:\n    apiUrl: https://x:{TOKEN}@api.github.com\n"),
        "git.apiUrl: carries credentials in the URL",
    ),
    "region-api-server-credentials": (
        stack("  fraud-platform:strategy: canary\n").replace(
            "      context: kind-fraud-dev\n",
            f"      context: kind-fraud-dev\n      apiServer: https://admin:{TOKEN}@k8s:6443\n",
        ),
        "regions[0].apiServer: carries credentials in the URL",
    ),
    "chart-repository-credentials": (
        stack(f"  fraud-platform:platform:\n    harbor:\n      repository: https://u:{TOKEN}@helm.goharbor.io\n"),
        "platform.harbor.repository: carries credentials in the URL",
    ),
    "model-uri-credentials": (
        stack(f"  fraud-platform:model:\n    candidateUri: s3://AKIA:{TOKEN}@models/fraud/v2\n"),
        "model.candidateUri: carries credentials in the URL",
    ),
    # --- namespaces and keys --------------------------------------------------------------------------------
    "namespace-typo": (
        stack("  fraud-platfrom:strategy: blue-green\n"),
        "fraud-platfrom:strategy: unknown namespace 'fraud-platfrom' (did you mean fraud-platform?)",
    ),
    "key-without-namespace": (
        stack("  strategy: blue-green\n"),
        "strategy: config keys are <namespace>:<key>; write fraud-platform:strategy",
    ),
    "misspelt-key": (
        stack("  fraud-platform:stratgy: blue-green\n"),
        "stratgy: unknown key (did you mean strategy?); known keys are strategy, delivery",
    ),
    "misspelt-nested-key": (
        stack("  fraud-platform:serving:\n    replicaz: 3\n"),
        "serving.replicaz: unknown key (did you mean replicas?); allowed keys are replicas, minReplicas",
    ),
    "misspelt-component": (
        stack("  fraud-platform:platform:\n    harbr:\n      enabled: false\n"),
        "platform.harbr: unknown key (did you mean harbor?)",
    ),
    "misspelt-top-level-key": (
        "confg:\n  fraud-platform:strategy: canary\n",
        "confg: unknown top-level key (did you mean config?)",
    ),
    # --- duplicate keys (Pulumi refuses them) ---------------------------------------------------------------
    "duplicate-key": (
        stack("  fraud-platform:strategy: canary\n  fraud-platform:strategy: blue-green\n"),
        "strategy: is given twice (lines 6 and 7); Pulumi refuses duplicate keys",
    ),
    "duplicate-nested-key": (
        stack("  fraud-platform:serving:\n    replicas: 2\n    replicas: 3\n"),
        "serving.replicas: is given twice (lines 7 and 8)",
    ),
    # --- the file's shape -----------------------------------------------------------------------------------
    "top-level-list": ("- fraud-platform:strategy: canary\n", "config: a stack file is a mapping"),
    "config-is-a-list": (
        "config:\n  - fraud-platform:strategy: canary\n",
        "config: must be a mapping of <namespace>:<key>",
    ),
    "not-yaml": (stack("  fraud-platform:serving: {replicas: 2\n"), "config: is not valid YAML"),
    "two-documents": (BASE + "---\nconfig: {}\n", "config: is not valid YAML"),
    "merge-key": (
        stack("  fraud-platform:serving:\n    <<: {replicas: 3}\n"),
        "serving: uses a `<<` merge key; write the keys out",
    ),
    "custom-tag": (stack("  fraud-platform:strategy: !!binary Y2FuYXJ5\n"), "strategy: has the YAML tag"),
    # --- control characters, blanks -------------------------------------------------------------------------
    "trailing-newline-quoted": (
        'config:\n  fraud-platform:regions:\n    - name: "local\\n"\n      context: kind-fraud-dev\n',
        "regions[0].name: contains U+000A (line feed) at position 5; only printable text is allowed",
    ),
    "trailing-newline-block-scalar": (
        "config:\n  fraud-platform:regions:\n    - name: |\n        local\n      context: kind-fraud-dev\n",
        "regions[0].name: contains U+000A (line feed) at position 5",
    ),
    "tab-in-context": (
        'config:\n  fraud-platform:regions:\n    - name: local\n      context: "kind\\tfraud"\n',
        "regions[0].context: contains U+0009 (tab) at position 4",
    ),
    "nul-in-url": (
        stack('  fraud-platform:git:\n    url: "https://github.com/example-org/x.git\\0"\n'),
        "git.url: contains U+0000 (NUL)",
    ),
    "bidi-override-in-tag": (
        stack('  fraud-platform:serving:\n    imageTag: "0.1.0\\u202e"\n'),
        "serving.imageTag: contains U+202E (right-to-left override)",
    ),
    "whitespace-only-context": (
        "config:\n  fraud-platform:regions:\n    - name: local\n      context: '   '\n",
        "regions[0].context: is only whitespace",
    ),
    "padded-bucket": (
        stack("  fraud-platform:mlflow:\n    bucket: ' mlflow-artifacts'\n"),
        "mlflow.bucket: has leading or trailing whitespace",
    ),
    "control-character-in-key": (
        stack('  fraud-platform:serving:\n    "replicas\\n": 2\n'),
        "serving.'replicas\\n': unknown key (did you mean replicas?)",
    ),
    # --- resources ------------------------------------------------------------------------------------------
    "cpu-request-above-limit": (
        stack("  fraud-platform:serving:\n    cpuRequest: '2'\n    cpuLimit: 1500m\n"),
        "serving.cpuRequest: '2' is more than serving.cpuLimit ('1500m'); a request may not exceed its limit",
    ),
    "memory-request-above-limit": (
        stack("  fraud-platform:serving:\n    memoryRequest: 2Gi\n    memoryLimit: 1500Mi\n"),
        "serving.memoryRequest: '2Gi' is more than serving.memoryLimit ('1500Mi')",
    ),
    "memory-limit-zero": (
        stack('  fraud-platform:serving:\n    memoryLimit: "0"\n'),
        "serving.memoryLimit: '0' must be more than 0",
    ),
    "cpu-limit-zero-number": (
        stack("  fraud-platform:serving:\n    cpuLimit: 0\n"),
        "serving.cpuLimit: '0' must be more than 0",
    ),
    "memory-in-millibytes": (
        stack("  fraud-platform:serving:\n    memoryLimit: 512m\n"),
        "serving.memoryLimit: '512m' is not a whole number of bytes ('m' means milli; did you mean Mi?)",
    ),
    "memory-in-bytes-too-small": (
        stack("  fraud-platform:serving:\n    memoryRequest: '512'\n"),
        "serving.memoryRequest: '512' is less than 1Mi",
    ),
    "cpu-finer-than-millicore": (
        stack("  fraud-platform:serving:\n    cpuRequest: 0.0005\n"),
        "serving.cpuRequest: '0.0005' is finer than a millicore",
    ),
    "not-a-quantity": (
        stack("  fraud-platform:serving:\n    cpuLimit: lots\n"),
        "serving.cpuLimit: 'lots' is not valid",
    ),
    "training-limit-below-request": (
        stack("  fraud-platform:pipeline:\n    trainMemoryLimit: 1Gi\n"),
        "pipeline.trainMemoryLimit: '1Gi' is less than what the training steps request (2Gi)",
    ),
    # --- booleans, numbers and strings are not each other ---------------------------------------------------
    "simulate-error-on": (
        stack("  fraud-platform:serving:\n    simulateError: on\n"),
        "serving.simulateError: must be one of false, true, degrade; got 'on'",
    ),
    "simulate-error-yaml-boolean": (
        stack("  fraud-platform:serving:\n    simulateError: true\n"),
        "serving.simulateError: must be one of false, true, degrade; got True (a boolean: quote the value in YAML; "
        "with `pulumi config set --path` add `--type string`)",
    ),
    "enabled-yes": (
        stack("  fraud-platform:platform:\n    harbor:\n      enabled: yes\n"),
        "platform.harbor.enabled: must be true or false, got 'yes'",
    ),
    "replicas-boolean": (
        stack("  fraud-platform:serving:\n    replicas: true\n"),
        "serving.replicas: must be a whole number in [1, 100], got True (a boolean)",
    ),
    "replicas-string": (
        stack('  fraud-platform:serving:\n    replicas: "3"\n'),
        "serving.replicas: must be a whole number in [1, 100], got '3' (a string)",
    ),
    "image-tag-read-as-number": (
        stack("  fraud-platform:serving:\n    imageTag: 1.10\n"),
        "serving.imageTag: must be a string; YAML read 1.1 as a number, so quote it",
    ),
    # --- fault injection in production ----------------------------------------------------------------------
    "fault-injection-in-prod": (
        stack("  fraud-platform:environment: prod\n  fraud-platform:serving:\n    simulateError: degrade\n"),
        "serving.simulateError: is 'degrade' in environment prod: fault injection would break the service",
    ),
}


def problems_of(tmp_path: Path, name: str, text: str | bytes) -> list[str]:
    path = tmp_path / f"Pulumi.{name}.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    try:
        check_stack(read_stack_file(path), name)
    except ConfigError as error:
        return error.problems
    return []


def test_the_base_stack_is_valid(tmp_path: Path) -> None:
    assert problems_of(tmp_path, "base", BASE) == []


@pytest.mark.parametrize("name", sorted(CASES))
def test_malformed_stack_is_refused_with_the_key_named(tmp_path: Path, name: str) -> None:
    text, expected = CASES[name]
    found = problems_of(tmp_path, name, text)
    assert any(problem.startswith(expected) for problem in found), found
    # Secrets given in plain text (or inside URLs) are never quoted back.
    assert not [problem for problem in found if TOKEN in problem or "SECRET" in problem], found


def test_fault_injection_in_prod_when_it_is_explicitly_allowed(tmp_path: Path) -> None:
    allowed = stack(
        "  fraud-platform:environment: prod\n"
        "  fraud-platform:serving:\n    simulateError: degrade\n    allowFaultInjectionInProduction: true\n"
    )
    assert problems_of(tmp_path, "drill", allowed) == []
    staging = stack("  fraud-platform:environment: staging\n  fraud-platform:serving:\n    simulateError: 'true'\n")
    assert problems_of(tmp_path, "staging", staging) == []


def test_secrets_given_as_secure_are_accepted(tmp_path: Path) -> None:
    text = stack(
        "  fraud-platform:gitToken:\n    secure: v1:Zm9vYmFyYmF6\n"
        "  fraud-platform:alertWebhookUrl:\n    secure: v1:cXV1eA==\n"
        "  fraud-platform:git:\n    url: git@github.com:example-org/fraud-platform.git\n"
        "  fraud-platform:pipeline:\n    propose: commit\n"
    )
    assert problems_of(tmp_path, "secure", text) == []
    stack_file = read_stack_file(tmp_path / "Pulumi.secure.yaml")
    assert stack_file.secure == {"gitToken", "alertWebhookUrl"}
    config = check_stack(stack_file, "secure")
    assert config.git_token_set and config.alerts_enabled
    assert "Zm9v" not in repr(config)


def test_yaml_12_scalars_as_pulumi_reads_them(tmp_path: Path) -> None:
    """yes/on/off stay strings (YAML 1.2, as Go's yaml.v3 reads them); timestamps stay strings too."""
    from infra.config.yaml12 import load

    doc = load("a: on\nb: yes\nc: true\nd: 0o17\ne: 2024-01-01\nf: .inf\ng: ~\nh: 010\n", lambda *_: None)
    assert doc == {"a": "on", "b": "yes", "c": True, "d": 15, "e": "2024-01-01", "f": float("inf"), "g": None, "h": 8}


def test_every_duplicate_is_named_at_once(tmp_path: Path) -> None:
    text = stack(
        "  fraud-platform:strategy: canary\n  fraud-platform:strategy: canary\n"
        "  fraud-platform:serving:\n    replicas: 2\n    replicas: 2\n"
    )
    found = problems_of(tmp_path, "twice", text)
    assert [p.split(":")[0] for p in found if "given twice" in p] == ["strategy", "serving.replicas"]


# --- files that would exhaust memory or time ------------------------------------------------------------------

ALIAS_BOMB = (  # 682 bytes in issue 13's version; this one expands to 9^7 (4.8 million) strings
    'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
    "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\nd: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
    "e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nf: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
    "config:\n  fraud-platform:regions: *g\n"
)


def test_an_alias_bomb_is_refused_with_a_short_message(tmp_path: Path) -> None:
    found = problems_of(tmp_path, "bomb", ALIAS_BOMB)
    assert len(found) == 1 and "expands to more than 10000 values through YAML anchors and aliases" in found[0]
    assert found[0].startswith("e[")  # where the expansion ran over
    assert len(found[0]) < 300


def test_a_self_referencing_alias_is_refused(tmp_path: Path) -> None:
    found = problems_of(tmp_path, "loop", stack("  fraud-platform:analysis: &x\n    nested: *x\n"))
    assert found and ("nested deeper than" in found[0] or "expands to more than" in found[0]), found


def test_an_oversized_stack_file_is_refused_before_parsing(tmp_path: Path) -> None:
    text = stack("# " + "x" * MAX_STACK_FILE_BYTES + "\n")
    found = problems_of(tmp_path, "big", text)
    assert found == [f"Pulumi.big.yaml: is {len(text)} bytes; at most {MAX_STACK_FILE_BYTES} are read"]


def test_a_stack_file_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    found = problems_of(tmp_path, "latin1", BASE.encode() + b"  fraud-platform:strategy: can\xe4ry\n")
    assert found and found[0].startswith("Pulumi.latin1.yaml: is not UTF-8 text"), found


@pytest.mark.parametrize("kind", ["device", "fifo", "directory", "too-big"])
def test_metrics_file_must_be_a_small_regular_file(tmp_path: Path, kind: str) -> None:
    target = {
        "device": Path("/dev/zero"),
        "fifo": tmp_path / "fifo",
        "directory": tmp_path,
        "too-big": tmp_path / "big.json",
    }[kind]
    if kind == "fifo":
        os.mkfifo(target)  # nobody writes to it: reading it would block forever
    if kind == "too-big":
        target.write_bytes(b"{" + b" " * (1024 * 1024) + b"}")
    found = problems_of(tmp_path, kind, stack(f"  fraud-platform:model:\n    metricsFile: {target}\n"))
    expected = "at most 1048576 are read" if kind == "too-big" else "is not a regular file"
    assert any(p.startswith("model.metricsFile: ") and expected in p for p in found), found


def test_messages_are_bounded_in_number_and_size(tmp_path: Path) -> None:
    many = "".join(f"  fraud-platform:unknown{i}: value\n" for i in range(300))
    found = problems_of(tmp_path, "many", stack(many))
    assert len(found) == MAX_PROBLEMS + 1 and found[-1] == f"... and {300 - MAX_PROBLEMS} more problems"
    assert all(len(p) <= MAX_PROBLEM_CHARS for p in found)
    huge_key = stack(f"  fraud-platform:serving:\n    {'k' * 5000}: 1\n")
    assert all(len(p) <= MAX_PROBLEM_CHARS for p in problems_of(tmp_path, "key", huge_key))


# --- the same refusals through the CLI and through the engine's config ----------------------------------------


def test_check_config_exits_2_and_names_every_problem(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from fraudctl.cli import main

    bad = tmp_path / "Pulumi.bad.yaml"
    bad.write_text(stack(f"  fraud-platfrom:strategy: canary\n  fraud-platform:gitToken: {TOKEN}\n"))
    good = tmp_path / "Pulumi.good.yaml"
    good.write_text(BASE)
    assert main(["check-config", str(bad), str(good)]) == 2
    out, err = capsys.readouterr()
    assert f"{good}: ok" in out
    assert "fraud-platfrom:strategy: unknown namespace" in err and "gitToken: is set in plain text" in err
    assert TOKEN not in err


def _from_engine(config: dict[str, str], secret_keys: list[str], monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """``load_from_pulumi`` with the engine's config set as ``pulumi up`` sets it (all values strings)."""
    import pulumi
    from pulumi.runtime import config as runtime

    from infra.config import load_from_pulumi

    monkeypatch.setattr(pulumi, "get_stack", lambda: "engine")
    monkeypatch.delenv("PULUMI_CONFIG", raising=False)

    def load() -> list[str]:
        runtime.set_all_config(config, secret_keys)
        try:
            load_from_pulumi()
        except ConfigError as error:
            return error.problems
        return []

    return contextvars.Context().run(load)


REGIONS = '[{"name": "local", "context": "kind-fraud-dev"}]'


def test_the_engine_config_is_checked_like_a_stack_file(monkeypatch: pytest.MonkeyPatch) -> None:
    good = {"pulumi:disable-default-providers": '["*"]', "fraud-platform:regions": REGIONS}
    assert _from_engine(good, [], monkeypatch) == []
    typo = {**good, "fraud-platfrom:strategy": "canary", "fraud-platform:serving": '{"simulateError": "on"}'}
    found = _from_engine(typo, [], monkeypatch)
    assert any(p.startswith("fraud-platfrom:strategy: unknown namespace") for p in found), found
    assert any(p.startswith("serving.simulateError: must be one of false, true, degrade") for p in found), found


def test_the_engine_refuses_a_secret_key_set_in_plain_text(monkeypatch: pytest.MonkeyPatch) -> None:
    config = {"fraud-platform:regions": REGIONS, "fraud-platform:gitToken": TOKEN}
    found = _from_engine(config, [], monkeypatch)
    assert found and found[0].startswith("gitToken: is set in plain text") and TOKEN not in found[0]
    assert _from_engine(config, ["fraud-platform:gitToken"], monkeypatch) == []
