"""MLflow tracking server backed by PostgreSQL, artifacts in S3-compatible storage (in-cluster MinIO
by default, or an existing bucket). Objects are built by plain functions; ``MlflowTracking`` declares them.
"""

from __future__ import annotations

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
S3_SECRET = "mlflow-s3"
TRACKING_PORT = 5000
TRACKING_URL = f"http://{TRACKING}.{NS}.svc.cluster.local:{TRACKING_PORT}"
MINIO_ENDPOINT = f"http://{MINIO}.{NS}.svc.cluster.local:9000"
MC_IMAGE = "quay.io/minio/mc:RELEASE.2024-11-21T17-21-54Z"


def _volume_claim(size: str) -> dict[str, Any]:
    return {
        "metadata": {"name": "data"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": size}}},
    }


def _stateful_set(name: str, replicas: int, pod: dict[str, Any], size: str) -> dict[str, Any]:
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


def postgres_objects(settings: MlflowSettings) -> list[dict[str, Any]]:
    tmp_volume, tmp_mount = k8s.tmp_volume()
    run_volume = {"name": "run", "emptyDir": {}}
    pod = {
        "securityContext": k8s.pod_security_context(fs_group=999),
        "containers": [
            k8s.container(
                "postgres",
                settings.postgres_image,
                env=[
                    {"name": "POSTGRES_USER", "value": "mlflow"},
                    {"name": "POSTGRES_DB", "value": "mlflow"},
                    k8s.secret_env("POSTGRES_PASSWORD", POSTGRES_SECRET, "password"),
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
                ],
                run_as_user=999,
            )
        ],
        "volumes": [tmp_volume, run_volume],
    }
    svc = k8s.service(
        POSTGRES,
        NS,
        {"app.kubernetes.io/name": POSTGRES},
        [{"name": "postgres", "port": 5432, "targetPort": 5432}],
        obj_labels=k8s.labels(POSTGRES, "mlflow"),
    )
    return [_stateful_set(POSTGRES, 1, pod, settings.storage_size), svc]


def minio_objects(settings: MlflowSettings) -> list[dict[str, Any]]:
    tmp_volume, tmp_mount = k8s.tmp_volume()
    pod = {
        "securityContext": k8s.pod_security_context(),
        "containers": [
            k8s.container(
                "minio",
                settings.minio_image,
                args=["server", "/data", "--console-address", ":9001"],
                env=[
                    k8s.secret_env("MINIO_ROOT_USER", S3_SECRET, "AWS_ACCESS_KEY_ID"),
                    k8s.secret_env("MINIO_ROOT_PASSWORD", S3_SECRET, "AWS_SECRET_ACCESS_KEY"),
                ],
                ports=[{"name": "s3", "containerPort": 9000}, {"name": "console", "containerPort": 9001}],
                requests={"cpu": "100m", "memory": "256Mi"},
                limits={"cpu": "1", "memory": "1Gi"},
                probes={
                    "readinessProbe": {"httpGet": {"path": "/minio/health/ready", "port": 9000}},
                    "livenessProbe": {"httpGet": {"path": "/minio/health/live", "port": 9000}},
                },
                volume_mounts=[{"name": "data", "mountPath": "/data"}, tmp_mount],
            )
        ],
        "volumes": [tmp_volume],
    }
    svc = k8s.service(
        MINIO,
        NS,
        {"app.kubernetes.io/name": MINIO},
        [{"name": "s3", "port": 9000, "targetPort": 9000}],
        obj_labels=k8s.labels(MINIO, "mlflow"),
    )
    tmp_volume, tmp_mount = k8s.tmp_volume()
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
                    "containers": [
                        k8s.container(
                            "make-bucket",
                            MC_IMAGE,
                            command=["/bin/sh", "-c"],
                            args=[
                                f'mc alias set store {MINIO_ENDPOINT} "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY"'
                                f" && mc mb --ignore-existing store/{bucket}"
                            ],
                            env=[
                                {"name": "HOME", "value": "/tmp"},
                                k8s.secret_env("AWS_ACCESS_KEY_ID", S3_SECRET, "AWS_ACCESS_KEY_ID"),
                                k8s.secret_env("AWS_SECRET_ACCESS_KEY", S3_SECRET, "AWS_SECRET_ACCESS_KEY"),
                            ],
                            requests={"cpu": "10m", "memory": "32Mi"},
                            limits={"cpu": "200m", "memory": "128Mi"},
                            volume_mounts=[tmp_mount],
                        )
                    ],
                    "volumes": [tmp_volume],
                },
            },
        },
    }
    return [_stateful_set(MINIO, 1, pod, settings.storage_size), svc, make_bucket]


def tracking_objects(settings: MlflowSettings, image: Any) -> list[dict[str, Any]]:
    """The MLflow server, run from the project image (it carries mlflow, boto3 and psycopg2)."""
    tmp_volume, tmp_mount = k8s.tmp_volume()
    use_minio = settings.artifact_store == "minio"
    endpoint = MINIO_ENDPOINT if use_minio else settings.endpoint
    env = [
        k8s.secret_env("PG_PASSWORD", POSTGRES_SECRET, "password"),
        {"name": "MLFLOW_S3_ENDPOINT_URL", "value": endpoint},
        {"name": "AWS_DEFAULT_REGION", "value": settings.region},
        {"name": "HOME", "value": "/tmp"},
    ]
    if use_minio:
        env += [
            k8s.secret_env("AWS_ACCESS_KEY_ID", S3_SECRET, "AWS_ACCESS_KEY_ID"),
            k8s.secret_env("AWS_SECRET_ACCESS_KEY", S3_SECRET, "AWS_SECRET_ACCESS_KEY"),
        ]
    obj_labels = k8s.labels(TRACKING, "mlflow")
    selector = {"app.kubernetes.io/name": TRACKING}
    container = k8s.container(
        "mlflow",
        image,
        command=["mlflow", "server"],
        # $(PG_PASSWORD) is expanded by the kubelet from the Secret-backed env var.
        args=[
            "--host",
            "0.0.0.0",
            "--port",
            str(TRACKING_PORT),
            "--workers",
            "1",
            "--backend-store-uri",
            f"postgresql://mlflow:$(PG_PASSWORD)@{POSTGRES}:5432/mlflow",
            "--artifacts-destination",
            f"s3://{settings.bucket}",
            "--serve-artifacts",
            "--allowed-hosts",
            f"{TRACKING},{TRACKING}.{NS},{TRACKING}.{NS}.svc.cluster.local,"
            f"{TRACKING}:{TRACKING_PORT},{TRACKING}.{NS}:{TRACKING_PORT},"
            f"{TRACKING}.{NS}.svc.cluster.local:{TRACKING_PORT},localhost:{TRACKING_PORT}",
        ],
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
        volume_mounts=[tmp_mount],
    )
    deployment = k8s.deployment(TRACKING, NS, obj_labels, {"containers": [container], "volumes": [tmp_volume]})
    svc = k8s.service(
        TRACKING,
        NS,
        selector,
        [{"name": "http", "port": TRACKING_PORT, "targetPort": TRACKING_PORT}],
        obj_labels=obj_labels,
    )
    return [deployment, svc]


class MlflowTracking(PlatformComponent):
    component = "mlflow"

    def __init__(self, name: str, args: PlatformArgs, image: Any, opts: pulumi.ResourceOptions | None = None):
        super().__init__("MlflowTracking", name, args, opts)
        settings = self.config.mlflow
        self.make_namespace(pod_security="restricted")
        pg_password = self.password("postgres-password")
        pg_secret = self.make_secret("postgres", POSTGRES_SECRET, {"password": pg_password.result})
        use_minio = settings.artifact_store == "minio"
        depends: list[pulumi.Resource] = [pg_secret]
        if use_minio:
            access_key = self.password("minio-access-key", length=20)
            secret_key = self.password("minio-secret-key", length=40)
            access, secret = pulumi.Output.secret(access_key.result), pulumi.Output.secret(secret_key.result)
            s3_secret = self.make_secret(
                "s3", S3_SECRET, {"AWS_ACCESS_KEY_ID": access, "AWS_SECRET_ACCESS_KEY": secret}
            )
            depends.append(s3_secret)
            for obj in minio_objects(settings):
                depends.append(self.declare(f"{obj['kind'].lower()}-{obj['metadata']['name']}", obj, [s3_secret]))
        else:
            # An existing bucket is reached with the pod's cloud identity: no static keys to leak.
            access = secret = None
        for obj in postgres_objects(settings):
            depends.append(self.declare(f"{obj['kind'].lower()}-{obj['metadata']['name']}", obj, [pg_secret]))
        for obj in tracking_objects(settings, image):
            self.declare(f"{obj['kind'].lower()}-{obj['metadata']['name']}", obj, depends)
        self.artifact_store = ArtifactStoreRef(
            endpoint_url=MINIO_ENDPOINT if use_minio else settings.endpoint,
            bucket=settings.bucket,
            access_key=access,
            secret_key=secret,
        )
        self.finish(
            tracking_url=TRACKING_URL, artifact_bucket=settings.bucket, postgres_secret=f"{NS}/{POSTGRES_SECRET}"
        )
