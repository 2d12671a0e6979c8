"""Render every Helm release of a region with Helm's own template engine, from the vendored archives.

``helm-python-sdk`` binds Helm's Go SDK (no helm binary, no Go templates re-implemented here). Each
release is rendered with exactly the values the program hands its ``helm.v3.Release`` (secrets are the
render's placeholder), as an install (``.Release.IsInstall``), for Kubernetes :data:`KUBE_VERSION`,
and with the API versions the cluster will have when that release is installed:

* Kubernetes' built-in APIs (Helm's default capability set);
* the CRDs of every release it waits for (its transitive ``depends_on`` in the program), e.g. the
  Prometheus Operator's ``monitoring.coreos.com/v1`` for every release after kube-prometheus-stack;
* its own ``crds/`` folder: Helm installs those first and refreshes discovery before rendering
  (``helm.sh/helm`` ``pkg/action/install.go`` ``installCRDs``). CRDs a chart ships as templates are
  not there yet when its own templates render.

Charts test ``.Capabilities.APIVersions.Has`` before emitting ServiceMonitors and the like, so a
capability-blind render would hide objects a real install creates (or show ones it does not).

Renders are cached per (archive sha256, values, name, namespace, API versions) in memory and on disk
(``$FRAUD_HELM_CACHE``, default ``$TMPDIR/fraud-helm-render-<uid>``): a chart like Harbor's takes a
second to render and the suite renders the same releases for several stacks.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fraudctl.files import write_text
from infra import chart_archives

# The Kubernetes release the platform targets (kubernetes_validate's built-in schemas use the same).
KUBE_VERSION = "v1.31.0"
_CACHE_ENV = "FRAUD_HELM_CACHE"
_CACHE_FORMAT = 2
_CACHE_ENTRIES = 96
_HOOK = "helm.sh/hook"


class HelmRenderError(RuntimeError):
    """A release that Helm cannot render (the message is Helm's)."""


@dataclass(frozen=True)
class RenderedObject:
    """One object a release creates, with the template (or crds/ file) it came from."""

    obj: dict[str, Any]
    release: str
    source: str

    @property
    def kind(self) -> str:
        return str(self.obj.get("kind", ""))

    @property
    def name(self) -> str:
        return str((self.obj.get("metadata") or {}).get("name", ""))


@dataclass
class RenderedRelease:
    name: str
    namespace: str
    chart: str
    version: str | None
    archive: Path | None
    manifests: dict[str, str] = field(default_factory=dict)  # template path -> rendered text
    crd_files: dict[str, str] = field(default_factory=dict)  # crds/ file -> text
    api_versions: tuple[str, ...] = ()
    # API versions (Helm capability strings) that the CRDs of this release add to the cluster.
    provides: tuple[str, ...] = ()
    error: str | None = None
    _parsed: list[RenderedObject] | None = field(default=None, repr=False)

    def objects(self, *, include_tests: bool = False) -> list[RenderedObject]:
        """What installing the release creates: crds/ first, then every template (hooks included; the
        ``test`` hooks only run on ``helm test``, so they are left out unless asked for). Parsed once;
        callers must not modify the objects."""
        if self._parsed is None:
            self._parsed = [
                RenderedObject(obj, self.name, source)
                for source, text in [*self.crd_files.items(), *self.manifests.items()]
                for obj in parse_documents(text)
            ]
        return [o for o in self._parsed if include_tests or not _is_test_hook(o.obj)]

    def crds(self) -> list[dict[str, Any]]:
        """Every CustomResourceDefinition the release installs (crds/ folder and templates)."""
        return [o.obj for o in self.objects() if o.kind == "CustomResourceDefinition"]

    def text(self) -> str:
        """The render as ``helm template`` prints it (with the CRDs, as ``--include-crds``)."""
        header = (
            f"# Helm release {self.name} (namespace {self.namespace}) from {self.chart}, rendered offline "
            f"as an install for Kubernetes {KUBE_VERSION}\n"
        )
        if self.error:
            return header + f"# NOT RENDERED: {self.error}\n"
        parts = [f"---\n# Source: {source}\n{text.strip()}\n" for source, text in self.crd_files.items()]
        parts += [f"---\n# Source: {source}\n{text.strip()}\n" for source, text in self.manifests.items()]
        return header + "".join(parts)


def _is_test_hook(obj: Mapping[str, Any]) -> bool:
    hook = str(((obj.get("metadata") or {}).get("annotations") or {}).get(_HOOK, ""))
    return "test" in {h.strip() for h in hook.split(",")}


def crd_api_versions(crds: Iterable[Mapping[str, Any]]) -> set[str]:
    """``group/version`` and ``group/version/Kind`` of every served version: Helm's capability strings."""
    found: set[str] = set()
    for crd in crds:
        spec = crd.get("spec") or {}
        group, kind = spec.get("group"), (spec.get("names") or {}).get("kind")
        for version in spec.get("versions") or []:
            if group and kind and version.get("served", True):
                found |= {f"{group}/{version['name']}", f"{group}/{version['name']}/{kind}"}
    return found


# ---------------------------------------------------------------------------------------------------
# One release


def render_archive(
    archive: Path,
    values: Mapping[str, Any],
    *,
    name: str,
    namespace: str,
    api_versions: Iterable[str] = (),
) -> tuple[dict[str, str], dict[str, str]]:
    """(templates, crds/ files) of ``archive`` rendered with ``values``; cached. Raises HelmRenderError."""
    manifests, crds, _provides = _render(archive, values, name, namespace, api_versions)
    return manifests, crds


def _render(
    archive: Path, values: Mapping[str, Any], name: str, namespace: str, api_versions: Iterable[str]
) -> tuple[dict[str, str], dict[str, str], tuple[str, ...]]:
    values_json = json.dumps(values, sort_keys=True)
    return _render_cached(
        str(archive), chart_archives.sha256_file(archive), values_json, name, namespace, tuple(sorted(api_versions))
    )


@functools.lru_cache(maxsize=128)
def _render_cached(
    archive: str, sha256: str, values_json: str, name: str, namespace: str, api_versions: tuple[str, ...]
) -> tuple[dict[str, str], dict[str, str], tuple[str, ...]]:
    """Also returns the API versions the release's CRDs add, so a cached region render parses nothing."""
    key = json.dumps([_CACHE_FORMAT, sha256, values_json, name, namespace, api_versions, KUBE_VERSION])
    cache_file = _cache_dir() / f"{hashlib.sha256(key.encode()).hexdigest()}.json"
    try:
        cached = json.loads(cache_file.read_text())
        return cached["manifests"], cached["crds"], tuple(cached["provides"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    manifests, crds = _render_with_helm(Path(archive), values_json, name, namespace, api_versions)
    provides = crd_api_versions(
        obj
        for text in [*crds.values(), *manifests.values()]
        if "CustomResourceDefinition" in text
        for obj in parse_documents(text)
        if obj.get("kind") == "CustomResourceDefinition"
    )
    _write_cache(cache_file, {"manifests": manifests, "crds": crds, "provides": sorted(provides)})
    return manifests, crds, tuple(sorted(provides))


def _render_with_helm(
    archive: Path, values_json: str, name: str, namespace: str, api_versions: tuple[str, ...]
) -> tuple[dict[str, str], dict[str, str]]:
    import helm_python
    from helm_python import _native

    try:
        with helm_python.Chart.load(archive) as chart:
            crds = {c["filename"]: c["data"] for c in chart.crds}
            own = crd_api_versions(obj for text in crds.values() for obj in parse_documents(text))
            # The C ABI's render options take kube_version and api_versions (libhelm_c 0.2.2,
            # RenderOptions); helm-python-sdk's Chart.render() does not expose them, so call it directly.
            options = {
                "name": name,
                "namespace": namespace,
                "is_install": True,
                "kube_version": KUBE_VERSION,
                "api_versions": sorted(set(api_versions) | own),
            }
            rendered = json.loads(
                _native.call_string("helm_render", chart._raw(), values_json, json.dumps(options))
            )
    except helm_python.HelmError as error:
        raise HelmRenderError(f"{archive.name}: {error}") from error
    manifests = {
        path: text
        for path, text in sorted(rendered.items())
        if not path.endswith("NOTES.txt") and text.strip()
    }
    return manifests, dict(sorted(crds.items()))


def _cache_dir() -> Path:
    configured = os.environ.get(_CACHE_ENV)
    return Path(configured) if configured else Path(tempfile.gettempdir()) / f"fraud-helm-render-{os.getuid()}"


def _write_cache(cache_file: Path, payload: dict[str, Any]) -> None:
    try:
        cache_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        if cache_file.parent.stat().st_uid != os.getuid():
            return  # never trust (or feed) a cache in a directory someone else owns
        write_text(cache_file, json.dumps(payload), durable=False)  # a cache: losing it costs a render
        # Keep the newest renders only: one entry per (chart, values, capabilities) is a few MB.
        entries = sorted(cache_file.parent.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for stale in entries[_CACHE_ENTRIES:]:
            stale.unlink(missing_ok=True)
    except OSError:
        pass  # the cache is an optimisation only


_DOCUMENT_SEPARATOR = re.compile(r"(?m)^---[ \t]*$")


def parse_documents(text: str) -> list[dict[str, Any]]:
    """The objects of a multi-document manifest, parsed by Helm's own YAML reader (``sigs.k8s.io/yaml``,
    what the API server's clients use; also several times faster than PyYAML on multi-MB CRDs)."""
    import helm_python

    documents = []
    for chunk in _DOCUMENT_SEPARATOR.split(text):
        if chunk.strip():
            try:
                parsed = helm_python.values_from_yaml(chunk)
            except helm_python.HelmError as error:
                raise HelmRenderError(f"unparseable YAML in a rendered manifest: {error}") from error
            if parsed:
                documents.append(parsed)
    return documents


# ---------------------------------------------------------------------------------------------------
# Every release of a region


def release_archive(release: Mapping[str, Any]) -> Path | None:
    """The vendored archive a release renders from: its own path, or (a release that installs from a
    chart repository) the vendored archive of the same chart and version, if there is one."""
    chart, version = str(release.get("chart") or ""), release.get("version")
    local = chart_archives.parse_archive_name(chart)
    if local:
        path = chart_archives.archive_path(*local)
    elif version:
        path = chart_archives.archive_path(chart.rsplit("/", 1)[-1], str(version))
    else:
        return None
    return path if path.is_file() else None


def install_order(releases: Sequence[Mapping[str, Any]], waits_for: Mapping[str, set[str]]) -> list[str]:
    """Release names, each after every release it waits for (stable otherwise)."""
    done: list[str] = []
    pending = [r["name"] for r in releases]
    while pending:
        ready = [n for n in pending if waits_for.get(n, set()) <= set(done)]
        if not ready:  # a cycle cannot happen in a Pulumi graph; keep going rather than loop forever
            ready = pending[:1]
        done.append(ready[0])
        pending.remove(ready[0])
    return done


def render_releases(
    releases: Sequence[Mapping[str, Any]], waits_for: Mapping[str, set[str]]
) -> list[RenderedRelease]:
    """Render ``releases`` (``{name, namespace, chart, version, values}`` as ``fraudctl render`` writes
    them) in install order; ``waits_for[name]`` names the releases that must be installed first."""
    by_name = {r["name"]: r for r in releases}
    rendered: dict[str, RenderedRelease] = {}
    for name in install_order(releases, waits_for):
        release = by_name[name]
        archive = release_archive(release)
        result = RenderedRelease(
            name=name,
            namespace=str(release.get("namespace") or "default"),
            chart=str(release.get("chart")),
            version=release.get("version"),
            archive=archive,
        )
        if archive is None:
            result.error = (
                f"chart {release.get('chart')} {release.get('version')} from {release.get('repo')} is not "
                "vendored under charts/, so it cannot be rendered offline"
            )
        else:
            available: set[str] = set()
            for dependency in _closure(name, waits_for):
                if dependency in rendered:
                    available |= set(rendered[dependency].provides)
            result.api_versions = tuple(sorted(available))
            try:
                result.manifests, result.crd_files, result.provides = _render(
                    archive, release.get("values") or {}, name, result.namespace, available
                )
            except HelmRenderError as error:
                result.error = str(error)
        rendered[name] = result
    return [rendered[r["name"]] for r in releases]


def _closure(name: str, waits_for: Mapping[str, set[str]]) -> set[str]:
    seen: set[str] = set()
    stack = list(waits_for.get(name, ()))
    while stack:
        current = stack.pop()
        if current not in seen:
            seen.add(current)
            stack.extend(waits_for.get(current, ()))
    return seen


@functools.cache
def _pinned_chart_crds() -> tuple[dict[str, Any], ...]:
    from infra.charts import chart_releases
    from infra.config import CHART_COMPONENTS, project_defaults

    platform = project_defaults()["platform"]
    found: list[dict[str, Any]] = []
    for component in CHART_COMPONENTS:
        for spec in chart_releases(component):
            archive = chart_archives.archive_path(spec.chart, platform[component]["version"])
            manifests, crd_files = render_archive(archive, {}, name=spec.name, namespace=spec.namespace)
            for text in [*crd_files.values(), *manifests.values()]:
                found += [o for o in parse_documents(text) if o.get("kind") == "CustomResourceDefinition"]
    return tuple(found)


def pinned_chart_crds() -> list[dict[str, Any]]:
    """Every CRD the platform's charts install at their pinned (Pulumi.yaml default) versions, rendered
    with each chart's own defaults: what object builders are validated against outside a full render."""
    return list(_pinned_chart_crds())
