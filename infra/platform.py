"""Platform components: one ComponentResource per tool, each in its own namespace with a pinned chart.

Every component follows the same shape: ``(name, args, opts)``, a ``fraud:platform:<Noun>`` type
token, children parented to it and named from it, secrets from pulumi-random kept as Pulumi
secrets, ``register_outputs`` last. ``crds_ready`` lists what a custom resource of that tool's kinds
must depend on, so CRDs are installed before any object that uses them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pulumi

from infra import charts, k8s
from infra.config import PROJECT, Region, StackConfig


@dataclass(frozen=True)
class PlatformArgs:
    config: StackConfig
    region: Region
    provider: pulumi.ProviderResource
    depends_on: tuple[pulumi.Resource, ...] = field(default_factory=tuple)


class PlatformComponent(pulumi.ComponentResource):
    """Shared mechanics: namespace, passwords, Secrets, Helm releases, all parented here."""

    component: str = ""

    def __init__(self, type_name: str, name: str, args: PlatformArgs, opts: pulumi.ResourceOptions | None):
        super().__init__(f"fraud:platform:{type_name}", name, None, opts)
        self._name = name
        self._args = args
        self.namespace_name = charts.NAMESPACES.get(self.component, "")
        self.crds_ready: list[pulumi.Resource] = []
        self.outputs: dict[str, Any] = {}

    @property
    def config(self) -> StackConfig:
        return self._args.config

    @property
    def small(self) -> bool:
        return charts.small_footprint(self.config.environment)

    @property
    def monitoring(self) -> bool:
        return self.config.enabled("monitoring")

    def child_opts(self, depends_on: list[pulumi.Resource] | None = None) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions(
            parent=self, provider=self._args.provider, depends_on=[*self._args.depends_on, *(depends_on or [])]
        )

    def declare(self, suffix: str, obj: dict[str, Any], depends_on: list[pulumi.Resource] | None = None) -> Any:
        return k8s.declare(f"{self._name}-{suffix}", obj, self.child_opts(depends_on))

    def make_namespace(self, *, mesh: bool = False) -> Any:
        """The component's namespace, enforcing its Pod Security level (charts.POD_SECURITY)."""
        level = charts.POD_SECURITY.get(self.component)
        self.namespace = self.declare("ns", k8s.namespace(self.namespace_name, mesh=mesh, pod_security=level))
        return self.namespace

    def password(self, suffix: str, length: int = 24) -> Any:
        import pulumi_random as random

        return random.RandomPassword(
            f"{self._name}-{suffix}", length=length, special=False, opts=pulumi.ResourceOptions(parent=self)
        )

    def make_secret(self, suffix: str, secret_name: str, string_data: dict[str, Any]) -> Any:
        obj = k8s.secret(
            secret_name, self.namespace_name, string_data, obj_labels=k8s.labels(secret_name, self.component)
        )
        return self.declare(suffix, obj, [self.namespace])

    def release(self, spec: charts.ChartRelease, values: dict[str, Any], depends_on: list[pulumi.Resource]) -> Any:
        import pulumi_kubernetes as kubernetes

        source = charts.chart_source(spec, self.config.components[spec.component])
        repository = kubernetes.helm.v3.RepositoryOptsArgs(repo=source.repository) if source.repository else None
        return kubernetes.helm.v3.Release(
            f"{self._name}-{spec.name}",
            name=spec.name,
            chart=source.chart,
            version=source.version,
            repository_opts=repository,
            namespace=spec.namespace,
            values=values,
            # Wait for readiness and roll back a failed upgrade, so dependants never see half a tool.
            atomic=True,
            timeout=900,
            cleanup_on_fail=True,
            opts=self.child_opts([self.namespace, *depends_on]),
        )

    def finish(self, **outputs: Any) -> None:
        self.outputs = outputs
        self.register_outputs(outputs)


def _service_url(service: str, ns: str, port: int) -> str:
    return f"http://{service}.{ns}.svc.cluster.local:{port}"


class IstioMesh(PlatformComponent):
    component = "istio"

    def __init__(self, name: str, args: PlatformArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("IstioMesh", name, args, opts)
        self.make_namespace()
        base_spec, istiod_spec = charts.chart_releases("istio")
        base = self.release(base_spec, charts.istio_base_values(), [])
        istiod_values = charts.istiod_values(small=self.small, version=self.config.platform.istio.version)
        istiod = self.release(istiod_spec, istiod_values, [base])
        self.crds_ready = [base, istiod]
        self.finish(namespace=self.namespace_name)


class ArgoCD(PlatformComponent):
    component = "argocd"

    def __init__(self, name: str, args: PlatformArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("ArgoCD", name, args, opts)
        self.make_namespace()
        admin = self.password("admin-password")
        server_key = self.password("server-secret-key", length=32)
        secret = self.make_secret(
            "secret",
            charts.ARGOCD_SECRET,
            {
                "admin.password": admin.bcrypt_hash,
                # Fixed: Argo CD only compares it to invalidate sessions after a password change,
                # and the password changes only when the RandomPassword is replaced.
                "admin.passwordMtime": "2026-01-01T00:00:00Z",
                "server.secretkey": server_key.result,
            },
        )
        (spec,) = charts.chart_releases("argocd")
        release = self.release(spec, charts.argocd_values(), [secret])
        self.crds_ready = [release]
        self.admin_password = pulumi.Output.secret(admin.result)
        self.finish(
            url=_service_url("argo-cd-argocd-server", self.namespace_name, 80),
            admin_secret=f"{self.namespace_name}/{charts.ARGOCD_SECRET}",
            admin_password=self.admin_password,
        )


class ArgoWorkflows(PlatformComponent):
    component = "argoWorkflows"

    def __init__(
        self,
        name: str,
        args: PlatformArgs,
        artifact_store: ArtifactStoreRef,
        opts: pulumi.ResourceOptions | None = None,
    ):
        super().__init__("ArgoWorkflows", name, args, opts)
        self.make_namespace()
        depends: list[pulumi.Resource] = []
        if artifact_store.has_static_credentials:
            depends.append(
                self.make_secret(
                    "artifacts",
                    charts.ARGO_WORKFLOWS_ARTIFACTS_SECRET,
                    {"accesskey": artifact_store.access_key, "secretkey": artifact_store.secret_key},
                )
            )
        (spec,) = charts.chart_releases("argoWorkflows")
        values = charts.argo_workflows_values(
            monitoring=self.monitoring,
            artifact_endpoint=artifact_store.endpoint_host,
            artifact_bucket=artifact_store.bucket,
            static_credentials=artifact_store.has_static_credentials,
        )
        release = self.release(spec, values, depends)
        self.crds_ready = [release]
        self.finish(url=_service_url("argo-workflows-server", self.namespace_name, 2746))


class ArgoRollouts(PlatformComponent):
    component = "argoRollouts"

    def __init__(self, name: str, args: PlatformArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("ArgoRollouts", name, args, opts)
        self.make_namespace()
        (spec,) = charts.chart_releases("argoRollouts")
        release = self.release(spec, charts.argo_rollouts_values(small=self.small, monitoring=self.monitoring), [])
        self.crds_ready = [release]
        self.finish(dashboard_url=_service_url("argo-rollouts-dashboard", self.namespace_name, 3100))


class Flagger(PlatformComponent):
    component = "flagger"

    def __init__(self, name: str, args: PlatformArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("Flagger", name, args, opts)
        self.make_namespace()
        (spec,) = charts.chart_releases("flagger")
        release = self.release(spec, charts.flagger_values(monitoring=self.monitoring), [])
        self.crds_ready = [release]
        if self.config.enabled("flaggerLoadtester"):
            (lt_spec,) = charts.chart_releases("flaggerLoadtester")
            account = self.declare(
                "loadtester-sa",
                {
                    "apiVersion": "v1",
                    "kind": "ServiceAccount",
                    "metadata": {
                        "name": charts.LOADTESTER_SERVICE_ACCOUNT,
                        "namespace": self.namespace_name,
                        "labels": k8s.labels(charts.LOADTESTER_SERVICE_ACCOUNT, self.component),
                    },
                    "automountServiceAccountToken": False,
                },
                [self.namespace],
            )
            self.crds_ready.append(self.release(lt_spec, charts.flagger_loadtester_values(), [release, account]))
        self.finish(loadtester_url=charts.LOADTESTER_URL, metrics_server=charts.PROMETHEUS_URL)


class Monitoring(PlatformComponent):
    component = "monitoring"

    def __init__(self, name: str, args: PlatformArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("Monitoring", name, args, opts)
        self.make_namespace()
        admin = self.password("grafana-admin-password")
        secret = self.make_secret(
            "grafana-admin", charts.GRAFANA_ADMIN_SECRET, {"admin-user": "admin", "admin-password": admin.result}
        )
        (spec,) = charts.chart_releases("monitoring")
        release = self.release(spec, charts.monitoring_values(small=self.small), [secret])
        self.crds_ready = [release]
        self.grafana_admin_password = pulumi.Output.secret(admin.result)
        self.finish(
            prometheus_url=charts.PROMETHEUS_URL,
            grafana_url=_service_url("kube-prometheus-stack-grafana", self.namespace_name, 80),
            grafana_admin_secret=f"{self.namespace_name}/{charts.GRAFANA_ADMIN_SECRET}",
            grafana_admin_password=self.grafana_admin_password,
        )


class Harbor(PlatformComponent):
    """Harbor, reached as ``<host>:<port>`` through Service harbor-endpoint, with a certificate from the
    registry CA (infra/registry.py), and the project the images are pushed to."""

    component = "harbor"

    def __init__(self, name: str, args: PlatformArgs, opts: pulumi.ResourceOptions | None = None):
        from infra import registry

        super().__init__("Harbor", name, args, opts)
        settings = self.config.registry
        host = args.region.registry_host or settings.host
        self.address = settings.address(args.region.registry_host)
        self.make_namespace()
        admin = self.password("admin-password")
        secret_key = self.password("secret-key", length=16)  # Harbor requires exactly 16 characters
        db_password = self.password("database-password")
        admin_secret = self.make_secret("admin", charts.HARBOR_ADMIN_SECRET, {"HARBOR_ADMIN_PASSWORD": admin.result})
        key_secret = self.make_secret("secret-key", charts.HARBOR_SECRET_KEY_SECRET, {"secretKey": secret_key.result})
        given_ca = self.config.registry_ca
        certificate = registry.issue_certificate(
            name,
            host=host,
            cluster_ip=settings.cluster_ip,
            ca_pem=given_ca.pem if given_ca else None,
            ca_key=pulumi.Config(PROJECT).require_secret("registryCaKey") if given_ca else None,
            parent=self,
        )
        self.ca_pem = certificate.ca_pem
        tls_secret = self.declare(
            "tls", registry.tls_secret(certificate.cert_pem, certificate.key_pem, certificate.ca_pem), [self.namespace]
        )
        endpoint = self.declare("endpoint", registry.endpoint_service(settings), [self.namespace])
        (spec,) = charts.chart_releases("harbor")
        values = charts.harbor_values(
            address=self.address,
            tls_secret=registry.TLS_SECRET,
            small=self.small,
            monitoring=self.monitoring,
            database_password=pulumi.Output.secret(db_password.result),
        )
        self.release_resource = self.release(spec, values, [admin_secret, key_secret, tls_secret])
        api_host = f"{registry.ENDPOINT_SERVICE}.{registry.NAMESPACE}.svc"
        netrc = self.make_secret(
            "project-netrc",
            registry.PROJECT_JOB_SECRET,
            {"netrc": pulumi.Output.secret(admin.result).apply(lambda pw: registry.netrc(api_host, pw))},
        )
        project_ready = [self.release_resource, endpoint, netrc]
        jobs = [
            self.declare(f"{obj['kind'].lower()}-{obj['metadata']['name']}", obj, project_ready)
            for obj in registry.project_job(settings)
        ]
        self.crds_ready = [self.release_resource]
        # What a push waits for: Harbor up, reachable by its name, the project there.
        self.ready: list[pulumi.Resource] = [self.release_resource, endpoint, *jobs]
        self.admin_password = pulumi.Output.secret(admin.result)
        self.finish(
            url=f"https://{self.address}",
            registry=self.address,
            ca_cert=certificate.ca_pem,
            admin_secret=f"{self.namespace_name}/{charts.HARBOR_ADMIN_SECRET}",
            admin_password=self.admin_password,
        )


@dataclass(frozen=True)
class ArtifactStoreRef:
    """Where S3-compatible artifacts live and the credentials to reach them (Pulumi secrets)."""

    endpoint_url: str
    bucket: str
    access_key: Any
    secret_key: Any

    @property
    def has_static_credentials(self) -> bool:
        return self.access_key is not None

    @property
    def endpoint_host(self) -> str:
        return self.endpoint_url.split("://", 1)[-1]
