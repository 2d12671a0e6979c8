"""The image path (issue 10, defect 2): Harbor reached and trusted under one name, its certificate from the
registry CA (kept in state), one image per role, and the kind files `fraudctl cluster ca` writes. The trust
files are exercised for real: a TLS server on loopback presents a certificate issued by the CA as the program
issues Harbor's, and clients trusting only the written files must accept it."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import stat
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml
from render_support import rendered

from fraudctl.cli import main
from infra import pipeline, registry
from infra.config import ConfigError, deep_merge, load_stack, parse_config, project_defaults
from infra.render import HELM_RELEASE, SECRET_MARKER, SECRET_SIG, RenderResult, run_program, wire
from ops import registry_ca

ADDRESS = "harbor.fraud.local:30003"


def resources(result: RenderResult, typ: str) -> list[Any]:
    return [r for r in result.resources if r.type == typ]


def manifest(result: RenderResult, region: str, kind: str, name: str) -> dict[str, Any]:
    (obj,) = [o for o in result.manifests(region) if o["kind"] == kind and o["metadata"]["name"] == name]
    return obj


def harbor_release(result: RenderResult, region: str) -> dict[str, Any]:
    (release,) = [r for r in result.helm_releases(region) if r["name"] == "harbor"]
    return release


# ---------------------------------------------------------------------------------------------------
# One name everywhere


def test_harbor_is_reached_by_one_name_through_its_own_service_not_an_ingress() -> None:
    result = rendered("dev")
    values = harbor_release(result, "local")["values"]
    assert values["externalURL"] == f"https://{ADDRESS}"  # the token realm Harbor hands out
    assert values["expose"]["type"] == "clusterIP"
    assert values["expose"]["tls"] == {"enabled": True, "certSource": "secret", "secret": {"secretName": "harbor-tls"}}
    (render,) = [r for r in result.helm_renders("local") if r.name == "harbor"]
    assert not [o for o in render.objects() if o.kind == "Ingress"]
    endpoint = manifest(result, "local", "Service", "harbor-endpoint")
    assert endpoint["spec"] == {
        "type": "NodePort",
        "selector": {"release": "harbor", "app": "harbor", "component": "nginx"},
        "ports": [{"name": "https", "port": 30003, "targetPort": 8443, "nodePort": 30003}],
        "clusterIP": "10.96.0.30",
    }
    # The nginx pods it selects serve https on that port.
    (nginx,) = [o.obj for o in render.objects() if o.kind == "Deployment" and o.name == "harbor-nginx"]
    ports = {p["containerPort"] for c in nginx["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])}
    assert registry.NGINX_HTTPS_PORT in ports


def test_pushes_and_pulls_use_the_same_name_as_harbor() -> None:
    result = rendered("dev")
    (provider,) = resources(result, "pulumi:providers:docker")
    for image in resources(result, "docker:index/image:Image"):
        assert image.inputs["imageName"].startswith(f"{ADDRESS}/fraud/fraud-")
        credentials = wire(image.inputs, result.known_secrets)["registry"]
        assert credentials == {"server": ADDRESS, "username": "admin", "password": SECRET_MARKER}
        assert image.provider.startswith(provider.urn)
    build = next(t for t in manifest(result, "local", "WorkflowTemplate", "fraud-model-training")["spec"]["templates"]
                 if t["name"] == "build-image")  # fmt: skip
    assert any(a.startswith(f"type=image,name={ADDRESS}/fraud/fraud-serving:") for a in build["container"]["args"])
    # The build pod maps the host to the registry's ClusterIP and trusts the CA through buildkitd.toml.
    assert build["hostAliases"] == [{"ip": "10.96.0.30", "hostnames": ["harbor.fraud.local"]}]
    flags = {e["name"]: e["value"] for e in build["container"]["env"]}["BUILDKITD_FLAGS"]
    assert "--config /etc/buildkit/buildkitd.toml" in flags
    config = manifest(result, "local", "ConfigMap", pipeline.BUILDKIT_CONFIG)
    assert config["data"]["buildkitd.toml"] == f'[registry."{ADDRESS}"]\n  ca = ["/etc/buildkit/ca.crt"]\n'
    tls = manifest(result, "local", "Secret", registry.TLS_SECRET)
    assert config["data"]["ca.crt"] == tls["stringData"]["ca.crt"]
    # Its docker config names the registry by the same name (the key Docker looks credentials up by).
    (docker_config,) = [r for r in result.resources if r.name == "region-local-pipeline-harbor"]
    assert docker_config.inputs["stringData"][SECRET_SIG]


def test_a_region_with_its_own_harbor_uses_its_own_name_and_no_static_ip_without_one() -> None:
    result = rendered("multiregion", registry__exposure="loadBalancer", registry__port=443, registry__clusterIP="")
    for region in result.config.regions:
        values = harbor_release(result, region.name)["values"]
        assert values["externalURL"] == f"https://{region.registry_host}"  # 443: no port in the name
        endpoint = manifest(result, region.name, "Service", "harbor-endpoint")
        assert endpoint["spec"]["type"] == "LoadBalancer" and "clusterIP" not in endpoint["spec"]
        assert "nodePort" not in endpoint["spec"]["ports"][0]
        build = next(t for t in manifest(result, region.name, "WorkflowTemplate", "fraud-model-training")["spec"]
                     ["templates"] if t["name"] == "build-image")  # fmt: skip
        assert "hostAliases" not in build  # DNS resolves the host to the load balancer


# ---------------------------------------------------------------------------------------------------
# Images per role


def test_each_role_is_built_from_its_dockerfile_target_after_harbor_can_take_it() -> None:
    result = rendered("dev")
    images = {r.inputs["build"]["target"]: r for r in resources(result, "docker:index/image:Image")}
    assert set(images) == set(registry.ROLES)
    by_urn = result.by_urn()
    for role, image in images.items():
        assert image.inputs["build"]["dockerfile"] == registry.DOCKERFILE
        assert image.inputs["imageName"] == f"{ADDRESS}/fraud/fraud-{role}:{result.config.serving.image_tag}"
        waits = {by_urn[u].name for u in image.dependencies}
        # Harbor up, reachable by its name, and the project there.
        harbor = "region-local-harbor"
        assert {f"{harbor}-harbor", f"{harbor}-endpoint", f"{harbor}-job-harbor-project"} <= waits


def test_each_workload_runs_its_roles_image_by_digest() -> None:
    result = rendered("multiregion")
    for region in result.config.regions:
        digests = {role: f"{region.registry_host}:30003/fraud/fraud-{role}@sha256:" for role in registry.ROLES}

        def image_of(kind: str, name: str, region: str = region.name) -> str:
            obj = manifest(result, region, kind, name)
            return obj["spec"]["template"]["spec"]["containers"][0]["image"]

        assert image_of("Deployment", "fraud-detector").startswith(digests["serving"])
        assert image_of("Deployment", "fraud-detector-replay").startswith(digests["tools"])
        assert image_of("Deployment", "mlflow").startswith(digests["mlflow"])
        steps = manifest(result, region.name, "WorkflowTemplate", "fraud-model-training")["spec"]["templates"]
        assert {t["container"]["image"][: len(digests["tools"])] for t in steps if "container" in t and
                t["name"] != "build-image"} == {digests["tools"]}  # fmt: skip
    assert image_of("Deployment", "fraud-wave-gate", "us-east").startswith(digests["tools"])


# ---------------------------------------------------------------------------------------------------
# The certificate


def test_harbors_certificate_is_issued_from_a_ca_in_state_with_the_names_it_is_reached_by() -> None:
    result = rendered("dev")
    (request,) = resources(result, "tls:index/certRequest:CertRequest")
    assert request.inputs["dnsNames"] == [
        "harbor.fraud.local",
        "harbor-endpoint.harbor.svc",
        "harbor.harbor.svc",
        "harbor-endpoint.harbor.svc.cluster.local",
        "harbor.harbor.svc.cluster.local",
    ]
    assert request.inputs["ipAddresses"] == ["10.96.0.30"]
    (server,) = resources(result, "tls:index/locallySignedCert:LocallySignedCert")
    assert server.inputs["allowedUses"] == ["digital_signature", "key_encipherment", "server_auth"]
    assert server.inputs["earlyRenewalHours"] < server.inputs["validityPeriodHours"]
    assert server.inputs["caPrivateKeyPem"][SECRET_SIG]
    # No CA configured: the program keeps one in its state (stable: a resource, not a render-time value).
    (ca,) = resources(result, "tls:index/selfSignedCert:SelfSignedCert")
    assert ca.inputs["isCaCertificate"] is True
    tls = manifest(result, "local", "Secret", registry.TLS_SECRET)
    assert tls["type"] == "kubernetes.io/tls" and tls["stringData"]["tls.key"] == SECRET_MARKER
    assert result.stack_outputs["regions"]["local"]["harbor"]["ca_cert"].startswith("-----BEGIN CERTIFICATE-----")
    # Harbor's components trust it; its portal offers it.
    values = harbor_release(result, "local")["values"]
    assert values["caSecretName"] == values["caBundleSecretName"] == registry.TLS_SECRET


def test_a_configured_ca_signs_harbors_certificate_and_its_key_stays_secret(kind_files: registry_ca.KindFiles) -> None:
    result = run_program(
        "dev",
        overrides={"registry": {"caCertFile": str(kind_files.ca_cert)}, "registryCaKey": "-----BEGIN PRIVATE KEY-----"},
    )
    assert not resources(result, "tls:index/selfSignedCert:SelfSignedCert")
    (server,) = resources(result, "tls:index/locallySignedCert:LocallySignedCert")
    assert server.inputs["caCertPem"] == kind_files.ca_cert.read_text()
    assert server.inputs["caPrivateKeyPem"][SECRET_SIG]
    text = yaml.safe_dump(result.manifests("local")) + yaml.safe_dump(result.helm_releases("local"))
    assert "PRIVATE KEY" not in text and kind_files.ca_key.read_text() not in text
    tls = manifest(result, "local", "Secret", registry.TLS_SECRET)
    assert tls["stringData"]["ca.crt"] == kind_files.ca_cert.read_text()


def _problems(**registry_keys: object) -> list[str]:
    raw = deep_merge(project_defaults(), {"regions": [{"name": "eu", "context": "kind-eu"}], **registry_keys})
    with pytest.raises(ConfigError) as info:
        parse_config(raw, stack="test")
    return info.value.problems


def test_registry_config_is_validated(tmp_path: Path, kind_files: registry_ca.KindFiles) -> None:
    assert _problems(registry={"port": 443}) == [
        "registry.port: 443 is not a node port (30000-32767); with exposure nodePort the registry's port is its node "
        "port too. Use e.g. 30003, or exposure loadBalancer"
    ]
    assert _problems(registry={"host": "harbor.local:5000"}) == [
        "registry.host: 'harbor.local:5000' carries a port; give the host only and the port as registry.port"
    ]
    assert _problems(registry={"clusterIP": "10.96.0.300"})[0].startswith(
        "registry.clusterIP: must be an IP address such as 10.96.0.30"
    )
    assert _problems(registry={"caCertFile": str(kind_files.ca_cert)}) == [
        "registryCaKey: is required with registry.caCertFile (the CA's private key signs Harbor's certificate): "
        "`pulumi config set --secret registryCaKey < .cluster/ca.key`"
    ]
    assert _problems(registryCaKey={"secure": "v1:abc"}) == [
        "registry.caCertFile: is required with registryCaKey: the PEM file of that key's CA certificate"
    ]
    missing = tmp_path / "nope.crt"
    assert _problems(registry={"caCertFile": str(missing)}, registryCaKey={"secure": "x"})[0].startswith(
        f"registry.caCertFile: {missing} does not exist"
    )
    leaf = tmp_path / "leaf.crt"
    leaf.write_bytes(_issue(kind_files, "x.example")[0])
    assert _problems(registry={"caCertFile": str(leaf)}, registryCaKey={"secure": "x"}) == [
        f"registry.caCertFile: {leaf} is not a CA certificate (no basicConstraints CA:TRUE); `fraudctl cluster ca` "
        "writes one (docs/CLUSTER.md)"
    ]
    leaf.write_text("hello")
    assert "is not a PEM certificate" in _problems(registry={"caCertFile": str(leaf)}, registryCaKey={"secure": "x"})[0]


# ---------------------------------------------------------------------------------------------------
# fraudctl cluster ca: the kind files, and the trust they set up, for real


@pytest.fixture(scope="module")
def kind_files(tmp_path_factory: pytest.TempPathFactory) -> registry_ca.KindFiles:
    return registry_ca.write_kind_files(load_stack("dev"), None, tmp_path_factory.mktemp("kind") / ".cluster")


def test_cluster_ca_writes_the_kind_cluster_and_its_trust_files(kind_files: registry_ca.KindFiles) -> None:
    assert kind_files.created_ca and stat.S_IMODE(kind_files.ca_key.stat().st_mode) == 0o600
    config = yaml.safe_load(kind_files.kind_config.read_text())
    assert config["name"] == "fraud-dev"  # context kind-fraud-dev in Pulumi.dev.yaml
    (node,) = config["nodes"]
    assert node["image"] == registry_ca.KIND_NODE_IMAGE
    assert node["extraPortMappings"] == [
        {"containerPort": 30003, "hostPort": 30003, "listenAddress": "127.0.0.1", "protocol": "TCP"}
    ]
    certs = Path(node["extraMounts"][0]["hostPath"])
    assert node["extraMounts"][0]["containerPath"] == "/etc/containerd/certs.d"
    assert kind_files.containerd_hosts == certs / ADDRESS / "hosts.toml"
    assert 'config_path = "/etc/containerd/certs.d"' in config["containerdConfigPatches"][0]
    assert ipaddress.ip_address("10.96.0.30") in ipaddress.ip_network(config["networking"]["serviceSubnet"])
    hosts = kind_files.containerd_hosts.read_text()
    assert f'server = "https://{ADDRESS}"' in hosts and f'ca = "/etc/containerd/certs.d/{ADDRESS}/ca.crt"' in hosts
    assert (certs / ADDRESS / "ca.crt").read_bytes() == kind_files.ca_cert.read_bytes()
    assert kind_files.docker_ca.read_bytes() == kind_files.ca_cert.read_bytes()
    assert kind_files.docker_ca.parent.name == ADDRESS  # /etc/docker/certs.d/<host:port>/ca.crt
    assert kind_files.machine_hosts.read_text() == "127.0.0.1 harbor.fraud.local\n"
    assert kind_files.node_hosts.read_text() == "10.96.0.30 harbor.fraud.local\n"


def test_cluster_ca_keeps_its_ca_and_refuses_a_broken_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / ".cluster"
    assert main(["cluster", "ca", "--stack", "dev", "--out", str(out)]) == 0
    first = (out / "ca.crt").read_bytes()
    assert main(["cluster", "ca", "--stack", "dev", "--out", str(out)]) == 0
    assert (out / "ca.crt").read_bytes() == first  # trust set up once stays valid
    (out / "ca.key").write_bytes(registry_ca.new_ca("other")[1])
    capsys.readouterr()
    assert main(["cluster", "ca", "--stack", "dev", "--out", str(out)]) == 2
    assert "the certificate is not the key's; delete" in capsys.readouterr().err
    assert main(["cluster", "ca", "--stack", "multiregion", "--out", str(tmp_path / "m")]) == 2
    assert "choose one with --region" in capsys.readouterr().err
    assert main(["cluster", "ca", "--stack", "multiregion", "--region", "eu-west", "--out", str(tmp_path / "m")]) == 2
    assert "is not a kind context" in capsys.readouterr().err


def _issue(files: registry_ca.KindFiles, host: str, ip: str | None = None) -> tuple[bytes, bytes]:
    """A server certificate as infra/registry.py has pulumi-tls issue Harbor's: ECDSA P-256, the names as SANs,
    digital_signature + key_encipherment, server_auth."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate(files.ca_cert.read_bytes())
    ca_key = serialization.load_pem_private_key(files.ca_key.read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = [x509.DNSName(n) for n in registry.dns_names(host)]
    if ip:
        names.append(x509.IPAddress(ipaddress.ip_address(ip)))
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=365))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.KeyUsage(True, False, True, False, False, False, False, False, False), critical=True)
        .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _handshake(ca_file: Path, server_name: str, cert: Path, key: Path) -> str | None:
    """A real TLS handshake on loopback; None when the client (trusting only ``ca_file``) accepts the server."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        connection, _ = listener.accept()
        try:
            with server_context.wrap_socket(connection, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = ssl.create_default_context(cafile=str(ca_file))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
            client.wrap_socket(raw, server_hostname=server_name) as tls,
        ):
            tls.sendall(b"x")
        return None
    except ssl.SSLCertVerificationError as error:
        return error.verify_message
    finally:
        thread.join(timeout=10)
        listener.close()


def test_the_written_trust_files_accept_harbors_certificate_for_every_name_it_is_reached_by(
    kind_files: registry_ca.KindFiles, tmp_path: Path
) -> None:
    cert_pem, key_pem = _issue(kind_files, "harbor.fraud.local", "10.96.0.30")
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert.write_bytes(cert_pem)
    key.write_bytes(key_pem)
    containerd_ca = kind_files.containerd_hosts.parent / "ca.crt"
    for ca_file in (kind_files.docker_ca, containerd_ca):
        for name in ("harbor.fraud.local", "harbor-endpoint.harbor.svc", "10.96.0.30"):
            assert _handshake(ca_file, name, cert, key) is None, (ca_file, name)
        assert "mismatch" in (_handshake(ca_file, "harbor.other.local", cert, key) or "")
    # A CA that is not the registry's is refused: the files trust exactly this CA.
    other = tmp_path / "other.crt"
    other.write_bytes(registry_ca.new_ca("someone else")[0])
    assert _handshake(other, "harbor.fraud.local", cert, key) == "unable to get local issuer certificate"


def test_renders_never_carry_the_helm_release_ingress_or_a_chart_generated_certificate() -> None:
    """Defect 2's cause: certSource auto made the chart generate a CA on every render (templates/nginx/secret.yaml
    genCA); the chart's own TLS Secret must not be rendered at all."""
    result = rendered("dev")
    (render,) = [r for r in result.helm_renders("local") if r.name == "harbor"]
    sources = {o.source for o in render.objects()}
    assert not any(s.endswith(("nginx/secret.yaml", "ingress/secret.yaml", "ingress/ingress.yaml")) for s in sources)
    assert [r for r in result.resources if r.type == HELM_RELEASE and r.inputs.get("name") == "harbor"]
