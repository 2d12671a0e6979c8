"""The MLServer inference runtime for the fraud model (``serving.runtime.FraudRuntime``).

Modelled on MLServer's own runtimes (``mlserver_sklearn.SKLearnModel``): ``load`` reads the artifact named
by ``parameters.uri``, ``predict`` answers V2 requests. What it adds:

* strict per-request validation (serving.validation) *before* MLServer's adaptive batching merges
  requests, so a bad request gets its own 4xx and never fails its batch neighbours;
* outputs ``fraud_probability`` (FP64), ``is_fraud`` (BOOL, at the model's stored threshold) and
  ``prediction_id`` (BYTES, signed token, serving.feedback) per row;
* the fraud metrics (serving.metrics) and a ``POST /feedback`` custom handler;
* fault injection from ``SIMULATE_ERROR`` (serving.faults).

Requires ``parallel_workers: 0`` (the measured production setting): metrics live in the process registry
and the feedback seen-set in process memory.
"""

from __future__ import annotations

import asyncio
import os
import time
import warnings
from typing import Any

import numpy as np
from fastapi import Request
from mlserver.errors import MLServerError
from mlserver.handlers import custom_handler
from mlserver.logging import logger
from mlserver.model import MLModel
from mlserver.types import (
    Datatype,
    InferenceRequest,
    InferenceResponse,
    MetadataModelResponse,
    MetadataTensor,
    RequestInput,
    ResponseOutput,
    TensorData,
)
from mlserver.utils import get_model_uri
from starlette.responses import JSONResponse

from serving.faults import FaultInjector
from serving.feedback import (
    DEFAULT_SEEN_CAPACITY,
    DEFAULT_TOKEN_TTL_SECONDS,
    FeedbackLedger,
    FeedbackRejected,
    PredictionSigner,
    parse_feedback_body,
)
from serving.metrics import ServingMetrics
from serving.protocol import (
    DEFAULT_MAX_ROWS,
    FEEDBACK_PATH,
    OUTPUT_IS_FRAUD,
    OUTPUT_PREDICTION_ID,
    OUTPUT_PROBABILITY,
    is_json_content_type,
)
from serving.validation import features_from_request, requested_outputs

# Attribute under which mlserver.batching.load_batching stores the model's AdaptiveBatcher (mlserver 1.7.x).
_BATCHER_ATTR = "__adaptive_batching__"
_BATCH_INPUT = "rows"
_SKLEARN_NAMES_WARNING = "X does not have valid feature names"


class RuntimeConfigError(MLServerError):
    def __init__(self, message: str) -> None:
        super().__init__(message, 500)


class FraudScorer:
    """P(fraud) for a float64 matrix whose columns follow the model's feature order.

    The compiled ensemble (model/compiled.py, shipped in the artifact) is used when it loads and agrees
    with scikit-learn on a probe batch; otherwise scikit-learn scores, and ``fallback_reason`` (logged)
    says why. On the scikit-learn path, pipelines fitted on DataFrames accept the same values as a plain
    array at a third of the cost; that shortcut is taken only when it gives identical scores on the
    probe batch, otherwise rows go through a DataFrame exactly as in FraudModel.fraud_probability.
    """

    def __init__(self, model: Any, corrupt: bool = False, *, compiled: bool = True) -> None:
        from model.compiled import CompileError, load_compiled, probe_rows

        self.model = model
        self.corrupt = corrupt
        self.columns = list(model.feature_names)
        self.fallback_reason: str | None = None
        self._compiled = None
        if compiled:
            try:
                self._compiled = load_compiled(
                    model.compiled_info, model.compiled_onnx, model.estimator, self.columns, model.threshold
                )
            except CompileError as exc:
                self.fallback_reason = str(exc)
        else:
            self.fallback_reason = "compiled scoring switched off"
        self.array_path = False
        if self._compiled is None:
            probe = probe_rows(self.columns, rows=64)
            reference = np.asarray(self._frame_scores(probe), dtype=np.float64)
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=_SKLEARN_NAMES_WARNING)
                    direct = np.asarray(model.estimator.predict_proba(probe)[:, 1], dtype=np.float64)
                self.array_path = direct.shape == reference.shape and bool(
                    np.allclose(direct, reference, rtol=0.0, atol=1e-12)
                )
            except Exception as exc:  # any failure just means the DataFrame path is the safe one
                logger.info(f"fraud runtime: scikit-learn scores through DataFrames ({type(exc).__name__}: {exc})")
            if self.array_path:
                # Values are passed in the fitted column order (checked above), so the warning is noise.
                warnings.filterwarnings("ignore", message=_SKLEARN_NAMES_WARNING, category=UserWarning)

    @property
    def path(self) -> str:
        if self._compiled is not None:
            return f"compiled ensemble ({self._compiled.backend})"
        return "scikit-learn, numpy arrays" if self.array_path else "scikit-learn, DataFrames"

    def _frame_scores(self, matrix: np.ndarray) -> Any:
        import pandas as pd

        return self.model.fraud_probability(pd.DataFrame(matrix, columns=self.columns))

    def probabilities(self, matrix: np.ndarray) -> np.ndarray:
        if self._compiled is not None:
            scores = self._compiled.probabilities(matrix)
        elif self.array_path:
            scores = np.asarray(self.model.estimator.predict_proba(matrix)[:, 1], dtype=np.float64)
        else:
            scores = np.asarray(self._frame_scores(matrix), dtype=np.float64)
        return FaultInjector.corrupt(scores) if self.corrupt else scores


def _extra_settings(extra: dict[str, Any] | None) -> dict[str, Any]:
    defaults: dict[str, Any] = {
        "max_rows": DEFAULT_MAX_ROWS,
        "feedback_ttl_seconds": DEFAULT_TOKEN_TTL_SECONDS,
        "feedback_seen_capacity": DEFAULT_SEEN_CAPACITY,
    }
    extra = dict(extra or {})
    unknown = sorted(set(extra) - set(defaults))
    if unknown:
        raise RuntimeConfigError(
            f"model-settings parameters.extra: unknown key(s) {', '.join(unknown)}; "
            f"allowed: {', '.join(defaults)}"
        )
    merged = {**defaults, **extra}
    for key in ("max_rows", "feedback_seen_capacity"):
        if type(merged[key]) is not int or merged[key] < 1:
            raise RuntimeConfigError(f"parameters.extra.{key}: must be a positive integer, got {merged[key]!r}")
    ttl = merged["feedback_ttl_seconds"]
    if not isinstance(ttl, (int, float)) or isinstance(ttl, bool) or not ttl > 0:
        raise RuntimeConfigError(f"parameters.extra.feedback_ttl_seconds: must be a positive number, got {ttl!r}")
    return merged


class FraudRuntime(MLModel):
    """MLServer runtime serving a fraud model saved by model.artifact."""

    async def load(self) -> bool:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            raise RuntimeConfigError(
                "FraudRuntime needs MLServer setting parallel_workers: 0 (metrics and the feedback seen-set "
                "live in the serving process); serving.settings writes it"
            )
        from model.artifact import load_fraud_model

        extra = _extra_settings(self.settings.parameters.extra if self.settings.parameters else None)
        self._faults = FaultInjector.from_environment()
        signer = PredictionSigner.from_environment()
        model_uri = await get_model_uri(self.settings)
        model = await asyncio.to_thread(load_fraud_model, model_uri)
        self._model = model
        self._features = tuple(model.feature_names)
        self._threshold = float(model.threshold)
        self._max_rows = int(extra["max_rows"])
        self._label = self.version or model.model_version
        if not 1 <= len(self._label.encode("utf-8")) <= 64:
            raise RuntimeConfigError(f"model version label {self._label!r}: must be 1..64 bytes (it goes into ids)")
        self._scorer = await asyncio.to_thread(FraudScorer, model, self._faults.corrupts_scores)
        self._signer = signer
        self._ledger = FeedbackLedger(
            signer, ttl_seconds=float(extra["feedback_ttl_seconds"]), capacity=int(extra["feedback_seen_capacity"])
        )
        self._metrics = ServingMetrics(self._label)
        self.inputs = [MetadataTensor(name=name, datatype="FP64", shape=[-1]) for name in self._features]
        self.outputs = [
            MetadataTensor(name=OUTPUT_PROBABILITY, datatype="FP64", shape=[-1]),
            MetadataTensor(name=OUTPUT_IS_FRAUD, datatype="BOOL", shape=[-1]),
            MetadataTensor(name=OUTPUT_PREDICTION_ID, datatype="BYTES", shape=[-1]),
        ]
        if self.settings.max_batch_size > 1 and self.settings.max_batch_time > 0:
            batcher = getattr(self, _BATCHER_ATTR, None)
            if getattr(self, "_enqueue_batch", None) is None or batcher is None:
                raise RuntimeConfigError(
                    "adaptive batching is configured but MLServer did not install its batcher as expected "
                    "(FraudRuntime is written against mlserver 1.7.1)"
                )
        if self._scorer.fallback_reason:
            logger.warning(f"fraud runtime: scoring with scikit-learn, not compiled: {self._scorer.fallback_reason}")
        logger.info(
            f"fraud runtime: model {model_uri} version label {self._label!r}, threshold {self._threshold:.4f}, "
            f"{len(self._features)} features, scoring via {self._scorer.path}, max {self._max_rows} rows/request"
        )
        if self._faults.active:
            logger.warning(f"fraud runtime: FAULT INJECTION ACTIVE: {self._faults.describe()}")
        return True

    async def metadata(self) -> MetadataModelResponse:
        """MLServer's model metadata, listing the version this server answers as (``versions`` is empty
        otherwise, while every response names a ``model_version``)."""
        answer = await super().metadata()
        label = getattr(self, "_label", None) or self.version
        if label and label not in answer.versions:
            answer.versions = [*answer.versions, label]
        return answer

    def __setattr__(self, name: str, value: Any) -> None:
        # mlserver.batching.load_batching replaces `predict` with a wrapper that queues the request and
        # lets the AdaptiveBatcher call its saved predict on merged requests. Validation must happen per
        # request before that queue, so the wrapper becomes the back end of our `predict` and the batcher
        # scores already-validated rows.
        if name == "predict" and _BATCHER_ATTR in self.__dict__:
            self.__dict__[_BATCHER_ATTR]._predict_fn = self._predict_merged
            object.__setattr__(self, "_enqueue_batch", value)
            return
        super().__setattr__(name, value)

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        started = time.perf_counter()
        status = 500
        try:
            matrix = features_from_request(payload, self._features, self._max_rows)
            wanted = requested_outputs(payload)
            if self._faults.should_fail():
                raise MLServerError(f"simulated failure ({self._faults.describe()})", 500)
            enqueue = self.__dict__.get("_enqueue_batch")
            if enqueue is not None:
                response = await enqueue(self._as_batch_request(matrix))
                response.model_name = self.name
                response.model_version = self._label
            else:
                response = self._respond(matrix)
            if wanted:
                by_name = {output.name: output for output in response.outputs}
                response.outputs = [by_name[name] for name in wanted]
            status = 200
            return response
        except MLServerError as exc:
            status = exc.status_code
            raise
        except Exception as exc:
            logger.exception("fraud runtime: inference failed")
            raise MLServerError(f"inference failed: {type(exc).__name__}: {exc}", 500) from exc
        finally:
            self._metrics.observe_request(status, time.perf_counter() - started)

    def _as_batch_request(self, matrix: np.ndarray) -> InferenceRequest:
        rows_input = RequestInput.model_construct(
            name=_BATCH_INPUT,
            shape=list(matrix.shape),
            datatype=Datatype.FP64.value,
            parameters=None,
            data=TensorData.model_construct(root=matrix.ravel().tolist()),
        )
        return InferenceRequest.model_construct(inputs=[rows_input], outputs=None, parameters=None, id=None)

    async def _predict_merged(self, payload: InferenceRequest) -> InferenceResponse:
        """What the AdaptiveBatcher calls with several validated requests merged into one."""
        rows_input = payload.inputs[0]
        data = rows_input.data.root if hasattr(rows_input.data, "root") else rows_input.data
        matrix = np.asarray(data, dtype=np.float64).reshape(-1, len(self._features))
        return self._respond(matrix)

    def _respond(self, matrix: np.ndarray) -> InferenceResponse:
        scores = self._scorer.probabilities(matrix)
        flags = scores >= self._threshold
        decisions = flags.tolist()
        score_list = scores.tolist()
        tokens = self._signer.issue(self._label, decisions)
        self._metrics.observe_scores(score_list, int(flags.sum()), len(score_list))
        rows = [len(score_list)]
        # Built without re-validation: every value above has the declared type already (the response is
        # serialized by MLServer's REST and gRPC layers exactly as a validated one).
        return InferenceResponse.model_construct(
            model_name=self.name,
            model_version=self._label,
            outputs=[
                _output(OUTPUT_PROBABILITY, rows, Datatype.FP64, score_list),
                _output(OUTPUT_IS_FRAUD, rows, Datatype.BOOL, decisions),
                _output(OUTPUT_PREDICTION_ID, rows, Datatype.BYTES, tokens),
            ],
        )

    @custom_handler(rest_path=FEEDBACK_PATH, rest_method="POST")
    async def feedback(self, request: Request) -> JSONResponse:
        """``{"prediction_id": ..., "label": 0|1}`` or a list: counted entirely, or refused with 4xx."""
        if not self.ready or not hasattr(self, "_ledger"):
            return JSONResponse({"error": "model is still loading; retry shortly"}, status_code=503)
        content_type = request.headers.get("content-type", "")
        if not is_json_content_type(content_type):
            self._metrics.observe_rejected("malformed")
            return JSONResponse(
                {"error": f"unsupported Content-Type {content_type!r}: send feedback as application/json"},
                status_code=415,
            )
        try:
            counted = self._ledger.apply(parse_feedback_body(await request.body()))
        except FeedbackRejected as exc:
            for rejection in exc.rejections:
                self._metrics.observe_rejected(rejection.reason)
            return JSONResponse(exc.body(), status_code=exc.status_code)
        for item in counted:
            self._metrics.observe_feedback(item.model_version, item.outcome)
        return JSONResponse({"accepted": len(counted), "results": [item.as_dict() for item in counted]})


def _output(name: str, shape: list[int], datatype: Datatype, data: list[Any]) -> ResponseOutput:
    # MLServer's types keep enum values (use_enum_values): its raw gRPC packing compares with "BYTES".
    return ResponseOutput.model_construct(
        name=name, shape=shape, datatype=datatype.value, data=TensorData.model_construct(root=data)
    )
