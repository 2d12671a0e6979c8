"""A fake Kubernetes API server for tests: a real HTTP server on a free loopback port that implements just
what fraudctl uses, get/create objects, watch one object by name, and follow pod logs, with bearer-token
auth. Objects live in memory by path; every change bumps a resourceVersion and is seen by watches.

    with FakeKube() as kube:
        kube.put("/apis/apps/v1/namespaces/fraud/deployments/x", {...})
        path = kube.write_kubeconfig(tmp_path / "kubeconfig")
"""

from __future__ import annotations

import json
import random
import string
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml


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
    def __init__(self, token: str = "fake-token"):
        self.token = token
        self.requests: list[Recorded] = []
        self.objects: dict[str, dict[str, Any]] = {}
        self.history: dict[str, list[tuple[int, str, dict[str, Any]]]] = {}
        self.logs: dict[str, _Log] = {}
        self.version = 100
        self.cond = threading.Condition()
        self.on_create: Callable[[str, dict[str, Any]], None] | None = None
        # End a watch stream after this many events (the client must resume from the last resourceVersion).
        self.watch_event_limit: int | None = None
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    # -- lifecycle -----------------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeKube:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        with self.cond:
            for log in self.logs.values():
                log.closed = True
            self.cond.notify_all()
        self.server.shutdown()
        self.server.server_close()

    def write_kubeconfig(
        self, path: Path, *, context: str = "fake", namespace: str = "default", extra: bool = True
    ) -> Path:
        """A kubeconfig whose ``context`` points here; with ``extra`` also an unreachable current-context."""
        clusters = [{"name": context, "cluster": {"server": self.url}}]
        users = [{"name": context, "user": {"token": self.token}}]
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
            def _record(self, body: Any) -> tuple[str, dict[str, list[str]]] | None:
                parts = urlsplit(self.path)
                query = parse_qs(parts.query)
                fake.requests.append(Recorded(self.command, parts.path, query, dict(self.headers), body))
                if self.headers.get("Authorization") != f"Bearer {fake.token}":
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
                    self._json(200, fake.get(path))
                else:
                    self._json(404, _status(404, "NotFound", f"{path} not found"))

            def _stream_start(self) -> None:
                # HTTP/1.0 without Content-Length: the body ends when the connection closes.
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()

            def _watch(self, collection: str, query: dict[str, list[str]]) -> None:
                name = query.get("fieldSelector", [""])[0].removeprefix("metadata.name=")
                path = f"{collection}/{name}"
                since = int(query.get("resourceVersion", ["0"])[0] or 0)
                deadline = time.monotonic() + float(query.get("timeoutSeconds", ["30"])[0])
                self._stream_start()
                sent = 0
                while time.monotonic() < deadline:
                    with fake.cond:
                        pending = [(v, t, o) for v, t, o in fake.history.get(path, []) if v > since]
                        if not pending:
                            fake.cond.wait(timeout=0.2)
                            continue
                    for version, kind, obj in pending:
                        self.wfile.write(json.dumps({"type": kind, "object": obj}).encode() + b"\n")
                        self.wfile.flush()
                        since = version
                        sent += 1
                        if fake.watch_event_limit is not None and sent >= fake.watch_event_limit:
                            return

            def _log(self, path: str, query: dict[str, list[str]]) -> None:
                parts = path.split("/")  # /api/v1/namespaces/<ns>/pods/<pod>/log
                key = f"{parts[4]}/{parts[6]}"
                if key not in fake.logs:
                    self._json(400, _status(400, "BadRequest", f"container main in pod {parts[6]} is waiting to start"))
                    return
                self._stream_start()
                index = 0
                while True:
                    with fake.cond:
                        log = fake.logs[key]
                        lines, closed = log.lines[index:], log.closed
                        if not lines and not closed:
                            fake.cond.wait(timeout=0.2)
                            continue
                    for line in lines:
                        self.wfile.write(line.encode() + b"\n")
                        self.wfile.flush()
                    index += len(lines)
                    if closed and index >= len(fake.logs[key].lines):
                        return

        return Handler


def fnv1a_32(text: str) -> int:
    """FNV-1a, 32 bit: what Argo hashes node names with for pod names (written apart from the code under test)."""
    h = 0x811C9DC5
    for b in text.encode("utf-8"):
        h = ((h ^ b) * 0x01000193) % (1 << 32)
    return h


def argo_pod_name(workflow: str, node_name: str, template: str) -> str:
    return f"{workflow}-{template}-{fnv1a_32(node_name)}"
