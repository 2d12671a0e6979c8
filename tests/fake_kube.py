"""A fake Kubernetes API server for tests: a real HTTPS server on a free loopback port (its own CA, made
once per test process) that implements just what fraudctl uses, get/create objects, watch one object by
name, and follow pod logs, with bearer-token auth. Objects live in memory by path; every change bumps a
resourceVersion and is seen by watches. The kubeconfigs it writes authenticate with the token inline or
through an exec credential plugin (a real process, as EKS/GKE/AKS kubeconfigs do).

    with FakeKube() as kube:
        kube.put("/apis/apps/v1/namespaces/fraud/deployments/x", {...})
        path = kube.write_kubeconfig(tmp_path / "kubeconfig")
"""

from __future__ import annotations

import atexit
import base64
import datetime
import functools
import json
import random
import shutil
import ssl
import string
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

EXEC_API_VERSION = "client.authentication.k8s.io/v1"
# The exec credential plugin: prints an ExecCredential with the token kept in the file given as argument.
EXEC_PLUGIN = """\
import json, os, sys
info = json.loads(os.environ["KUBERNETES_EXEC_INFO"])
token = open(sys.argv[1]).read().strip()
if not token:
    sys.exit("fake-plugin: no token (the login expired)")
status = {"token": token}
if len(sys.argv) > 2:
    status["expirationTimestamp"] = sys.argv[2]
print(json.dumps({"apiVersion": info["apiVersion"], "kind": "ExecCredential", "status": status}))
"""


@functools.cache
def tls_files() -> tuple[bytes, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it: (CA PEM, certificate file, key file)."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fake-kube-ca")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True, content_commitment=False,
                          key_encipherment=False, data_encipherment=False, key_agreement=False,
                          encipher_only=False, decipher_only=False),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    folder = Path(tempfile.mkdtemp(prefix="fake-kube-tls-"))
    atexit.register(shutil.rmtree, folder, True)
    cert_file, key_file = folder / "server.crt", folder / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return ca.public_bytes(serialization.Encoding.PEM), cert_file, key_file


class JsonRequestHandler(BaseHTTPRequestHandler):
    """A quiet handler that answers JSON; the test servers here (Kubernetes, GitHub) build on it."""

    def log_message(self, fmt: str, *args: Any) -> None:
        return

    def _json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that refuses the certificate or hangs up is the client's business (and tests make them).
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


@dataclass
class _Log:
    lines: list[str] = field(default_factory=list)
    closed: bool = False


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


class FakeKube:
    def __init__(self, token: str = "fake-token", *, tls: bool = True):
        self.token = token
        self.tls = tls
        self.requests: list[Recorded] = []
        self.objects: dict[str, dict[str, Any]] = {}
        self.history: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}
        self.logs: dict[str, _Log] = {}
        self.version = 100
        self.cond = threading.Condition()
        self.on_create: Callable[[str, dict[str, Any]], None] | None = None
        # Collections whose API is not installed (POST answers 404, as for a missing CRD).
        self.missing_collections: set[str] = set()
        # While cleared, GETs of objects wait for it (a slow API server; requests stay in flight).
        self.answer_gets = threading.Event()
        self.answer_gets.set()
        # End a watch stream after this many events (the client must resume from the last resourceVersion).
        self.watch_event_limit: int | None = None
        self.server = _Server(("127.0.0.1", 0), self._handler())
        if tls:
            _, cert_file, key_file = tls_files()
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert_file, key_file)
            # The handshake happens in the request's thread, so a stalled client cannot block accept().
            self.server.socket = context.wrap_socket(
                self.server.socket, server_side=True, do_handshake_on_connect=False
            )
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    # -- lifecycle -----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeKube:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.answer_gets.set()
        with self.cond:
            for log in self.logs.values():
                log.closed = True
            self.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()

    def write_kubeconfig(
        self,
        path: Path,
        *,
        context: str = "fake",
        namespace: str = "default",
        extra: bool = True,
        auth: str = "token",
        token_expires: str | None = None,
    ) -> Path:
        """A kubeconfig whose ``context`` points here; with ``extra`` also an unreachable current-context.

        ``auth``: ``token`` (inline bearer token) or ``exec`` (a credential plugin that prints the token kept
        in ``<path>.token``, with ``token_expires`` as its expirationTimestamp when given)."""
        cluster: dict[str, Any] = {"server": self.url}
        if self.tls:
            cluster["certificate-authority-data"] = base64.b64encode(tls_files()[0]).decode()
        user: dict[str, Any] = {"token": self.token}
        if auth == "exec":
            plugin, token_file = path.with_name(f"{path.name}.plugin.py"), path.with_name(f"{path.name}.token")
            plugin.write_text(EXEC_PLUGIN)
            token_file.write_text(self.token)
            args = [str(plugin), str(token_file), *([token_expires] if token_expires else [])]
            user = {
                "exec": {"apiVersion": EXEC_API_VERSION, "command": sys.executable, "args": args,
                         "interactiveMode": "Never"}
            }  # fmt: skip
        elif auth != "token":
            raise ValueError(f"auth {auth!r}: token or exec")
        clusters = [{"name": context, "cluster": cluster}]
        users = [{"name": context, "user": user}]
        contexts = [{"name": context, "context": {"cluster": context, "user": context, "namespace": namespace}}]
        current = context
        if extra:
            clusters.append({"name": "elsewhere", "cluster": {"server": "http://127.0.0.1:9"}})
            users.append({"name": "elsewhere", "user": {"token": "nope"}})
            contexts.append({"name": "elsewhere", "context": {"cluster": "elsewhere", "user": "elsewhere"}})
            current = "elsewhere"
        doc = {"apiVersion": "v1", "kind": "Config", "clusters": clusters, "users": users, "contexts": contexts}
        doc["current-context"] = current
        path.write_text(yaml.safe_dump(doc))
        return path

    # -- state ---------------------------------------------------------------------------------------

    def put(self, path: str, obj: dict[str, Any], event: str = "MODIFIED") -> dict[str, Any]:
        with self.cond:
            self.version += 1
            stored = json.loads(json.dumps(obj))
            stored.setdefault("metadata", {})["resourceVersion"] = str(self.version)
            self.objects[path] = stored
            self.history.setdefault(path, []).append((self.version, event, stored))
            self.cond.notify_all()
            return stored

    def get(self, path: str) -> dict[str, Any]:
        with self.cond:
            return json.loads(json.dumps(self.objects[path]))

    def listed(self, collection: str, label_selector: str = "") -> list[dict[str, Any]]:
        """The objects directly under ``collection`` whose labels match every ``key=value`` of the selector."""
        wanted = dict(term.split("=", 1) for term in label_selector.split(",") if term)
        with self.cond:
            found = [
                json.loads(json.dumps(obj))
                for path, obj in sorted(self.objects.items())
                if path.rpartition("/")[0] == collection
                and all((obj.get("metadata", {}).get("labels") or {}).get(k) == v for k, v in wanted.items())
            ]
        return found

    def log_line(self, namespace: str, pod: str, line: str) -> None:
        with self.cond:
            self.logs.setdefault(f"{namespace}/{pod}", _Log()).lines.append(line)
            self.cond.notify_all()

    def close_log(self, namespace: str, pod: str) -> None:
        with self.cond:
            self.logs.setdefault(f"{namespace}/{pod}", _Log()).closed = True
            self.cond.notify_all()

    def recorded(self, method: str, contains: str = "") -> list[Recorded]:
        return [r for r in self.requests if r.method == method and contains in r.path]

    # -- HTTP ----------------------------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(JsonRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive and chunked streams, as the API server speaks

            def _record(self, body: Any) -> tuple[str, dict[str, list[str]]] | None:
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                headers = {k.title(): v for k, v in self.headers.items()}  # clients differ in header case
                fake.requests.append(Recorded(self.command, parts.path, query, headers, body))
                # The API server reads the scheme case-insensitively (client-go sends "Bearer", in-cluster "bearer").
                scheme, _, credential = (self.headers.get("Authorization") or "").partition(" ")
                if scheme.lower() != "bearer" or credential != fake.token:
                    self._json(401, _status(401, "Unauthorized", "Unauthorized"))
                    return None
                return parts.path, query

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                routed = self._record(body)
                if routed is None:
                    return
                collection, _ = routed
                if collection in fake.missing_collections:
                    self._json(404, _status(404, "NotFound", "the server could not find the requested resource"))
                    return
                meta = body.setdefault("metadata", {})
                if not meta.get("name"):
                    suffix = "".join(random.choices(string.ascii_lowercase + string.digits, k=5))
                    meta["name"] = meta.get("generateName", "obj-") + suffix
                meta.setdefault("uid", f"uid-{meta['name']}")
                meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
                path = f"{collection}/{meta['name']}"
                if path in fake.objects:
                    self._json(409, _status(409, "AlreadyExists", f"{meta['name']} already exists"))
                    return
                stored = fake.put(path, body, event="ADDED")
                self._json(201, stored)
                if fake.on_create:
                    fake.on_create(path, stored)

            def do_GET(self) -> None:
                routed = self._record(None)
                if routed is None:
                    return
                path, query = routed
                if query.get("watch") == ["true"]:
                    self._watch(path, query)
                elif path.endswith("/log"):
                    self._log(path, query)
                elif path in fake.objects:
                    fake.answer_gets.wait(timeout=60)
                    self._json(200, fake.get(path))
                elif path.split("/")[-3:-2] == ["namespaces"]:  # a namespaced collection: list it
                    items = fake.listed(path, query.get("labelSelector", [""])[0])
                    self._json(200, {"kind": "List", "apiVersion": "v1", "metadata": {}, "items": items})
                else:
                    self._json(404, _status(404, "NotFound", f"{path} not found"))

            def _stream(self, chunks: Iterator[bytes]) -> None:
                """A 200 streamed as the API server streams watches and followed logs: HTTP/1.1 chunks, each
                sent as it is produced, ended by the last chunk (the connection stays open for more requests)."""
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    for chunk in chunks:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                        self.wfile.flush()
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except OSError:  # the client went away mid-stream
                    self.close_connection = True

            def _watch(self, collection: str, query: dict[str, list[str]]) -> None:
                name = query.get("fieldSelector", [""])[0].removeprefix("metadata.name=")
                path = f"{collection}/{name}"
                since = int(query.get("resourceVersion", ["0"])[0] or 0)
                deadline = time.monotonic() + float(query.get("timeoutSeconds", ["30"])[0])

                def events() -> Iterator[bytes]:
                    nonlocal since
                    sent = 0
                    while time.monotonic() < deadline:
                        with fake.cond:
                            pending = [(v, t, o) for v, t, o in fake.history.get(path, []) if v > since]
                            if not pending:
                                fake.cond.wait(timeout=0.2)
                                continue
                        for version, kind, obj in pending:
                            yield json.dumps({"type": kind, "object": obj}).encode() + b"\n"
                            since = version
                            sent += 1
                            if fake.watch_event_limit is not None and sent >= fake.watch_event_limit:
                                return

                self._stream(events())

            def _log(self, path: str, query: dict[str, list[str]]) -> None:
                parts = path.split("/")  # /api/v1/namespaces/<ns>/pods/<pod>/log
                key = f"{parts[4]}/{parts[6]}"
                if key not in fake.logs:
                    self._json(400, _status(400, "BadRequest", f"container main in pod {parts[6]} is waiting to start"))
                    return

                def lines() -> Iterator[bytes]:
                    index = 0
                    while True:
                        with fake.cond:
                            log = fake.logs[key]
                            new, closed = log.lines[index:], log.closed
                            if not new and not closed:
                                fake.cond.wait(timeout=0.2)
                                continue
                        for line in new:
                            yield line.encode() + b"\n"
                        index += len(new)
                        if closed and index >= len(fake.logs[key].lines):
                            return

                self._stream(lines())

        return Handler


def fnv1a_32(text: str) -> int:
    """FNV-1a, 32 bit: what Argo hashes node names with for pod names (written apart from the code under test)."""
    h = 0x811C9DC5
    for b in text.encode("utf-8"):
        h = ((h ^ b) * 0x01000193) % (1 << 32)
    return h


def argo_pod_name(workflow: str, node_name: str, template: str) -> str:
    return f"{workflow}-{template}-{fnv1a_32(node_name)}"
