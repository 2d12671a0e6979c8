"""The pipeline's own steps: ``fraudctl pipeline register-challenger`` against the embedded MLflow store and
``fraudctl pipeline fetch-data`` from an S3 bucket served by a real moto server on loopback."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import pytest

from fraudctl.cli import main
from model.registry import CHALLENGER, REGISTERED_MODEL_NAME, TAG_GATE, TAG_MODEL_VERSION, aliases, connect


def register_version(home: Path, label: str, gate: str | None) -> str:
    """A registered fraud-detector version with the tags the gate leaves (a tiny artifact, no training)."""
    import mlflow

    client, experiment_id = connect(home)
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_dict({"label": label}, "model/meta.json")
    with contextlib.suppress(mlflow.exceptions.MlflowException):
        client.create_registered_model(REGISTERED_MODEL_NAME)
    version = client.create_model_version(
        REGISTERED_MODEL_NAME, f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    ).version
    client.set_model_version_tag(REGISTERED_MODEL_NAME, version, TAG_MODEL_VERSION, label)
    if gate:
        client.set_model_version_tag(REGISTERED_MODEL_NAME, version, TAG_GATE, gate)
    return str(version)


def test_register_challenger_confirms_the_gate_tags_and_outputs(
    fraud_home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    outputs = tmp_path / "outputs"
    args = ["pipeline", "register-challenger", "--model-version", "v2", "--outputs", str(outputs)]
    # Nothing passed the gate yet: no challenger, the step fails and writes nothing.
    register_version(fraud_home, "v1", None)
    assert main(args) == 1
    assert "no challenger alias" in capsys.readouterr().err and not outputs.exists()

    rejected = register_version(fraud_home, "v2", "failed")
    client, _ = connect(fraud_home)
    client.set_registered_model_alias(REGISTERED_MODEL_NAME, CHALLENGER, rejected)
    assert main(args) == 1
    assert "fraud.gate='failed', not 'passed'" in capsys.readouterr().err

    passed = register_version(fraud_home, "v2", "passed")
    client.set_registered_model_alias(REGISTERED_MODEL_NAME, CHALLENGER, passed)
    assert main([*args, "--workflow", "fraud-model-training-abc", "--revision", "deadbeef"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == {
        "model_version": "v2",
        "registry_version": passed,
        "model_uri": f"models:/fraud-detector/{passed}",
    }
    assert (outputs / "registry-version").read_text() == passed
    assert (outputs / "model-uri").read_text() == f"models:/fraud-detector/{passed}"
    tags = client.get_model_version(REGISTERED_MODEL_NAME, passed).tags
    assert tags["fraud.workflow"] == "fraud-model-training-abc" and tags["fraud.source_revision"] == "deadbeef"
    assert aliases(client)[CHALLENGER] == passed

    # A challenger of another label is not this candidate.
    v1 = register_version(fraud_home, "v1", "passed")
    client.set_registered_model_alias(REGISTERED_MODEL_NAME, CHALLENGER, v1)
    assert main(args) == 1
    assert f"challenger is version {v1} (v1), not a v2" in capsys.readouterr().err


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch):
    """A real S3 API (moto server) on a free loopback port, with the region's data bucket."""
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    for key, value in {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "eu-west-1",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    import httpx

    httpx.post(f"{endpoint}/moto-api/reset")  # moto's state is per process: start empty
    client = boto3.client("s3", endpoint_url=endpoint)
    client.create_bucket(Bucket="fraud-data-eu-west", CreateBucketConfiguration={"LocationConstraint": "eu-west-1"})
    yield client
    server.stop()


def test_fetch_data_rejects_a_file_that_is_not_the_canonical_dataset(
    s3, fraud_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s3.put_object(Bucket="fraud-data-eu-west", Key="creditcard.csv", Body=b"Time,V1,Class\n0,0.1,0\n")
    code = main(["pipeline", "fetch-data", "--bucket", "fraud-data-eu-west", "--key", "creditcard.csv"])
    assert code == 2
    assert "does not match the canonical creditcard.csv" in capsys.readouterr().err
    cache = fraud_home / "data"
    assert not (cache / "creditcard.csv").exists()
    assert not [p for p in cache.iterdir() if not p.name.startswith(".")] if cache.exists() else True

    assert main(["pipeline", "fetch-data", "--bucket", "fraud-data-eu-west", "--key", "missing.csv"]) == 1
    assert "s3://fraud-data-eu-west/missing.csv" in capsys.readouterr().err


def test_fetch_data_caches_the_regions_copy_of_the_dataset(
    s3, fraud_home: Path, ulb_dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from model.data import DATASET_SHA256, sha256_file

    s3.upload_file(str(ulb_dataset), "fraud-data-eu-west", "training/creditcard.csv")
    assert main(["pipeline", "fetch-data", "--bucket", "fraud-data-eu-west", "--key", "training/creditcard.csv"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["source"] == "s3://fraud-data-eu-west/training/creditcard.csv"
    cached = fraud_home / "data" / "creditcard.csv"
    assert Path(result["dataset"]) == cached and sha256_file(cached) == DATASET_SHA256
