"""``fraudctl pipeline ...``, ``fraudctl propose-version`` and ``fraudctl wave-gate``.

* ``pipeline submit``: run the training WorkflowTemplate in a cluster, optionally following it.
* ``pipeline fetch-data`` / ``pipeline register-challenger``: steps of that workflow (infra/pipeline.py).
* ``propose-version``: the workflow's last step, a pull request or commit changing the stack config.
* ``wave-gate serve | check``: the multi-region rollout wave gate (ops/wave_gate.py).
* ``cluster ca``: the registry CA and a kind cluster's files to trust it (ops/registry_ca.py).

Progress and step status are logged (stderr, fraudctl's logging setup); results (JSON, names, logs of
followed steps) go to stdout. Bad input (flags, kubeconfig, credentials, an unreachable or unready cluster) is
a UsageError: one line, exit 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from fraudctl.errors import UsageError
from fraudctl.files import write_text
from ops import pipeline_contract as contract

if TYPE_CHECKING:
    from ops.cluster import Cluster
    from ops.wave_gate import WaveGate

log = logging.getLogger(__name__)


def _kube_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--context", help="kubeconfig context (default: the kubeconfig's current-context)")
    parser.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)")


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], bench: object) -> None:
    group = commands.add_parser("pipeline", help="the training pipeline (Argo Workflows): submit and its steps")
    sub = group.add_subparsers(dest="pipeline_command", required=True, metavar="SUBCOMMAND")

    _, candidates = contract.baseline_and_candidates()
    submit = sub.add_parser("submit", help=f"run the {contract.TEMPLATE_NAME} WorkflowTemplate in a cluster")
    submit.add_argument(
        "--model-version", required=True, help=f"candidate to train and propose ({', '.join(candidates)})"
    )
    submit.add_argument("--follow", action="store_true", help="stream step status and logs until the workflow ends")
    submit.add_argument(
        "--namespace", default=contract.DEFAULT_NAMESPACE, help="where the template lives (default: %(default)s)"
    )
    submit.add_argument("--revision", help="git revision to build and propose against (default: the template's)")
    submit.add_argument("--propose", choices=contract.PROPOSE_MODES, help="how to propose (default: the template's)")
    _kube_flags(submit)
    submit.set_defaults(handler=run_submit)

    fetch = sub.add_parser("fetch-data", help="copy the training CSV from the region's bucket into the dataset cache")
    fetch.add_argument("--bucket", help="the region's data bucket (default: the canonical source, see fraudctl data)")
    fetch.add_argument("--key", default="creditcard.csv", help="object key of the CSV (default: %(default)s)")
    fetch.add_argument("--endpoint", help="S3 endpoint URL (default: $AWS_ENDPOINT_URL_S3, else AWS)")
    fetch.set_defaults(handler=run_fetch_data)

    reg = sub.add_parser(
        "register-challenger", help="confirm the gate made this candidate the MLflow challenger; tag and output it"
    )
    reg.add_argument("--model-version", required=True, help="the candidate's version label (e.g. v2)")
    reg.add_argument("--workflow", default="", help="workflow name to tag the model version with")
    reg.add_argument("--revision", default="", help="source revision to tag the model version with")
    reg.add_argument("--outputs", type=Path, help="folder to write registry-version and model-uri files to")
    reg.set_defaults(handler=run_register_challenger)

    propose = commands.add_parser(
        "propose-version", help="propose a model version as a change to Pulumi.<stack>.yaml (pull request or commit)"
    )
    propose.add_argument("--stack", required=True, help="stack whose config file to change")
    propose.add_argument("--model-version", required=True, help="model.candidateVersion to set (e.g. v2)")
    propose.add_argument("--model-uri", required=True, help="model.candidateUri to set (e.g. models:/fraud-detector/7)")
    propose.add_argument("--mode", choices=contract.PROPOSE_MODES, default="pull-request")
    propose.add_argument("--repo", required=True, help="git URL (or path) of the repository to change")
    propose.add_argument("--base", default="main", help="branch to change or to open the pull request against")
    propose.add_argument("--github-api", help="GitHub REST API URL (pull-request mode), e.g. https://api.github.com")
    propose.add_argument("--github-repo", help="owner/name on GitHub (pull-request mode)")
    propose.add_argument("--branch", help="branch name for the pull request (default: model/<stack>/<version>-...)")
    propose.add_argument("--build-metadata", default="", help="BuildKit metadata JSON of the built serving image")
    propose.add_argument("--gate-report", type=Path, help="gate.json of the evaluation, quoted in the description")
    propose.add_argument("--workflow", default="", help="workflow name, for the branch and the description")
    propose.add_argument("--outputs", type=Path, help="folder to write the proposal-url file to")
    propose.set_defaults(handler=run_propose)

    gate = commands.add_parser("wave-gate", help="multi-region rollout wave gate (Flagger confirm-rollout webhook)")
    gate_sub = gate.add_subparsers(dest="wave_command", required=True, metavar="SUBCOMMAND")
    for name, helptext in (
        ("serve", "serve POST /gate (Flagger) and GET /status (Argo Rollouts) over HTTP"),
        ("check", "decide once: exit 0 when the previous wave promoted this region's version, 1 when not"),
    ):
        p = gate_sub.add_parser(name, help=helptext)
        p.add_argument("--kubeconfig", required=True, help="kubeconfig with one context per upstream region")
        p.add_argument(
            "--upstream", action="append", default=[], metavar="CONTEXT", help="upstream region context (repeat)"
        )
        p.add_argument("--strategy", choices=("canary", "blue-green"), required=True)
        p.add_argument("--local-kubeconfig", help="this region's cluster (default: in-cluster service account)")
        p.add_argument("--local-context", help="context in --local-kubeconfig")
        p.add_argument("--namespace", default="fraud", help="namespace of the rollout (default: %(default)s)")
        p.add_argument("--name", default="fraud-detector", help="name of the Canary/Rollout (default: %(default)s)")
        if name == "serve":
            p.add_argument("--host", default="0.0.0.0", help="listen address (default: %(default)s)")
            p.add_argument("--port", type=int, default=8080, help="listen port (default: %(default)s)")
            p.add_argument("--cache-seconds", type=float, default=5.0, help="reuse a decision this long")
        p.set_defaults(handler=run_wave_gate_serve if name == "serve" else run_wave_gate_check)

    cluster = commands.add_parser("cluster", help="prepare a cluster for the platform (docs/CLUSTER.md)")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True, metavar="SUBCOMMAND")
    ca = cluster_sub.add_parser(
        "ca", help="make the registry CA (kept once made) and the files a kind cluster needs to trust Harbor"
    )
    ca.add_argument("--stack", required=True, help="stack whose registry settings to use (Pulumi.<stack>.yaml)")
    ca.add_argument("--region", help="region of the stack (default: its only one)")
    ca.add_argument("--out", type=Path, default=Path(".cluster"), help="folder to write to (default: %(default)s)")
    ca.set_defaults(handler=run_cluster_ca)


# ---------------------------------------------------------------------------------------------------
# pipeline submit


def _connect(kubeconfig: str | None, context: str | None, *, allow_in_cluster: bool = True) -> Cluster:
    from ops.cluster import ClusterConfigError, connect

    try:
        return connect(kubeconfig, context, allow_in_cluster=allow_in_cluster)
    except ClusterConfigError as exc:
        raise UsageError(str(exc)) from exc


def run_submit(args: argparse.Namespace) -> int:
    from ops import workflow_run
    from ops.cluster import ClusterError

    _, candidates = contract.baseline_and_candidates()
    if args.model_version not in candidates:
        raise UsageError(
            f"--model-version {args.model_version!r}: allowed {', '.join(candidates)} "
            "(the baseline is trained by the pipeline itself, not as a candidate)"
        )
    parameters = {k: v for k, v in (("revision", args.revision), ("propose", args.propose)) if v}
    with _connect(args.kubeconfig, args.context) as cluster:
        try:
            created = workflow_run.submit(cluster, args.namespace, args.model_version, parameters)
        except ClusterError as exc:
            # Nothing was submitted: credentials, reachability or a missing Argo are the user's to fix.
            raise UsageError(str(exc)) from exc
        name = created["metadata"]["name"]
        log.info(
            "submitted workflow %s/%s (%s, model %s) on %s",
            args.namespace,
            name,
            contract.TEMPLATE_NAME,
            args.model_version,
            cluster.context,
        )
        if not args.follow:
            print(name)
            return 0
        try:
            final = workflow_run.follow(cluster, args.namespace, created)
        except ClusterError as exc:
            log.error("pipeline submit: lost workflow %s/%s: %s", args.namespace, name, exc)
            return 1
    finished = (final.get("status") or {}).get("phase") == "Succeeded"
    (log.info if finished else log.error)("%s", workflow_run.summary(final))
    return 0 if finished else 1


# ---------------------------------------------------------------------------------------------------
# pipeline fetch-data


def run_fetch_data(args: argparse.Namespace) -> int:
    from model.data import cached_dataset_path, ensure_dataset

    if not args.bucket:
        path = ensure_dataset()
        print(json.dumps({"dataset": str(path), "source": "canonical"}))
        return 0
    import boto3
    from botocore.exceptions import BotoCoreError, ClientError

    target_dir = cached_dataset_path().parent
    target_dir.mkdir(parents=True, exist_ok=True)
    endpoint = args.endpoint or os.environ.get("AWS_ENDPOINT_URL_S3") or None
    s3 = boto3.client("s3", endpoint_url=endpoint)
    with tempfile.TemporaryDirectory(dir=target_dir, prefix=".bucket-") as scratch:
        local = Path(scratch) / Path(args.key).name
        log.info("fetch-data: downloading s3://%s/%s from %s", args.bucket, args.key, endpoint or "AWS")
        try:
            s3.download_file(args.bucket, args.key, str(local))
        except (BotoCoreError, ClientError) as exc:
            log.error("pipeline fetch-data: s3://%s/%s: %s", args.bucket, args.key, exc)
            return 1
        # Verified against the canonical sha256 before it replaces the cache (else a DatasetError: a UsageError).
        path = ensure_dataset(local)
    print(json.dumps({"dataset": str(path), "source": f"s3://{args.bucket}/{args.key}"}))
    return 0


# ---------------------------------------------------------------------------------------------------
# pipeline register-challenger


def _write_outputs(folder: Path | None, values: dict[str, str]) -> None:
    if folder is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    for name, value in values.items():
        write_text(folder / name, value)


def run_register_challenger(args: argparse.Namespace) -> int:
    from model.registry import (
        CHALLENGER,
        REGISTERED_MODEL_NAME,
        TAG_GATE,
        TAG_MODEL_VERSION,
        RegistryError,
        aliases,
        connect,
        set_alias,
    )

    try:
        client, _ = connect()
    except RegistryError as exc:
        log.error("pipeline register-challenger: %s", exc)
        return 1
    version = aliases(client).get(CHALLENGER)
    if version is None:
        log.error(
            "pipeline register-challenger: no %s alias on %s; the gate did not pass", CHALLENGER, REGISTERED_MODEL_NAME
        )
        return 1
    details = client.get_model_version(REGISTERED_MODEL_NAME, version)
    tags = details.tags or {}
    if tags.get(TAG_MODEL_VERSION) != args.model_version:
        log.error(
            "pipeline register-challenger: %s is version %s (%s), not a %s",
            CHALLENGER,
            version,
            tags.get(TAG_MODEL_VERSION, "untagged"),
            args.model_version,
        )
        return 1
    if tags.get(TAG_GATE) != "passed":
        log.error(
            "pipeline register-challenger: version %s has %s=%r, not 'passed'", version, TAG_GATE, tags.get(TAG_GATE)
        )
        return 1
    set_alias(client, CHALLENGER, version)  # idempotent: the gate set it; this pins what is proposed
    for key, value in (("fraud.workflow", args.workflow), ("fraud.source_revision", args.revision)):
        if value:
            client.set_model_version_tag(REGISTERED_MODEL_NAME, version, key, value)
    uri = f"models:/{REGISTERED_MODEL_NAME}/{version}"
    _write_outputs(args.outputs, {"registry-version": str(version), "model-uri": uri})
    print(json.dumps({"model_version": args.model_version, "registry_version": str(version), "model_uri": uri}))
    return 0


# ---------------------------------------------------------------------------------------------------
# propose-version


def _credential(name: str) -> str | None:
    """``name`` from the environment, or from the file ``<name>_FILE`` names (a mounted Secret; one trailing
    newline dropped). None when neither is set."""
    path = os.environ.get(f"{name}_FILE")
    if not path:
        return os.environ.get(name) or None
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{name}_FILE: {path} cannot be read ({getattr(exc, 'strerror', None) or exc})") from None
    return text.removesuffix("\n") or None


def run_propose(args: argparse.Namespace) -> int:
    from ops.propose import ProposeError, image_from_build_metadata, propose

    gate = None
    if args.gate_report is not None:
        try:
            gate = json.loads(args.gate_report.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise UsageError(f"--gate-report {args.gate_report}: cannot be read as JSON ({exc})") from exc
    try:
        image = image_from_build_metadata(args.build_metadata)
        proposal = propose(
            stack=args.stack,
            model_version=args.model_version,
            model_uri=args.model_uri,
            mode=args.mode,
            repo=args.repo,
            base=args.base,
            github_api=args.github_api,
            github_repo=args.github_repo,
            username=_credential("GIT_USERNAME"),
            token=_credential("GIT_TOKEN"),
            image=image,
            workflow=args.workflow,
            gate=gate,
            branch=args.branch,
        )
    except ProposeError as exc:
        log.error("propose-version: %s", exc)
        return 1
    if proposal.changed:
        log.info("propose-version: %s %s", "pull request" if args.mode == "pull-request" else "commit", proposal.url)
    else:
        log.info(
            "propose-version: Pulumi.%s.yaml already has %s (%s); nothing to do",
            args.stack,
            args.model_version,
            args.model_uri,
        )
    _write_outputs(args.outputs, {"proposal-url": proposal.url})
    print(json.dumps(proposal.to_json()))
    return 0


# ---------------------------------------------------------------------------------------------------
# wave-gate


def _wave_gate(args: argparse.Namespace) -> WaveGate:
    from ops.wave_gate import ClusterReader, WaveGate

    if not args.upstream:
        raise UsageError("--upstream: give at least one upstream region context")
    local = _connect(args.local_kubeconfig, args.local_context, allow_in_cluster=True)
    upstream = {context: _connect(args.kubeconfig, context, allow_in_cluster=False) for context in args.upstream}

    def reader(cluster: Cluster) -> ClusterReader:
        return ClusterReader(cluster, args.strategy, args.namespace, args.name)

    return WaveGate(
        reader(local), {name: reader(c) for name, c in upstream.items()}, getattr(args, "cache_seconds", 0.0)
    )


def run_wave_gate_check(args: argparse.Namespace) -> int:
    gate = _wave_gate(args)
    try:
        decision = gate.decide()
    finally:
        gate.close()
    print(json.dumps(decision.to_json(), indent=2))
    return 0 if decision.ready else 1


def run_wave_gate_serve(args: argparse.Namespace) -> int:
    from ops.wave_gate import listen, serve

    gate = _wave_gate(args)
    try:
        try:
            sock = listen(args.host, args.port)
        except OSError as exc:
            message = f"--host {args.host} --port {args.port}: cannot listen there ({exc.strerror or exc})"
            raise UsageError(message) from exc
        host, port = sock.getsockname()[:2]
        log.info("wave-gate: serving on %s:%s (upstream: %s)", host, port, ", ".join(args.upstream))
        serve(gate, sock)
    finally:
        gate.close()
    return 0


# ---------------------------------------------------------------------------------------------------
# cluster ca


def run_cluster_ca(args: argparse.Namespace) -> int:
    from infra.config import ConfigError, load_stack
    from ops.registry_ca import CaError, write_kind_files

    try:
        # The CA is what this makes: a stack already pointing at it (or at one not made yet) is read without it.
        config = load_stack(args.stack, overrides={"registry": {"caCertFile": ""}, "registryCaKey": ""})
    except ConfigError as error:
        raise UsageError(f"stack {args.stack}: " + "; ".join(error.problems)) from None
    except FileNotFoundError as error:
        raise UsageError(f"stack {args.stack}: {error.filename} does not exist") from None
    try:
        files = write_kind_files(config, args.region, args.out)
    except CaError as error:
        raise UsageError(str(error)) from None
    except OSError as error:
        raise UsageError(f"{error.filename}: {error.strerror}") from None
    for path in files.paths():
        print(path)
    log.info(
        "kind cluster %s: `kind create cluster --config %s`; then set registry.caCertFile and the secret "
        "registryCaKey (docs/CLUSTER.md)",
        files.cluster_name,
        files.kind_config,
    )
    return 0
