"""A local stand-in for the parts of the Stripe API that Reclaim calls.

The official ``stripe`` SDK talks to it over HTTP through
``StripeClient(key, base_addresses={"api": standin.url})``. It keeps Stripe-shaped objects per
scope (the platform, or a connected account named by the ``Stripe-Account`` header), answers
list endpoints newest first with cursor pagination (``limit``, ``starting_after``) and
``created`` filters, retrieves single objects, and can inject faults (rate limits, 5xx) to test
that callers back off. Every request is recorded for assertions.

It also moves (pretend) money: ``POST /v1/invoices/{id}/pay`` and
``POST /v1/payment_intents/{id}/confirm`` draw their outcome from ``outcome`` (the simulator's
ground truth in the demo), answer a decline as Stripe does (402, ``card_error`` with the
decline code), and honour idempotency keys as Stripe does: a key seen before gets the first
answer again and moves no money. ``executed`` counts the requests that really ran, per key —
the tests' proof that nothing was charged twice. A timeout fault runs the request and then
answers too late, the case idempotency keys exist for.

Each payment outcome is also sent as a signed webhook event (``invoice.paid``,
``invoice.payment_failed``, ``payment_intent.succeeded``, ``payment_intent.payment_failed``) to
the endpoints in ``webhooks``: direct charges' events to the Connect endpoint with their
``account``, the rest to the platform endpoint, each carrying ``request.idempotency_key`` as
Stripe's do. Faults can deliver events twice and out of order.

stripe-mock cannot be installed here and ``localstripe`` is GPL and returns no decline codes
(RESEARCH.md section 5), so Reclaim carries its own.
"""

from __future__ import annotations

import json
import queue
import re
import socket
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import stripe

Scope = str | None  # None: the platform; "acct_…": a connected account

LISTABLE = ("accounts", "charges", "customers", "invoices", "payment_intents")


@dataclass
class Faults:
    """Share of requests answered with an injected error instead of the real answer."""

    rate_limit: float = 0.0
    server_error: float = 0.0
    timeout: float = 0.0
    """Share of money-moving requests that run but answer only after ``timeout_seconds``."""
    timeout_seconds: float = 3.0
    duplicate_webhooks: float = 0.0
    """Share of webhook events delivered twice."""
    reorder_webhooks: bool = False
    """Deliver queued events in a shuffled order rather than as they happened."""
    seed: int = 0


#: ``outcome(scope, resource, obj, attempt_time)``: None for a successful charge, else the
#: decline code. The default declines everything with ``insufficient_funds``.
Outcome = Callable[[Scope, str, dict[str, Any], datetime], str | None]


def _decline_all(scope: Scope, resource: str, obj: dict[str, Any], at: datetime) -> str | None:
    return "insufficient_funds"


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
    outcome: Outcome = _decline_all
    webhooks: dict[str, tuple[str, str]] = field(default_factory=dict)
    """``{"platform"|"connect": (url, signing secret)}``."""
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    """The stand-in's clock (the simulated one in accelerated runs)."""
    blocked_accounts: set[str] = field(default_factory=set)
    """Connected accounts that deauthorized the platform: their requests get 403."""
    deliver_on_demand: bool = False
    """Hold webhook events until :meth:`wait_delivered` sends them, in a fixed order, from
    the caller's thread: for runs in simulated time, whose outcome must not depend on whether
    a webhook or the caller's own record of a charge reaches the store first."""

    def __post_init__(self) -> None:
        self.objects: dict[Scope, dict[str, dict[str, dict[str, Any]]]] = defaultdict(
            lambda: defaultdict(dict)
        )
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._rng = np.random.default_rng(self.faults.seed)
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.executed: Counter[str] = Counter()
        self._replies: dict[tuple[Scope, str], tuple[str, int, dict[str, Any]]] = {}
        self._money_lock = threading.Lock()
        self._events: queue.Queue[dict[str, Any] | None] = queue.Queue()
        self.delivered: list[tuple[str, str, int]] = []  # (event id, endpoint, status)
        self._sender: threading.Thread | None = None
        self._event_seq = 0

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
        if not self.deliver_on_demand:
            self._sender = threading.Thread(target=self._deliver, daemon=True)
            self._sender.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._events.put(None)
        if self._sender is not None:
            self._sender.join(10)
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
        if account in self.blocked_accounts:
            return 403, _error(
                "invalid_request_error",
                f"The provided key does not have access to account '{account}'.",
                code="account_invalid",
            )
        action = re.fullmatch(r"/v1/(invoices|payment_intents)/([\w-]+)/(pay|confirm)", path)
        if action and method == "POST":
            return self._move_money(account, *action.groups(), headers.get("Idempotency-Key"))
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

    # --- money ---------------------------------------------------------------------------
    def _move_money(
        self, account: Scope, resource: str, oid: str, verb: str, key: str | None
    ) -> tuple[int, dict[str, Any]]:
        """Pay an invoice or confirm an intent once per idempotency key."""
        expected = "pay" if resource == "invoices" else "confirm"
        if verb != expected:
            return 404, _error("invalid_request_error", f"Unrecognized request URL ({verb}).")
        path = f"/v1/{resource}/{oid}/{verb}"
        with self._money_lock:
            if key is not None and (account, key) in self._replies:
                first_path, status, body = self._replies[account, key]
                if first_path != path:
                    return 400, _error(
                        "idempotency_error",
                        f"Keys for idempotent requests can only be used for the same request "
                        f"({key!r} was used for {first_path}).",
                    )
                return status, body
            status, body = self._execute(account, resource, oid, key)
            if key is not None:
                self.executed[key] += 1
                self._replies[account, key] = (path, status, body)
        with self._lock:
            u = self._rng.random()
        if u < self.faults.timeout:
            time.sleep(self.faults.timeout_seconds)  # it ran; the answer comes too late
        return status, body

    def _execute(
        self, account: Scope, resource: str, oid: str, key: str | None
    ) -> tuple[int, dict[str, Any]]:
        obj = self.objects[account][resource].get(oid)
        if obj is None:
            return 404, _error(
                "invalid_request_error",
                f"No such {resource[:-1]}: '{oid}'",
                code="resource_missing",
            )
        done = "paid" if resource == "invoices" else "succeeded"
        if obj.get("status") == done:
            code = (
                "invoice_already_paid"
                if resource == "invoices"
                else ("payment_intent_unexpected_state")
            )
            return 400, _error("invalid_request_error", f"{oid} is already paid.", code=code)
        at = self.now()
        decline = self.outcome(account, resource, obj, at)
        kind = "invoice" if resource == "invoices" else "payment_intent"
        if decline is None:
            obj["status"] = done
            self._emit(
                f"{kind}.{'paid' if kind == 'invoice' else 'succeeded'}", obj, account, at, key
            )
            return 200, obj
        error = {
            "type": "card_error",
            "code": "card_declined",
            "decline_code": decline,
            "message": "Your card was declined.",
        }
        if resource == "payment_intents":
            obj["status"] = "requires_payment_method"
            obj["last_payment_error"] = {**(obj.get("last_payment_error") or {}), **error}
        self._emit(f"{kind}.payment_failed", obj, account, at, key)
        return 402, {"error": error}

    # --- webhooks ------------------------------------------------------------------------
    def _emit(
        self, etype: str, obj: dict[str, Any], account: Scope, at: datetime, key: str | None
    ) -> None:
        self._event_seq += 1
        event = {
            "id": f"evt_standin_{self._event_seq}",
            "object": "event",
            "type": etype,
            "created": int(at.timestamp()),
            "livemode": False,
            "data": {"object": json.loads(json.dumps(obj))},
            "request": {"id": f"req_{self._event_seq}", "idempotency_key": key},
            **({"account": account} if account else {}),
        }
        self.send_event(event)

    def send_event(self, event: dict[str, Any]) -> None:
        """Queue a webhook event for its endpoint (faults may repeat or reorder it)."""
        if not self.webhooks:
            return
        with self._lock:
            twice = self._rng.random() < self.faults.duplicate_webhooks
        self._events.put(event)
        if twice:
            self._events.put(event)

    def _deliver(self) -> None:
        while True:
            batch = [self._events.get()]
            if self.faults.reorder_webhooks:
                time.sleep(0.05)  # let a few gather, then send them shuffled
            while not self._events.empty():
                batch.append(self._events.get_nowait())
            if self.faults.reorder_webhooks:
                with self._lock:
                    order = self._rng.permutation(len(batch))
                batch = [batch[i] for i in order]
            try:
                for event in batch:
                    if event is None:
                        return
                    self._post_event(event)
            finally:
                for _ in batch:
                    self._events.task_done()

    def wait_delivered(self) -> None:
        """Block until every event queued so far has been delivered (or given up on): the
        barrier a driver of simulated time waits on before it moves the clock. With
        ``deliver_on_demand`` the events are sent now, from this thread, ordered by their
        time, object and type (not by which charge happened to finish first)."""
        if not self.deliver_on_demand:
            self._events.join()
            return
        pending = []
        while not self._events.empty():
            event = self._events.get_nowait()
            self._events.task_done()
            if event is not None:
                pending.append(event)
        pending.sort(key=lambda e: (e["created"], e["data"]["object"].get("id", ""), e["type"]))
        for event in pending:
            self._post_event(event)

    def _post_event(self, event: dict[str, Any]) -> None:
        endpoint = "connect" if event.get("account") else "platform"
        if endpoint not in self.webhooks:
            return
        url, secret = self.webhooks[endpoint]
        payload = json.dumps(event).encode()
        for attempt in range(5):  # Stripe retries failed deliveries; so does the stand-in
            request = urllib.request.Request(
                url,
                data=payload,
                method="POST",
                headers={
                    "Content-Type": "application/json",
                    "Stripe-Signature": sign(payload, secret),
                },
            )
            try:
                with urllib.request.urlopen(request, timeout=10) as r:
                    status = r.status
            except urllib.error.HTTPError as exc:
                status = exc.code
            except OSError:
                status = 0
            self.delivered.append((event["id"], endpoint, status))
            if 200 <= status < 300:
                return
            time.sleep(0.2 * 2**attempt)


def sign(payload: bytes, secret: str) -> str:
    """A ``Stripe-Signature`` header for ``payload`` signed now, by the SDK's own helper."""
    return stripe.WebhookSignature.generate_signature_header(payload.decode(), secret)


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
