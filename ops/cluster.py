"""Kubernetes API access for fraudctl's run-time commands (``pipeline submit``, ``wave-gate``), through the
official ``kubernetes`` client: kubeconfig contexts (several files merge as kubectl merges them), exec
credential plugins, TLS, the pod's service account in-cluster, custom objects, watches and followed logs.

Every failure is one line for a person: ``ClusterConfigError`` when the kubeconfig cannot be used,
``ClusterError`` (with the HTTP status, 0 when the API server was not reached) when a call fails.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar, cast

if TYPE_CHECKING:
    from kubernetes.client import ApiClient
    from urllib3 import BaseHTTPResponse

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
DEFAULT_KUBECONFIG = "~/.kube/config"
# (connect, read) seconds for a plain request; watches and logs set their own read timeout.
REQUEST_TIMEOUT = (10.0, 30.0)
WATCH_SECONDS = 300  # the server ends a watch after this; the client resumes from the last resourceVersion
WATCH_RECONNECTS = 5  # consecutive dropped connections before a watch gives up

T = TypeVar("T")


@dataclass(frozen=True)
class CustomResource:
    group: str
    version: str
    plural: str
    what: str  # for messages: which controller serves it

    def path(self, namespace: str, name: str = "") -> str:
        return f"/apis/{self.group}/{self.version}/namespaces/{namespace}/{self.plural}" + (f"/{name}" if name else "")


WORKFLOWS = CustomResource("argoproj.io", "v1alpha1", "workflows", "Argo Workflows")
CANARIES = CustomResource("flagger.app", "v1beta1", "canaries", "Flagger")
ROLLOUTS = CustomResource("argoproj.io", "v1alpha1", "rollouts", "Argo Rollouts")


class ClusterConfigError(Exception):
    """The kubeconfig (or the pod's service account) cannot be used: missing file or context, malformed."""


class ClusterError(Exception):
    """An API call failed; ``status`` is the HTTP status, 0 when the API server was not reached."""

    def __init__(self, message: str, status: int = 0):
        super().__init__(message)
        self.status = status


# ---------------------------------------------------------------------------------------------------
# Connecting


def kubeconfig_paths(explicit: str | Path | None = None) -> list[Path]:
    """``--kubeconfig``, else every file of ``$KUBECONFIG`` (read now, not at import), else ~/.kube/config."""
    if explicit:
        return [Path(explicit).expanduser()]
    env = os.environ.get("KUBECONFIG")
    if env:
        return [Path(p).expanduser() for p in env.split(os.pathsep) if p]
    return [Path(DEFAULT_KUBECONFIG).expanduser()]


def connect(
    kubeconfig: str | Path | None = None, context: str | None = None, *, allow_in_cluster: bool = True
) -> Cluster:
    """A client for one context of a kubeconfig (its current-context unless given); inside a pod without a
    kubeconfig, the pod's service account."""
    from kubernetes import config as kube_config
    from kubernetes.client import ApiClient, Configuration

    paths = [p for p in kubeconfig_paths(kubeconfig) if p.exists()]
    if not paths:
        if kubeconfig:
            raise ClusterConfigError(f"kubeconfig {kubeconfig}: no such file")
        if allow_in_cluster and os.environ.get("KUBERNETES_SERVICE_HOST"):
            return _in_cluster()
        looked = ", ".join(str(p) for p in kubeconfig_paths(None))
        raise ClusterConfigError(f"no kubeconfig found (looked at {looked}); give --kubeconfig PATH or set KUBECONFIG")
    where = os.pathsep.join(str(p) for p in paths)
    # Merged as kubectl merges: the first file that names a context (or sets current-context) wins. The
    # client's own merger lets the last current-context win, so the context is always passed to it by name.
    docs = [_read_kubeconfig(path) for path in paths]
    contexts: dict[str, dict[str, Any]] = {}
    for doc in docs:
        for item in doc.get("contexts") or []:
            if isinstance(item, dict) and isinstance(item.get("name"), str):
                settings = item.get("context")
                contexts.setdefault(item["name"], settings if isinstance(settings, dict) else {})
    name = context or next((str(d["current-context"]) for d in docs if d.get("current-context")), None)
    if not name:
        raise ClusterConfigError(f"kubeconfig {where}: no current-context; give --context")
    if name not in contexts:
        known = ", ".join(contexts) or "none"
        raise ClusterConfigError(f"kubeconfig {where}: no context named {name!r} (known: {known})")
    configuration = Configuration()
    # The loader logs (rather than raises) a failed exec credential plugin and goes on without credentials.
    failures = _LoaderErrors()
    logging.getLogger().addFilter(failures)
    try:
        kube_config.load_kube_config(
            config_file=where, context=name, client_configuration=configuration, persist_config=False
        )
    except Exception as exc:  # ConfigException, YAML errors, missing certificate files...
        raise ClusterConfigError(f"kubeconfig {where}: context {name!r} cannot be used ({_one_line(exc)})") from exc
    finally:
        logging.getLogger().removeFilter(failures)
    if failures.messages:
        problem = "; ".join(failures.messages)
        raise ClusterConfigError(f"kubeconfig {where}: context {name!r} has no credentials ({problem})")
    return Cluster(ApiClient(configuration), name, str(contexts[name].get("namespace") or "default"))


class _LoaderErrors(logging.Filter):
    """Takes the kubeconfig loader's error records (kubernetes/config/kube_config.py logs them on the root
    logger) so they become one ClusterConfigError instead of a stray line."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and Path(record.pathname).parts[-3:] == (
            "kubernetes",
            "config",
            "kube_config.py",
        ):
            self.messages.append(" ".join(record.getMessage().split()))
            return False
        return True


def _read_kubeconfig(path: Path) -> dict[str, Any]:
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ClusterConfigError(f"kubeconfig {path}: cannot be read ({_one_line(exc)})") from exc
    if not isinstance(doc, dict):
        raise ClusterConfigError(f"kubeconfig {path}: not a kubeconfig (expected clusters, users and contexts)")
    return doc


def _in_cluster() -> Cluster:
    from kubernetes.client import ApiClient, Configuration
    from kubernetes.config.incluster_config import InClusterConfigLoader

    configuration = Configuration()
    loader = InClusterConfigLoader(
        token_filename=str(SERVICE_ACCOUNT_DIR / "token"), cert_filename=str(SERVICE_ACCOUNT_DIR / "ca.crt")
    )
    try:
        loader.load_and_set(configuration)
    except Exception as exc:
        raise ClusterConfigError(f"in-cluster service account ({SERVICE_ACCOUNT_DIR}): {_one_line(exc)}") from exc
    namespace_file = SERVICE_ACCOUNT_DIR / "namespace"
    namespace = namespace_file.read_text().strip() if namespace_file.exists() else "default"
    return Cluster(ApiClient(configuration), "in-cluster", namespace or "default")


# ---------------------------------------------------------------------------------------------------
# Errors as one line


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _unreachable_reason(exc: BaseException) -> str:
    """urllib3's message without its object reprs: 'Connection refused', 'timed out', a TLS failure."""
    reason = getattr(exc, "reason", None)
    text = _one_line(reason if isinstance(reason, BaseException) else exc)
    return text.rpartition("Failed to establish a new connection: ")[2]


@dataclass
class Cluster:
    """One API server as one context's credentials reach it. Use as a context manager."""

    api: ApiClient
    context: str
    namespace: str

    def __enter__(self) -> Cluster:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.api.close()

    @property
    def server(self) -> str:
        return str(self.api.configuration.host)

    def failure(self, what: str, exc: BaseException) -> ClusterError:
        """``exc`` of the client (or urllib3 under it) as one line naming the call and the context."""
        from kubernetes.client.exceptions import ApiException

        if isinstance(exc, ApiException) and exc.status:
            status = int(exc.status)
            message = str(exc.reason or "")
            try:
                body = json.loads(exc.body or "")
                message = str(body.get("message") or message) if isinstance(body, dict) else message
            except ValueError:
                pass
            hint = ""
            if status in (401, 403):
                hint = f" (check the credentials of context {self.context!r})"
            return ClusterError(f"{what}: HTTP {status}: {message}{hint}", status)
        if isinstance(exc, ApiException):  # status 0: the client's own TLS failure report
            return ClusterError(f"{what}: cannot reach the API server {self.server} ({_one_line(exc.reason or exc)})")
        return ClusterError(f"{what}: cannot reach the API server {self.server} ({_unreachable_reason(exc)})")

    def call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` with the client's and urllib3's errors turned into ClusterError."""
        import urllib3
        from kubernetes.client.exceptions import ApiException

        try:
            return fn(*args, **kwargs)
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            raise self.failure(what, exc) from exc

    # -- objects -------------------------------------------------------------------------------------

    def _custom(self) -> Any:
        from kubernetes.client import CustomObjectsApi

        return CustomObjectsApi(self.api)

    def get_custom(self, resource: CustomResource, namespace: str, name: str) -> dict[str, Any]:
        obj = self.call(
            f"GET {resource.path(namespace, name)}",
            self._custom().get_namespaced_custom_object,
            resource.group,
            resource.version,
            namespace,
            resource.plural,
            name,
            _request_timeout=REQUEST_TIMEOUT,
        )
        return _as_object(obj)

    def create_custom(self, resource: CustomResource, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        path = resource.path(namespace)
        try:
            obj = self.call(
                f"POST {path}",
                self._custom().create_namespaced_custom_object,
                resource.group,
                resource.version,
                namespace,
                resource.plural,
                body,
                _request_timeout=REQUEST_TIMEOUT,
            )
        except ClusterError as exc:
            if exc.status == 404:
                raise ClusterError(f"{exc} (is {resource.what} installed in this cluster?)", 404) from exc
            raise
        return _as_object(obj)

    def get_deployment(self, namespace: str, name: str) -> dict[str, Any]:
        """The Deployment as the API's own JSON (camelCase, as custom objects come; not the client's models,
        which also refuse objects missing fields the schema requires)."""
        from kubernetes.client import AppsV1Api

        what = f"GET /apis/apps/v1/namespaces/{namespace}/deployments/{name}"
        return self._raw_json(what, AppsV1Api(self.api).read_namespaced_deployment, name, namespace)

    def list_pods(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        """The pods matching ``label_selector``, as the API's own JSON (as :meth:`get_deployment`)."""
        from kubernetes.client import CoreV1Api

        what = f"GET /api/v1/namespaces/{namespace}/pods?labelSelector={label_selector}"
        found = self._raw_json(what, CoreV1Api(self.api).list_namespaced_pod, namespace, label_selector=label_selector)
        items = found.get("items") or []
        return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []

    def _raw_json(self, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
        """``fn``'s answer as the API server's JSON object, not the client's model of it."""
        # Without preloading, the client returns urllib3's response (its annotation names the model).
        response = cast(
            "BaseHTTPResponse",
            self.call(what, fn, *args, _preload_content=False, _request_timeout=REQUEST_TIMEOUT, **kwargs),
        )
        try:
            return _as_object(json.loads(response.data))
        except ValueError as exc:
            raise ClusterError(f"{what}: the API server answered no JSON ({_one_line(exc)})") from exc

    # -- streams -------------------------------------------------------------------------------------

    def watch_custom(
        self, resource: CustomResource, namespace: str, name: str, *, resource_version: str | None = None
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """``(event type, object)`` for one object by name, for as long as the caller iterates.

        Each watch request lasts at most WATCH_SECONDS; the next resumes from the last resourceVersion seen.
        An expired version (410 Gone) starts over from a fresh GET; a dropped connection is retried with
        backoff, WATCH_RECONNECTS times in a row at most. The client's Watch resumes once by itself; this
        loop owns resuming so that every case is handled the same way.
        """
        import urllib3
        from kubernetes import watch
        from kubernetes.client.exceptions import ApiException

        version = resource_version
        drops = 0
        what = f"watch {resource.path(namespace, name)}"
        while True:
            if version is None:
                obj = self.get_custom(resource, namespace, name)
                version = str((obj.get("metadata") or {}).get("resourceVersion") or "") or None
                yield "MODIFIED", obj
            watcher = watch.Watch()
            try:
                for event in watcher.stream(
                    self._custom().list_namespaced_custom_object,
                    resource.group,
                    resource.version,
                    namespace,
                    resource.plural,
                    field_selector=f"metadata.name={name}",
                    resource_version=version,
                    allow_watch_bookmarks=True,
                    timeout_seconds=WATCH_SECONDS,  # also makes Watch leave resuming to this loop
                    _request_timeout=(REQUEST_TIMEOUT[0], WATCH_SECONDS + 30),
                ):
                    obj = _as_object(event.get("raw_object"))
                    version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                    drops = 0
                    if event.get("type") != "BOOKMARK":
                        yield str(event.get("type")), obj
            except ApiException as exc:
                if exc.status == 410:
                    log.debug("%s: resourceVersion %s expired; reading the object again", what, version)
                    version = None
                    continue
                if exc.status:
                    raise self.failure(what, exc) from exc
                drops = self._dropped(what, exc, drops)
            except urllib3.exceptions.HTTPError as exc:
                drops = self._dropped(what, exc, drops)

    def _dropped(self, what: str, exc: BaseException, drops: int) -> int:
        drops += 1
        if drops > WATCH_RECONNECTS:
            raise self.failure(what, exc) from exc
        delay = min(0.2 * 2**drops, 5.0)
        log.debug("%s: connection dropped (%s); reconnecting in %.1fs", what, _unreachable_reason(exc), delay)
        time.sleep(delay)
        return drops

    def follow_log(self, namespace: str, pod: str, container: str = "main") -> Iterator[str]:
        """Lines of a container's log as they come, until the container ends (the server closes the stream)."""
        import urllib3
        from kubernetes import watch
        from kubernetes.client import CoreV1Api
        from kubernetes.client.exceptions import ApiException

        what = f"log of pod {namespace}/{pod}"
        try:
            # No read timeout: a step may print nothing for minutes while it trains.
            yield from watch.Watch().stream(
                CoreV1Api(self.api).read_namespaced_pod_log, pod, namespace, container=container
            )
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            raise self.failure(what, exc) from exc


def _as_object(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ClusterError(f"the API server answered {type(value).__name__}, not an object")
    return value
