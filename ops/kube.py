"""A small Kubernetes API client over plain HTTP: kubeconfig (or in-cluster) auth, JSON, watches, logs.

Only what ``fraudctl pipeline submit`` and ``fraudctl wave-gate`` need: create/get an object, watch one
object by name (reconnecting from the last resourceVersion when the server ends the stream), and follow
a container's log. Authentication covers what kubeconfigs carry: bearer tokens (inline or file), client
certificates (inline or files), basic auth and exec credential plugins (EKS/GKE/AKS style); TLS uses the
cluster's CA (inline or file) unless ``insecure-skip-tls-verify``.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

IN_CLUSTER_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = Path("~/.kube/config")


class KubeError(RuntimeError):
    """The API server refused or failed a request; ``status`` is the HTTP status (0: not reached)."""

    def __init__(self, message: str, status: int = 0, reason: str = ""):
        super().__init__(message)
        self.status = status
        self.reason = reason


class KubeConfigError(ValueError):
    """The kubeconfig cannot be used: missing file, unknown context, unsupported auth."""


@dataclass
class Credentials:
    server: str
    namespace: str = "default"
    token: str | None = None
    token_file: str | None = None
    username: str | None = None
    password: str | None = None
    ca_data: bytes | None = None
    ca_file: str | None = None
    cert_data: bytes | None = None
    key_data: bytes | None = None
    insecure: bool = False
    exec_spec: Mapping[str, Any] | None = None
    context: str = ""
    base_dir: Path = field(default_factory=Path.cwd)


def _decode(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=False)
    except (ValueError, TypeError) as exc:
        raise KubeConfigError(f"{what}: not valid base64 ({exc})") from exc


def _named(items: Any, name: str, kind: str, path: str) -> dict[str, Any]:
    for item in items or []:
        if isinstance(item, dict) and item.get("name") == name:
            return dict(item.get(kind) or {})
    known = ", ".join(str(i.get("name")) for i in items or [] if isinstance(i, dict)) or "none"
    raise KubeConfigError(f"{path}: no {kind} named {name!r} (known: {known})")


def kubeconfig_paths(explicit: str | Path | None = None) -> list[Path]:
    if explicit:
        return [Path(explicit).expanduser()]
    env = os.environ.get("KUBECONFIG")
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    return [DEFAULT_KUBECONFIG.expanduser()]


def load_credentials(
    kubeconfig: str | Path | None = None, context: str | None = None, *, allow_in_cluster: bool = True
) -> Credentials:
    """Credentials from a kubeconfig (``--kubeconfig``, else ``$KUBECONFIG``, else ~/.kube/config) and a
    context (``--context``, else its current-context); inside a pod without a kubeconfig, the pod's
    service account."""
    paths = [p for p in kubeconfig_paths(kubeconfig) if p.exists()]
    if not paths:
        if kubeconfig:
            raise KubeConfigError(f"kubeconfig {kubeconfig}: no such file")
        if allow_in_cluster and os.environ.get("KUBERNETES_SERVICE_HOST") and (IN_CLUSTER_DIR / "token").exists():
            return in_cluster_credentials()
        raise KubeConfigError(
            f"no kubeconfig found (looked at {', '.join(str(p) for p in kubeconfig_paths(None))}); "
            "give --kubeconfig PATH or set KUBECONFIG"
        )
    # Several files merge like kubectl does: the first file that sets a name wins.
    merged: dict[str, Any] = {"clusters": [], "contexts": [], "users": []}
    current = None
    for path in paths:
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise KubeConfigError(f"kubeconfig {path}: cannot be read ({exc})") from exc
        if not isinstance(doc, dict):
            raise KubeConfigError(f"kubeconfig {path}: not a kubeconfig (expected a mapping)")
        for section in ("clusters", "contexts", "users"):
            seen = {i.get("name") for i in merged[section]}
            for item in doc.get(section) or []:
                if isinstance(item, dict) and item.get("name") not in seen:
                    merged[section].append({**item, "_dir": str(path.parent)})
        current = current or doc.get("current-context")
    where = str(paths[0]) if len(paths) == 1 else os.pathsep.join(str(p) for p in paths)
    name = context or current
    if not name:
        raise KubeConfigError(f"kubeconfig {where}: no current-context; give --context")
    ctx = _named(merged["contexts"], name, "context", where)
    cluster_name, user_name = ctx.get("cluster"), ctx.get("user")
    cluster = _named(merged["clusters"], cluster_name, "cluster", where)
    user = _named(merged["users"], user_name, "user", where) if user_name else {}
    base = Path(next(i["_dir"] for i in merged["clusters"] if i.get("name") == cluster_name))
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith(("https://", "http://")):
        raise KubeConfigError(f"kubeconfig {where}: cluster {cluster_name!r} has no http(s) server URL")
    creds = Credentials(
        server=server.rstrip("/"),
        namespace=ctx.get("namespace") or "default",
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
        context=name,
        base_dir=base,
    )
    if cluster.get("certificate-authority-data"):
        creds.ca_data = _decode(cluster["certificate-authority-data"], "certificate-authority-data")
    elif cluster.get("certificate-authority"):
        creds.ca_file = str(base / cluster["certificate-authority"])
    if user.get("token"):
        creds.token = str(user["token"])
    elif user.get("tokenFile"):
        creds.token_file = str(base / user["tokenFile"])
    if user.get("client-certificate-data"):
        creds.cert_data = _decode(user["client-certificate-data"], "client-certificate-data")
    elif user.get("client-certificate"):
        creds.cert_data = (base / user["client-certificate"]).read_bytes()
    if user.get("client-key-data"):
        creds.key_data = _decode(user["client-key-data"], "client-key-data")
    elif user.get("client-key"):
        creds.key_data = (base / user["client-key"]).read_bytes()
    if user.get("username"):
        creds.username, creds.password = str(user["username"]), str(user.get("password", ""))
    if user.get("exec"):
        creds.exec_spec = user["exec"]
    if user.get("auth-provider"):
        raise KubeConfigError(
            f"kubeconfig {where}: user {user_name!r} uses a legacy auth-provider; use an exec credential plugin"
        )
    return creds


def in_cluster_credentials() -> Credentials:
    host, port = os.environ["KUBERNETES_SERVICE_HOST"], os.environ.get("KUBERNETES_SERVICE_PORT", "443")
    host = f"[{host}]" if ":" in host else host
    namespace_file = IN_CLUSTER_DIR / "namespace"
    return Credentials(
        server=f"https://{host}:{port}",
        namespace=namespace_file.read_text().strip() if namespace_file.exists() else "default",
        token_file=str(IN_CLUSTER_DIR / "token"),
        ca_file=str(IN_CLUSTER_DIR / "ca.crt"),
        context="in-cluster",
    )


class KubeClient:
    """JSON over HTTP(S) to one API server. Use as a context manager (closes temp key files)."""

    def __init__(self, creds: Credentials, *, timeout: float = 30.0):
        import httpx

        self.creds = creds
        self._scratch = tempfile.mkdtemp(prefix="fraudctl-kube-")
        self._exec_token: tuple[str, float] | None = None
        verify: Any = True
        if creds.server.startswith("https://"):
            context = ssl.create_default_context()
            if creds.insecure:
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            elif creds.ca_data:
                context = ssl.create_default_context(cadata=creds.ca_data.decode())
            elif creds.ca_file:
                context = ssl.create_default_context(cafile=creds.ca_file)
            cert, key = creds.cert_data, creds.key_data
            if creds.exec_spec:
                _, exec_cert, exec_key = self._exec_credentials()
                cert, key = exec_cert or cert, exec_key or key
            if cert and key:
                cert_path, key_path = Path(self._scratch, "client.crt"), Path(self._scratch, "client.key")
                for path, data in ((cert_path, cert), (key_path, key)):
                    path.touch(mode=0o600)
                    path.write_bytes(data)
                context.load_cert_chain(str(cert_path), str(key_path))
            verify = context
        self._http = httpx.Client(base_url=creds.server, verify=verify, timeout=timeout)

    def __enter__(self) -> KubeClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()
        shutil.rmtree(self._scratch, ignore_errors=True)

    @property
    def namespace(self) -> str:
        return self.creds.namespace

    # -- auth ----------------------------------------------------------------------------------------

    def _exec_credentials(self) -> tuple[str | None, bytes | None, bytes | None]:
        spec = self.creds.exec_spec or {}
        command = spec.get("command")
        if not command:
            raise KubeConfigError("kubeconfig exec plugin has no command")
        env = dict(os.environ)
        for item in spec.get("env") or []:
            env[str(item["name"])] = str(item["value"])
        env["KUBERNETES_EXEC_INFO"] = json.dumps(
            {
                "apiVersion": spec.get("apiVersion", "client.authentication.k8s.io/v1"),
                "kind": "ExecCredential",
                "spec": {"interactive": False},
            }
        )
        try:
            proc = subprocess.run(
                [command, *[str(a) for a in spec.get("args") or []]],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
                cwd=self.creds.base_dir,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise KubeConfigError(f"kubeconfig exec plugin {command!r} failed to run ({exc})") from exc
        if proc.returncode != 0:
            raise KubeConfigError(f"kubeconfig exec plugin {command!r} exited {proc.returncode}: {proc.stderr.strip()}")
        try:
            status = json.loads(proc.stdout).get("status") or {}
        except json.JSONDecodeError as exc:
            raise KubeConfigError(f"kubeconfig exec plugin {command!r} printed no ExecCredential JSON") from exc
        token = status.get("token")
        if token:
            expires = status.get("expirationTimestamp")
            deadline = time.time() + 300 if expires else float("inf")
            self._exec_token = (token, deadline)
        cert = status.get("clientCertificateData")
        key = status.get("clientKeyData")
        return token, cert.encode() if cert else None, key.encode() if key else None

    def _headers(self) -> dict[str, str]:
        headers = {"Accept": "application/json", "User-Agent": "fraudctl"}
        token = self.creds.token
        if self.creds.token_file:
            token = Path(self.creds.token_file).read_text().strip()  # re-read: projected tokens rotate
        if self.creds.exec_spec:
            if self._exec_token is None or time.time() > self._exec_token[1]:
                self._exec_credentials()
            if self._exec_token:
                token = self._exec_token[0]
        if token:
            headers["Authorization"] = f"Bearer {token}"
        elif self.creds.username:
            basic = base64.b64encode(f"{self.creds.username}:{self.creds.password}".encode()).decode()
            headers["Authorization"] = f"Basic {basic}"
        return headers

    # -- requests ------------------------------------------------------------------------------------

    def _fail(self, method: str, path: str, response: Any) -> KubeError:
        try:
            body = response.json()
            message, reason = body.get("message") or response.text, body.get("reason", "")
        except ValueError:
            message, reason = response.text.strip() or response.reason_phrase, ""
        hint = ""
        if response.status_code in (401, 403):
            hint = f" (check the credentials of context {self.creds.context!r})"
        elif response.status_code == 404 and "argoproj.io" in path:
            hint = " (is Argo Workflows installed in this cluster?)"
        return KubeError(f"{method} {path}: HTTP {response.status_code}: {message}{hint}", response.status_code, reason)

    def request(self, method: str, path: str, *, body: Any = None, params: Mapping[str, Any] | None = None) -> Any:
        import httpx

        try:
            response = self._http.request(method, path, json=body, params=params, headers=self._headers())
        except httpx.HTTPError as exc:
            raise KubeError(f"{method} {self.creds.server}{path}: cannot reach the API server ({exc})") from exc
        if response.status_code >= 400:
            raise self._fail(method, path, response)
        return response.json()

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params or None)

    def create(self, path: str, body: Mapping[str, Any]) -> Any:
        return self.request("POST", path, body=dict(body))

    def stream_lines(self, path: str, params: Mapping[str, Any], *, read_timeout: float | None = None) -> Iterator[str]:
        """GET ``path`` and yield its body line by line as it arrives (watches, followed logs)."""
        import httpx

        timeout = httpx.Timeout(self._http.timeout.connect, read=read_timeout)
        try:
            with self._http.stream("GET", path, params=params, headers=self._headers(), timeout=timeout) as response:
                if response.status_code >= 400:
                    response.read()
                    raise self._fail("GET", path, response)
                yield from response.iter_lines()
        except httpx.HTTPError as exc:
            raise KubeError(f"GET {self.creds.server}{path}: stream broke ({exc})") from exc

    def watch_object(
        self, collection: str, name: str, *, resource_version: str | None = None, timeout_seconds: int = 300
    ) -> Iterator[dict[str, Any]]:
        """Yield ``{type, object}`` events for one object by name, forever (the caller stops).

        A watch ending (server timeout, dropped connection) resumes from the last resourceVersion seen;
        an expired one (410 Gone) starts over from a fresh GET.
        """
        version = resource_version
        failures = 0
        while True:
            if version is None:
                obj = self.get(f"{collection}/{name}")
                version = obj["metadata"].get("resourceVersion")
                yield {"type": "MODIFIED", "object": obj}
            params = {
                "watch": "true",
                "fieldSelector": f"metadata.name={name}",
                "timeoutSeconds": str(timeout_seconds),
                "allowWatchBookmarks": "true",
            }
            if version:
                params["resourceVersion"] = version
            try:
                for line in self.stream_lines(collection, params):
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "ERROR":
                        status = event.get("object") or {}
                        if status.get("code") == 410:
                            version = None
                            break
                        raise KubeError(
                            f"watch {collection}/{name}: {status.get('message', status)}", status.get("code", 0)
                        )
                    obj = event.get("object") or {}
                    version = (obj.get("metadata") or {}).get("resourceVersion") or version
                    if event.get("type") != "BOOKMARK":
                        yield event
                failures = 0
            except KubeError as exc:
                if exc.status:  # the server answered with an error: not a network blip
                    raise
                failures += 1
                if failures > 5:
                    raise
                time.sleep(min(2**failures * 0.1, 5.0))

    def follow_log(self, namespace: str, pod: str, container: str = "main") -> Iterator[str]:
        """Lines of a container's log, following it until the container ends."""
        path = f"/api/v1/namespaces/{namespace}/pods/{pod}/log"
        yield from self.stream_lines(path, {"container": container, "follow": "true"})


def connect(kubeconfig: str | Path | None = None, context: str | None = None) -> KubeClient:
    return KubeClient(load_credentials(kubeconfig, context))
