"""Platform components: one ComponentResource per tool, each in its own namespace with a pinned chart.

Every component follows the same shape: ``(name, args, opts)``, a ``fraud:platform:<Noun>`` type
token, children parented to it and named from it, secrets from pulumi-random kept as Pulumi
secrets, ``register_outputs`` last. ``crds_ready`` lists what a custom resource of that tool's kinds
must depend on, so CRDs are installed before any object that uses them.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pulumi

from infra import charts, k8s
from infra.component import Component
from infra.config import PROJECT, ChartComponent, RegistryCa, RegistrySettings


@dataclass(frozen=True, kw_only=True)
class PlatformArgs:
    """Where a platform component goes: the region's cluster, after what it must wait for."""

    provider: pulumi.ProviderResource
    depends_on: tuple[pulumi.Resource, ...] = ()


@dataclass(frozen=True, kw_only=True)
class ChartArgs(PlatformArgs):
    """A component installed from a chart: its platform entry and how the environment sizes it."""

    chart: ChartComponent  # platform.<component>: chart version and repository
    small: bool  # a small footprint (dev): fewer replicas, smaller requests (charts.small_footprint)
    monitoring: bool  # the Prometheus Operator runs: the chart creates its ServiceMonitors


class PlatformComponent(Component):
    """Shared mechanics of the platform tools: a namespace per tool, Secrets there, Helm releases."""

    component: str = ""

    def __init__(self, type_name: str, name: str, args: PlatformArgs, opts: pulumi.ResourceOptions | None):
        super().__init__(
            f"fraud:platform:{type_name}", name, opts, provider=args.provider, depends_on=args.depends_on
        )
        self.namespace_name = charts.NAMESPACES.get(self.component, "")

    def make_namespace(self, *, mesh: bool = False) -> pulumi.Resource:
        """The component's namespace, enforcing its Pod Security level (charts.POD_SECURITY)."""
        level = charts.POD_SECURITY.get(self.component)
        self.namespace: pulumi.Resource = self.declare(
            "ns", k8s.namespace(self.namespace_name, mesh=mesh, pod_security=level)
        )
        return self.namespace

    def make_secret(self, suffix: str, secret_name: str, string_data: Mapping[str, Any]) -> pulumi.Resource:
        obj = k8s.secret(
            secret_name, self.namespace_name, string_data, obj_labels=k8s.labels(secret_name, self.component)
        )
        return self.declare(suffix, obj, [self.namespace])

    def release(
        self,
        spec: charts.ChartRelease,
        chart: ChartComponent,
        values: Mapping[str, Any],
        depends_on: Iterable[pulumi.Resource],
    ) -> pulumi.Resource:
        """The Helm release ``spec`` of ``chart`` (its platform entry) with ``values``, in the namespace."""
        import pulumi_kubernetes as kubernetes

        source = charts.chart_source(spec, chart)
        repository = kubernetes.helm.v3.RepositoryOptsArgs(repo=source.repository) if source.repository else None
        return kubernetes.helm.v3.Release(
            self.child_name(spec.name),
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


def _service_url(service: str, ns: str, port: int) -> str:
    return f"http://{service}.{ns}.svc.cluster.local:{port}"


class IstioMesh(PlatformComponent):
    component = "istio"

    def __init__(self, name: str, args: ChartArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("IstioMesh", name, args, opts)
        self.make_namespace()
        base_spec, istiod_spec = charts.chart_releases("istio")
        base = self.release(base_spec, args.chart, charts.istio_base_values(), [])
        istiod_values = charts.istiod_values(small=args.small, version=args.chart.version)
        istiod = self.release(istiod_spec, args.chart, istiod_values, [base])
        self.crds_ready = [base, istiod]
        self.finish(namespace=self.namespace_name)


class ArgoCD(PlatformComponent):
    component = "argocd"

    def __init__(self, name: str, args: ChartArgs, opts: pulumi.ResourceOptions | None = None):
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
        release = self.release(spec, args.chart, charts.argocd_values(), [secret])
        self.crds_ready = [release]
        self.admin_password: pulumi.Output[str] = pulumi.Output.secret(admin.result)
        self.finish(
            url=_service_url("argo-cd-argocd-server", self.namespace_name, 80),
            admin_secret=f"{self.namespace_name}/{charts.ARGOCD_SECRET}",
            admin_password=self.admin_password,
        )


@dataclass(frozen=True)
class ArgoWorkflowsArgs:
    platform: ChartArgs
    artifact_store: ArtifactStoreRef  # where workflows keep their artifacts (MLflow's store)


class ArgoWorkflows(PlatformComponent):
    component = "argoWorkflows"

    def __init__(self, name: str, args: ArgoWorkflowsArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("ArgoWorkflows", name, args.platform, opts)
        self.make_namespace()
        artifact_store = args.artifact_store
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
            monitoring=args.platform.monitoring,
            artifact_endpoint=artifact_store.endpoint_host,
            artifact_bucket=artifact_store.bucket,
            static_credentials=artifact_store.has_static_credentials,
        )
        release = self.release(spec, args.platform.chart, values, depends)
        self.crds_ready = [release]
        self.finish(url=_service_url("argo-workflows-server", self.namespace_name, 2746))


class ArgoRollouts(PlatformComponent):
    component = "argoRollouts"

    def __init__(self, name: str, args: ChartArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("ArgoRollouts", name, args, opts)
        self.make_namespace()
        (spec,) = charts.chart_releases("argoRollouts")
        values = charts.argo_rollouts_values(small=args.small, monitoring=args.monitoring)
        release = self.release(spec, args.chart, values, [])
        self.crds_ready = [release]
        self.finish(dashboard_url=_service_url("argo-rollouts-dashboard", self.namespace_name, 3100))


@dataclass(frozen=True)
class FlaggerArgs:
    platform: ChartArgs
    loadtester: ChartComponent | None  # platform.flaggerLoadtester when enabled: the load tester's chart


class Flagger(PlatformComponent):
    component = "flagger"

    def __init__(self, name: str, args: FlaggerArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("Flagger", name, args.platform, opts)
        self.make_namespace()
        (spec,) = charts.chart_releases("flagger")
        values = charts.flagger_values(monitoring=args.platform.monitoring)
        release = self.release(spec, args.platform.chart, values, [])
        self.crds_ready = [release]
        if args.loadtester is not None:
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
            loadtester = self.release(lt_spec, args.loadtester, charts.flagger_loadtester_values(), [release, account])
            self.crds_ready.append(loadtester)
        self.finish(loadtester_url=charts.LOADTESTER_URL, metrics_server=charts.PROMETHEUS_URL)


class Monitoring(PlatformComponent):
    component = "monitoring"

    def __init__(self, name: str, args: ChartArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("Monitoring", name, args, opts)
        self.make_namespace()
        admin = self.password("grafana-admin-password")
        secret = self.make_secret(
            "grafana-admin", charts.GRAFANA_ADMIN_SECRET, {"admin-user": "admin", "admin-password": admin.result}
        )
        (spec,) = charts.chart_releases("monitoring")
        release = self.release(spec, args.chart, charts.monitoring_values(small=args.small), [secret])
        self.crds_ready = [release]
        self.grafana_admin_password: pulumi.Output[str] = pulumi.Output.secret(admin.result)
        self.finish(
            prometheus_url=charts.PROMETHEUS_URL,
            grafana_url=_service_url("kube-prometheus-stack-grafana", self.namespace_name, 80),
            grafana_admin_secret=f"{self.namespace_name}/{charts.GRAFANA_ADMIN_SECRET}",
            grafana_admin_password=self.grafana_admin_password,
        )


@dataclass(frozen=True, kw_only=True)
class HarborArgs:
    platform: ChartArgs
    registry: RegistrySettings
    registry_host: str | None  # the region's own Harbor host (regions[].registryHost), else registry.host
    registry_ca: RegistryCa | None  # registry.caCertFile, read: the CA that signs Harbor's certificate


class Harbor(PlatformComponent):
    """Harbor, reached as ``<host>:<port>`` through Service harbor-endpoint, with a certificate from the
    registry CA (infra/registry.py), and the project the images are pushed to."""

    component = "harbor"

    def __init__(self, name: str, args: HarborArgs, opts: pulumi.ResourceOptions | None = None):
        from infra import registry

        super().__init__("Harbor", name, args.platform, opts)
        settings = args.registry
        host = args.registry_host or settings.host
        self.address = settings.address(args.registry_host)
        self.make_namespace()
        admin = self.password("admin-password")
        secret_key = self.password("secret-key", length=16)  # Harbor requires exactly 16 characters
        db_password = self.password("database-password")
        admin_secret = self.make_secret("admin", charts.HARBOR_ADMIN_SECRET, {"HARBOR_ADMIN_PASSWORD": admin.result})
        key_secret = self.make_secret("secret-key", charts.HARBOR_SECRET_KEY_SECRET, {"secretKey": secret_key.result})
        given_ca = args.registry_ca
        certificate = registry.issue_certificate(
            name,
            host=host,
            cluster_ip=settings.cluster_ip,
            ca=(given_ca.pem, pulumi.Config(PROJECT).require_secret("registryCaKey")) if given_ca else None,
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
            small=args.platform.small,
            monitoring=args.platform.monitoring,
            database_password=pulumi.Output.secret(db_password.result),
        )
        secrets = [admin_secret, key_secret, tls_secret]
        self.release_resource = self.release(spec, args.platform.chart, values, secrets)
        self.admin_password: pulumi.Output[str] = pulumi.Output.secret(admin.result)
        api_host = f"{registry.ENDPOINT_SERVICE}.{registry.NAMESPACE}.svc"
        netrc = self.make_secret(
            "project-netrc",
            registry.PROJECT_JOB_SECRET,
            {"netrc": self.admin_password.apply(lambda pw: registry.netrc(api_host, pw))},
        )
        jobs = self.declare_each(registry.project_job(settings), [self.release_resource, endpoint, netrc])
        self.crds_ready = [self.release_resource]
        # What a push waits for: Harbor up, reachable by its name, the project there.
        self.ready: list[pulumi.Resource] = [self.release_resource, endpoint, *jobs]
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
    # Static keys (the in-cluster MinIO's), or None: an existing bucket is reached with the pods' cloud identity.
    access_key: pulumi.Output[str] | None
    secret_key: pulumi.Output[str] | None

    @property
    def has_static_credentials(self) -> bool:
        return self.access_key is not None

    @property
    def endpoint_host(self) -> str:
        return self.endpoint_url.split("://", 1)[-1]
