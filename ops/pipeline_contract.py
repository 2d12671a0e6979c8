"""What ``fraudctl pipeline submit`` and the training WorkflowTemplate agree on: the template's name, its
parameters and the ``Workflow`` that runs it.

The template itself is declared by the Pulumi program (infra/pipeline.py), which imports these names from
here; the CLI submits runs of it without the Pulumi SDK.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

TEMPLATE_NAME = "fraud-model-training"
# Where Argo Workflows runs (infra/charts.py NAMESPACES["argoWorkflows"]; a test keeps the two equal).
DEFAULT_NAMESPACE = "argo"
# Workflow parameters: name -> what it is. model-version and the others are what `pipeline submit` sets.
PARAMETERS = {
    "model-version": "the model version label to train and propose (a candidate, not the baseline)",
    "revision": "git revision to build the image from and to propose against",
    "propose": "pull-request or commit",
}
PROPOSE_MODES = ("pull-request", "commit")


def baseline_and_candidates() -> tuple[str, tuple[str, ...]]:
    """The scenario's versions: the first is the baseline the gate compares against, the rest candidates."""
    from model.scenario import MODEL_VERSIONS

    return MODEL_VERSIONS[0], tuple(MODEL_VERSIONS[1:])


def submission(
    model_version: str, *, namespace: str = DEFAULT_NAMESPACE, parameters: Mapping[str, str] | None = None
) -> dict[str, Any]:
    """The Workflow that ``fraudctl pipeline submit`` creates: a run of the template with arguments."""
    values = {"model-version": model_version, **(parameters or {})}
    unknown = sorted(set(values) - set(PARAMETERS))
    if unknown:
        raise ValueError(f"unknown workflow parameter(s) {', '.join(unknown)}; allowed: {', '.join(PARAMETERS)}")
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Workflow",
        "metadata": {
            "generateName": f"{TEMPLATE_NAME}-",
            "namespace": namespace,
            "labels": {
                "app.kubernetes.io/part-of": "fraud-platform",
                "workflows.argoproj.io/workflow-template": TEMPLATE_NAME,
                "fraud-platform/model-version": model_version,
            },
        },
        "spec": {
            "workflowTemplateRef": {"name": TEMPLATE_NAME},
            "arguments": {"parameters": [{"name": k, "value": v} for k, v in values.items()]},
        },
    }
