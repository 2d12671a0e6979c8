"""MLflow tracking server backed by PostgreSQL, artifacts in S3-compatible storage (in-cluster MinIO
by default, or an existing bucket). Objects are built by plain functions; ``MlflowTracking`` declares them.

Every credential reaches its process as a file (a Secret mounted read-only), never as an environment
variable of the pod: PostgreSQL reads ``POSTGRES_PASSWORD_FILE`` (the postgres image's docker-entrypoint.sh
``file_env``), MinIO ``MINIO_CONFIG_ENV_FILE`` (its image's entrypoint and ``minio server`` both read that
file of ``MINIO_*`` settings), ``mc`` its config.json, boto3 (the MLflow server's artifact proxy) the shared
credentials file ``AWS_SHARED_CREDENTIALS_FILE`` names, and the MLflow server its backend store URI, read
from its file by the start command so the password is on no command line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi

from infra import charts, k8s
from infra.config import MlflowSettings
from infra.platform import ArtifactStoreRef, PlatformArgs, PlatformComponent

NS = charts.NAMESPACES["mlflow"]
POSTGRES = "mlflow-postgres"
MINIO = "mlflow-minio"
TRACKING = "mlflow"
POSTGRES_SECRET = "mlflow-postgres"
POSTGRES_PASSWORD_KEY = "password"
BACKEND_URI_KEY = "backend-store-uri"
S3_SECRET = "mlflow-s3"
MINIO_ENV_KEY = "config.env"
CREDENTIALS_KEY = "credentials"
MC_CONFIG_KEY = "config.json"
SECRETS_DIR = "/etc/mlflow-secrets"
TRACKING_PORT = 5000
TRACKING_URL = f"http://{TRACKING}.{NS}.svc.cluster.local:{TRACKING_PORT}"
MINIO_ENDPOINT = f"http://{MINIO}.{NS}.svc.cluster.local:9000"
MC_IMAGE = "quay.io/minio/mc:RELEASE.2024-11-21T17-21-54Z"
# The in-cluster MinIO's alias in mc's config (mc_config).
MC_ALIAS = "store"


def backend_store_uri(password: str) -> str:
    return f"postgresql://mlflow:{password}@{POSTGRES}:5432/mlflow"


def minio_env(access_key: str, secret_key: str) -> str:
    """MinIO's settings file (MINIO_CONFIG_ENV_FILE): KEY=value lines."""
    return f"MINIO_ROOT_USER={access_key}\nMINIO_ROOT_PASSWORD={secret_key}\n"


def aws_credentials(access_key: str, secret_key: str) -> str:
    """boto3's shared credentials file (the default profile)."""
    return f"[default]\naws_access_key_id = {access_key}\naws_secret_access_key = {secret_key}\n"


def mc_config(access_key: str, secret_key: str) -> str:
    """mc's config.json with one alias for the in-cluster MinIO."""
    alias = {"url": MINIO_ENDPOINT, "accessKey": access_key, "secretKey": secret_key, "api": "s3v4", "path": "auto"}
    return json.dumps({"version": "10", "aliases": {MC_ALIAS: alias}})


def s3_secret_data(access_key: pulumi.Input[str], secret_key: pulumi.Input[str]) -> dict[str, pulumi.Output[str]]:
    """The MinIO credentials in each form a reader wants, all Pulumi secrets."""
    pair = pulumi.Output.all(access_key, secret_key)
    return {
        MINIO_ENV_KEY: pulumi.Output.secret(pair.apply(lambda keys: minio_env(*keys))),
        CREDENTIALS_KEY: pulumi.Output.secret(pair.apply(lambda keys: aws_credentials(*keys))),
        MC_CONFIG_KEY: pulumi.Output.secret(pair.apply(lambda keys: mc_config(*keys))),
    }


def _volume_claim(size: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
    }


def _stateful_set(name: str, replicas: int, pod: dict[str, Any], size: str) -> k8s.Manifest:
    obj_labels = k8s.labels(name, "mlflow")
    selector = {"app.kubernetes.io/name": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": {"name": name, "namespace": NS, "labels": obj_labels},
        "spec": {
            "serviceName": name,
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            "template": {"metadata": {"labels": obj_labels}, "spec": pod},
            "volumeClaimTemplates": [_volume_claim(size)],
        },
    }


def postgres_objects(settings: MlflowSettings) -> list[k8s.Manifest]:
    tmp_volume, tmp_mount = k8s.tmp_volume()
    run_volume = {"name": "run", "emptyDir": {}}
    secret_volume, secret_mount = k8s.secret_files("db", POSTGRES_SECRET, SECRETS_DIR, [POSTGRES_PASSWORD_KEY])
    pod = {
        "securityContext": k8s.pod_security_context(),
        "automountServiceAccountToken": False,
        "containers": [
            k8s.container(
                "postgres",
                settings.postgres_image,
                env=[
                    {"name": "POSTGRES_USER", "value": "mlflow"},
                    {"name": "POSTGRES_DB", "value": "mlflow"},
                    {"name": "POSTGRES_PASSWORD_FILE", "value": f"{SECRETS_DIR}/{POSTGRES_PASSWORD_KEY}"},
                    {"name": "PGDATA", "value": "/var/lib/postgresql/data/pgdata"},
                ],
                ports=[{"name": "postgres", "containerPort": 5432}],
                requests={"cpu": "100m", "memory": "256Mi"},
                limits={"cpu": "1", "memory": "1Gi"},
                probes={
                    "readinessProbe": {"exec": {"command": ["pg_isready", "-U", "mlflow"]}, "periodSeconds": 10},
                    "livenessProbe": {"exec": {"command": ["pg_isready", "-U", "mlflow"]}, "periodSeconds": 30},
                },
                volume_mounts=[
                    {"name": "data", "mountPath": "/var/lib/postgresql/data"},
                    {"name": "run", "mountPath": "/var/run/postgresql"},
                    tmp_mount,
                    secret_mount,
                ],
                # Not the image's postgres (999): its entrypoint fakes the passwd entry initdb wants for any
                # uid (nss_wrapper), and fsGroup gives the data volume to it.
            )
        ],
        "volumes": [tmp_volume, run_volume, secret_volume],
    }
    svc = k8s.service(
        POSTGRES,
        NS,
        {"app.kubernetes.io/name": POSTGRES},
        [{"name": "postgres", "port": 5432, "targetPort": 5432}],
        obj_labels=k8s.labels(POSTGRES, "mlflow"),
    )
    return [_stateful_set(POSTGRES, 1, pod, settings.storage_size), svc]


def minio_objects(settings: MlflowSettings) -> list[k8s.Manifest]:
    tmp_volume, tmp_mount = k8s.tmp_volume()
    secret_volume, secret_mount = k8s.secret_files("s3", S3_SECRET, SECRETS_DIR, [MINIO_ENV_KEY])
    pod = {
        "securityContext": k8s.pod_security_context(),
        "automountServiceAccountToken": False,
        "containers": [
            k8s.container(
                "minio",
                settings.minio_image,
                args=["server", "/data", "--console-address", ":9001"],
                env=[{"name": "MINIO_CONFIG_ENV_FILE", "value": f"{SECRETS_DIR}/{MINIO_ENV_KEY}"}],
                ports=[{"name": "s3", "containerPort": 9000}, {"name": "console", "containerPort": 9001}],
                requests={"cpu": "100m", "memory": "256Mi"},
                limits={"cpu": "1", "memory": "1Gi"},
                probes={
                    "readinessProbe": {"httpGet": {"path": "/minio/health/ready", "port": 9000}},
                    "livenessProbe": {"httpGet": {"path": "/minio/health/live", "port": 9000}},
                },
                volume_mounts=[{"name": "data", "mountPath": "/data"}, tmp_mount, secret_mount],
            )
        ],
        "volumes": [tmp_volume, secret_volume],
    }
    svc = k8s.service(
        MINIO,
        NS,
        {"app.kubernetes.io/name": MINIO},
        [{"name": "s3", "port": 9000, "targetPort": 9000}],
        obj_labels=k8s.labels(MINIO, "mlflow"),
    )
    tmp_volume, tmp_mount = k8s.tmp_volume()
    mc_volume, mc_mount = k8s.secret_files("mc", S3_SECRET, SECRETS_DIR, [MC_CONFIG_KEY])
    bucket = settings.bucket
    make_bucket = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "mlflow-make-bucket",
            "namespace": NS,
            "labels": k8s.labels("mlflow-make-bucket", "mlflow"),
        },
        "spec": {
            "backoffLimit": 10,
            "template": {
                "metadata": {"labels": k8s.labels("mlflow-make-bucket", "mlflow")},
                "spec": {
                    "restartPolicy": "OnFailure",
                    "securityContext": k8s.pod_security_context(),
                    "automountServiceAccountToken": False,
                    "containers": [
                        k8s.container(
                            "make-bucket",
                            MC_IMAGE,
                            command=["/bin/sh", "-c"],
                            # mc rewrites its config dir: a writable copy of the mounted config.json.
                            args=[
                                f"mkdir -p /tmp/mc && cp {SECRETS_DIR}/{MC_CONFIG_KEY} /tmp/mc/config.json"
                                f" && mc --config-dir /tmp/mc mb --ignore-existing {MC_ALIAS}/{bucket}"
                            ],
                            env=[{"name": "HOME", "value": "/tmp"}],
                            requests={"cpu": "10m", "memory": "32Mi"},
                            limits={"cpu": "200m", "memory": "128Mi"},
                            volume_mounts=[tmp_mount, mc_mount],
                        )
                    ],
                    "volumes": [tmp_volume, mc_volume],
                },
            },
        },
    }
    return [_stateful_set(MINIO, 1, pod, settings.storage_size), svc, make_bucket]


def tracking_objects(settings: MlflowSettings, image: pulumi.Input[str]) -> list[k8s.Manifest]:
    """The MLflow server, run from the project image (it carries mlflow, boto3 and psycopg2)."""
    tmp_volume, tmp_mount = k8s.tmp_volume()
    use_minio = settings.artifact_store == "minio"
    endpoint = MINIO_ENDPOINT if use_minio else settings.endpoint
    env = [
        {"name": "MLFLOW_S3_ENDPOINT_URL", "value": endpoint},
        {"name": "AWS_DEFAULT_REGION", "value": settings.region},
        {"name": "HOME", "value": "/tmp"},
    ]
    db_volume, db_mount = k8s.secret_files("db", POSTGRES_SECRET, f"{SECRETS_DIR}/db", [BACKEND_URI_KEY])
    volumes, mounts = [tmp_volume, db_volume], [tmp_mount, db_mount]
    if use_minio:
        s3_volume, s3_mount = k8s.secret_files("s3", S3_SECRET, f"{SECRETS_DIR}/s3", [CREDENTIALS_KEY])
        volumes.append(s3_volume)
        mounts.append(s3_mount)
        env.append({"name": "AWS_SHARED_CREDENTIALS_FILE", "value": f"{SECRETS_DIR}/s3/{CREDENTIALS_KEY}"})
    obj_labels = k8s.labels(TRACKING, "mlflow")
    selector = {"app.kubernetes.io/name": TRACKING}
    server_args = [
        "--host",
        "0.0.0.0",
        "--port",
        str(TRACKING_PORT),
        "--workers",
        "1",
        "--artifacts-destination",
        f"s3://{settings.bucket}",
        "--serve-artifacts",
        "--allowed-hosts",
        f"{TRACKING},{TRACKING}.{NS},{TRACKING}.{NS}.svc.cluster.local,"
        f"{TRACKING}:{TRACKING_PORT},{TRACKING}.{NS}:{TRACKING_PORT},"
        f"{TRACKING}.{NS}.svc.cluster.local:{TRACKING_PORT},localhost:{TRACKING_PORT}",
    ]
    container = k8s.container(
        "mlflow",
        image,
        # The backend store URI (it holds the database password) is read from its file into the variable
        # `mlflow server` takes it from (--backend-store-uri's envvar MLFLOW_BACKEND_STORE_URI, mlflow 3.17.2
        # mlflow/cli/__init__.py), so it is on no command line; "$@" are the arguments below.
        command=[
            "/bin/sh",
            "-c",
            f'MLFLOW_BACKEND_STORE_URI="$(cat {SECRETS_DIR}/db/{BACKEND_URI_KEY})" exec mlflow server "$@"',
            "mlflow",
        ],
        args=server_args,
        env=env,
        ports=[{"name": "http", "containerPort": TRACKING_PORT}],
        requests={"cpu": "100m", "memory": "512Mi"},
        limits={"cpu": "1", "memory": "1536Mi"},
        probes={
            "readinessProbe": {"httpGet": {"path": "/health", "port": TRACKING_PORT}},
            "livenessProbe": {
                "httpGet": {"path": "/health", "port": TRACKING_PORT},
                "initialDelaySeconds": 30,
            },
        },
        volume_mounts=mounts,
    )
    deployment = k8s.deployment(TRACKING, NS, obj_labels, {"containers": [container], "volumes": volumes})
    svc = k8s.service(
        TRACKING,
        NS,
        selector,
        [{"name": "http", "port": TRACKING_PORT, "targetPort": TRACKING_PORT}],
        obj_labels=obj_labels,
    )
    return [deployment, svc]


@dataclass(frozen=True, kw_only=True)
class MlflowArgs(PlatformArgs):
    settings: MlflowSettings
    image: pulumi.Input[str]  # the mlflow image (the project's, by digest when this program built it)


class MlflowTracking(PlatformComponent):
    component = "mlflow"

    def __init__(self, name: str, args: MlflowArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("MlflowTracking", name, args, opts)
        settings = args.settings
        self.make_namespace()
        pg_password = self.password("postgres-password")
        password: pulumi.Output[str] = pulumi.Output.secret(pg_password.result)
        pg_secret = self.make_secret(
            "postgres",
            POSTGRES_SECRET,
            {POSTGRES_PASSWORD_KEY: password, BACKEND_URI_KEY: pulumi.Output.secret(password.apply(backend_store_uri))},
        )
        use_minio = settings.artifact_store == "minio"
        depends: list[pulumi.Resource] = [pg_secret]
        access: pulumi.Output[str] | None = None
        secret: pulumi.Output[str] | None = None
        if use_minio:
            access_key = self.password("minio-access-key", length=20)
            secret_key = self.password("minio-secret-key", length=40)
            access, secret = pulumi.Output.secret(access_key.result), pulumi.Output.secret(secret_key.result)
            s3_secret = self.make_secret("s3", S3_SECRET, s3_secret_data(access, secret))
            depends.append(s3_secret)
            depends += self.declare_each(minio_objects(settings), [s3_secret])
        # else: an existing bucket is reached with the pod's cloud identity, no static keys to leak.
        depends += self.declare_each(postgres_objects(settings), [pg_secret])
        self.declare_each(tracking_objects(settings, args.image), depends)
        self.tracking_url = TRACKING_URL
        self.artifact_store = ArtifactStoreRef(
            endpoint_url=MINIO_ENDPOINT if use_minio else settings.endpoint,
            bucket=settings.bucket,
            access_key=access,
            secret_key=secret,
        )
        self.finish(
            tracking_url=TRACKING_URL, artifact_bucket=settings.bucket, postgres_secret=f"{NS}/{POSTGRES_SECRET}"
        )
