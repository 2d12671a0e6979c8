"""Blue-green rollout (Argo Rollouts): the Rollout and its AnalysisTemplates (system checks on the new pods,
smoke test, the decision service's verdict), before and after the switch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from infra import charts, k8s, waves
from infra.config import AnalysisSettings, Region
from infra.service.names import APP, NS, PREVIEW, REPLAY_URL, meta, object_labels
from infra.service.replay import replay_parameters, replay_seconds
from rollout import analysis

ARGO_WAVE = "fraud-rollout-wave"
ARGO_SMOKE = "fraud-smoke"
ARGO_DECISION = "fraud-decision"
PHASE_ARG = "phase"


def analysis_looks(settings: AnalysisSettings) -> int:
    """Measurements of one analysis run (before, and again after, the switch): the analysis' horizon, where
    every check is forced to pass or fail (rollout/decision.py)."""
    return settings.horizon


def argo_wave_template(upstream: Sequence[Region]) -> k8s.Manifest | None:
    """Blue-green waves: pre-promotion waits until the ``upstream`` regions (the previous wave) promoted
    (None: the first wave)."""
    metric = waves.argo_wave_metric(upstream)
    if metric is None:
        return None
    return _analysis_template(ARGO_WAVE, {"metrics": [metric]})


def _analysis_template(name: str, spec: dict[str, Any]) -> k8s.Manifest:
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "AnalysisTemplate",
        "metadata": {"name": name, "namespace": NS, "labels": object_labels("analysis")},
        "spec": spec,
    }


def _args(name: str) -> str:
    return f"{{{{args.{name}}}}}"


def argo_templates(settings: AnalysisSettings, model_name: str) -> list[k8s.Manifest]:
    """AnalysisTemplates: the system checks (before and after the switch), the smoke test and the decision
    service's verdict.

    The decision metric measures once per interval (each measurement replays one interval to both sides
    and takes a look) for the plan's horizon, so its last measurement is the analysis' final, forced
    pass or fail. failureLimit 0: a decisive failure fails the run at once, which aborts the Rollout
    (before the switch: the preview is dropped; after it: the active Service returns to the stable).
    """
    looks = analysis_looks(settings)
    interval = analysis.prometheus_duration(settings.interval_seconds)
    labels = object_labels("analysis")
    hashes = analysis.argo_hash_args(NS)
    checks = [
        analysis.argo_analysis_template(
            settings, NS, charts.PROMETHEUS_URL, labels, looks=looks, phase=phase, initial_delay=interval
        )
        for phase in analysis.ARGO_PHASES
    ]
    smoke_body = {
        "namespace": _args("namespace"),
        "candidateHash": _args(analysis.ARGO_CANDIDATE_ARG),
        "model": model_name,
    }
    smoke = analysis.argo_web_metric(
        "smoke-test",
        f"{REPLAY_URL}{analysis.argo_path('smoke')}",
        smoke_body,
        json_path=analysis.ARGO_SMOKE_JSON_PATH,
        success=analysis.ARGO_SMOKE_CONDITION,
        failure=None,
        timeout_seconds=60,
        count=1,
        failureLimit=0,
    )
    decision_body = {
        "rollout": APP,
        "namespace": _args("namespace"),
        PHASE_ARG: _args(PHASE_ARG),
        "candidateHash": _args(analysis.ARGO_CANDIDATE_ARG),
        "stableHash": _args(analysis.ARGO_STABLE_ARG),
        # The service pauses (Inconclusive) rather than let a last undecided measurement count as a success.
        "measurements": str(looks),
        **replay_parameters(settings, model_name),
    }
    decision = analysis.argo_web_metric(
        "decision",
        f"{REPLAY_URL}{analysis.argo_path('decision')}",
        decision_body,
        json_path=analysis.ARGO_VERDICT_JSON_PATH,
        success=analysis.ARGO_SUCCESS_CONDITION,
        failure=analysis.ARGO_FAILURE_CONDITION,
        timeout_seconds=replay_seconds(settings) + 15,
        interval=interval,
        count=looks,
        failureLimit=0,
        inconclusiveLimit=0,
    )
    return [
        *checks,
        _analysis_template(ARGO_SMOKE, {"args": hashes, "metrics": [smoke]}),
        _analysis_template(ARGO_DECISION, {"args": [*hashes, {"name": PHASE_ARG}], "metrics": [decision]}),
    ]


def rollout(settings: AnalysisSettings, pod: k8s.Manifest, upstream: Sequence[Region] = ()) -> k8s.Manifest:
    """The Rollout running ``pod`` (workload.pod_template), promoted by the analysis ``settings`` after the
    ``upstream`` regions (the previous rollout wave) promoted."""
    wave = [{"templateName": ARGO_WAVE}] if argo_wave_template(upstream) is not None else []
    hashes = analysis.argo_rollout_hash_args()
    return {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "metadata": meta(APP),
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": APP}},
            "revisionHistoryLimit": 5,
            "progressDeadlineSeconds": 900,
            # Abort (scale the preview down, keep the active version) when a deadline is missed too.
            "progressDeadlineAbort": True,
            "template": pod,
            "strategy": {
                "blueGreen": {
                    "activeService": APP,
                    "previewService": PREVIEW,
                    "autoPromotionEnabled": settings.auto_promotion,
                    # The previous version stays warm through post-promotion analysis without any delay
                    # setting: until that analysis succeeds it is still the stable ReplicaSet, which the
                    # controller keeps at full scale (argoproj/argo-rollouts v1.7.2 rollout/bluegreen.go,
                    # reconcileBlueGreenStableReplicaSet; rollout/sync.go, shouldFullPromote), and an abort
                    # points the active Service back at it at once (rollout/service.go,
                    # reconcileActiveService). scaleDownDelaySeconds only starts once it stopped being stable.
                    "scaleDownDelaySeconds": settings.scale_down_delay_seconds,
                    # After an abort the new pods linger this long for inspection (rollout/replicaset.go,
                    # reconcileNewReplicaSet); traffic has left them already.
                    "abortScaleDownDelaySeconds": settings.scale_down_delay_seconds,
                    "prePromotionAnalysis": {
                        "templates": [
                            *wave,
                            {"templateName": ARGO_SMOKE},
                            {"templateName": ARGO_DECISION},
                            {"templateName": analysis.ARGO_TEMPLATE},
                        ],
                        "args": [*hashes, {"name": PHASE_ARG, "value": "pre"}],
                    },
                    "postPromotionAnalysis": {
                        "templates": [
                            {"templateName": ARGO_DECISION},
                            {"templateName": analysis.ARGO_POST_TEMPLATE},
                        ],
                        "args": [*hashes, {"name": PHASE_ARG, "value": "post"}],
                    },
                }
            },
        },
    }
