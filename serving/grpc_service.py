"""gRPC answers with the same meaning as the REST ones (docs/CONTRACTS.md, "Statuses").

MLServer's gRPC servicer (mlserver 1.7.1) maps only 400/404/422/500 to gRPC codes and everything else to
UNKNOWN, turns any other exception into INTERNAL, and cannot send a ``BYTES`` output given as ``str``
(``prediction_id``) in typed contents. Undecodable request bytes never reach it: the generated handler's
deserializer raises inside grpc. This module keeps MLServer's servicer and registration and changes only
that: ``ModelInfer`` maps every MLServerError status to its gRPC code (413 -> RESOURCE_EXHAUSTED, 404 ->
NOT_FOUND, client errors -> INVALID_ARGUMENT), a request that cannot be converted is INVALID_ARGUMENT, and
``BYTES`` outputs are encoded; every unary method answers bytes that are not its protobuf message with
INVALID_ARGUMENT. :func:`install` swaps these into ``mlserver.grpc.server`` before MLServer builds its
gRPC server (MLServer has no hook for servicers).
"""

from __future__ import annotations

from typing import Any

import grpc
from mlserver.errors import MLServerError
from mlserver.grpc import dataplane_pb2_grpc
from mlserver.grpc.converters import ModelInferResponseConverter
from mlserver.grpc.servicers import InferenceServicer
from mlserver.logging import logger
from mlserver.types import Datatype, InferenceResponse, ResponseOutput, TensorData

# HTTP status of an MLServerError -> gRPC code (the REST answer's meaning, per gRPC's status code guide).
GRPC_CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    409: grpc.StatusCode.ALREADY_EXISTS,
    410: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    500: grpc.StatusCode.INTERNAL,
    503: grpc.StatusCode.UNAVAILABLE,
}


def grpc_code(http_status: int) -> grpc.StatusCode:
    """The gRPC code meaning what ``http_status`` means on REST (other 4xx: INVALID_ARGUMENT, 5xx: INTERNAL)."""
    if http_status in GRPC_CODES:
        return GRPC_CODES[http_status]
    return grpc.StatusCode.INVALID_ARGUMENT if 400 <= http_status < 500 else grpc.StatusCode.INTERNAL


class FraudInferenceServicer(InferenceServicer):
    """MLServer's servicer with ``ModelInfer`` answering like REST."""

    async def ModelInfer(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        use_raw = self._GetReturnRaw(request)
        try:
            payload = self._InsertHeaders(request, context)
        except Exception as exc:  # the converters raise struct, pydantic and value errors for bad tensors
            message = f"the request cannot be read as a V2 inference request: {type(exc).__name__}: {exc}"
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, message[:2000])
        try:
            result = await self._data_plane.infer(
                payload=payload, name=request.model_name, version=request.model_version or None
            )
        except MLServerError as exc:
            await context.abort(grpc_code(exc.status_code), str(exc))
        except Exception as exc:
            logger.exception("gRPC ModelInfer failed")
            await context.abort(grpc.StatusCode.INTERNAL, f"inference failed: {type(exc).__name__}: {exc}")
        self._SetTrailingMetadata(result, context)
        try:
            return ModelInferResponseConverter.from_types(_bytes_encoded(result), use_raw=use_raw)
        except Exception as exc:
            logger.exception("gRPC ModelInfer: the answer could not be encoded")
            await context.abort(grpc.StatusCode.INTERNAL, f"the answer could not be encoded: {type(exc).__name__}")


def _bytes_encoded(response: InferenceResponse) -> InferenceResponse:
    """BYTES outputs as bytes: the protobuf ``bytes_contents`` field refuses ``str``."""
    outputs = []
    for output in response.outputs:
        data = output.data.root if hasattr(output.data, "root") else output.data
        if output.datatype in (Datatype.BYTES, Datatype.BYTES.value) and any(isinstance(value, str) for value in data):
            output = ResponseOutput.model_construct(
                name=output.name,
                shape=output.shape,
                datatype=output.datatype,
                parameters=output.parameters,
                data=TensorData.model_construct(root=[v.encode() if isinstance(v, str) else v for v in data]),
            )
        outputs.append(output)
    response.outputs = outputs
    return response


class _Undecodable:
    """Stands in for a request whose bytes are not the method's protobuf message."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


def _tolerant(method: str, handler: Any) -> Any:
    """A unary handler whose undecodable requests are answered INVALID_ARGUMENT (grpc says UNKNOWN)."""
    if handler.unary_unary is None:
        return handler
    deserialize, behaviour = handler.request_deserializer, handler.unary_unary

    def safe_deserialize(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception as exc:  # protobuf's DecodeError and friends
            return _Undecodable(f"{type(exc).__name__}: {exc}")

    async def safe_behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
        if isinstance(request, _Undecodable):
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"the request is not a valid inference.{method} protobuf message ({request.reason})",
            )
        return await behaviour(request, context)

    return handler._replace(request_deserializer=safe_deserialize, unary_unary=safe_behaviour)


class _Capture:
    """Receives what the generated registration function adds, so the handlers can be wrapped first."""

    def __init__(self) -> None:
        self.handlers: dict[str, Any] = {}
        self.service = ""

    def add_generic_rpc_handlers(self, generic_handlers: Any) -> None:
        pass  # the same handlers arrive through add_registered_method_handlers

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        self.service, self.handlers = service, handlers


def add_inference_service(servicer: Any, server: Any) -> None:
    """``add_GRPCInferenceServiceServicer_to_server`` with every unary handler made tolerant."""
    capture = _Capture()
    dataplane_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, capture)
    handlers = {name: _tolerant(name, handler) for name, handler in capture.handlers.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(capture.service, handlers),))
    server.add_registered_method_handlers(capture.service, handlers)


def install() -> None:
    """Make MLServer's gRPC server use the servicer and registration above (call before MLServer(...))."""
    import mlserver.grpc.server as grpc_server

    grpc_server.InferenceServicer = FraudInferenceServicer  # type: ignore[misc]
    grpc_server.add_GRPCInferenceServiceServicer_to_server = add_inference_service  # type: ignore[assignment]
