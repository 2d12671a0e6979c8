"""Submit a run of the training WorkflowTemplate and follow it: step status and logs until it ends.

Talks to the Kubernetes API only (no ``argo`` CLI, no Argo server): creates a ``Workflow`` with a
``workflowTemplateRef``, watches it, and follows the log of each step's pod as the step starts. Pod
names are derived from the workflow's node status exactly as Argo's controller names pods.

Step transitions are progress (logging, stderr); the steps' own log lines are the command's output (stdout).
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TextIO

from ops.cluster import WORKFLOWS, Cluster, ClusterError
from ops.pipeline_contract import submission

log = logging.getLogger(__name__)

FINISHED_PHASES = ("Succeeded", "Failed", "Error")
POD_NAME_ANNOTATION = "workflows.argoproj.io/pod-name-format"
_MAX_PREFIX = 253 - 10 - 1  # Argo: max resource name length, minus the hash and its dash


def fnv32a(text: str) -> int:
    value = 2166136261
    for byte in text.encode():
        value ^= byte
        value = (value * 16777619) & 0xFFFFFFFF
    return value


def pod_name(workflow: Mapping[str, Any], node: Mapping[str, Any]) -> str:
    """The pod Argo created for a Pod node (workflow/util/pod_name.go: v2 names unless annotated v1)."""
    metadata = workflow.get("metadata") or {}
    workflow_name = str(metadata.get("name", ""))
    version = (metadata.get("annotations") or {}).get(POD_NAME_ANNOTATION, "v2")
    template = node.get("templateName") or (node.get("templateRef") or {}).get("template") or ""
    if version == "v1" or not template:
        return str(node["id"])
    node_name = str(node.get("name", ""))
    if node_name == workflow_name:
        return workflow_name
    prefix = workflow_name if ".inline" in node_name else f"{workflow_name}-{template}"
    return f"{prefix[:_MAX_PREFIX]}-{fnv32a(node_name)}"


def submit(cluster: Cluster, namespace: str, model_version: str, parameters: Mapping[str, str]) -> dict[str, Any]:
    """Create a run of the template; the created Workflow (with its generated name)."""
    body = submission(model_version, namespace=namespace, parameters=parameters)
    return cluster.create_custom(WORKFLOWS, namespace, body)


@dataclass
class Follower:
    """Logs step transitions and prints step logs (to ``logs``) of one workflow."""

    cluster: Cluster
    namespace: str
    logs: TextIO = field(default_factory=lambda: sys.stdout)
    log_timeout: float = 30.0
    _phases: dict[str, str] = field(default_factory=dict)
    _threads: dict[str, threading.Thread] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _print(self, text: str) -> None:
        with self._lock:
            print(text, file=self.logs, flush=True)

    def _stream_log(self, step: str, pod: str) -> None:
        try:
            for line in self.cluster.follow_log(self.namespace, pod):
                self._print(f"{step} | {line}")
        except ClusterError as exc:
            log.warning("%s: no log from pod %s (%s)", step, pod, exc)

    def on_workflow(self, workflow: Mapping[str, Any]) -> str:
        """Report what changed; return the workflow phase."""
        status = workflow.get("status") or {}
        nodes = sorted(
            (n for n in (status.get("nodes") or {}).values() if n.get("type") == "Pod"),
            key=lambda n: (n.get("startedAt") or "", n.get("id", "")),
        )
        for node in nodes:
            step = str(node.get("displayName") or node.get("name", "?"))
            phase = str(node.get("phase", "Pending"))
            if self._phases.get(node["id"]) != phase:
                self._phases[node["id"]] = phase
                message = f" ({node['message']})" if node.get("message") else ""
                log.info("step %s: %s%s", step, phase, message)
            if node["id"] not in self._threads and phase in ("Running", *FINISHED_PHASES):
                # A pod that never started (e.g. image pull failure) has no log; its message says why.
                if phase in FINISHED_PHASES and not node.get("startedAt"):
                    continue
                thread = threading.Thread(
                    target=self._stream_log, args=(step, pod_name(workflow, node)), daemon=True, name=f"log-{step}"
                )
                self._threads[node["id"]] = thread
                thread.start()
        return str(status.get("phase") or "Pending")

    def finish(self) -> None:
        for thread in self._threads.values():
            thread.join(timeout=self.log_timeout)


def follow(
    cluster: Cluster,
    namespace: str,
    workflow: Mapping[str, Any],
    *,
    logs: TextIO | None = None,
    on_event: Callable[[Mapping[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Watch the workflow until it finishes; return its last state. Raises ClusterError when it is lost."""
    follower = Follower(cluster, namespace, logs=logs or sys.stdout)
    name = str(workflow["metadata"]["name"])
    last: dict[str, Any] = dict(workflow)
    phase = follower.on_workflow(last)
    if phase not in FINISHED_PHASES:
        version = workflow["metadata"].get("resourceVersion")
        for kind, obj in cluster.watch_custom(WORKFLOWS, namespace, name, resource_version=version):
            if kind == "DELETED":
                raise ClusterError(f"workflow {namespace}/{name} was deleted while it ran")
            last = obj
            if on_event:
                on_event(last)
            if follower.on_workflow(last) in FINISHED_PHASES:
                break
    # The steps' pods have ended: their log streams end too (bounded wait). A lost workflow does not wait.
    follower.finish()
    return last


def summary(workflow: Mapping[str, Any]) -> str:
    status = workflow.get("status") or {}
    name = workflow["metadata"]["name"]
    phase = status.get("phase", "Unknown")
    message = f": {status['message']}" if status.get("message") else ""
    outputs = []
    for node in (status.get("nodes") or {}).values():
        for parameter in (node.get("outputs") or {}).get("parameters") or []:
            if parameter.get("name") in ("proposal-url", "model-uri") and parameter.get("value"):
                outputs.append(f"{parameter['name']} {parameter['value']}")
    extra = f" ({', '.join(sorted(set(outputs)))})" if outputs else ""
    return f"workflow {name}: {phase}{message}{extra}"
