"""A local stand-in for the parts of the Stripe API that Reclaim calls.

The official ``stripe`` SDK talks to it over HTTP through
``StripeClient(key, base_addresses={"api": standin.url})``. It keeps Stripe-shaped objects per
scope (the platform, or a connected account named by the ``Stripe-Account`` header), answers
list endpoints newest first with cursor pagination (``limit``, ``starting_after``) and
``created`` filters, retrieves single objects, and can inject faults (rate limits, 5xx) to test
that callers back off. Every request is recorded for assertions.

It also moves (pretend) money: ``POST /v1/invoices/{id}/pay`` and
``POST /v1/payment_intents/{id}/confirm`` draw their outcome from ``outcome`` (the simulator's
ground truth in the demo) and answer as Stripe does: each attempt creates a Charge (with its
``outcome``: reason, advice and the network's decline and advice codes), the payment intent's
``last_payment_error`` and ``latest_charge`` follow it, and a decline is a 402 ``card_error``
carrying ``decline_code``, ``advice_code``, ``network_decline_code``, ``network_advice_code``,
``charge`` and ``payment_method`` (``stripe/_error_object.py``'s fields). Idempotency keys are
honoured as Stripe does: a key seen before gets the first answer again and moves no money.
``executed`` counts the requests that really ran, per key — the tests' proof that nothing was
charged twice. A timeout fault runs the request and then answers too late, the case
idempotency keys exist for.

Reads answer as Stripe's do: ``expand[]`` replaces ids with their objects (``latest_charge``,
``payments.data.payment.payment_intent``, ``customer``), and ``GET /v1/invoice_payments``
filtered by ``payment[payment_intent]`` tells which invoice an intent pays (since
2025-03-31.basil an intent no longer names its invoice).

Each attempt is also sent as the signed webhook events Stripe sends for it (``charge.failed``
or ``charge.succeeded``, ``payment_intent.payment_failed`` or ``payment_intent.succeeded``, and
for an invoice ``invoice.payment_failed`` or ``invoice.paid``), each endpoint getting only the
types it is subscribed to (``enabled_events``, as a Stripe webhook endpoint): direct charges'
events to the Connect endpoint with their ``account``, the rest to the platform endpoint, each
carrying ``request.idempotency_key`` as Stripe's do. Event objects are never expanded. Faults
can deliver events twice and out of order.

stripe-mock cannot be installed here and ``localstripe`` is GPL and returns no decline codes
(docs/sources.md), so Reclaim carries its own.
"""

from __future__ import annotations

import copy
import http.client
import json
import queue
import re
import socket
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import stripe

from reclaim.features.stripe_normalize import get_path
from reclaim.vocab import DECLINE_FIELDS

Scope = str | None  # None: the platform; "acct_…": a connected account

LISTABLE = ("accounts", "charges", "customers", "invoices", "payment_intents")
#: Which resource an id names, by its prefix (for ``expand[]``).
RESOURCE_OF_PREFIX = {
    "ch": "charges",
    "cus": "customers",
    "in": "invoices",
    "pi": "payment_intents",
}


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
#: decline: its code, or a mapping with ``decline_code`` and optionally ``advice_code``,
#: ``network_decline_code`` and ``network_advice_code``. The default declines everything with
#: ``insufficient_funds`` (Visa's network code 51).
Outcome = Callable[[Scope, str, dict[str, Any], datetime], "str | Mapping[str, Any] | None"]


#: Every event type the stand-in sends; an endpoint without ``enabled_events`` gets them all.
EVENT_TYPES = frozenset(
    {
        "charge.failed",
        "charge.succeeded",
        "payment_intent.payment_failed",
        "payment_intent.succeeded",
        "invoice.payment_failed",
        "invoice.paid",
        "invoice.voided",
        "payment_intent.canceled",
        "payment_method.automatically_updated",
        "account.application.deauthorized",
        "account.updated",
    }
)


#: The event type Stripe sends for each object an attempt touches, by the attempt's result.
ATTEMPT_EVENTS = {
    "failed": {
        "charge": "charge.failed",
        "payment_intent": "payment_intent.payment_failed",
        "invoice": "invoice.payment_failed",
    },
    "succeeded": {
        "charge": "charge.succeeded",
        "payment_intent": "payment_intent.succeeded",
        "invoice": "invoice.paid",
    },
}


def _decline_all(scope: Scope, resource: str, obj: dict[str, Any], at: datetime) -> Any:
    return {"decline_code": "insufficient_funds", "network_decline_code": "51"}


def as_decline(value: str | Mapping[str, Any]) -> dict[str, Any]:
    """An outcome's decline as the four fields Stripe reports (missing ones None)."""
    if isinstance(value, str):
        value = {"decline_code": value}
    return {k: value.get(k) for k in DECLINE_FIELDS}


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
    enabled_events: frozenset[str] = EVENT_TYPES
    """The event types the endpoints are subscribed to (Stripe sends no others)."""
    now: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    """The stand-in's clock (the simulated one in accelerated runs)."""
    blocked_accounts: set[str] = field(default_factory=set)
    """Connected accounts that deauthorized the platform: their requests get 403."""
    strip_network_codes: bool = False
    """Answer as an older integration would see Stripe: no network decline or advice codes on
    charges, errors or intents (for testing that their loss is noticed)."""
    ids: str = "standin"
    """What the ids it makes (events, charges) start with, after Stripe's prefix: stand-ins
    whose records are merged need their own."""
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
        self._charge_seq = 0
        self._connections = threading.local()  # kept-alive connections to the endpoints

    # --- data ---------------------------------------------------------------------------
    def add(self, resource: str, obj: dict[str, Any], account: Scope = None) -> None:
        """Store one object under a scope (``account=None`` for the platform)."""
        if resource not in LISTABLE:
            raise ValueError(f"unknown resource {resource!r}; known: {LISTABLE}")
        if self.strip_network_codes:
            for part in (obj.get("outcome"), obj.get("last_payment_error")):
                if isinstance(part, dict):
                    part.update(network_decline_code=None, network_advice_code=None)
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
        return f"http://127.0.0.1:{self._server.server_address[1]}"  # bound there above

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
            resource, oid, verb = action.groups()
            return self._move_money(account, resource, oid, verb, headers.get("Idempotency-Key"))
        if path == "/v1/invoice_payments" and method == "GET":
            return 200, self._invoice_payments(account, query)
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
            return 200, self._expand(account, store[oid], _expansions(query))
        items = list(store.values())
        if resource == "charges" and "payment_intent" in query:  # Stripe's list filter
            items = [c for c in items if c.get("payment_intent") == query["payment_intent"]]
        return 200, _list(resource, items, query)

    def _expand(self, account: Scope, obj: dict[str, Any], paths: list[str]) -> dict[str, Any]:
        """A copy of ``obj`` with the ids at each dotted path replaced by their objects (on the
        same scope), as Stripe's ``expand[]``; ``data`` steps go through a list's items."""
        out = copy.deepcopy(obj)
        for path in paths:
            self._expand_path(account, out, path.split("."))
        return out

    def _expand_path(self, account: Scope, node: Any, steps: list[str]) -> None:
        if not steps or not isinstance(node, dict):
            return
        head, rest = steps[0], steps[1:]
        value = node.get(head)
        if head == "data" and isinstance(value, list):
            for item in value:
                self._expand_path(account, item, rest)
            return
        if isinstance(value, str) and not rest:
            resource = RESOURCE_OF_PREFIX.get(value.split("_", 1)[0])
            with self._lock:
                found = self.objects[account][resource].get(value) if resource else None
            if found is not None:
                node[head] = copy.deepcopy(found)
            return
        self._expand_path(account, value, rest)

    def _invoice_payments(self, account: Scope, query: dict[str, str]) -> dict[str, Any]:
        """``GET /v1/invoice_payments``: the invoice payments of this scope, filtered by
        ``invoice`` or ``payment[payment_intent]``."""
        with self._lock:
            invoices = list(self.objects[account]["invoices"].values())
        wanted_pi = query.get("payment[payment_intent]")
        wanted_invoice = query.get("invoice")
        found = [
            {**pay, "invoice": inv["id"]}
            for inv in invoices
            for pay in inv.get("payments", {}).get("data", [])
            if (wanted_invoice is None or inv["id"] == wanted_invoice)
            and (wanted_pi is None or pay.get("payment", {}).get("payment_intent") == wanted_pi)
        ]
        return _list("invoice_payments", found, query)

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
        if obj.get("status") in ("void", "canceled"):
            return 400, _error(
                "invalid_request_error",
                f"{oid} is {obj['status']} and can no longer be paid.",
                code="invoice_not_open"
                if resource == "invoices"
                else "payment_intent_unexpected_state",
            )
        if obj.get("status") == done:
            code = (
                "invoice_already_paid"
                if resource == "invoices"
                else ("payment_intent_unexpected_state")
            )
            return 400, _error("invalid_request_error", f"{oid} is already paid.", code=code)
        at = self.now()
        outcome = self.outcome(account, resource, obj, at)
        intent = self.intent_of(account, obj)
        decline = None if outcome is None else as_decline(outcome)
        if decline is not None and self.strip_network_codes:
            decline.update(network_decline_code=None, network_advice_code=None)
        charge = self._charge(account, obj, intent, decline, at)
        if intent is not None:
            intent["latest_charge"] = charge["id"]
        if decline is None:
            obj["status"] = done
            if intent is not None:  # Stripe clears the error when the intent changes again
                intent["status"], intent["last_payment_error"] = "succeeded", None
            for pay in obj.get("payments", {}).get("data", []):
                pay["status"] = "paid"
            self.emit_attempt(account, obj, charge, at, key)
            return 200, obj
        error = {
            "type": "card_error",
            "code": "card_declined",
            **decline,
            "message": "Your card was declined.",
            "charge": charge["id"],
            "payment_method": _payment_method(intent),
        }
        if intent is not None:
            intent["status"] = "requires_payment_method"
            intent["last_payment_error"] = error
            if resource == "payment_intents":  # Stripe's error names the intent it was for
                error = {**error, "payment_intent": copy.deepcopy(intent)}
        self.emit_attempt(account, obj, charge, at, key)
        return 402, {"error": error}

    def customer_pays(self, account: Scope, resource: str, oid: str, at: datetime) -> bool:
        """The customer pays ``oid`` themselves at ``at`` (on the hosted invoice page, or by
        confirming the intent in session): a succeeded charge and its events, with no
        idempotency key of the platform's. False if it was already paid."""
        with self._money_lock:
            obj = self.objects[account][resource][oid]
            if obj.get("status") in ("paid", "succeeded"):
                return False
            intent = self.intent_of(account, obj)
            charge = self._charge(account, obj, intent, None, at)
            obj["status"] = "paid" if resource == "invoices" else "succeeded"
            if intent is not None:
                intent["status"], intent["latest_charge"] = "succeeded", charge["id"]
                intent["last_payment_error"] = None
            for pay in obj.get("payments", {}).get("data", []):
                pay["status"] = "paid"
            self.emit_attempt(account, obj, charge, at)
            return True

    def close(self, account: Scope, resource: str, oid: str, at: datetime) -> bool:
        """The platform stops collecting ``oid`` (the customer cancelled): an invoice is
        voided, a standalone intent canceled, with Stripe's event. False if it was already
        paid or closed."""
        with self._money_lock:
            obj = self.objects[account][resource][oid]
            if obj.get("status") in ("paid", "succeeded", "void", "canceled"):
                return False
            intent = self.intent_of(account, obj)
            if intent is not None:
                intent["status"], intent["last_payment_error"] = "canceled", None
            if resource == "invoices":
                obj["status"] = "void"
                self._emit("invoice.voided", obj, account, at, None)
            else:
                self._emit("payment_intent.canceled", obj, account, at, None)
            return True

    def rename_account(self, account: str, name: str, at: datetime) -> None:
        """The connected account's owner renames it in their Stripe dashboard
        (``settings.dashboard.display_name``): Connect's ``account.updated`` event follows."""
        with self._lock:
            obj = self.objects[None]["accounts"][account]
            obj.setdefault("settings", {}).setdefault("dashboard", {})["display_name"] = name
        self._emit("account.updated", obj, account, at, None)

    def intent_of(self, account: Scope, obj: dict[str, Any]) -> dict[str, Any] | None:
        """The payment intent an invoice's latest payment uses (or ``obj`` itself)."""
        if obj.get("object") == "payment_intent":
            return obj
        pays = obj.get("payments", {}).get("data", [])
        pi = pays[-1].get("payment", {}).get("payment_intent") if pays else None
        pi_id = pi.get("id") if isinstance(pi, dict) else pi
        return self.objects[account]["payment_intents"].get(pi_id) if pi_id else None

    def _charge(
        self,
        account: Scope,
        obj: dict[str, Any],
        intent: dict[str, Any] | None,
        decline: dict[str, Any] | None,
        at: datetime,
    ) -> dict[str, Any]:
        """A new Charge for one attempt at ``obj`` (as Stripe creates one per attempt)."""
        before = (intent or {}).get("latest_charge")
        before = self.objects[account]["charges"].get(before) if isinstance(before, str) else None
        card = get_path(before, "payment_method_details") or {
            "type": "card",
            "card": get_path(_payment_method(intent), "card"),
        }
        self._charge_seq += 1
        failed = decline is not None
        codes = decline or {}  # a succeeded charge's outcome has none
        charge = {
            "id": f"ch_{self.ids}_{self._charge_seq}",
            "object": "charge",
            "amount": obj.get("amount_due", obj.get("amount")),
            "currency": obj.get("currency"),
            "customer": obj.get("customer"),
            "created": int(at.timestamp()),
            "payment_intent": (intent or {}).get("id"),
            "status": "failed" if failed else "succeeded",
            "paid": not failed,
            "failure_code": "card_declined" if failed else None,
            "outcome": {
                "type": "issuer_declined" if failed else "authorized",
                "reason": codes.get("decline_code"),
                "advice_code": codes.get("advice_code"),
                "network_decline_code": codes.get("network_decline_code"),
                "network_advice_code": codes.get("network_advice_code"),
                "network_status": "declined_by_network" if failed else "approved_by_network",
            },
            "payment_method_details": card,
            "billing_details": (before or {}).get("billing_details", {"address": None}),
            "application_fee_amount": (intent or obj).get("application_fee_amount"),
            "on_behalf_of": (intent or obj).get("on_behalf_of"),
            "transfer_data": (intent or obj).get("transfer_data"),
            "transfer_group": (intent or obj).get("transfer_group"),
            "metadata": dict((intent or obj).get("metadata") or {}),
            "livemode": False,
        }
        self.objects[account]["charges"][charge["id"]] = charge
        return charge

    # --- webhooks ------------------------------------------------------------------------
    def emit_attempt(
        self,
        account: Scope,
        obj: dict[str, Any],
        charge: dict[str, Any] | None,
        at: datetime,
        key: str | None = None,
    ) -> None:
        """Send the events Stripe sends for one attempt at ``obj`` (an invoice or a standalone
        intent): its charge's, its intent's and, for an invoice, the invoice's; each as the
        object is now. ``charge`` None: the intent's latest charge."""
        intent = self.intent_of(account, obj)
        if charge is None and intent is not None:
            charge = self.objects[account]["charges"].get(intent.get("latest_charge") or "")
        failed = obj.get("status") not in ("paid", "succeeded")
        types = ATTEMPT_EVENTS["failed" if failed else "succeeded"]
        for thing in (charge, intent if intent is not obj else None, obj):
            if thing is not None:
                self._emit(types[thing["object"]], thing, account, at, key)

    def _emit(
        self, etype: str, obj: dict[str, Any], account: Scope, at: datetime, key: str | None
    ) -> None:
        if etype not in self.enabled_events:
            return
        self._event_seq += 1
        event = {
            "id": f"evt_{self.ids}_{self._event_seq}",
            "object": "event",
            "type": etype,
            "created": int(at.timestamp()),
            "livemode": False,
            "data": {"object": copy.deepcopy(obj)},
            "request": {"id": f"req_{self._event_seq}" if key else None, "idempotency_key": key},
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
            status = self._post(url, payload, sign(payload, secret))
            self.delivered.append((event["id"], endpoint, status))
            if 200 <= status < 300:
                return
            time.sleep(0.2 * 2**attempt)

    def _post(self, url: str, payload: bytes, signature: str) -> int:
        """POST one delivery over this thread's kept-alive connection to ``url``'s host;
        the response's status, 0 if none came. A kept connection the server has closed
        meanwhile is replaced by a new one at once."""
        target = urlsplit(url)
        connections = self._connections.__dict__.setdefault("by_host", {})
        for fresh in (target.netloc not in connections, True):
            connection = connections.get(target.netloc)
            if connection is None:
                connection = http.client.HTTPConnection(target.netloc, timeout=10)
                connections[target.netloc] = connection
            try:
                connection.request(
                    "POST",
                    target.path,
                    body=payload,
                    headers={"Content-Type": "application/json", "Stripe-Signature": signature},
                )
                response = connection.getresponse()
                response.read()
                return response.status
            except (OSError, http.client.HTTPException):
                connection.close()
                del connections[target.netloc]
                if fresh:
                    return 0
        return 0


def sign(payload: bytes, secret: str) -> str:
    """A ``Stripe-Signature`` header for ``payload`` signed now, by the SDK's own helper."""
    return stripe.WebhookSignature.generate_signature_header(payload.decode(), secret)


def _payment_method(intent: dict[str, Any] | None) -> Any:
    """The card an intent last tried (its error's payment method, else its own)."""
    return get_path(get_path(intent, "last_payment_error"), "payment_method") or get_path(
        intent, "payment_method"
    )


def _expansions(query: dict[str, str]) -> list[str]:
    """The ``expand[]`` paths of a request (``expand[0]=…`` as the SDK encodes them)."""
    return [v for k, v in sorted(query.items()) if k == "expand" or k.startswith("expand[")]


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
