"""Tests of the offline Kubernetes validator (infra/verify/k8s_schema.py and its parts) and of the CRDs it
validates against: those the pinned charts install, rendered by Helm from charts/*.tgz."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import kubernetes_validate
import pytest

from infra.chart_archives import archive_path
from infra.helm import parse_documents, render_archive
from infra.verify.k8s_schema import (
    KUBERNETES_VERSION,
    SchemaRegistry,
    crd_kinds,
    default_registry,
    validate_object,
    validate_objects,
)

NAMESPACE = "fraud"


# ---- valid objects, one builder per kind (each call returns a fresh copy to mutate)


def canary() -> dict:
    return {
        "apiVersion": "flagger.app/v1beta1",
        "kind": "Canary",
        "metadata": {"name": "fraud-detector", "namespace": NAMESPACE, "labels": {"app": "fraud-detector"}},
        "spec": {
            "provider": "istio",
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "fraud-detector"},
            "progressDeadlineSeconds": 600,
            "service": {"port": 80, "targetPort": 8080, "gateways": ["mesh"], "hosts": ["fraud-detector"]},
            "analysis": {
                "interval": "1m",
                "threshold": 5,
                "maxWeight": 50,
                "stepWeight": 10,
                "metrics": [
                    {
                        "name": "fraud-error-rate",
                        "templateRef": {"name": "fraud-error-rate", "namespace": NAMESPACE},
                        "thresholdRange": {"max": 1},
                        "interval": "1m",
                    }
                ],
                "webhooks": [
                    {
                        "name": "load-test",
                        "type": "rollout",
                        "url": "http://flagger-loadtester.test/",
                        "timeout": "5s",
                        "metadata": {"cmd": "hey -z 1m -q 10 -c 2 http://fraud-detector-canary.fraud/"},
                    }
                ],
            },
        },
    }


def metric_template() -> dict:
    return {
        "apiVersion": "flagger.app/v1beta1",
        "kind": "MetricTemplate",
        "metadata": {"name": "fraud-error-rate", "namespace": NAMESPACE},
        "spec": {
            "provider": {"type": "prometheus", "address": "http://prometheus.monitoring:9090"},
            "query": '100 * sum(rate(fraud_requests_total{code="500"}[{{ interval }}])) '
            "/ sum(rate(fraud_requests_total[{{ interval }}]))",
        },
    }


def rollout_blue_green() -> dict:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": {"name": "fraud-detector", "namespace": NAMESPACE},
        "spec": {
            "replicas": 2,
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": {"app": "fraud-detector"}},
            "template": {
                "metadata": {"labels": {"app": "fraud-detector"}},
                "spec": {
                    "containers": [
                        {
                            "name": "mlserver",
                            "image": "ghcr.io/example/fraud-serving:1.0.0",
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "env": [{"name": "OMP_NUM_THREADS", "value": "1"}],
                            "resources": {"requests": {"cpu": "500m", "memory": "1Gi"}},
                            "readinessProbe": {"httpGet": {"path": "/v2/health/ready", "port": "http"}},
                        }
                    ]
                },
            },
            "strategy": {
                "blueGreen": {
                    "activeService": "fraud-detector-active",
                    "previewService": "fraud-detector-preview",
                    "autoPromotionEnabled": False,
                    "scaleDownDelaySeconds": 30,
                    "prePromotionAnalysis": {
                        "templates": [{"templateName": "fraud-success-rate"}],
                        "args": [{"name": "service-name", "value": "fraud-detector-preview"}],
                    },
                }
            },
        },
    }


def analysis_template() -> dict:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": {"name": "fraud-success-rate", "namespace": NAMESPACE},
        "spec": {
            "args": [{"name": "service-name"}],
            "metrics": [
                {
                    "name": "success-rate",
                    "interval": "1m",
                    "count": 5,
                    "failureLimit": 1,
                    "successCondition": "result[0] >= 0.99",
                    "provider": {
                        "prometheus": {
                            "address": "http://prometheus.monitoring:9090",
                            "query": 'sum(rate(fraud_requests_total{code="200"}[1m])) '
                            "/ sum(rate(fraud_requests_total[1m]))",
                        }
                    },
                }
            ],
        },
    }


def service_monitor() -> dict:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": {"name": "fraud-detector", "namespace": NAMESPACE},
        "spec": {
            "selector": {"matchLabels": {"app": "fraud-detector"}},
            "endpoints": [{"port": "metrics", "path": "/metrics", "interval": "15s"}],
        },
    }


def prometheus_rule() -> dict:
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "fraud-detector", "namespace": NAMESPACE},
        "spec": {
            "groups": [
                {
                    "name": "fraud-serving",
                    "rules": [
                        {
                            "alert": "FraudServingErrors",
                            "expr": 'sum(rate(fraud_requests_total{code="500"}[5m])) > 0',
                            "for": "5m",
                            "labels": {"severity": "page"},
                            "annotations": {"summary": "fraud-detector answers with 500s"},
                        },
                        {"record": "fraud:requests:rate5m", "expr": "sum(rate(fraud_requests_total[5m]))"},
                    ],
                }
            ]
        },
    }


def virtual_service() -> dict:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": "VirtualService",
        "metadata": {"name": "fraud-detector", "namespace": NAMESPACE},
        "spec": {
            "hosts": ["fraud-detector"],
            "http": [
                {
                    "route": [
                        {"destination": {"host": "fraud-detector-primary", "port": {"number": 80}}, "weight": 90},
                        {"destination": {"host": "fraud-detector-canary", "port": {"number": 80}}, "weight": 10},
                    ],
                    "timeout": "5s",
                    "retries": {"attempts": 2, "perTryTimeout": "2s"},
                }
            ],
        },
    }


def argocd_application() -> dict:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Application",
        "metadata": {"name": "fraud-platform", "namespace": "argocd"},
        "spec": {
            "project": "default",
            "source": {
                "repoURL": "https://github.com/example/fraud-platform.git",
                "targetRevision": "main",
                "path": "deploy",
            },
            "destination": {"server": "https://kubernetes.default.svc", "namespace": NAMESPACE},
            "syncPolicy": {"automated": {"prune": True, "selfHeal": True}, "syncOptions": ["CreateNamespace=true"]},
        },
    }


def workflow_template() -> dict:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "WorkflowTemplate",
        "metadata": {"name": "fraud-train", "namespace": NAMESPACE},
        "spec": {
            "entrypoint": "pipeline",
            "arguments": {"parameters": [{"name": "model-version", "value": "7"}]},
            "templates": [
                {
                    "name": "pipeline",
                    "dag": {
                        "tasks": [
                            {
                                "name": "train",
                                "template": "train",
                                "arguments": {
                                    "parameters": [
                                        {"name": "model-version", "value": "{{workflow.parameters.model-version}}"}
                                    ]
                                },
                            },
                            {"name": "evaluate", "template": "evaluate", "depends": "train"},
                        ]
                    },
                },
                {
                    "name": "train",
                    "inputs": {"parameters": [{"name": "model-version"}]},
                    "container": {
                        "image": "ghcr.io/example/fraud-train:1.0.0",
                        "command": ["fraudctl", "train"],
                        "args": ["--model-version", "{{inputs.parameters.model-version}}"],
                        "resources": {"requests": {"cpu": "1", "memory": "2Gi"}},
                    },
                },
                {
                    "name": "evaluate",
                    "script": {"image": "python:3.11-slim", "command": ["python"], "source": "print('ok')"},
                },
            ],
        },
    }


def deployment() -> dict:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "fraud-detector", "namespace": NAMESPACE, "labels": {"app": "fraud-detector"}},
        "spec": {
            "replicas": 2,
            "selector": {"matchLabels": {"app": "fraud-detector"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0}},
            "template": {
                "metadata": {"labels": {"app": "fraud-detector"}},
                "spec": {
                    "containers": [
                        {
                            "name": "mlserver",
                            "image": "ghcr.io/example/fraud-serving:1.0.0",
                            "imagePullPolicy": "IfNotPresent",
                            "ports": [{"name": "http", "containerPort": 8080}],
                            "env": [
                                {
                                    "name": "FEEDBACK_SIGNING_KEY",
                                    "valueFrom": {"secretKeyRef": {"name": "feedback-key", "key": "key"}},
                                }
                            ],
                            "resources": {"requests": {"cpu": "500m"}, "limits": {"memory": "1Gi"}},
                        }
                    ]
                },
            },
        },
    }


def service() -> dict:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "fraud-detector", "namespace": NAMESPACE},
        "spec": {
            "selector": {"app": "fraud-detector"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }


VALID_BUILDERS: dict[str, Callable[[], dict]] = {
    "Canary": canary,
    "MetricTemplate": metric_template,
    "Rollout (blue-green)": rollout_blue_green,
    "AnalysisTemplate": analysis_template,
    "ServiceMonitor": service_monitor,
    "PrometheusRule": prometheus_rule,
    "VirtualService": virtual_service,
    "Application": argocd_application,
    "WorkflowTemplate": workflow_template,
    "Deployment": deployment,
    "Service": service,
}


def errors_at(errors: list[str], path: str) -> list[str]:
    """Errors whose <path> part is exactly `path`."""
    return [e for e in errors if e.split(": ")[1] == path]


# ---- the CRDs: rendered from the pinned charts


def test_crds_come_from_the_pinned_charts() -> None:
    _manifests, crd_files = render_archive(archive_path("flagger", "1.40.0"), {}, name="flagger", namespace="f")
    flagger = {c["metadata"]["name"]: c for text in crd_files.values() for c in parse_documents(text)}
    registry = default_registry()
    assert registry._index()[("flagger.app", "Canary")].crd == flagger["canaries.flagger.app"]
    assert registry.duplicate_crds == []


@pytest.mark.parametrize(
    ("build", "path", "value", "added_in"),
    [
        # Fields of newer upstream CRDs than the pinned charts install (defect 8): the API server of a
        # cluster running the pinned versions prunes them, so they must not validate.
        (canary, ("spec", "service", "headless"), True, "Flagger 1.44"),
        (metric_template, ("spec", "provider", "headers"), {"X-Scope-OrgID": "fraud"}, "Flagger 1.41"),
        (analysis_template, ("spec", "metrics", 0, "consecutiveSuccessLimit"), 2, "Argo Rollouts 1.8"),
    ],
)
def test_fields_newer_than_the_pinned_versions_are_rejected(
    build: Callable[[], dict], path: tuple, value: object, added_in: str
) -> None:
    obj = build()
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    parent[path[-1]] = value
    errors = validate_object(obj)
    assert len(errors) == 1 and "unknown field" in errors[0] and str(path[-1]) in errors[0], (added_in, errors)


PLATFORM_KINDS = {
    ("flagger.app", "Canary"), ("flagger.app", "MetricTemplate"), ("flagger.app", "AlertProvider"),
    ("argoproj.io", "Rollout"), ("argoproj.io", "AnalysisTemplate"), ("argoproj.io", "ClusterAnalysisTemplate"),
    ("argoproj.io", "Application"), ("argoproj.io", "AppProject"), ("argoproj.io", "ApplicationSet"),
    ("argoproj.io", "WorkflowTemplate"), ("argoproj.io", "Workflow"), ("argoproj.io", "CronWorkflow"),
    ("monitoring.coreos.com", "ServiceMonitor"), ("monitoring.coreos.com", "PodMonitor"),
    ("monitoring.coreos.com", "PrometheusRule"),
    ("networking.istio.io", "VirtualService"), ("networking.istio.io", "DestinationRule"),
}


def test_every_kind_the_platform_uses_has_a_served_crd() -> None:
    assert crd_kinds() >= PLATFORM_KINDS
    assert default_registry().served_versions("networking.istio.io", "VirtualService") == ["v1", "v1alpha3", "v1beta1"]


def test_every_cel_rule_of_the_kinds_we_use_is_evaluated_except_transition_rules() -> None:
    from infra.helm import pinned_chart_crds

    registry = SchemaRegistry(pinned_chart_crds())
    for group, kind in registry.crd_kinds():
        for version in registry.served_versions(group, kind):
            registry._custom_kind(group, version, kind)  # loads the kind and compiles its CEL rules
    used = {kind for _, kind in PLATFORM_KINDS}
    skipped = [(where, reason) for where, _, reason in registry.skipped_cel_rules if where.split("/")[0] in used]
    assert {reason for _, reason in skipped} <= {"transition rule (needs oldSelf)"}, skipped
    # Rules outside our subset (Istio's url()/substring() on kinds we never render) are listed, not passed.
    assert {where.split("/")[0] for where, _, reason in registry.skipped_cel_rules if "unsupported" in reason} <= {
        "RequestAuthentication", "ServiceEntry", "WasmPlugin", "WorkloadEntry", "WorkloadGroup"
    }


# ---- accepted objects


@pytest.mark.parametrize("name", list(VALID_BUILDERS))
def test_accepts_a_correct_object(name: str) -> None:
    assert validate_object(VALID_BUILDERS[name]()) == []


def test_accepts_the_whole_set_and_flags_an_object_rendered_twice() -> None:
    objects = [build() for build in VALID_BUILDERS.values()]
    assert validate_objects(objects) == []
    errors = validate_objects([*objects, deployment()])
    assert errors == [
        f"Deployment/fraud-detector: (root): duplicate object: objects #{list(VALID_BUILDERS).index('Deployment')} "
        f"and #{len(objects)} have the same apiVersion group, kind, namespace and name"
    ]


def test_istio_older_served_versions_are_accepted() -> None:
    obj = virtual_service()
    obj["apiVersion"] = "networking.istio.io/v1beta1"
    assert validate_object(obj) == []


# ---- rejected objects: each error names the offending path


def test_rejects_a_typo_in_a_canary_analysis_field() -> None:
    obj = canary()
    obj["spec"]["analysis"]["stepWieght"] = obj["spec"]["analysis"].pop("stepWeight")
    errors = validate_object(obj)
    [typo] = errors_at(errors, "spec.analysis.stepWieght")
    assert typo == "Canary/fraud-detector: spec.analysis.stepWieght: unknown field (did you mean 'stepWeight'?)"
    # Without stepWeight the analysis also no longer says how to advance: Flagger's oneOf catches that.
    [one_of] = errors_at(errors, "spec.analysis")
    assert "set {interval, threshold, stepWeight}" in one_of


def test_rejects_a_wrong_type() -> None:
    obj = canary()
    obj["spec"]["analysis"]["threshold"] = "five"
    assert validate_object(obj) == [
        'Canary/fraud-detector: spec.analysis.threshold: expected number, got string "five"'
    ]


@pytest.mark.parametrize(
    ("build", "remove", "path"),
    [
        (canary, ("spec", "targetRef"), "spec.targetRef"),
        (canary, ("spec", "analysis", "metrics", 0, "name"), "spec.analysis.metrics[0].name"),
        (argocd_application, ("spec", "destination"), "spec.destination"),
        (service_monitor, ("spec", "selector"), "spec.selector"),
        (workflow_template, ("spec",), "spec"),
        (deployment, ("spec", "template", "spec", "containers", 0, "name"), "spec.template.spec.containers[0].name"),
        (deployment, ("metadata", "name"), "metadata.name"),
    ],
)
def test_rejects_a_missing_required_field(build: Callable[[], dict], remove: tuple, path: str) -> None:
    obj = build()
    parent = obj
    for key in remove[:-1]:
        parent = parent[key]
    del parent[remove[-1]]
    errors = validate_object(obj)
    assert any(e.endswith(f": {path}: required field is missing") for e in errors), errors


@pytest.mark.parametrize(
    ("api_version", "kind", "expected"),
    [
        ("flagger.app/v1beta1", "Canery",
         "kind: unknown kind 'Canery' in API group 'flagger.app' (did you mean 'Canary'?)"),
        ("flagger.app/v1beta2", "Canary", "apiVersion: flagger.app/v1beta2 is not defined for Canary; served versions: "
                                          "flagger.app/v1beta1"),
        ("flagger.io/v1beta1", "Canary",
         "apiVersion: no built-in API group and no CRD in the pinned charts for 'flagger.io'"),
        ("apps/v1", "Deploymnet", "kind: unknown kind 'Deploymnet' in built-in API group 'apps'"),
        ("extensions/v1beta1", "Deployment", "apiVersion: no built-in API group and no CRD"),
        ("apps/v1beta2", "Deployment", "apiVersion: apps/v1beta2 Deployment does not exist in Kubernetes"),
        ("policy/v1beta1", "PodDisruptionBudget", "available: policy/v1"),
    ],
)
def test_rejects_an_unknown_kind_or_api_version(api_version: str, kind: str, expected: str) -> None:
    obj = {"apiVersion": api_version, "kind": kind, "metadata": {"name": "fraud-detector"}, "spec": {}}
    [error] = validate_object(obj)
    assert error.startswith(f"{kind}/fraud-detector: ") and expected in error, error


@pytest.mark.parametrize(
    ("build", "metadata_change", "path", "expected"),
    [
        (canary, {"name": "Fraud_Detector"}, "metadata.name", "not a valid DNS-1123 subdomain"),
        (deployment, {"name": "fraud-" + "x" * 250}, "metadata.name", "not a valid DNS-1123 subdomain"),
        (service, {"name": "9-fraud"}, "metadata.name", "not a valid DNS-1035 label"),
        (service, {"name": "fraud.detector"}, "metadata.name", "not a valid DNS-1035 label"),
        (canary, {"namespace": "Fraud"}, "metadata.namespace", "not a valid DNS-1123 label"),
        (deployment, {"labels": {"app": "-fraud"}}, "metadata.labels.app", "invalid value '-fraud'"),
        (deployment, {"labels": {"bad key": "x"}}, 'metadata.labels["bad key"]', "invalid key"),
        (rollout_blue_green, {"annotations": {"Example.com/x": "y"}}, 'metadata.annotations["Example.com/x"]',
         "not a valid DNS-1123 subdomain"),
        (canary, {"label": {"app": "x"}}, "metadata.label", "unknown field (did you mean 'labels'?)"),
        (deployment, {"labels": {"app": 7}}, "metadata.labels.app", "expected string or null, got integer 7"),
    ],
)
def test_rejects_invalid_metadata(build: Callable[[], dict], metadata_change: dict, path: str, expected: str) -> None:
    obj = build()
    obj["metadata"].update(metadata_change)
    errors = validate_object(obj)
    assert len(errors) == 1 and expected in errors_at(errors, path)[0], errors


def test_rbac_names_may_contain_colons_but_not_slashes() -> None:
    role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "fraud:metrics-reader"},
        "rules": [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}],
    }
    assert validate_object(role) == []
    role["metadata"]["name"] = "fraud/metrics"
    assert errors_at(validate_object(role), "metadata.name")


def test_rejects_a_namespace_on_cluster_scoped_kinds() -> None:
    role = {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
            "metadata": {"name": "fraud-reader", "namespace": NAMESPACE}, "rules": []}
    assert validate_object(role) == [
        "ClusterRole/fraud-reader: metadata.namespace: not allowed: ClusterRole is cluster-scoped"
    ]
    template = analysis_template()
    template["kind"] = "ClusterAnalysisTemplate"
    assert validate_object(template) == [
        "ClusterAnalysisTemplate/fraud-success-rate: metadata.namespace: not allowed: "
        "ClusterAnalysisTemplate is cluster-scoped"
    ]


def test_rejects_an_unknown_field_in_a_deployment_container() -> None:
    obj = deployment()
    obj["spec"]["template"]["spec"]["containers"][0]["imagePullPolcy"] = "Always"
    assert validate_object(obj) == [
        "Deployment/fraud-detector: spec.template.spec.containers[0].imagePullPolcy: unknown field "
        "(did you mean 'imagePullPolicy'?)"
    ]


def test_unknown_field_without_a_close_match_lists_the_known_fields() -> None:
    obj = service_monitor()
    obj["spec"]["endpoints"][0]["scrapeEvery"] = "15s"
    [error] = validate_object(obj)
    assert error.startswith("ServiceMonitor/fraud-detector: spec.endpoints[0].scrapeEvery: unknown field "
                            "'scrapeEvery'; known fields: ")
    assert "interval" in error


def test_rejects_fields_in_an_object_whose_schema_has_none() -> None:
    # A Go struct with no fields (e.g. Argo's `archive.none`) is an object without properties: the API
    # server would prune anything in it.
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "archives.example.io"},
        "spec": {
            "group": "example.io",
            "names": {"kind": "Archive", "plural": "archives"},
            "scope": "Namespaced",
            "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                "type": "object",
                "properties": {"spec": {"type": "object", "properties": {"none": {"type": "object"}}}},
            }}}],
        },
    }
    obj = {"apiVersion": "example.io/v1", "kind": "Archive", "metadata": {"name": "a", "namespace": NAMESPACE},
           "spec": {"none": {"compress": False}}}
    assert SchemaRegistry([crd]).validate_object(obj) == [
        "Archive/a: spec.none.compress: unknown field 'compress': this object takes no fields"
    ]


def test_workflow_templates_are_checked_as_the_pinned_chart_installs_them() -> None:
    # argo-workflows 0.45.4 installs its "minimal" CRDs (templates/crds/): `spec` is kept as it is, so
    # the API server checks only that there is one. The workflow controller validates the rest.
    obj = workflow_template()
    obj["spec"]["templates"][0]["dag"]["tasks"][1]["dependencies"] = ["train"]
    assert validate_object(obj) == []
    del obj["spec"]
    assert validate_object(obj) == ["WorkflowTemplate/fraud-train: spec: required field is missing"]


@pytest.mark.parametrize(
    ("build", "where", "path", "expected"),
    [
        (canary, ("spec", "service", "targetPort"), "spec.service.targetPort",
         "expected integer or string, got array [8080]"),
        (deployment, ("spec", "strategy", "rollingUpdate", "maxSurge"), "spec.strategy.rollingUpdate.maxSurge",
         "expected string or integer, got array [8080]"),
        (analysis_template, ("spec", "metrics", 0, "count"), "spec.metrics[0].count",
         "expected integer or string, got array [8080]"),
    ],
)
def test_rejects_a_list_in_an_int_or_string_field(
    build: Callable[[], dict], where: tuple, path: str, expected: str
) -> None:
    obj = build()
    parent = obj
    for key in where[:-1]:
        parent = parent[key]
    parent[where[-1]] = [8080]
    errors = validate_object(obj)
    assert len(errors) == 1 and errors_at(errors, path)[0].endswith(expected), errors


def test_int_or_string_accepts_both() -> None:
    for value in (8080, "http"):
        obj = canary()
        obj["spec"]["service"]["targetPort"] = value
        assert validate_object(obj) == []


def test_rejects_null_in_a_field_that_is_not_nullable() -> None:
    obj = canary()
    obj["spec"]["analysis"]["maxWeight"] = None
    assert validate_object(obj) == [
        "Canary/fraud-detector: spec.analysis.maxWeight: null is not allowed here (expected number; the field is "
        "not nullable)"
    ]


def test_rejects_an_enum_violation_and_a_pattern_violation() -> None:
    obj = metric_template()
    obj["spec"]["provider"]["type"] = "prometeus"
    assert '"prometeus" is not one of: ' in validate_object(obj)[0]
    obj = canary()
    obj["spec"]["analysis"]["interval"] = "one minute"
    [error] = validate_object(obj)
    assert '"one minute" does not match the pattern ^[0-9]+(m|s)' in errors_at([error], "spec.analysis.interval")[0]
    # Flagger 1.40's Canary takes any provider string (no enum at the pinned version).
    obj = canary()
    obj["spec"]["provider"] = "istiio"
    assert validate_object(obj) == []


def test_rejects_int32_overflow_and_non_integral_integers() -> None:
    obj = rollout_blue_green()
    obj["spec"]["replicas"] = 2**31
    assert validate_object(obj) == ["Rollout/fraud-detector: spec.replicas: 2147483648 is not a valid int32"]
    obj = deployment()
    obj["spec"]["replicas"] = 2.0
    assert validate_object(obj) == [
        "Deployment/fraud-detector: spec.replicas: expected integer or null, got number 2.0"
    ]


def test_rejects_an_unknown_top_level_field_of_a_custom_resource() -> None:
    obj = metric_template()
    obj["spce"] = obj.pop("spec")
    errors = validate_object(obj)
    assert "MetricTemplate/fraud-error-rate: spce: unknown field (did you mean 'spec'?)" in errors


def test_rejects_duplicate_keys_in_a_list_map_after_defaulting() -> None:
    obj = prometheus_rule()
    obj["spec"]["groups"].append(copy.deepcopy(obj["spec"]["groups"][0]))
    [error] = validate_object(obj)
    assert error.startswith("PrometheusRule/fraud-detector: spec.groups[1]: duplicate entry (name='fraud-serving')")
    # `protocol` defaults to TCP, so these two ports collide on (containerPort, protocol).
    obj = rollout_blue_green()
    obj["spec"]["template"]["spec"]["containers"][0]["ports"] = [
        {"containerPort": 8080}, {"containerPort": 8080, "protocol": "TCP", "name": "again"}
    ]
    [error] = validate_object(obj)
    assert "spec.template.spec.containers[0].ports[1]: duplicate entry (containerPort=8080, protocol='TCP')" in error


# ---- CEL rules (x-kubernetes-validations)


@pytest.mark.parametrize(
    ("timeout", "expected"),
    [
        ("500us", "must be a valid duration greater than 1ms"),
        ("5 seconds", "failed to evaluate: invalid duration '5 seconds'"),
    ],
)
def test_cel_rejects_a_bad_istio_duration(timeout: str, expected: str) -> None:
    obj = virtual_service()
    obj["spec"]["http"][0]["timeout"] = timeout
    [error] = validate_object(obj)
    assert error.startswith("VirtualService/fraud-detector: spec.http[0].timeout: ") and expected in error


def test_cel_sees_defaulted_values() -> None:
    # Flagger: a mirror backendRef defaults to kind Service in the core group, and then needs a port.
    obj = canary()
    obj["spec"]["service"]["mirror"] = [{"backendRef": {"name": "fraud-shadow"}}]
    [error] = validate_object(obj)
    assert error.startswith("Canary/fraud-detector: spec.service.mirror[0].backendRef: Must have port for Service")
    obj["spec"]["service"]["mirror"][0]["backendRef"]["port"] = 8080
    assert validate_object(obj) == []


@pytest.mark.parametrize(
    ("rule", "value", "expected"),
    [
        # CEL's || and && absorb an error when the other side decides the result.
        ("self.missing > 1 || has(self.a)", {"a": 1}, True),
        ("has(self.a) && self.missing > 1", {}, False),
        ("self.items.exists_one(i, i.startsWith('x'))", {"items": ["xa", "b", "c"]}, True),
        ("self.items.exists_one(i, i.startsWith('x'))", {"items": ["xa", "xb"]}, False),
        ("size(self.name) <= 5 && self.name.matches('^[a-z]+$') && !self.name.contains('-')", {"name": "abc"}, True),
        ("self.all(k, k.size() != 0)", {"": 1}, False),
        ("self.n % 3 == 1 && -self.n / 2 == -3 && 'a' + 'b' == 'ab' && 7 in [1, 7]", {"n": 7}, True),
        ("duration(self.d) > duration('1h30m') ? 1 : 0", {"d": "5400.5s"}, 1),
    ],
)
def test_cel_subset_semantics(rule: str, value: dict, expected: object) -> None:
    from infra.verify.cel import compile_rule, evaluate

    assert evaluate(compile_rule(rule), {"self": value}) == expected


def test_cel_errors_that_nothing_absorbs_are_reported() -> None:
    from infra.verify.cel import CelEvalError, compile_rule, evaluate

    with pytest.raises(CelEvalError, match="no such key: missing"):
        evaluate(compile_rule("self.missing > 1 || false"), {"self": {}})


# ---- non-JSON input


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (math.nan, "spec.replicas: nan is not representable in JSON"),
        (object(), "spec.replicas: value of Python type object is not JSON data"),
        ({1: "one"}, "spec.replicas: map key 1 is a int, not a string"),
    ],
)
def test_rejects_values_that_are_not_json(value: object, expected: str) -> None:
    obj = deployment()
    obj["spec"]["replicas"] = value
    [error] = validate_object(obj)
    assert error.startswith(f"Deployment/fraud-detector: {expected}"), error
    assert validate_object(["not", "an", "object"])[0].startswith("<not an object>: (root): expected a mapping")


# ---- built-ins agree with kubernetes_validate itself


@pytest.mark.parametrize("broken", [False, True])
def test_builtin_verdicts_agree_with_kubernetes_validate(broken: bool) -> None:
    for build in (deployment, service):
        obj = build()
        if broken:
            obj["spec"]["selectorr"] = obj["spec"].pop("selector")
        ours = validate_object(obj)
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
            theirs_ok = True
        except kubernetes_validate.ValidationError:
            theirs_ok = False
        assert (ours == []) == theirs_ok == (not broken), ours


# ---- registry behaviour: given CRDs, duplicates and bad configuration


def test_a_registry_validates_against_the_crds_it_is_given() -> None:
    _manifests, crd_files = render_archive(archive_path("flagger", "1.40.0"), {}, name="flagger", namespace="f")
    crds = [c for text in crd_files.values() for c in parse_documents(text)]
    registry = SchemaRegistry([*crds, crds[0]], crd_source="flagger's crds/")
    assert registry.crd_kinds() == {
        ("flagger.app", "Canary"), ("flagger.app", "MetricTemplate"), ("flagger.app", "AlertProvider")
    }
    assert registry.duplicate_crds == [("flagger.app", "Canary")]
    assert registry.validate_object(canary()) == []
    broken = canary()
    broken["spec"]["analysis"]["threshold"] = "five"
    assert registry.validate_object(broken)
    [error] = registry.validate_object(rollout_blue_green())
    assert "no built-in API group and no CRD in flagger's crds/ for 'argoproj.io'" in error


def test_bad_registry_configuration_is_reported() -> None:
    with pytest.raises(ValueError, match=r"expected an apiextensions\.k8s\.io/v1 CustomResourceDefinition"):
        SchemaRegistry([deployment()])
    registry = SchemaRegistry([], kubernetes_version="1.20.0")
    with pytest.raises(ValueError, match=r"does not ship schemas for Kubernetes 1\.20\.0; it ships 1\.25\.0"):
        registry.validate_object(deployment())
