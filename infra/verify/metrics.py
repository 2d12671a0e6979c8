"""Which series exist in the platform's Prometheus.

Families come from :data:`CATALOG_FILE` (Flagger, Istio, kube-state-metrics: read from their source at the
pinned versions, with provenance) and from :mod:`serving.metrics` (our runtime). A family only reaches Prometheus if a
ServiceMonitor scrapes its exporter; a sample then carries the target's labels, and with
``honorLabels: false`` an exposed label that a target label also sets becomes ``exported_<name>``
(see the ``scrape`` section of the catalog for the upstream files). What our queries read is in queries.py.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from infra.verify.platform import Platform, PlatformObject, PodTemplate

CATALOG_FILE = Path(__file__).with_name("metrics-catalog.yaml")
RUNTIME_SOURCE = "serving/metrics.py (our runtime; a live MLServer exports exactly these: tests/test_verify_live.py)"
ISTIO_INJECTION_LABEL = "istio-injection"


@dataclass(frozen=True)
class Family:
    name: str
    type: str
    labels: frozenset[str]
    source: str
    exporter: Mapping[str, Any]
    # prometheus_client also exposes <base>_created for counters and histograms (our runtime does).
    created_series: bool = False

    def series_names(self) -> dict[str, frozenset[str]]:
        """Exposed series name -> its labels (a histogram also has _bucket{le}, _sum and _count)."""
        if self.type != "histogram":
            series = {self.name: self.labels}
        else:
            series = {
                f"{self.name}_bucket": self.labels | {"le"},
                f"{self.name}_sum": self.labels,
                f"{self.name}_count": self.labels,
            }
        if self.created_series and self.type in ("counter", "histogram"):
            series[f"{self.name.removesuffix('_total')}_created"] = self.labels
        return series


@dataclass(frozen=True)
class Catalog:
    families: dict[str, Family]
    target_labels: frozenset[str]
    conflict_prefix: str
    synthetic: frozenset[str]

    def family_of(self, series: str) -> tuple[Family, frozenset[str]] | None:
        for family in self.families.values():
            labels = family.series_names().get(series)
            if labels is not None:
                return family, labels
        return None


@functools.cache
def catalog() -> Catalog:
    from infra.registry import image_name
    from serving import metrics as runtime
    from serving.settings import DEFAULT_METRICS_PORT

    doc = yaml.safe_load(CATALOG_FILE.read_text())
    families: dict[str, Family] = {}
    for name, spec in doc["families"].items():
        source = doc["sources"][spec["source"]]
        provenance = f"{source['repository']} {source['tag']} {', '.join(source['files'])}"
        families[name] = Family(name, spec["type"], frozenset(spec["labels"]), provenance, source["exporter"])
    # The model server's image, whoever built it (this program or the training pipeline).
    runtime_exporter = {"image": image_name("serving"), "port": DEFAULT_METRICS_PORT}
    for name, labels in runtime.METRIC_LABELS.items():
        families[name] = Family(
            name, runtime.METRIC_TYPES[name], frozenset(labels), RUNTIME_SOURCE, runtime_exporter, created_series=True
        )
    scrape = doc["scrape"]
    return Catalog(
        families, frozenset(scrape["target_labels"]), scrape["conflict_prefix"], frozenset(scrape["synthetic"])
    )


# ---------------------------------------------------------------------------------------------------
# Scrape targets


@dataclass(frozen=True)
class ScrapeTarget:
    """One ServiceMonitor endpoint reaching one container port of the pods of one workload."""

    monitor: PlatformObject
    service: PlatformObject
    pods: PodTemplate
    container: str
    port_number: int | None
    port_name: str | None
    endpoint: str
    honor_labels: bool
    sidecar: bool = False

    def label_values(self) -> dict[str, str | None]:
        """Target labels and their value (None: varies per pod)."""
        job_label = self.monitor.spec.get("jobLabel")
        job = self.service.labels.get(job_label) if job_label else None
        values: dict[str, str | None] = {
            "namespace": self.service.namespace,
            "service": self.service.name,
            "job": job or self.service.name,
            "endpoint": self.endpoint,
            "container": self.container,
            "pod": None,
            "instance": None,
        }
        # prometheus-operator v0.78.2 pkg/prometheus/promcfg.go: each ``podTargetLabels`` entry relabels
        # __meta_kubernetes_pod_label_<name> onto the target as the sanitised name (absent on pods without
        # it); ``targetLabels`` does the same from the Service's labels.
        for label in self.monitor.spec.get("podTargetLabels") or []:
            values[_sanitised(str(label))] = self.pods.labels.get(str(label))
        for label in self.monitor.spec.get("targetLabels") or []:
            values[_sanitised(str(label))] = self.service.labels.get(str(label))
        return values

    def describe(self) -> str:
        monitor, service = self.monitor, self.service
        return f"{monitor.namespace}/{monitor.name} -> {service.namespace}/{service.name}:{self.endpoint}"


def _sanitised(label: str) -> str:
    """A Kubernetes label name as a Prometheus label (prometheus-operator's sanitizeLabelName)."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", label)


def _container_port(template: PodTemplate, target_port: Any) -> Iterator[tuple[str, int | None, str | None]]:
    for container in template.containers():
        for port in container.get("ports") or []:
            if target_port in (port.get("name"), port.get("containerPort")):
                yield str(container.get("name")), port.get("containerPort"), port.get("name")


def _in_mesh(platform: Platform, template: PodTemplate) -> bool:
    namespaces = {o.name: o for o in platform.of_kind("Namespace")}
    ns = namespaces.get(template.namespace)
    injected = ns is not None and ns.labels.get(ISTIO_INJECTION_LABEL) == "enabled"
    return injected and template.annotations.get("sidecar.istio.io/inject") != "false"


def scrape_targets(platform: Platform) -> list[ScrapeTarget]:
    targets: list[ScrapeTarget] = []
    sidecar_ports = {int(f.exporter["sidecar"]) for f in catalog().families.values() if "sidecar" in f.exporter}
    for monitor in platform.of_kind("ServiceMonitor"):
        if monitor.group != "monitoring.coreos.com":
            continue
        ns_selector = monitor.spec.get("namespaceSelector") or {}
        namespaces = None if ns_selector.get("any") else set(ns_selector.get("matchNames") or [monitor.namespace])
        for service in platform.of_kind("Service"):
            if namespaces is not None and service.namespace not in namespaces:
                continue
            if not _label_selector_matches(monitor.spec.get("selector") or {}, service.labels):
                continue
            for endpoint in monitor.spec.get("endpoints") or []:
                wanted = endpoint.get("port")
                ports = [
                    p
                    for p in service.spec.get("ports") or []
                    if (wanted and p.get("name") == wanted)
                    or (not wanted and endpoint.get("targetPort") in (p.get("targetPort"), p.get("port")))
                ]
                for port in ports:
                    target_port = port.get("targetPort", port.get("port"))
                    for template in platform.pods_selected(service.namespace, service.spec.get("selector")):
                        name = str(wanted or target_port)
                        honor = bool(endpoint.get("honorLabels", False))
                        for container, number, port_name in _container_port(template, target_port):
                            targets.append(
                                ScrapeTarget(monitor, service, template, container, number, port_name, name, honor)
                            )
                        if target_port in sidecar_ports and _in_mesh(platform, template):
                            targets.append(
                                ScrapeTarget(
                                    monitor, service, template, "istio-proxy", int(target_port), None, name, honor, True
                                )
                            )
    return targets


def _label_selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    from infra.verify.platform import selector_matches

    return bool(selector) and selector_matches(selector, labels)


def exports(family: Family, target: ScrapeTarget) -> bool:
    """Whether ``target`` scrapes the exporter of ``family``."""
    exporter = family.exporter
    if "sidecar" in exporter:
        return target.sidecar and target.port_number == int(exporter["sidecar"])
    if target.sidecar:
        return False
    if "release" in exporter:
        return (
            target.pods.owner.origin == f"helm:{exporter['release']}"
            and target.container == exporter["container"]
            and exporter["port"] in (target.port_name, target.port_number)
        )
    if "image" in exporter:
        container = next((c for c in target.pods.containers() if c.get("name") == target.container), {})
        image = str(container.get("image", ""))
        return f"/{exporter['image']}" in image and target.port_number == exporter["port"]
    return False


def series_labels(labels: frozenset[str], target: ScrapeTarget, prefix: str) -> dict[str, str | None]:
    """Labels (and fixed values) of a scraped sample: its own, the target's, conflicts renamed."""
    target_values = target.label_values()
    out: dict[str, str | None] = {}
    for label in labels:
        if label in target_values and not target.honor_labels:
            out[prefix + label] = None
        else:
            out[label] = None
    for label, value in target_values.items():
        if not (target.honor_labels and label in labels):
            out[label] = value
    return out
