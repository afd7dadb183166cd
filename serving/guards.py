"""What stands between a request and the routes: a cap on body size, and error answers that
can always be written.

- :class:`BodyLimit` refuses a body over its limit with 413 before a route reads it (by its
  ``Content-Length``, or while it streams in), so a huge body costs neither memory nor a
  database write.
- :func:`validation_error` is FastAPI's 422 answer, made safe for inputs that cannot be
  encoded as UTF-8 (a lone surrogate echoed back in the error would otherwise fail the
  handler itself, turning a 422 into a 500).
"""

from __future__ import annotations

import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from reclaim import logs

log = logging.getLogger(__name__)


class RequestMetrics:
    """ASGI middleware: each request counted by method, route and status, and timed by
    route (a plain ASGI wrapper: Starlette's ``BaseHTTPMiddleware`` costs a task per
    request)."""

    def __init__(self, app: ASGIApp, metrics: Any):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def recording(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, recording)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(scope["method"], path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)


#: What a caller's ``X-Request-ID`` may hold to be kept (else a new id is made).
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
access_log = logging.getLogger("reclaim.access")


class RequestIds:
    """ASGI middleware: each request gets an id — the caller's ``X-Request-ID`` where it is a
    plain token of at most 64 characters, else a new one — returned in the answer's
    ``X-Request-ID`` and carried by every log line written while it is served
    (:func:`reclaim.logs.bound`); one access line per request: method, route, status and
    milliseconds (the route's template, not the address: no query string is logged)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        sent = dict(scope.get("headers") or []).get(b"x-request-id", b"").decode("latin-1")
        request_id = sent if _REQUEST_ID.fullmatch(sent) else uuid.uuid4().hex
        start, status = time.perf_counter(), 500

        async def with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [
                    *message.get("headers", []),
                    (b"x-request-id", request_id.encode()),
                ]
            await send(message)

        with logs.bound(request_id=request_id):
            try:
                await self.app(scope, receive, with_id)
            finally:
                path = getattr(scope.get("route"), "path", "unmatched")
                access_log.info(
                    "%s %s %d %.1f ms", scope["method"], path, status,
                    (time.perf_counter() - start) * 1000,
                )  # fmt: skip


class _TooLarge(Exception):
    pass


class BodyLimit:
    """ASGI middleware: bodies over ``limit(path)`` bytes get 413 naming the limit."""

    def __init__(self, app: ASGIApp, limit: Callable[[str], int]):
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit(scope["path"])
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _too_large(send, limit)
            return
        seen = 0
        started = False

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge
            return message

        async def tracking(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited, tracking)
        except _TooLarge:
            if not started:
                await _too_large(send, limit)


async def _too_large(send: Send, limit: int) -> None:
    body = json.dumps({"detail": f"request body is larger than {limit:,} bytes"}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _printable(value: Any) -> Any:
    """``value`` with every string made encodable (lone surrogates shown as escapes)."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, list | tuple):
        return [_printable(v) for v in value]
    if isinstance(value, dict):
        return {_printable(k): _printable(v) for k, v in value.items()}
    return value


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    """422 with the fields at fault, whatever characters the input held."""
    return JSONResponse(
        status_code=422, content={"detail": _printable(jsonable_encoder(exc.errors()))}
    )


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    """A bug, not bad input: logged with its traceback; the caller learns nothing more."""
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(status_code=500, content={"detail": "internal error; it has been logged"})
