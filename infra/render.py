"""Offline render: run the real Pulumi program under the SDK's mock engine and record every resource.

No pulumi CLI, no cluster. Config comes from Pulumi.yaml defaults, then ``Pulumi.<stack>.yaml``, then
``--set`` overrides, exactly as the program would see it. Each registered resource is recorded with its
inputs (secret values kept wrapped, so they can be replaced by a marker), parent, explicit
dependencies and provider; ``write_render`` turns that into per-region manifests and Helm releases.
"""

from __future__ import annotations

import contextvars
import json
import os
import runpy
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infra import chart_archives
from infra.config import PROJECT, PROJECT_ROOT, StackConfig, load_stack, resolve_raw

SECRET_SIG = "4dabf18193072939515e22adb298388d"
SECRET_VALUE_SIG = "1b47061264138c4ac30d75fd1eb44270"
SECRET_MARKER = "<secret>"
# Values the mocks hand out for generated secrets: tests assert none of them leaks into plain output.
MOCK_SECRET_PREFIX = "mock-secret-"
HELM_RELEASE = "kubernetes:helm.sh/v3:Release"
TLS_PRIVATE_KEY = "tls:index/privateKey:PrivateKey"
TLS_CERT_REQUEST = "tls:index/certRequest:CertRequest"
# pulumi-tls resources the mocks compute outputs for (as the tls provider would).
TLS_OUTPUTS = frozenset(
    {
        TLS_PRIVATE_KEY,
        TLS_CERT_REQUEST,
        "tls:index/selfSignedCert:SelfSignedCert",
        "tls:index/locallySignedCert:LocallySignedCert",
    }
)


@dataclass
class RecordedResource:
    urn: str
    type: str
    name: str
    parent: str
    provider: str
    dependencies: list[str]
    inputs: dict[str, Any]
    custom: bool

    @property
    def is_kubernetes_object(self) -> bool:
        return (
            self.custom
            and self.type.startswith("kubernetes:")
            and self.type != HELM_RELEASE
            and not self.type.startswith("pulumi:providers:")
        )


@dataclass
class RenderResult:
    config: StackConfig
    resources: list[RecordedResource]
    stack_outputs: dict[str, Any]
    generated_secrets: list[str] = field(default_factory=list)
    _helm_renders: dict[str, list[Any]] = field(default_factory=dict, repr=False)

    @property
    def known_secrets(self) -> frozenset[str]:
        return frozenset(self.generated_secrets)

    def by_urn(self) -> dict[str, RecordedResource]:
        return {r.urn: r for r in self.resources}

    def region_of(self, resource: RecordedResource) -> str:
        """Regions are named by their provider: ``region-<name>-k8s``."""
        provider_name = resource.provider.split("::")[-2] if "::" in resource.provider else ""
        if provider_name.startswith("region-") and provider_name.endswith("-k8s"):
            return provider_name[len("region-") : -len("-k8s")]
        return ""

    def manifests(self, region: str) -> list[dict[str, Any]]:
        return [
            kubernetes_object(r, self.known_secrets)
            for r in self.resources
            if r.is_kubernetes_object and self.region_of(r) == region
        ]

    def delivered_objects(self, region: str) -> list[tuple[dict[str, Any], str, str]]:
        """(object, origin, resource name) of everything that reaches ``region``'s cluster from the program:
        applied directly ("program") or rendered for Argo CD to sync ("gitops", provider region-<name>-gitops)."""
        gitops = f"region-{region}-gitops"
        found = []
        for r in self.resources:
            if not r.is_kubernetes_object:
                continue
            if self.region_of(r) == region:
                found.append((kubernetes_object(r, self.known_secrets), "program", r.name))
            elif "::" in r.provider and r.provider.split("::")[-2] == gitops:
                found.append((kubernetes_object(r, self.known_secrets), "gitops", r.name))
        return found

    def helm_releases(self, region: str) -> list[dict[str, Any]]:
        releases = []
        for r in self.resources:
            if r.type == HELM_RELEASE and self.region_of(r) == region:
                inputs = wire(r.inputs, self.known_secrets)
                chart = inputs.get("chart")
                local = chart_archives.parse_archive_name(chart) if isinstance(chart, str) else None
                releases.append(
                    {
                        "name": inputs.get("name"),
                        "namespace": inputs.get("namespace"),
                        "chart": chart,
                        "repo": (inputs.get("repositoryOpts") or {}).get("repo"),
                        # A vendored archive is passed without version: its name carries it.
                        "version": inputs.get("version") or (local[1] if local else None),
                        "values": inputs.get("values") or {},
                    }
                )
        return releases


    def helm_waits_for(self, region: str) -> dict[str, set[str]]:
        """Release name -> the releases of ``region`` it waits for (transitively, through any resource)."""
        by_urn = self.by_urn()
        names = {
            r.urn: r.inputs.get("name")
            for r in self.resources
            if r.type == HELM_RELEASE and self.region_of(r) == region
        }
        waits: dict[str, set[str]] = {}
        for urn, name in names.items():
            seen: set[str] = set()
            stack = list(by_urn[urn].dependencies)
            while stack:
                current = stack.pop()
                if current in seen or current not in by_urn:
                    continue
                seen.add(current)
                stack.extend(by_urn[current].dependencies)
            waits[str(name)] = {str(names[u]) for u in seen if u in names}
        return waits

    def helm_renders(self, region: str) -> list[Any]:
        """Every Helm release of ``region`` rendered by Helm from its archive (infra/helm.py), cached."""
        if region not in self._helm_renders:
            from infra.helm import render_releases

            self._helm_renders[region] = render_releases(self.helm_releases(region), self.helm_waits_for(region))
        return self._helm_renders[region]


def wire(value: Any, secrets: frozenset[str] = frozenset(), *, in_secret: bool = False) -> Any:
    """Wire format: secrets to the marker, integral floats (the mock engine's numbers) to ints, None dropped,
    keys sorted.

    The SDK lifts a secret to the top-level input that holds it (a whole Helm ``values`` becomes one
    secret); inside such a value only strings carrying a known secret are masked, so the rest stays readable.
    Keys are sorted because the order they arrive in is random: the engine passes inputs as protobuf Structs,
    whose maps (upb) iterate in an order seeded per process, so a render is only reproducible sorted.
    """
    if isinstance(value, dict):
        if value.get(SECRET_SIG) == SECRET_VALUE_SIG:
            inner = value.get("value")
            if isinstance(inner, (dict, list)):
                return wire(inner, secrets, in_secret=True)
            return SECRET_MARKER
        return {k: wire(v, secrets, in_secret=in_secret) for k, v in sorted(value.items()) if v is not None}
    if isinstance(value, list):
        return [wire(v, secrets, in_secret=in_secret) for v in value]
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if in_secret and isinstance(value, str) and any(secret in value for secret in secrets):
        return SECRET_MARKER
    return value


def kubernetes_object(resource: RecordedResource, secrets: frozenset[str] = frozenset()) -> dict[str, Any]:
    obj = wire(resource.inputs, secrets)
    ordered = {"apiVersion": obj.pop("apiVersion"), "kind": obj.pop("kind"), "metadata": obj.pop("metadata", {})}
    ordered.update(obj)
    return ordered


# ---------------------------------------------------------------------------------------------------
# The program under the mock engine (infra/mock_engine.py plays the providers)


def pulumi_config_map(raw: Mapping[str, Any]) -> dict[str, str]:
    """What the CLI hands the program: namespaced keys, structured values as JSON strings."""
    config = {"pulumi:disable-default-providers": json.dumps(["*"])}
    for key, value in raw.items():
        config[f"{PROJECT}:{key}"] = value if isinstance(value, str) else json.dumps(value)
    return config


def run_program(stack: str, *, overrides: Mapping[str, Any] | None = None, root: Path = PROJECT_ROOT) -> RenderResult:
    """Validate config (raises ConfigError), then run ``__main__.py`` under mocks and record it."""
    config = load_stack(stack, overrides=overrides, root=root)
    raw, secure = resolve_raw(stack, overrides=overrides, root=root)
    for key in secure:
        raw[key] = SECRET_MARKER  # encrypted stack values cannot be read offline; keep them secret
    return contextvars.Context().run(_run_isolated, stack, config, raw, secure, root)


def _thread_event_loop() -> None:
    """The SDK's mock engine creates futures on the thread's current event loop (asyncio.get_event_loop). Once
    anything in the process has run ``asyncio.run`` (which ends by setting the current loop to None) there is
    none, and a render would fail with "There is no current event loop": give the thread an open one."""
    import asyncio

    try:
        loop = asyncio.get_event_loop()
    except RuntimeError:
        loop = None
    if loop is None or loop.is_closed():
        asyncio.set_event_loop(asyncio.new_event_loop())


def _run_isolated(stack: str, config: StackConfig, raw: dict[str, Any], secure: set[str], root: Path) -> RenderResult:
    import pulumi
    from pulumi.runtime import mocks
    from pulumi.runtime.settings import ROOT
    from pulumi.runtime.stack import run_in_stack, run_pulumi_func
    from pulumi.runtime.sync_await import _sync_await

    from infra.mock_engine import RecordingMocks, RecordingMonitor

    _thread_event_loop()
    m = RecordingMocks()
    monitor = RecordingMonitor(m)
    pulumi.runtime.set_all_config(pulumi_config_map(raw), [f"{PROJECT}:{k}" for k in secure])
    # preview=False: with a preview the engine leaves outputs unknown and apply() callbacks never run.
    mocks.set_mocks(m, project=PROJECT, stack=stack, preview=False, monitor=monitor)
    # set_mocks finishes its own root stack at once; run in a fresh one so exports are recorded.
    ROOT.set(None)
    cwd = os.getcwd()
    os.chdir(root)  # the program resolves the Docker build context relative to the project
    try:

        def program() -> None:
            runpy.run_path(str(root / "__main__.py"), run_name="__main__")

        _sync_await(run_pulumi_func(lambda: run_in_stack(program)))
    finally:
        os.chdir(cwd)
    # The engine registers resources as their inputs resolve, in an order that varies from run to run: URN order
    # makes every output of the render (manifests, releases, checks) the same for the same program and config.
    resources = sorted(monitor.recorded, key=lambda r: r.urn)
    return RenderResult(config, resources, monitor.stack_outputs, m.generated_secrets)


# ---------------------------------------------------------------------------------------------------
# Output


def write_render(result: RenderResult, out: Path) -> list[Path]:
    """Write ``<out>/<region>/manifests.yaml``, ``helm-releases.yaml``, ``helm/<release>.yaml`` (and stack
    outputs) atomically."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".render-", dir=out.parent))
    written: list[Path] = []
    try:
        for region in result.config.regions:
            region_dir = staging / region.name
            region_dir.mkdir()
            (region_dir / "manifests.yaml").write_text(
                yaml.safe_dump_all(result.manifests(region.name), sort_keys=False, width=120)
            )
            (region_dir / "helm-releases.yaml").write_text(
                yaml.safe_dump(result.helm_releases(region.name), sort_keys=False, width=120)
            )
            written += [out / region.name / "manifests.yaml", out / region.name / "helm-releases.yaml"]
            # Each release as Helm renders it from its vendored archive with exactly these values.
            (region_dir / "helm").mkdir()
            for rendered in result.helm_renders(region.name):
                (region_dir / "helm" / f"{rendered.name}.yaml").write_text(rendered.text())
                written.append(out / region.name / "helm" / f"{rendered.name}.yaml")
        (staging / "stack-outputs.yaml").write_text(
            yaml.safe_dump(wire(result.stack_outputs, result.known_secrets), sort_keys=False)
        )
        written.append(out / "stack-outputs.yaml")
        if out.exists():
            backup = out.with_name(out.name + ".old")
            shutil.rmtree(backup, ignore_errors=True)
            out.rename(backup)
            staging.rename(out)
            shutil.rmtree(backup, ignore_errors=True)
        else:
            staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return written
