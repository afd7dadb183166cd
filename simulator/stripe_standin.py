"""A local stand-in for the parts of the Stripe API that Reclaim calls.

The official ``stripe`` SDK talks to it over HTTP through
``StripeClient(key, base_addresses={"api": standin.url})``. It keeps Stripe-shaped objects per
scope (the platform, or a connected account named by the ``Stripe-Account`` header), answers
list endpoints newest first with cursor pagination (``limit``, ``starting_after``) and
``created`` filters, retrieves single objects, and can inject faults (rate limits, 5xx) to test
that callers back off. Every request is recorded for assertions.

stripe-mock cannot be installed here and ``localstripe`` is GPL and returns no decline codes
(RESEARCH.md section 5), so Reclaim carries its own.
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections import defaultdict
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np

Scope = str | None  # None: the platform; "acct_…": a connected account

LISTABLE = ("accounts", "charges", "customers", "invoices", "payment_intents")


@dataclass
class Faults:
    """Share of requests answered with an injected error instead of the real answer."""

    rate_limit: float = 0.0
    server_error: float = 0.0
    seed: int = 0


@dataclass(frozen=True)
class Request:
    """One request the stand-in received."""

    method: str
    path: str
    account: Scope
    idempotency_key: str | None
    status: int


@dataclass
class StripeStandIn:
    """Objects by scope and resource, served over HTTP on 127.0.0.1.

    Use as a context manager; ``url`` is the base address to give the SDK.
    """

    faults: Faults = field(default_factory=Faults)
    api_key: str = "sk_test_standin"

    def __post_init__(self) -> None:
        self.objects: dict[Scope, dict[str, dict[str, dict[str, Any]]]] = defaultdict(
            lambda: defaultdict(dict)
        )
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(self.faults.seed)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # --- data ---------------------------------------------------------------------------
    def add(self, resource: str, obj: dict[str, Any], account: Scope = None) -> None:
        """Store one object under a scope (``account=None`` for the platform)."""
        if resource not in LISTABLE:
            raise ValueError(f"unknown resource {resource!r}; known: {LISTABLE}")
        with self._lock:
            self.objects[account][resource][obj["id"]] = obj

    def load(self, objects: dict[Scope, dict[str, list[dict[str, Any]]]]) -> None:
        """Store many objects: ``{scope: {resource: [obj, …]}}``."""
        for scope, by_resource in objects.items():
            for resource, items in by_resource.items():
                for obj in items:
                    self.add(resource, obj, scope)

    # --- server -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the stand-in is not running; use it as a context manager")
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> StripeStandIn:
        handler = type("Handler", (_Handler,), {"standin": self})
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    # --- request handling ---------------------------------------------------------------
    def _fault(self) -> tuple[int, dict[str, Any]] | None:
        with self._lock:
            u = self._rng.random()
        if u < self.faults.rate_limit:
            return 429, _error(
                "invalid_request_error",
                "Too many requests hit the API too quickly.",
                code="rate_limit",
            )
        if u < self.faults.rate_limit + self.faults.server_error:
            return 500, _error("api_error", "An unexpected error occurred (injected).")
        return None

    def handle(
        self, method: str, path: str, query: dict[str, str], headers: Any
    ) -> tuple[int, dict[str, Any]]:
        """Answer one request: ``(status, body)``."""
        if headers.get("Authorization") != f"Bearer {self.api_key}":
            return 401, _error("invalid_request_error", "Invalid API Key provided.")
        fault = self._fault()
        if fault is not None:
            return fault
        account = headers.get("Stripe-Account")
        match = re.fullmatch(r"/v1/(\w+)(?:/([\w-]+))?", path)
        if not match or match.group(1) not in LISTABLE:
            return 404, _error("invalid_request_error", f"Unrecognized request URL ({path}).")
        resource, oid = match.groups()
        if resource == "accounts" and account:
            return 403, _error("permission_error", "Only a platform can list its accounts.")
        with self._lock:
            store = dict(self.objects[account][resource])
        if method != "GET":
            return 405, _error("invalid_request_error", f"{method} {path} is not supported.")
        if oid is not None:
            if oid not in store:
                return 404, _error(
                    "invalid_request_error",
                    f"No such {resource[:-1]}: '{oid}'",
                    code="resource_missing",
                )
            return 200, store[oid]
        return 200, _list(resource, list(store.values()), query)


def _error(kind: str, message: str, code: str | None = None) -> dict[str, Any]:
    return {"error": {"type": kind, "message": message, **({"code": code} if code else {})}}


def _list(resource: str, items: list[dict[str, Any]], query: dict[str, str]) -> dict[str, Any]:
    """One page, newest first, after ``starting_after``, within the ``created`` bounds."""
    items = sorted(items, key=lambda o: (o.get("created", 0), o["id"]), reverse=True)
    for op, test in (
        ("gte", int.__ge__),
        ("gt", int.__gt__),
        ("lte", int.__le__),
        ("lt", int.__lt__),
    ):
        bound = query.get(f"created[{op}]")
        if bound is not None:
            items = [o for o in items if test(int(o.get("created", 0)), int(bound))]
    after = query.get("starting_after")
    if after:
        ids = [o["id"] for o in items]
        items = items[ids.index(after) + 1 :] if after in ids else []
    limit = min(max(int(query.get("limit", 10)), 1), 100)
    return {
        "object": "list",
        "url": f"/v1/{resource}",
        "has_more": len(items) > limit,
        "data": items[:limit],
    }


class _Handler(BaseHTTPRequestHandler):
    standin: StripeStandIn
    protocol_version = "HTTP/1.1"

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without this, Nagle's algorithm and the
        # client's delayed ACK stall every keep-alive response by ~40 ms.
        self.request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _answer(self, method: str) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length).decode() if length else ""
        query = dict(parse_qsl(parts.query)) | dict(parse_qsl(body))
        status, payload = self.standin.handle(method, parts.path, query, self.headers)
        self.standin.requests.append(
            Request(
                method,
                parts.path,
                self.headers.get("Stripe-Account"),
                self.headers.get("Idempotency-Key"),
                status,
            )
        )
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Request-Id", f"req_standin_{len(self.standin.requests)}")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._answer("GET")

    def do_POST(self) -> None:
        self._answer("POST")

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read .requests
        return
