"""``python -m serving.server <folder>``: ``mlserver start <folder>`` plus a clean answer for every bad request.

This entry point runs exactly what ``mlserver start`` runs (same settings loading, same ``MLServer`` server)
and, before it serves, installs what MLServer 1.7.1 has no setting for (docs/CONTRACTS.md, "Statuses"):

* bodies FastAPI refuses get MLServer's error shape ``{"error": "..."}`` with 400 (malformed or empty JSON,
  nested too deeply), 415 (Content-Type is not JSON) or 422 (valid JSON, not a V2 request), not a generic
  ``{"detail": [...]}`` 422;
* a request body limit (``FRAUD_MAX_BODY_BYTES``, default 8 MiB) answered with 413, enforced on the body
  as sent *and* after ``Content-Encoding: gzip`` is undone, with a bounded decompressor (MLServer inflates
  gzip bodies whole, after any size check); a body that is not the gzip it claims is 400, other encodings 415;
* the Open Inference Protocol binary-data extension (``Inference-Header-Content-Length``, what tritonclient
  and ``mlserver infer -b`` send): binary input tensors are decoded into the JSON request; answers are JSON;
* request headers above 64 KiB answered with 431 (the HTTP parser otherwise buffers any size);
* inference for a model name or version that is not served answered 404 before MLServer's data plane
  makes the name a label of its request metrics (unbounded series from unauthenticated traffic);
* gRPC answers with the REST meaning (serving.grpc_service);
* the model's version label resolved before loading, so ``/v2/models/<name>/versions/<label>/infer``
  works and metadata lists the version; a ``models:/`` URI is downloaded once into a directory removed
  at exit.

The runtime itself also works under plain ``mlserver start`` (without these answers).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
import tempfile
import zlib
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

from serving.protocol import is_json_content_type

MAX_BODY_ENV = "FRAUD_MAX_BODY_BYTES"
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_HEADER_BYTES = 64 * 1024
# The binary-data extension: the JSON part's length; binary tensors follow it in the body.
BINARY_HEADER = b"inference-header-content-length"
_MAX_ERRORS_LISTED = 5
_SHOWN_NAME_CHARS = 64
# Packages of the project whose code runs in the server (the runtime, the model artifact it loads).
PROJECT_LOGGERS = ("fraudctl", "model", "serving")


def _json_response(status: int, message: str) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


async def request_validation_handler(request: Any, exc: Any) -> Any:
    """Clear 4xx for request bodies FastAPI refused before the runtime saw them."""
    content_type = request.headers.get("content-type")
    if content_type and not is_json_content_type(content_type):
        return _json_response(
            415, f"unsupported Content-Type {content_type!r}: send the request body as application/json"
        )
    errors = list(exc.errors())
    for error in errors:
        if error.get("type") == "json_invalid":
            loc = error.get("loc", ())
            where = f" at byte {loc[1]}" if len(loc) > 1 else ""
            reason = (error.get("ctx") or {}).get("error", "invalid JSON")
            return _json_response(400, f"malformed JSON body{where}: {reason}")
    if any(tuple(error.get("loc", ())) == ("body",) and error.get("type") == "missing" for error in errors):
        return _json_response(400, 'empty request body: send a V2 inference request {"inputs": [...]}')
    parts = []
    for error in errors[:_MAX_ERRORS_LISTED]:
        loc = ".".join(str(part) for part in error.get("loc", ())[1:]) or "body"
        parts.append(f"{loc}: {error.get('msg', 'invalid')}")
    more = f" (and {len(errors) - _MAX_ERRORS_LISTED} more)" if len(errors) > _MAX_ERRORS_LISTED else ""
    return _json_response(422, f"not a valid V2 inference request: {'; '.join(parts)}{more}")


class RequestRefused(Exception):
    """A request answered by the guard itself, with this status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class RequestGuard:
    """ASGI middleware in front of MLServer's REST app: body limits (also after gzip), Content-Encoding,
    and the binary-data extension decoded into a plain JSON request."""

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", ())
        encoding = _header(headers, b"content-encoding").strip().lower()
        binary_length = _header(headers, b"inference-header-content-length").strip()
        declared = _header(headers, b"content-length").strip()
        try:
            if encoding not in ("", "identity", "gzip"):
                raise RequestRefused(
                    415, f"unsupported Content-Encoding {encoding!r}: send the body as gzip or unencoded"
                )
            if declared.isdigit() and int(declared) > self.max_body_bytes:
                raise RequestRefused(413, self._too_large())
            if encoding in ("", "identity") and not binary_length and declared.isdigit():
                await self.app(scope, receive, send)  # the server reads exactly Content-Length bytes
                return
            body = await self._read(receive)
            if encoding == "gzip":
                body = gunzip_bounded(body, self.max_body_bytes)
                if len(body) > self.max_body_bytes:
                    raise RequestRefused(413, self._too_large(" after decompression"))
            if binary_length:
                body = decode_binary_request(body, binary_length)
        except RequestRefused as refused:
            await _json_response(refused.status, refused.message)(scope, receive, send)
            return
        dropped = {b"content-encoding", b"content-length", BINARY_HEADER}
        if binary_length:
            dropped.add(b"content-type")
        rewritten = [(name, value) for name, value in headers if name not in dropped]
        rewritten.append((b"content-length", str(len(body)).encode()))
        if binary_length:
            rewritten.append((b"content-type", b"application/json"))
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app({**scope, "headers": rewritten}, replay, send)

    async def _read(self, receive: Any) -> bytes:
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                raise RequestRefused(400, "the client closed the connection before the body was complete")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                raise RequestRefused(413, self._too_large())
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _too_large(self, when: str = "") -> str:
        return f"request body exceeds {self.max_body_bytes} bytes{when}; send fewer rows per request"


def _header(headers: Any, name: bytes) -> str:
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return ""


def gunzip_bounded(data: bytes, limit: int) -> bytes:
    """Undo gzip (one or more members), producing at most ``limit + 1`` bytes however much it would inflate
    to; raise RequestRefused(400) when ``data`` is not complete gzip."""
    if not data:
        raise RequestRefused(400, "Content-Encoding: gzip but the body is empty")
    out: list[bytes] = []
    size = 0
    while data:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        try:
            chunk = inflater.decompress(data, limit + 1 - size)
        except zlib.error as exc:
            raise RequestRefused(400, f"Content-Encoding: gzip but the body is not valid gzip ({exc})") from None
        out.append(chunk)
        size += len(chunk)
        if size > limit:
            break  # the caller answers 413: no more is inflated
        if not inflater.eof:
            raise RequestRefused(400, "Content-Encoding: gzip but the gzip body is truncated")
        data = inflater.unused_data
    return b"".join(out)


def decode_binary_request(body: bytes, header_length: str) -> bytes:
    """The binary-data extension's body as a plain JSON V2 request: each input with
    ``parameters.binary_data_size`` gets its tensor decoded (little-endian, row-major; BYTES as 4-byte
    length-prefixed items) into ``data``. Raise RequestRefused(400) naming what does not add up."""
    from mlserver.raw import unpack

    try:
        split = int(header_length)
    except ValueError:
        split = -1
    if not 0 <= split <= len(body):
        raise RequestRefused(
            400, f"Inference-Header-Content-Length {header_length!r}: must be the JSON part's length, 0..{len(body)}"
        )
    try:
        request = json.loads(body[:split])
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RequestRefused(400, f"binary-data request: the JSON part is not valid JSON ({exc})") from None
    if not isinstance(request, dict) or not isinstance(request.get("inputs"), list):
        raise RequestRefused(422, 'not a valid V2 inference request: the JSON part needs "inputs": [...]')
    offset = split
    for item in request["inputs"]:
        parameters = item.get("parameters") if isinstance(item, dict) else None
        if not isinstance(parameters, dict) or "binary_data_size" not in parameters:
            continue
        size = parameters.pop("binary_data_size")
        name = item.get("name")
        if type(size) is not int or size < 0 or offset + size > len(body):
            raise RequestRefused(
                400, f"input {name!r}: binary_data_size {size!r} does not fit the {len(body) - offset} bytes left"
            )
        raw = body[offset : offset + size]
        offset += size
        try:
            values = unpack(_TensorSpec(item), raw)
        except Exception as exc:  # struct.error, bad shape or datatype
            raise RequestRefused(
                400,
                f"input {name!r}: {size} bytes of binary data do not hold a {item.get('datatype')} tensor of "
                f"shape {item.get('shape')} ({exc})",
            ) from None
        item["data"] = [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in values]
        if not parameters:
            item.pop("parameters")
    if offset != len(body):
        raise RequestRefused(400, f"binary-data request: {len(body) - offset} bytes after the last input's tensor")
    return json.dumps(request).encode()


class _TensorSpec:
    """What mlserver.raw.unpack reads from a tensor description."""

    def __init__(self, item: dict[str, Any]) -> None:
        from mlserver.types import Datatype

        self.datatype = Datatype(item.get("datatype"))
        self.shape = [int(d) for d in item.get("shape", [])]


def max_body_bytes_from_environment(env: dict[str, str] | None = None) -> int:
    env = dict(os.environ) if env is None else env
    raw = env.get(MAX_BODY_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_BODY_BYTES
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1024:
        raise ValueError(f"{MAX_BODY_ENV}={raw!r}: must be an integer number of bytes >= 1024")
    return value


def install_http_guards(app: Any, max_body_bytes: int) -> None:
    """Add the clear-4xx handler and the request guard to MLServer's REST app (before it starts serving)."""
    from fastapi.exceptions import RequestValidationError

    app.add_exception_handler(RequestValidationError, request_validation_handler)
    app.add_middleware(RequestGuard, max_body_bytes=max_body_bytes)


def bounded_header_protocol(max_header_bytes: int = MAX_HEADER_BYTES) -> type:
    """uvicorn's httptools protocol answering 431 when a request's line and headers exceed the limit.

    The status line and header fields are counted as the parser delivers them; a head still incomplete
    after four times the limit (one never-ending header) is refused too, so nothing buffers without bound.
    After the 431 the connection reads and drops what the client is still sending, then closes: closing
    with unread data would reset the connection before the client reads the answer.
    """
    import httptools
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class BoundedHeadersProtocol(HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._head_bytes = 0
            self._head_open = False
            self._head_too_large = False
            self._refused = False

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_bytes, self._head_open = 0, True

        def on_url(self, url: bytes) -> None:
            self._count(len(url))
            super().on_url(url)

        def on_header(self, name: bytes, value: bytes) -> None:
            self._count(len(name) + len(value) + 4)
            super().on_header(name, value)

        def on_headers_complete(self) -> None:
            self._head_open = False
            super().on_headers_complete()

        def _count(self, size: int) -> None:
            self._head_bytes += size
            if self._head_bytes > max_header_bytes:
                self._head_too_large = True
                raise ValueError("request head too large")  # stops the parser; answered in data_received

        def data_received(self, data: bytes) -> None:
            if self._refused:
                return  # draining what the client still sends after the 431
            self._unset_keepalive_if_required()
            try:
                self.parser.feed_data(data)
            except httptools.HttpParserUpgrade:  # as uvicorn does (no websockets are served here)
                if self._should_upgrade():
                    self.handle_websocket_upgrade()
                else:
                    self._unsupported_upgrade_warning()
                return
            except httptools.HttpParserError:
                if self._head_too_large:
                    self._refuse()
                    return
                self.send_400_response("Invalid HTTP request received.")
                return
            if self._head_open:
                self._head_bytes += len(data)
                if self._head_bytes > 4 * max_header_bytes:
                    self._refuse()

        def _refuse(self) -> None:
            self._refused = True
            body = json.dumps(
                {"error": f"request headers exceed {max_header_bytes} bytes; send fewer or smaller headers"}
            ).encode()
            self.transport.write(
                b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
                + b"content-length: " + str(len(body)).encode() + b"\r\nconnection: close\r\n\r\n" + body
            )
            if self.transport.can_write_eof():
                self.transport.write_eof()
            # The client reads the answer and closes; a client that keeps sending is cut off after 5 s.
            asyncio.get_event_loop().call_later(5.0, self.transport.close)

        def eof_received(self) -> None:
            if self._refused:
                self.transport.close()
                return
            super().eof_received()

    return BoundedHeadersProtocol


def bound_request_headers(rest_server: Any, max_header_bytes: int = MAX_HEADER_BYTES) -> None:
    """Make MLServer's uvicorn use the bounded protocol (it builds its uvicorn Config when it starts)."""
    protocol = bounded_header_protocol(max_header_bytes)
    build_config = rest_server._get_config

    def config_with_bounded_headers() -> Any:
        config = build_config()
        config.http = protocol
        return config

    rest_server._get_config = config_with_bounded_headers


def _shown(name: str | None) -> str:
    name = name or ""
    return repr(name if len(name) <= _SHOWN_NAME_CHARS else name[:_SHOWN_NAME_CHARS] + "...")


def guard_model_names(data_plane: Any, model_registry: Any) -> None:
    """Inference only for served (name, version), and only once loaded: checked before MLServer's data plane
    labels its metrics with whatever name the request carried (404, or 503 while loading)."""
    from mlserver.errors import MLServerError, ModelNotFound

    async def served(name: str, version: str | None) -> None:
        try:
            model = await model_registry.get_model(name, version)
        except ModelNotFound:
            models = await model_registry.get_models()
            available = ", ".join(
                sorted(f"{m.name}" + (f" (version {m.version})" if m.version else "") for m in models)
            )
            which = f"model {_shown(name)}" + (f" version {_shown(version)}" if version else "")
            raise MLServerError(f"{which} is not served here; served: {available or 'none'}", 404) from None
        if not model.ready:  # MLServer says 400; it is the server that is not ready, not the request
            raise MLServerError(f"model {_shown(name)} is still loading; retry shortly", 503)

    infer: Callable[..., Awaitable[Any]] = data_plane.infer
    infer_stream = data_plane.infer_stream

    async def guarded_infer(payload: Any, name: str, version: str | None = None) -> Any:
        await served(name, version)
        return await infer(payload, name, version)

    async def guarded_infer_stream(payloads: Any, name: str, version: str | None = None) -> Any:
        await served(name, version)
        async for response in infer_stream(payloads, name, version):
            yield response

    data_plane.infer = guarded_infer
    data_plane.infer_stream = guarded_infer_stream


async def resolve_models(models_settings: list[Any], scratch: Path) -> list[Any]:
    """For each fraud-runtime model: a ``models:/``/``runs:/``/remote URI downloaded once into ``scratch``,
    and the version label (when not configured) read from the artifact's metadata, so MLServer registers
    the model under it. Anything that fails here is left for the runtime to report when it loads."""
    from mlserver.logging import logger

    from serving.settings import RUNTIME_IMPLEMENTATION

    for index, model_settings in enumerate(models_settings):
        parameters = model_settings.parameters
        implementation = model_settings.implementation_
        if parameters is None or not parameters.uri or implementation != RUNTIME_IMPLEMENTATION:
            continue
        uri = parameters.uri
        local = Path(uri)
        try:
            if "://" in uri or uri.startswith(("models:", "runs:")):
                local = Path(await asyncio.to_thread(_download, uri, scratch / f"model-{index}"))
                logger.info(f"fraud server: {uri} downloaded to {local}")
                parameters.uri = str(local)
            if not parameters.version:
                parameters.version = _stored_label(local)
        except Exception as exc:  # the runtime's load reports the same problem with its context
            logger.warning(f"fraud server: could not resolve {uri} before loading ({type(exc).__name__}: {exc})")
    return models_settings


def _download(uri: str, destination: Path) -> str:
    from mlflow.artifacts import download_artifacts

    destination.mkdir(parents=True, exist_ok=True)
    return download_artifacts(artifact_uri=uri, dst_path=str(destination))


def _stored_label(model_dir: Path) -> str | None:
    from mlflow.models import Model

    label = (Model.load(str(model_dir)).metadata or {}).get("fraud_model_version")
    return str(label) if label else None


async def serve(folder: str, max_body_bytes: int) -> None:
    from mlserver.cli.serve import load_settings
    from mlserver.server import MLServer

    from serving import grpc_service

    settings, models_settings = await load_settings(folder)
    with tempfile.TemporaryDirectory(prefix="fraud-serve-models-") as scratch:
        models_settings = await resolve_models(models_settings, Path(scratch))
        grpc_service.install()
        server = MLServer(settings)
        # MLServer exposes no hooks for these; its REST app, uvicorn config and data plane are built in
        # MLServer.__init__ and used from start() on, so changing them here is safe (mlserver 1.7.1).
        install_http_guards(server._rest_server._app, max_body_bytes)
        bound_request_headers(server._rest_server)
        guard_model_names(server._data_plane, server._model_registry)
        await server.start(models_settings)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m serving.server <mlserver settings folder>", file=sys.stderr)
        return 2
    if not os.path.isdir(args[0]):
        print(f"serving.server: {args[0]!r} is not a directory (expected MLServer settings)", file=sys.stderr)
        return 2
    try:
        max_body = max_body_bytes_from_environment()
    except ValueError as exc:
        print(f"serving.server: {exc}", file=sys.stderr)
        return 2
    from mlserver.logging import configure_logger
    from mlserver.utils import install_uvloop_event_loop

    # This process's logging, set up once: MLServer's handler (it re-applies its settings' format on start),
    # which the project's own loggers share, so a model or serving warning reads like MLServer's own lines.
    handlers = configure_logger().handlers
    for name in PROJECT_LOGGERS:
        project = logging.getLogger(name)
        project.setLevel(logging.INFO)
        project.propagate = False
        for handler in handlers:
            project.addHandler(handler)
    install_uvloop_event_loop()
    asyncio.run(serve(args[0], max_body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
