"""The image path: how Harbor is reached and trusted, and the images the program builds per role.

One name everywhere, ``<host>:<port>`` (``RegistrySettings.address``): Harbor's ``externalURL`` (so the
token realm Harbor hands clients, ``https://<host>:<port>/service/token``, is the same name), image
references, pushes and pulls. Where the name leads (docs/CLUSTER.md, "The image path"):

* Service ``harbor-endpoint`` (ours, namespace harbor) selects the chart's nginx pods (the chart's
  ``harbor.matchLabels`` plus ``component: nginx``, templates/nginx/service.yaml of harbor 1.16.2) on their
  https port 8443, as ``<port>`` on a static ClusterIP (``registry.clusterIP``) and, with exposure nodePort,
  as node port ``<port>``. The chart's own Service ``harbor-registry`` is the registry component, so ours
  needs another name.
* Pods that push (the pipeline's BuildKit) map the host to the ClusterIP with ``hostAliases`` and trust the CA
  through buildkitd.toml; nodes (containerd pulls) map it in /etc/hosts and trust it through
  ``/etc/containerd/certs.d/<host:port>/hosts.toml``; the machine running ``pulumi up`` (the docker provider's
  push) reaches the node port, trusting ``/etc/docker/certs.d/<host:port>/ca.crt``. ``fraudctl cluster ca``
  writes those files for kind.
* Harbor's server certificate comes from pulumi-tls, issued by the registry CA (``registry.caCertFile`` and
  the secret ``registryCaKey``, or a CA the program keeps in its state) with the host, the Services' names and
  the ClusterIP as SANs; it lives in the state, so a render or an update never regenerates it (the chart's
  ``certSource: auto`` made a new CA on every render).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi

from infra import charts, k8s
from infra.config import Region, RegistrySettings

NAMESPACE = charts.NAMESPACES["harbor"]
ENDPOINT_SERVICE = "harbor-endpoint"
# The chart's Service of expose type clusterIP (expose.clusterIP.name), also a name the certificate carries.
CHART_SERVICE = "harbor"
TLS_SECRET = "harbor-tls"
NGINX_HTTPS_PORT = 8443  # harbor 1.16.2 templates/nginx/service.yaml targetPort for https
# Pods of the chart's nginx: harbor.matchLabels (release, app) and the component (templates/_helpers.tpl).
NGINX_SELECTOR = {"release": "harbor", "app": "harbor", "component": "nginx"}
PROJECT_JOB = "harbor-project"
PROJECT_JOB_SECRET = "harbor-project-netrc"
CURL_IMAGE = "curlimages/curl:8.11.1"
# Dockerfile targets (the project's one Dockerfile, issue 12): one lean image per role.
DOCKERFILE = "Dockerfile"
ROLES = ("serving", "tools", "mlflow")
CA_MOUNT = "/etc/fraud-registry"
# Validity: the CA outlives many server certificates; pulumi-tls re-issues the server's within its renewal
# window at the next `pulumi up` (ready_for_renewal).
CA_VALIDITY_HOURS = 10 * 365 * 24
SERVER_VALIDITY_HOURS = 365 * 24
SERVER_EARLY_RENEWAL_HOURS = 30 * 24


def image_name(role: str) -> str:
    return f"fraud-{role}"


def image_repository(registry: RegistrySettings, region: Region, role: str) -> str:
    """``<host:port>/<project>/fraud-<role>``: where the image of ``role`` is pushed in ``region``."""
    return f"{registry.address(region.registry_host)}/{registry.project}/{image_name(role)}"


@dataclass(frozen=True)
class ProjectImages:
    """The project's images by role: pushed references by digest (or tags when Harbor is not built here)."""

    serving: pulumi.Input[str]
    tools: pulumi.Input[str]
    mlflow: pulumi.Input[str]

    @classmethod
    def tagged(cls, registry: RegistrySettings, region: Region, tag: str) -> ProjectImages:
        return cls(*(f"{image_repository(registry, region, role)}:{tag}" for role in ROLES))


# ---------------------------------------------------------------------------------------------------
# Reaching the registry


def dns_names(host: str) -> list[str]:
    """The names Harbor's certificate carries: the registry's host and the in-cluster names of its Services."""
    services = [f"{service}.{NAMESPACE}.svc" for service in (ENDPOINT_SERVICE, CHART_SERVICE)]
    return [host, *services, *(f"{name}.cluster.local" for name in services)]


def endpoint_service(registry: RegistrySettings) -> k8s.Manifest:
    """Service harbor-endpoint: the registry's port on a static ClusterIP (and a node port, or a load balancer)."""
    port: dict[str, Any] = {"name": "https", "port": registry.port, "targetPort": NGINX_HTTPS_PORT}
    spec: dict[str, Any] = {
        "type": "NodePort" if registry.exposure == "nodePort" else "LoadBalancer",
        "selector": dict(NGINX_SELECTOR),
        "ports": [port],
    }
    if registry.exposure == "nodePort":
        port["nodePort"] = registry.port
    if registry.cluster_ip:
        spec["clusterIP"] = registry.cluster_ip
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": ENDPOINT_SERVICE,
            "namespace": NAMESPACE,
            "labels": k8s.labels(ENDPOINT_SERVICE, "harbor"),
        },
        "spec": spec,
    }


def host_aliases(registry: RegistrySettings, region: Region) -> list[dict[str, Any]]:
    """For a pod that reaches the registry by its name: the host on the static ClusterIP (none without one:
    then DNS resolves the host)."""
    if not registry.cluster_ip:
        return []
    return [{"ip": registry.cluster_ip, "hostnames": [region.registry_host or registry.host]}]


def buildkitd_toml(address: str, ca_file: str) -> str:
    """BuildKit's daemon config: trust ``ca_file`` for the registry (buildkit docs/buildkitd.toml.md)."""
    return f'[registry."{address}"]\n  ca = ["{ca_file}"]\n'


def tls_secret(certificate: pulumi.Input[str], key: pulumi.Input[str], ca: pulumi.Input[str]) -> k8s.Manifest:
    """The TLS Secret the chart's nginx serves (tls.crt, tls.key) and whose ca.crt Harbor's portal offers and
    its components trust (caSecretName, caBundleSecretName)."""
    obj = k8s.secret(
        TLS_SECRET,
        NAMESPACE,
        {"tls.crt": certificate, "tls.key": key, "ca.crt": ca},
        obj_labels=k8s.labels(TLS_SECRET, "harbor"),
    )
    obj["type"] = "kubernetes.io/tls"
    return obj


# ---------------------------------------------------------------------------------------------------
# The project the images go to


def netrc(host: str, password: str) -> str:
    """curl's credentials file for Harbor's API (never on a command line or in the environment)."""
    return f"machine {host} login admin password {password}\n"


def project_job(registry: RegistrySettings) -> list[k8s.Manifest]:
    """A Job that makes the Harbor project exist, public, before anything is pushed (Harbor starts with
    ``library`` only; a push to a missing project fails). Public: the nodes pull without credentials; the
    images hold no secrets. 201 created, 409 already there; anything else fails the Job (and ``pulumi up``)."""
    api_host = f"{ENDPOINT_SERVICE}.{NAMESPACE}.svc"
    url = f"https://{api_host}:{registry.port}/api/v2.0/projects"
    body = f'{{"project_name":"{registry.project}","metadata":{{"public":"true"}}}}'
    script = (
        "set -eu\n"
        f"code=$(curl --silent --show-error --output /tmp/answer --write-out '%{{http_code}}' "
        f"--cacert {CA_MOUNT}/ca.crt --netrc-file /etc/harbor-admin/netrc "
        f"--header 'Content-Type: application/json' --data '{body}' {url})\n"
        'case "$code" in\n'
        f'  201) echo "created project {registry.project}" ;;\n'
        f'  409) echo "project {registry.project} exists" ;;\n'
        '  *) echo "Harbor answered $code:"; cat /tmp/answer; exit 1 ;;\n'
        "esac\n"
    )
    tmp_volume, tmp_mount = k8s.tmp_volume()
    container = k8s.container(
        "create-project",
        CURL_IMAGE,
        command=["/bin/sh", "-c"],
        args=[script],
        requests={"cpu": "10m", "memory": "16Mi"},
        limits={"cpu": "100m", "memory": "64Mi"},
        volume_mounts=[
            tmp_mount,
            {"name": "ca", "mountPath": CA_MOUNT, "readOnly": True},
            {"name": "admin", "mountPath": "/etc/harbor-admin", "readOnly": True},
        ],
    )
    obj_labels = k8s.labels(PROJECT_JOB, "harbor")
    return [
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {"name": PROJECT_JOB, "namespace": NAMESPACE, "labels": obj_labels},
            "spec": {
                "backoffLimit": 6,
                "template": {
                    "metadata": {"labels": obj_labels},
                    "spec": {
                        "restartPolicy": "OnFailure",
                        "automountServiceAccountToken": False,
                        "securityContext": k8s.pod_security_context(),
                        "containers": [container],
                        "volumes": [
                            tmp_volume,
                            {
                                "name": "ca",
                                "secret": {"secretName": TLS_SECRET, "items": [{"key": "ca.crt", "path": "ca.crt"}]},
                            },
                            {"name": "admin", "secret": {"secretName": PROJECT_JOB_SECRET}},
                        ],
                    },
                },
            },
        }
    ]


# ---------------------------------------------------------------------------------------------------
# The certificate (pulumi-tls)


@dataclass(frozen=True)
class Certificate:
    cert_pem: pulumi.Output[str]
    key_pem: pulumi.Output[str]  # a Pulumi secret
    ca_pem: pulumi.Input[str]


def issue_certificate(
    name: str,
    *,
    host: str,
    cluster_ip: str,
    ca: tuple[str, pulumi.Output[str]] | None,
    parent: pulumi.Resource,
) -> Certificate:
    """Harbor's server certificate, issued by the registry CA (``ca``: its certificate's PEM and its secret
    key, or when None a CA kept in the state), all in pulumi-tls resources under ``parent``."""
    import pulumi_tls as tls

    provider = tls.Provider(f"{name}-tls", opts=pulumi.ResourceOptions(parent=parent))
    opts = pulumi.ResourceOptions(parent=parent, provider=provider)
    ca_cert_pem: pulumi.Input[str]
    if ca is None:
        ca_private = tls.PrivateKey(f"{name}-ca-key", algorithm="ECDSA", ecdsa_curve="P256", opts=opts)
        ca_cert = tls.SelfSignedCert(
            f"{name}-ca",
            private_key_pem=ca_private.private_key_pem,
            is_ca_certificate=True,
            subject=tls.SelfSignedCertSubjectArgs(
                common_name="fraud-platform registry CA", organization="fraud-platform"
            ),
            validity_period_hours=CA_VALIDITY_HOURS,
            allowed_uses=["cert_signing", "crl_signing"],
            opts=opts,
        )
        ca_cert_pem, ca_key = ca_cert.cert_pem, ca_private.private_key_pem
    else:
        ca_cert_pem, ca_key = ca
    server_key = tls.PrivateKey(f"{name}-server-key", algorithm="ECDSA", ecdsa_curve="P256", opts=opts)
    request = tls.CertRequest(
        f"{name}-server-request",
        private_key_pem=server_key.private_key_pem,
        subject=tls.CertRequestSubjectArgs(common_name=host, organization="fraud-platform"),
        dns_names=dns_names(host),
        ip_addresses=[cluster_ip] if cluster_ip else [],
        opts=opts,
    )
    ca_secret_key: pulumi.Output[str] = pulumi.Output.secret(ca_key)
    server = tls.LocallySignedCert(
        f"{name}-server",
        cert_request_pem=request.cert_request_pem,
        ca_cert_pem=ca_cert_pem,
        ca_private_key_pem=ca_secret_key,
        validity_period_hours=SERVER_VALIDITY_HOURS,
        early_renewal_hours=SERVER_EARLY_RENEWAL_HOURS,
        allowed_uses=["digital_signature", "key_encipherment", "server_auth"],
        opts=opts,
    )
    return Certificate(server.cert_pem, pulumi.Output.secret(server_key.private_key_pem), ca_cert_pem)
