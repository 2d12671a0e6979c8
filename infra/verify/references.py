"""``fraudctl verify``'s ``references`` check: every selector and reference in the platform resolves.

Services and monitors select pods and Services that exist (with the ports they name); autoscalers, ingresses,
Canaries and Rollouts name targets, templates and Services that exist; pods name accounts, Secrets and
ConfigMaps (and their keys) that exist or that a chart's hook Job creates; bindings name roles and accounts;
and every in-cluster URL a controller is told to call is a Service of the platform with that port.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any

from infra.verify.platform import CLUSTER_OWNED_NAMESPACE, Platform, PlatformObject, PodTemplate, selector_matches
from infra.verify.result import CheckResult

TITLE = "every selector and reference resolves (Services, monitors, ingresses, targets, keys, accounts, roles)"
# ClusterRoles every cluster has (the API server's bootstrap policy).
BOOTSTRAP_CLUSTER_ROLES = frozenset({"cluster-admin", "admin", "edit", "view"})
DEFAULT_INGRESS_CLASS = "ingressclass.kubernetes.io/is-default-class"


def _external(namespace: str) -> bool:
    return namespace == CLUSTER_OWNED_NAMESPACE


def _secrets_created_by_hooks(platform: Platform) -> dict[tuple[str, str], set[str]]:
    """Secrets (and their keys) that a chart's hook Job creates at install, by the command it runs:

    * ``kube-webhook-certgen create --secret-name=X`` (kube-prometheus-stack's admission webhook Job):
      keys ca, cert, key;
    * ``argocd admin redis-initial-password`` (argo-cd's redis-secret-init pre-install Job): Secret
      ``argocd-redis`` with key ``auth`` (argoproj/argo-cd ``cmd/argocd/commands/admin/
      redis_initial_password.go``, read at commit 295eab30 on the v2 line the chart's v2.13.2 image is on).
    """
    created: dict[tuple[str, str], set[str]] = {}
    for template in platform.pod_templates():
        for container in template.containers():
            args = [str(a) for a in [*(container.get("command") or []), *(container.get("args") or [])]]
            if "create" in args:
                for arg in args:
                    if arg.startswith("--secret-name="):
                        created[(template.namespace, arg.split("=", 1)[1])] = {"ca", "cert", "key"}
            if "admin" in args and "redis-initial-password" in args:
                created[(template.namespace, "argocd-redis")] = {"auth"}
    return created


def _data_keys(item: PlatformObject) -> set[str]:
    return {*(item.obj.get("data") or {}), *(item.obj.get("stringData") or {}), *(item.obj.get("binaryData") or {})}


class _References:
    def __init__(self, platform: Platform, result: CheckResult) -> None:
        self.platform, self.result = platform, result
        self.hook_secrets = _secrets_created_by_hooks(platform)

    def need(self, owner: PlatformObject, what: str, ok: bool) -> None:
        self.result.checked += 1
        if not ok:
            self.result.fail(f"{owner.ref}: {what}")

    def obj(
        self,
        owner: PlatformObject,
        kind: str,
        namespace: str,
        name: str,
        key: str | None = None,
        optional: bool = False,
    ) -> None:
        if optional or _external(namespace):
            return
        found = self.platform.find(kind, namespace, name)
        if kind == "Secret" and not found and (namespace, name) in self.hook_secrets:
            keys = self.hook_secrets[(namespace, name)]
            what = f"Secret {namespace}/{name} (created by a hook Job) has no key {key!r}"
            self.need(owner, what, key is None or key in keys)
            return
        if kind == "ServiceAccount" and name == "default":
            return
        if not found:
            self.need(owner, f"{kind} {namespace}/{name} does not exist", False)
        elif key is not None and found[0].kind in ("Secret", "ConfigMap"):
            self.need(owner, f"{kind} {namespace}/{name} has no key {key!r}", key in _data_keys(found[0]))
        else:
            self.need(owner, "", True)

    def pods(
        self, owner: PlatformObject, namespace: str, selector: Mapping[str, Any], what: str
    ) -> list[PodTemplate]:
        if _external(namespace):
            return []
        pods = self.platform.pods_selected(namespace, selector)
        self.need(owner, f"{what} {json.dumps(selector, sort_keys=True)} selects no pods in {namespace}", bool(pods))
        return pods


def check_references(platform: Platform, result: CheckResult) -> None:
    refs = _References(platform, result)
    for svc in platform.of_kind("Service"):
        if svc.spec.get("selector") and svc.spec.get("type") != "ExternalName":
            refs.pods(svc, svc.namespace, svc.spec["selector"], "selector")
    for monitor in platform.of_kind("ServiceMonitor"):
        _service_monitor(platform, refs, monitor)
    for monitor in platform.of_kind("PodMonitor"):
        ns_selector = monitor.spec.get("namespaceSelector") or {}
        for ns in ns_selector.get("matchNames") or [monitor.namespace]:
            pods = refs.pods(monitor, ns, monitor.spec.get("selector") or {}, "selector")
            for endpoint in monitor.spec.get("podMetricsEndpoints") or []:
                if endpoint.get("port") and pods:
                    names = {p.get("name") for t in pods for c in t.containers() for p in c.get("ports") or []}
                    refs.need(
                        monitor, f"no selected pod has a port named {endpoint['port']!r}", endpoint["port"] in names
                    )
    for pdb in platform.of_kind("PodDisruptionBudget"):
        refs.pods(pdb, pdb.namespace, pdb.spec.get("selector") or {}, "selector")
    for policy in platform.of_kind("NetworkPolicy"):
        selector = policy.spec.get("podSelector") or {}
        if selector.get("matchLabels") or selector.get("matchExpressions"):
            refs.pods(policy, policy.namespace, selector, "podSelector")
    for hpa in platform.of_kind("HorizontalPodAutoscaler"):
        target = hpa.spec.get("scaleTargetRef") or {}
        refs.obj(hpa, target.get("kind", ""), hpa.namespace, target.get("name", ""))
    for ingress in platform.of_kind("Ingress"):
        _ingress_references(platform, refs, ingress)
    _flagger_references(refs, platform)
    _argo_references(refs, platform)
    _url_references(refs, platform)
    for template in platform.pod_templates():
        _pod_references(refs, template)
    for binding in platform.of_kind("RoleBinding", "ClusterRoleBinding"):
        _binding_references(refs, binding)


def _service_monitor(platform: Platform, refs: _References, monitor: PlatformObject) -> None:
    ns_selector = monitor.spec.get("namespaceSelector") or {}
    namespaces = None if ns_selector.get("any") else set(ns_selector.get("matchNames") or [monitor.namespace])
    if namespaces is not None and all(_external(n) for n in namespaces):
        return
    services = [
        s
        for s in platform.of_kind("Service")
        if (namespaces is None or s.namespace in namespaces)
        and selector_matches(monitor.spec.get("selector") or {}, s.labels)
    ]
    refs.need(
        monitor,
        f"selector {json.dumps(monitor.spec.get('selector'), sort_keys=True)} matches no Service in "
        f"{', '.join(sorted(namespaces)) if namespaces else 'any namespace'}",
        bool(services),
    )
    for endpoint in monitor.spec.get("endpoints") or []:
        port = endpoint.get("port")
        if port and services:
            names = {p.get("name") for s in services for p in s.spec.get("ports") or []}
            refs.need(
                monitor,
                f"no selected Service has a port named {port!r} (they have {sorted(map(str, names))})",
                port in names,
            )


def _ingress_references(platform: Platform, refs: _References, ingress: PlatformObject) -> None:
    """An Ingress needs a controller: its IngressClass (or a default one) in the platform, and backends."""
    classes = platform.of_kind("IngressClass")
    wanted = ingress.spec.get("ingressClassName") or ingress.metadata.get("annotations", {}).get(
        "kubernetes.io/ingress.class"
    )
    if wanted:
        refs.need(
            ingress,
            f"IngressClass {wanted} does not exist: no ingress controller in the platform serves it",
            any(c.name == wanted for c in classes),
        )
    else:
        default = [c for c in classes if c.metadata.get("annotations", {}).get(DEFAULT_INGRESS_CLASS) == "true"]
        refs.need(
            ingress,
            "has no ingressClassName and the platform has no default IngressClass: no ingress controller serves it",
            bool(default),
        )
    backends = [ingress.spec.get("defaultBackend")]
    backends += [
        p.get("backend")
        for rule in ingress.spec.get("rules") or []
        for p in (rule.get("http") or {}).get("paths") or []
    ]
    for backend in filter(None, backends):
        service = backend.get("service")
        if not service:
            continue
        found = platform.find("Service", ingress.namespace, service.get("name", ""))
        refs.need(ingress, f"backend Service {ingress.namespace}/{service.get('name')} does not exist", bool(found))
        port = service.get("port") or {}
        if found:
            ports = found[0].spec.get("ports") or []
            ok = any(
                port.get("number") == p.get("port") or (port.get("name") and port.get("name") == p.get("name"))
                for p in ports
            )
            refs.need(ingress, f"backend Service {ingress.namespace}/{service.get('name')} has no port {port}", ok)


def _flagger_references(refs: _References, platform: Platform) -> None:
    for canary in platform.of_kind("Canary"):
        ns = canary.namespace
        for key in ("targetRef", "autoscalerRef"):
            target = canary.spec.get(key)
            if target:
                refs.obj(canary, target.get("kind", ""), ns, target.get("name", ""))
        analysis = canary.spec.get("analysis") or {}
        for metric in analysis.get("metrics") or []:
            ref = metric.get("templateRef")
            if ref:
                refs.obj(canary, "MetricTemplate", ref.get("namespace") or ns, ref.get("name", ""))
        for alert in analysis.get("alerts") or []:
            ref = alert.get("providerRef") or {}
            refs.obj(canary, "AlertProvider", ref.get("namespace") or ns, ref.get("name", ""))
    for provider in platform.of_kind("AlertProvider"):
        ref = provider.spec.get("secretRef")
        if ref:
            # Flagger reads the webhook from the Secret's `address` key (pkg/controller/events.go, v1.40.0).
            refs.obj(provider, "Secret", provider.namespace, ref.get("name", ""), key="address")


def _argo_references(refs: _References, platform: Platform) -> None:
    for rollout in platform.of_kind("Rollout"):
        ns = rollout.namespace
        strategy = rollout.spec.get("strategy") or {}
        blue_green, canary = strategy.get("blueGreen") or {}, strategy.get("canary") or {}
        for key in ("activeService", "previewService"):
            if blue_green.get(key):
                refs.obj(rollout, "Service", ns, blue_green[key])
        for key in ("stableService", "canaryService"):
            if canary.get(key):
                refs.obj(rollout, "Service", ns, canary[key])
        analyses = [blue_green.get("prePromotionAnalysis"), blue_green.get("postPromotionAnalysis")]
        analyses += [(step or {}).get("analysis") for step in canary.get("steps") or []]
        for analysis in filter(None, analyses):
            for ref in analysis.get("templates") or []:
                if ref.get("clusterScope"):
                    refs.obj(rollout, "ClusterAnalysisTemplate", "", ref.get("templateName", ""))
                else:
                    refs.obj(rollout, "AnalysisTemplate", ns, ref.get("templateName", ""))
        workload = rollout.spec.get("workloadRef")
        if workload:
            refs.obj(rollout, workload.get("kind", ""), ns, workload.get("name", ""))


_SERVICE_URL = re.compile(
    r"^(?P<scheme>https?)://(?P<service>[a-z0-9-]+)\.(?P<namespace>[a-z0-9-]+)(\.svc(\.cluster\.local)?)?"
    r"(:(?P<port>\d+))?(/|$)"
)


def _in_cluster_urls(item: PlatformObject) -> Iterator[str]:
    """The in-cluster addresses a rollout object makes its controller call: Flagger webhooks and metric
    providers, Argo Rollouts' web and Prometheus metric providers."""
    if item.kind == "Canary":
        for hook in (item.spec.get("analysis") or {}).get("webhooks") or []:
            yield str(hook.get("url", ""))
    elif item.kind == "MetricTemplate":
        yield str((item.spec.get("provider") or {}).get("address", ""))
    elif item.kind in ("AnalysisTemplate", "ClusterAnalysisTemplate"):
        for metric in item.spec.get("metrics") or []:
            provider = metric.get("provider") or {}
            yield str((provider.get("web") or {}).get("url", ""))
            yield str((provider.get("prometheus") or {}).get("address", ""))


def _url_references(refs: _References, platform: Platform) -> None:
    """Every ``http://<service>.<namespace>...`` a controller is told to call is a Service of the platform
    with that port (templated URLs, filled in by the controller at run time, are left out)."""
    for item in platform.of_kind("Canary", "MetricTemplate", "AnalysisTemplate", "ClusterAnalysisTemplate"):
        for url in _in_cluster_urls(item):
            match = _SERVICE_URL.match(url)
            if not match or "{{" in url or _external(match["namespace"]):
                continue
            port = int(match["port"] or (443 if match["scheme"] == "https" else 80))
            found = platform.find("Service", match["namespace"], match["service"])
            ports = [p.get("port") for p in (found[0].spec.get("ports") or [])] if found else []
            where = f"{url}: Service {match['namespace']}/{match['service']}"
            refs.need(item, f"{where} does not exist", bool(found))
            if found:
                refs.need(item, f"{where} has no port {port} (it has {ports})", port in ports)


def _pod_references(refs: _References, template: PodTemplate) -> None:
    owner, ns, spec = template.owner, template.namespace, template.spec
    refs.obj(owner, "ServiceAccount", ns, spec.get("serviceAccountName") or "default")
    for container in template.containers():
        for env in container.get("env") or []:
            source = env.get("valueFrom") or {}
            for key, kind in (("secretKeyRef", "Secret"), ("configMapKeyRef", "ConfigMap")):
                ref = source.get(key)
                if ref:
                    refs.obj(
                        owner, kind, ns, ref.get("name", ""), key=ref.get("key"), optional=bool(ref.get("optional"))
                    )
        for env_from in container.get("envFrom") or []:
            for key, kind in (("secretRef", "Secret"), ("configMapRef", "ConfigMap")):
                ref = env_from.get(key)
                if ref:
                    refs.obj(owner, kind, ns, ref.get("name", ""), optional=bool(ref.get("optional")))
    for volume in spec.get("volumes") or []:
        # A volume that names keys (items) needs each of them: a Secret or ConfigMap without one fails the mount.
        for kind, source, name_key in (("Secret", "secret", "secretName"), ("ConfigMap", "configMap", "name")):
            ref = volume.get(source)
            if not ref:
                continue
            optional = bool(ref.get("optional"))
            refs.obj(owner, kind, ns, ref.get(name_key, ""), optional=optional)
            for item in ref.get("items") or []:
                refs.obj(owner, kind, ns, ref.get(name_key, ""), key=item.get("key"), optional=optional)
        for source in (volume.get("projected") or {}).get("sources") or []:
            for key, kind in (("secret", "Secret"), ("configMap", "ConfigMap")):
                ref = source.get(key)
                if ref:
                    refs.obj(owner, kind, ns, ref.get("name", ""), optional=bool(ref.get("optional")))
        claim = volume.get("persistentVolumeClaim")
        if claim:
            refs.obj(owner, "PersistentVolumeClaim", ns, claim.get("claimName", ""))


def _binding_references(refs: _References, binding: PlatformObject) -> None:
    role = binding.obj.get("roleRef") or {}
    name = role.get("name", "")
    if role.get("kind") == "ClusterRole":
        if name not in BOOTSTRAP_CLUSTER_ROLES and not name.startswith("system:"):
            refs.obj(binding, "ClusterRole", "", name)
    else:
        refs.obj(binding, "Role", binding.namespace, name)
    for subject in binding.obj.get("subjects") or []:
        if subject.get("kind") == "ServiceAccount":
            refs.obj(binding, "ServiceAccount", subject.get("namespace") or binding.namespace, subject.get("name", ""))
