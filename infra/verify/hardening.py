"""Hardened workloads, ours and the charts', as the platform renders them (``fraudctl verify``'s ``hardening``).

Rules, per pod template (Deployments, StatefulSets, DaemonSets, Jobs, CronJobs, Rollouts, the operator's
Prometheus/Alertmanager pods, and the steps of our WorkflowTemplates):

* ``secret-env``: no Secret reaches a container as an environment variable (``secretKeyRef``, ``envFrom``);
  Secrets are mounted as files, which child processes, crash reports and ``/proc/<pid>/environ`` never see.
* ``token``: no service-account token is mounted into a pod whose ServiceAccount has no Role or ClusterRole
  bound: such a pod has no use for the API server (``automountServiceAccountToken: false``).
* ``uid``: every container runs as a UID of at least 10000 (below that, UIDs collide with the node's own
  users and system accounts), set explicitly, with ``runAsNonRoot``.
* ``probes``: every long-running container has a liveness and a readiness probe.
* ``pod-security``: the namespaces the program creates enforce Pod Security ``restricted``, and every pod in a
  namespace that enforces a level (sidecars Istio would inject included) passes that level; our own pods pass
  ``restricted`` wherever they run.

What a chart (or an image) cannot do is a :class:`Waiver` in :data:`WAIVERS` (infra/verify/waivers.py), with the
reason; the check fails on any finding no waiver covers, and tests/test_hardening.py fails on a waiver that covers
nothing in any stack. The Pod Security levels are evaluated here (Kubernetes' own evaluator is Go,
k8s.io/pod-security-admission ``policy/``, v1.31; no Python binding exists): the checks of the baseline and
restricted levels on pod specs, as that package states them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from infra.verify.platform import Platform, PlatformObject, PodTemplate
from infra.verify.waivers import WAIVERS, Finding, Waiver

__all__ = ["WAIVERS", "Finding", "Waiver", "findings", "iter_rules", "judged", "pod_security_problems", "pods"]

MIN_UID = 10000
LONG_RUNNING = frozenset(
    {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Rollout", "Prometheus", "Alertmanager"}
)
# The Prometheus Operator sets both probes on the containers of the pods it makes (prometheus-operator v0.78.2
# pkg/prometheus/server/statefulset.go, pkg/alertmanager/statefulset.go): the platform's model of those pods
# carries no probes, so they are not judged here.
OPERATOR_KINDS = frozenset({"Prometheus", "Alertmanager"})
ENFORCE_LABEL = "pod-security.kubernetes.io/enforce"
LEVELS = ("privileged", "baseline", "restricted")


# ---------------------------------------------------------------------------------------------------
# Pod Security Standards (k8s.io/pod-security-admission policy, v1.31)

_BASELINE_CAPABILITIES = frozenset(
    {
        "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
        "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
    }
)  # fmt: skip
_SAFE_SYSCTLS = frozenset(
    {
        "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
        "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
        "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
        "net.ipv4.tcp_keepalive_probes",
    }
)  # fmt: skip
_SELINUX_TYPES = frozenset({"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"})
_RESTRICTED_VOLUMES = frozenset(
    {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
)


def _containers(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    return [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]


def _baseline(spec: Mapping[str, Any], annotations: Mapping[str, str]) -> list[str]:
    problems = []
    hosts = [key for key in ("hostNetwork", "hostPID", "hostIPC") if spec.get(key)]
    if hosts:
        problems.append(f"host namespaces ({', '.join(hosts)})")
    pod_context = spec.get("securityContext") or {}
    if (pod_context.get("seccompProfile") or {}).get("type") == "Unconfined":
        problems.append("pod seccompProfile Unconfined")
    if (pod_context.get("appArmorProfile") or {}).get("type") == "Unconfined":
        problems.append("pod appArmorProfile Unconfined")
    for sysctl in pod_context.get("sysctls") or []:
        if sysctl.get("name") not in _SAFE_SYSCTLS:
            problems.append(f"sysctl {sysctl.get('name')}")
    problems += _selinux("pod", pod_context)
    for volume in spec.get("volumes") or []:
        if "hostPath" in volume:
            problems.append(f"hostPath volume {volume.get('name')}")
    for key, value in annotations.items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/") and value == "unconfined":
            problems.append(f"AppArmor unconfined ({key.rsplit('/', 1)[1]})")
    for container in _containers(spec):
        name, context = container.get("name"), container.get("securityContext") or {}
        if context.get("privileged"):
            problems.append(f"{name} privileged")
        added = set((context.get("capabilities") or {}).get("add") or []) - _BASELINE_CAPABILITIES
        if added:
            problems.append(f"{name} adds capabilities {', '.join(sorted(added))}")
        if any(port.get("hostPort") for port in container.get("ports") or []):
            problems.append(f"{name} host port")
        if (context.get("seccompProfile") or {}).get("type") == "Unconfined":
            problems.append(f"{name} seccompProfile Unconfined")
        if (context.get("appArmorProfile") or {}).get("type") == "Unconfined":
            problems.append(f"{name} appArmorProfile Unconfined")
        if context.get("procMount", "Default") != "Default":
            problems.append(f"{name} procMount {context['procMount']}")
        problems += _selinux(name, context)
    return problems


def _selinux(where: Any, context: Mapping[str, Any]) -> list[str]:
    options = context.get("seLinuxOptions") or {}
    if options.get("type", "") not in _SELINUX_TYPES or options.get("user") or options.get("role"):
        return [f"{where} seLinuxOptions {options}"]
    return []


def _restricted(spec: Mapping[str, Any]) -> list[str]:
    problems = []
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if kinds and not kinds <= _RESTRICTED_VOLUMES:
            problems.append(f"volume {volume.get('name')} of type {', '.join(sorted(kinds))}")
    pod_context = spec.get("securityContext") or {}
    pod_seccomp = (pod_context.get("seccompProfile") or {}).get("type")
    for container in _containers(spec):
        name, context = container.get("name"), container.get("securityContext") or {}
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name} allowPrivilegeEscalation not false")
        non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
        if non_root is not True:
            problems.append(f"{name} runAsNonRoot not true")
        if context.get("runAsUser", pod_context.get("runAsUser")) == 0:
            problems.append(f"{name} runAsUser 0")
        seccomp = (context.get("seccompProfile") or {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name} seccompProfile not RuntimeDefault or Localhost")
        capabilities = context.get("capabilities") or {}
        if "ALL" not in (capabilities.get("drop") or []):
            problems.append(f"{name} does not drop ALL capabilities")
        added = set(capabilities.get("add") or []) - {"NET_BIND_SERVICE"}
        if added:
            problems.append(f"{name} adds {', '.join(sorted(added))}")
    return problems


def pod_security_problems(
    spec: Mapping[str, Any], level: str, annotations: Mapping[str, str] | None = None
) -> list[str]:
    """Why a pod with ``spec`` would be refused under Pod Security ``level`` (empty: it passes)."""
    if level == "privileged":
        return []
    problems = _baseline(spec, annotations or {})
    if level == "restricted":
        problems += [p for p in _restricted(spec) if p not in problems]
    return problems


# ---------------------------------------------------------------------------------------------------
# Istio's injected containers (istio 1.24.2 manifests/charts/istio-control/istio-discovery/files/
# injection-template.yaml): what a pod in a namespace labelled istio-injection=enabled runs besides its own.


def _injector_values(platform: Platform) -> dict[str, Any] | None:
    for item in platform.of_kind("ConfigMap"):
        if item.name.startswith("istio-sidecar-injector"):
            values: dict[str, Any] = json.loads((item.obj.get("data") or {}).get("values") or "{}")
            return values
    return None


def injected_containers(
    platform: Platform, template: PodTemplate | Pod
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(init containers, containers) Istio adds to ``template``'s pods: none outside the mesh."""
    namespace = platform.find("Namespace", "", template.namespace)
    labels = namespace[0].labels if namespace else {}
    values = _injector_values(platform)
    if labels.get("istio-injection") != "enabled" or values is None:
        return [], []
    if template.annotations.get("sidecar.istio.io/inject") == "false" or template.spec.get("hostNetwork"):
        return [], []
    cni = bool(((values.get("pilot") or {}).get("cni") or {}).get("enabled"))
    proxy_context = {
        "allowPrivilegeEscalation": False,
        "privileged": False,
        "capabilities": {"drop": ["ALL"]},
        "readOnlyRootFilesystem": True,
        "runAsGroup": 1337,
        "runAsNonRoot": True,
        "runAsUser": 1337,
    }
    if cni:
        init = {"name": "istio-validation", "securityContext": proxy_context}
    else:
        init = {
            "name": "istio-init",
            "securityContext": {
                "allowPrivilegeEscalation": False,
                "privileged": False,
                "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
                "readOnlyRootFilesystem": False,
                "runAsGroup": 0,
                "runAsNonRoot": False,
                "runAsUser": 0,
            },
        }
    return [init], [{"name": "istio-proxy", "securityContext": proxy_context}]


# ---------------------------------------------------------------------------------------------------
# The pods


@dataclass(frozen=True)
class Pod:
    owner: PlatformObject
    namespace: str
    spec: dict[str, Any]
    annotations: dict[str, str]
    long_running: bool

    @property
    def workload(self) -> str:
        return f"{self.owner.kind}/{self.namespace}/{self.owner.name}"


def pods(platform: Platform) -> list[Pod]:
    """Every pod template of the platform, and each step of our WorkflowTemplates as the pod Argo makes."""
    found = [
        Pod(t.owner, t.namespace, t.spec, t.annotations, t.owner.kind in LONG_RUNNING) for t in platform.pod_templates()
    ]
    for template in platform.of_kind("WorkflowTemplate", "Workflow"):
        spec = template.spec
        for step in spec.get("templates") or []:
            container = step.get("container")
            if not container:
                continue
            pod_spec = {
                "serviceAccountName": step.get("serviceAccountName") or spec.get("serviceAccountName") or "default",
                "securityContext": step.get("securityContext") or spec.get("securityContext") or {},
                "containers": [{"name": "main", **container}],
                "volumes": [*(spec.get("volumes") or []), *(step.get("volumes") or [])],
            }
            for key in ("automountServiceAccountToken", "hostAliases"):
                if key in step or key in spec:
                    pod_spec[key] = step.get(key, spec.get(key))
            owner = PlatformObject(
                {**template.obj, "metadata": {**template.metadata, "name": f"{template.name}.{step['name']}"}},
                template.origin,
                template.source,
            )
            found.append(Pod(owner, template.namespace, pod_spec, {}, long_running=False))
    return found


def _bound_accounts(platform: Platform) -> set[tuple[str, str]]:
    bound = set()
    for binding in platform.of_kind("RoleBinding", "ClusterRoleBinding"):
        for subject in binding.obj.get("subjects") or []:
            if subject.get("kind") == "ServiceAccount":
                bound.add((subject.get("namespace") or binding.namespace, subject.get("name", "")))
    return bound


def findings(platform: Platform) -> tuple[int, list[Finding]]:
    """(how many things were looked at, every finding) for the platform of one region."""
    checked, found = 0, []
    bound = _bound_accounts(platform)
    accounts = {(o.namespace, o.name): o.obj for o in platform.of_kind("ServiceAccount")}
    for pod in pods(platform):
        spec, origin = pod.spec, pod.owner.origin
        pod_context = spec.get("securityContext") or {}

        def add(rule: str, container: str, message: str, pod: Pod = pod, origin: str = origin) -> None:
            found.append(Finding(rule, origin, pod.workload, container, message))

        checked += 1
        account = spec.get("serviceAccountName") or "default"
        mounted = spec.get("automountServiceAccountToken")
        if mounted is None:
            mounted = (accounts.get((pod.namespace, account)) or {}).get("automountServiceAccountToken", True)
        if mounted and (pod.namespace, account) not in bound:
            add(
                "token",
                "",
                f"mounts a service-account token it has no use for (no Role or ClusterRole is bound to ServiceAccount "
                f"{pod.namespace}/{account}); set automountServiceAccountToken: false",
            )
        for container in _containers(spec):
            name, context = str(container.get("name", "")), container.get("securityContext") or {}
            checked += 1
            secret_env = [
                e["name"] for e in container.get("env") or [] if (e.get("valueFrom") or {}).get("secretKeyRef")
            ] + [f"envFrom {e['secretRef'].get('name')}" for e in container.get("envFrom") or [] if e.get("secretRef")]
            if secret_env:
                names = ", ".join(secret_env)
                add("secret-env", name, f"takes Secrets as environment variables ({names}); mount them as files")
            uid = context.get("runAsUser", pod_context.get("runAsUser"))
            non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
            if uid is None:
                add("uid", name, "runs as its image's user (runAsUser not set)")
            elif uid < MIN_UID:
                add("uid", name, f"runs as UID {uid}, below {MIN_UID}")
            elif non_root is not True:
                add("uid", name, "does not set runAsNonRoot")
        if pod.long_running and pod.owner.kind not in OPERATOR_KINDS:
            for container in spec.get("containers") or []:
                checked += 1
                missing = [p for p in ("livenessProbe", "readinessProbe") if not container.get(p)]
                if missing:
                    add("probes", str(container.get("name", "")), f"has no {' and no '.join(missing)}")
        if origin in ("program", "gitops"):
            checked += 1
            problems = pod_security_problems(spec, "restricted", pod.annotations)
            if problems:
                add("pod-security", "", f"would be refused by Pod Security restricted: {'; '.join(problems)}")
    checked, namespace_found = _namespaces(platform, checked)
    return checked, found + namespace_found


def _namespaces(platform: Platform, checked: int) -> tuple[int, list[Finding]]:
    found = []
    for namespace in platform.of_kind("Namespace"):
        if namespace.origin not in ("program", "gitops"):
            continue
        checked += 1
        level = namespace.labels.get(ENFORCE_LABEL)
        where = f"Namespace/{namespace.name}"
        if level != "restricted":
            found.append(
                Finding(
                    "pod-security",
                    namespace.origin,
                    where,
                    "",
                    f"enforces Pod Security {level or 'nothing (privileged)'}, not restricted",
                )
            )
        if level not in LEVELS[1:]:
            continue
        for pod in pods(platform):
            if pod.namespace != namespace.name:
                continue
            checked += 1
            init, containers = injected_containers(platform, pod)
            spec = {
                **pod.spec,
                "initContainers": [*init, *(pod.spec.get("initContainers") or [])],
                "containers": [*(pod.spec.get("containers") or []), *containers],
            }
            problems = pod_security_problems(spec, level, pod.annotations)
            if problems:
                found.append(
                    Finding(
                        "pod-security",
                        pod.owner.origin,
                        pod.workload,
                        "",
                        f"would be refused by namespace {namespace.name}'s Pod Security {level}: {'; '.join(problems)}",
                    )
                )
    return checked, found


def judged(platform: Platform) -> tuple[int, list[Finding], list[tuple[Finding, Waiver]]]:
    """(checked, findings no waiver covers, waived findings with their waiver)."""
    checked, all_findings = findings(platform)
    open_, waived = [], []
    for finding in all_findings:
        waiver = next((w for w in WAIVERS if w.covers(finding)), None)
        if waiver is None:
            open_.append(finding)
        else:
            waived.append((finding, waiver))
    return checked, open_, waived


def iter_rules() -> Iterator[str]:
    yield from ("secret-env", "token", "uid", "probes", "pod-security")
