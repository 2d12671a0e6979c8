"""``fraudctl cluster ca``: the registry CA and the files a kind cluster needs to trust it, before the cluster.

Harbor's certificate is issued by the program (infra/registry.py) from a CA that everything pulling or pushing
must already trust when ``pulumi up`` first pushes: the docker daemon (the docker provider's push), the kind
nodes' containerd (pulls) and the pipeline's BuildKit (the program mounts the CA there itself). So the CA
exists first, made here, and the program gets its certificate as ``registry.caCertFile`` and its key as the
secret ``registryCaKey``. Written under ``--out`` (default ``.cluster``):

* ``ca.crt``, ``ca.key`` (mode 0600): an ECDSA P-256 CA, ten years. Kept: a second run reuses it (after
  checking the pair), so trust set up once stays valid; delete the folder to start over.
* ``kind.yaml``: the kind cluster (named after the region's ``kind-<name>`` context) on the pinned node image,
  the registry's port mapped to the host's loopback, containerd reading per-registry config from
  ``/etc/containerd/certs.d`` (the CRI ``config_path``; containerd 1.7.18 in kind v0.25.0's node image), that
  folder mounted from ``containerd/certs.d``.
* ``containerd/certs.d/<host:port>/hosts.toml`` and ``ca.crt``: containerd trusts the CA for that registry
  (remotes/docker/config/hosts.go at v1.7.18: ``server`` plus ``ca``, relative paths from the host folder; the
  same TLS client fetches Harbor's tokens from the realm, the same name).
* ``docker/certs.d/<host:port>/ca.crt``: for ``/etc/docker/certs.d`` on the machine that runs ``pulumi up``.
* ``hosts.machine`` and ``hosts.node``: the ``/etc/hosts`` line of the machine (the registry on 127.0.0.1, the
  port mapping) and of each node (the registry's ClusterIP: kube-proxy serves ClusterIPs in the node's own
  network namespace).
* ``passphrase`` (mode 0600, kept once made): what encrypts the stack's secrets in the local Pulumi state, and
  ``env.sh``, to source in each shell: the tools docs/CLUSTER.md installs under ``bin/`` and ``pulumi/``,
  the project's ``fraudctl``, and ``PULUMI_CONFIG_PASSPHRASE_FILE``.
"""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
import secrets
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from infra.config import PROJECT_ROOT, RegistrySettings, StackConfig

log = logging.getLogger(__name__)

# kind v0.25.0's default node image (pkg/apis/config/defaults/image.go at the tag): Kubernetes 1.31, the
# version the platform is rendered and validated for; containerd v1.7.18 (images/base/Dockerfile of base
# image v20241108-5c6d2daf).
KIND_VERSION = "v0.25.0"
KIND_NODE_IMAGE = "kindest/node:v1.31.2@sha256:18fbefc20a7113353c7b75b5c869d7145a6abd6269154825872dc59c1329912e"
# kind's default service subnet (pkg/apis/config/defaults): the registry's static ClusterIP must be in it.
KIND_SERVICE_SUBNET = "10.96.0.0/16"
CONTAINERD_CERTS_DIR = "/etc/containerd/certs.d"
CA_VALIDITY = datetime.timedelta(days=3650)


class CaError(Exception):
    """The CA files or the stack cannot be used (one line for a person)."""


@dataclass(frozen=True)
class KindFiles:
    folder: Path
    ca_cert: Path
    ca_key: Path
    kind_config: Path
    containerd_hosts: Path
    docker_ca: Path
    machine_hosts: Path
    node_hosts: Path
    passphrase: Path
    env: Path
    cluster_name: str
    created_ca: bool

    def paths(self) -> list[Path]:
        return [
            self.ca_cert,
            self.ca_key,
            self.kind_config,
            self.containerd_hosts,
            self.docker_ca,
            self.machine_hosts,
            self.node_hosts,
            self.passphrase,
            self.env,
        ]


# ---------------------------------------------------------------------------------------------------
# The CA


def new_ca(common_name: str) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) of a new CA that may only sign leaf certificates."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fraud-platform"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


def check_pair(cert_pem: bytes, key_pem: bytes) -> None:
    """Raise CaError unless ``cert_pem`` is a CA, valid now, whose public key is ``key_pem``'s."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        certificate = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise CaError(f"not a PEM certificate and unencrypted private key ({exc})") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    if certificate.public_key().public_bytes(serialization.Encoding.PEM, public) != key.public_key().public_bytes(
        serialization.Encoding.PEM, public
    ):
        raise CaError("the certificate is not the key's")
    try:
        is_ca = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        raise CaError("the certificate is not a CA certificate")
    now = datetime.datetime.now(datetime.UTC)
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise CaError(f"the CA expired on {certificate.not_valid_after_utc:%Y-%m-%d}")


# ---------------------------------------------------------------------------------------------------
# The kind files


def kind_cluster_name(context: str) -> str:
    """kind names its kubeconfig context ``kind-<cluster name>``."""
    if not context.startswith("kind-") or len(context) == len("kind-"):
        raise CaError(
            f"the region's context {context!r} is not a kind context (kind-<cluster name>); kind files are for "
            "kind clusters (docs/CLUSTER.md covers managed clusters)"
        )
    return context[len("kind-") :]


def hosts_toml(address: str) -> str:
    """containerd's per-registry config for ``address``: HTTPS, trusting the CA beside it."""
    return (
        f"# {address}: Harbor of the fraud platform, its certificate signed by the CA beside this file.\n"
        f'server = "https://{address}"\n'
        f'ca = "{CONTAINERD_CERTS_DIR}/{address}/ca.crt"\n'
    )


def kind_config(name: str, registry: RegistrySettings, certs_dir: Path) -> dict[str, Any]:
    node: dict[str, Any] = {
        "role": "control-plane",
        "image": KIND_NODE_IMAGE,
        "extraMounts": [{"hostPath": str(certs_dir), "containerPath": CONTAINERD_CERTS_DIR, "readOnly": True}],
    }
    if registry.exposure == "nodePort":
        # docker publishes the node's port on the host's loopback only: the registry is not on the LAN.
        node["extraPortMappings"] = [
            {"containerPort": registry.port, "hostPort": registry.port, "listenAddress": "127.0.0.1", "protocol": "TCP"}
        ]
    return {
        "kind": "Cluster",
        "apiVersion": "kind.x-k8s.io/v1alpha4",
        "name": name,
        "networking": {"serviceSubnet": KIND_SERVICE_SUBNET},
        "containerdConfigPatches": [
            f'[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "{CONTAINERD_CERTS_DIR}"'
        ],
        "nodes": [node],
    }


def _check_registry(registry: RegistrySettings) -> None:
    if registry.exposure != "nodePort":
        raise CaError(f"registry.exposure is {registry.exposure}; a kind cluster reaches Harbor by its node port")
    if not registry.cluster_ip:
        raise CaError("registry.clusterIP is empty; kind nodes and pods map the registry's host to a static ClusterIP")
    if ipaddress.ip_address(registry.cluster_ip) not in ipaddress.ip_network(KIND_SERVICE_SUBNET):
        raise CaError(
            f"registry.clusterIP {registry.cluster_ip} is outside kind's service subnet {KIND_SERVICE_SUBNET}; "
            "pick an address in it (e.g. 10.96.0.30)"
        )


def _write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Atomically, created with ``mode`` (a key is never readable by others, not even for a moment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.parent / f".{path.name}.{uuid.uuid4().hex}.part"
    descriptor = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(temp, mode)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def write_kind_files(config: StackConfig, region_name: str | None, out: Path) -> KindFiles:
    """Make (or reuse) the CA under ``out`` and write the files a kind cluster for ``region_name`` needs."""
    regions = {r.name: r for r in config.regions}
    if region_name is None:
        if len(regions) != 1:
            raise CaError(f"stack {config.stack} has regions {', '.join(regions)}: choose one with --region")
        region = config.regions[0]
    elif region_name in regions:
        region = regions[region_name]
    else:
        raise CaError(f"--region {region_name!r}: stack {config.stack} has {', '.join(regions)}")
    registry = config.registry
    _check_registry(registry)
    cluster = kind_cluster_name(region.context)
    address = registry.address(region.registry_host)
    host = region.registry_host or registry.host
    out = out.expanduser().resolve()
    cert_path, key_path = out / "ca.crt", out / "ca.key"
    created = False
    if cert_path.exists() or key_path.exists():
        try:
            cert_pem, key_pem = cert_path.read_bytes(), key_path.read_bytes()
        except OSError as exc:
            raise CaError(f"{exc.filename}: {exc.strerror}; delete {out} to make a new CA") from None
        try:
            check_pair(cert_pem, key_pem)
        except CaError as exc:
            raise CaError(f"{cert_path} and {key_path}: {exc}; delete {out} to make a new CA") from None
        log.info("reusing the CA in %s", out)
    else:
        cert_pem, key_pem = new_ca(f"fraud-platform registry CA ({config.stack})")
        _write(key_path, key_pem, 0o600)
        _write(cert_path, cert_pem)
        created = True
        log.info("made a new registry CA in %s", out)
    certs_dir = out / "containerd" / "certs.d"
    files = KindFiles(
        folder=out,
        ca_cert=cert_path,
        ca_key=key_path,
        kind_config=out / "kind.yaml",
        containerd_hosts=certs_dir / address / "hosts.toml",
        docker_ca=out / "docker" / "certs.d" / address / "ca.crt",
        machine_hosts=out / "hosts.machine",
        node_hosts=out / "hosts.node",
        passphrase=out / "passphrase",
        env=out / "env.sh",
        cluster_name=cluster,
        created_ca=created,
    )
    _write(files.containerd_hosts, hosts_toml(address).encode())
    _write(files.containerd_hosts.parent / "ca.crt", cert_pem)
    _write(files.docker_ca, cert_pem)
    config_text = yaml.safe_dump(kind_config(cluster, registry, certs_dir), sort_keys=False, width=4096)
    header = f"# kind {KIND_VERSION}: written by `fraudctl cluster ca` for stack {config.stack}\n"
    _write(files.kind_config, (header + config_text).encode())
    _write(files.machine_hosts, f"127.0.0.1 {host}\n".encode())
    _write(files.node_hosts, f"{registry.cluster_ip} {host}\n".encode())
    if not files.passphrase.exists():
        _write(files.passphrase, secrets.token_urlsafe(32).encode(), 0o600)
    _write(files.env, env_script(out, PROJECT_ROOT, files.passphrase).encode())
    return files


def env_script(out: Path, project: Path, passphrase: Path) -> str:
    """``env.sh``: sourced (``. .cluster/env.sh``) by every step of docs/CLUSTER.md."""
    return (
        "# Source me: the kind path's tools, the project's fraudctl, the stack's passphrase (fraudctl cluster ca).\n"
        f'export PATH="{out}/bin:{out}/pulumi/bin:{project}/.venv/bin:$PATH"\n'
        f'export PULUMI_CONFIG_PASSPHRASE_FILE="{passphrase}"\n'
        "export PULUMI_SKIP_UPDATE_CHECK=true\n"
    )
