"""``python -m serving.server <folder>``: ``mlserver start <folder>`` plus clear 4xx answers for bad bodies.

MLServer validates the V2 request body with FastAPI before any runtime sees it, and FastAPI answers a
malformed JSON body, a non-JSON Content-Type or a schema mismatch with a generic 422 ``{"detail": [...]}``
(for text/plain it says "Input should be a valid dictionary or object", not a word about the content type).
This entry point runs exactly what ``mlserver start`` runs (same settings loading, same ``MLServer`` server)
and, before it serves, installs on MLServer's REST app:

* a handler that turns those rejections into MLServer's own error shape ``{"error": "..."}`` with
  400 (malformed or empty JSON), 415 (Content-Type is not JSON) or 422 (valid JSON, not a V2 request);
* a request body limit (``FRAUD_MAX_BODY_BYTES``, default 8 MiB) answered with 413 before parsing.

The runtime itself also works under plain ``mlserver start`` (then those cases get FastAPI's 422s).
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Sequence
from typing import Any

MAX_BODY_ENV = "FRAUD_MAX_BODY_BYTES"
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
_MAX_ERRORS_LISTED = 5


def _json_response(status: int, message: str) -> Any:
    from starlette.responses import JSONResponse

    return JSONResponse({"error": message}, status_code=status)


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


async def request_validation_handler(request: Any, exc: Any) -> Any:
    """Clear 4xx for request bodies FastAPI refused before the runtime saw them."""
    content_type = request.headers.get("content-type")
    if content_type and not _is_json(content_type):
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


class BodySizeLimit:
    """ASGI middleware: refuse request bodies above ``max_body_bytes`` with 413 before anything parses them."""

    def __init__(self, app: Any, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = None
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = None
                break
        if declared is not None:
            if declared > self.max_body_bytes:
                await self._too_large(scope, receive, send)
                return
            await self.app(scope, receive, send)
            return
        # No Content-Length (chunked): buffer up to the limit, then replay to the app.
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                await self._too_large(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _too_large(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        response = _json_response(
            413, f"request body exceeds {self.max_body_bytes} bytes; send fewer rows per request"
        )
        await response(scope, receive, send)


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
    """Add the clear-4xx handler and the body limit to MLServer's REST app (before it starts serving)."""
    from fastapi.exceptions import RequestValidationError

    app.add_exception_handler(RequestValidationError, request_validation_handler)
    app.add_middleware(BodySizeLimit, max_body_bytes=max_body_bytes)


async def serve(folder: str, max_body_bytes: int) -> None:
    from mlserver.cli.serve import load_settings
    from mlserver.server import MLServer

    settings, models_settings = await load_settings(folder)
    server = MLServer(settings)
    # MLServer exposes no hook for app-level handlers; the REST app is built in MLServer.__init__ and only
    # starts serving in start(), so adding to it here is safe (mlserver 1.7.1).
    install_http_guards(server._rest_server._app, max_body_bytes)
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

    configure_logger()
    install_uvloop_event_loop()
    asyncio.run(serve(args[0], max_body))
    return 0


if __name__ == "__main__":
    sys.exit(main())
