"""Stripe webhook ingestion: verify, store the raw event, process each event id exactly once.

:func:`receive` is what the platform and Connect endpoints call. It verifies the signature with
the endpoint's own secret through the official SDK (a forged, unsigned or stale delivery raises
:class:`InvalidWebhook` and stores nothing), stores the raw event before the caller answers 2xx,
and processes it unless it was already processed. Processing turns failures, recoveries and card
updates into contract rows through the feature pipeline's normalizer; an event that fails to
process stays stored as ``failed``, the delivery is answered non-2xx so Stripe sends it again,
and :func:`process_pending` (run by ``reclaim serve`` in the background, with backoff) retries
it meanwhile, so nothing is lost.

Stripe reports one failure through up to three events (``invoice.payment_failed``,
``payment_intent.payment_failed``, ``charge.failed``): a failure within
:data:`SAME_ATTEMPT_WINDOW` of one already stored for the payment is the same attempt. Real
retries are at least an hour apart under the network rules, so the window cannot merge two.
Before an event is applied, what it lacks is read from Stripe (:mod:`reclaim.serving.stripe_reads`:
an invoice's payment intent with the decline, the invoice an intent or charge belongs to), so
the stored rows hold what an export of the same payments holds; an intent or charge event
updates the invoice's payment it belongs to (``payment_aliases``).
"""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
import stripe
from pydantic import TypeAdapter, ValidationError
from sqlalchemy.engine import Engine

from reclaim import contract, logs
from reclaim.features import stripe_normalize as sn
from reclaim.fields import PastTime, storable
from reclaim.serving import stripe_actions
from reclaim.serving.schemas import PaymentIn
from reclaim.serving.store import profiles
from reclaim.serving.store import repository as repo
from reclaim.serving.store import tables as t
from reclaim.serving.stripe_reads import Completed, StripeReader, complete
from reclaim.timeutil import as_utc

log = logging.getLogger(__name__)

SAME_ATTEMPT_WINDOW = timedelta(minutes=5)
ENDPOINTS = ("platform", "connect")
#: The event types to subscribe both endpoints to (docs/operations.md). ``charge.*`` events
#: are handled too, but add nothing an intent's events lack: each is one more delivery.
SUBSCRIBED_EVENTS = frozenset(
    {
        "invoice.payment_failed",
        "invoice.payment_action_required",
        "invoice.paid",
        "payment_intent.payment_failed",
        "payment_intent.succeeded",
        "invoice.voided",
        "invoice.marked_uncollectible",
        "payment_intent.canceled",
        "payment_method.automatically_updated",
        "account.application.deauthorized",
        "account.updated",
    }
)


class InvalidWebhook(ValueError):
    """A delivery that must be rejected with 400 and not stored."""


@dataclass(frozen=True)
class Receipt:
    """What happened to one delivery."""

    event_id: str
    event_type: str
    first_delivery: bool
    status: str  # one of EVENT_STATUSES ("received": stored by an earlier delivery)


# the columns' sizes: longer values are refused, not truncated
MAX_ID = t.stripe_events.c.event_id.type.length
MAX_TYPE = t.stripe_events.c.type.type.length
MAX_ACCOUNT = t.stripe_events.c.account_id.type.length
RETRY_BASE = timedelta(seconds=30)
RETRY_CAP = timedelta(hours=1)
#: What a stored event can be: applied, not for Reclaim, outside the bounds Reclaim stores
#: (kept with the reason), waiting for its payment, failing and retried, set aside after
#: every try failed, or just stored.
EVENT_STATUSES = ("processed", "ignored", "rejected", "waiting", "failed", "dead", "received")
#: The statuses of an event still to be applied: every other one is final, or held (waiting
#: for its payment, set aside) until something moves it back to ``received`` or ``failed``.
TO_APPLY = ("received", "failed")
#: Tries before an event that keeps failing is set aside (``dead``): with the backoff above,
#: about four hours and a half. ``reclaim events retry`` gives it another round.
MAX_TRIES = 10
IN_FLIGHT = timedelta(seconds=60)  # a "received" event younger than this may be mid-request
#: How long a success waits for its payment's first failure: Stripe redelivers an event for up
#: to three days, so a failure arrives within them or never; one more day of margin.
WAIT_LIMIT = timedelta(days=4)


def verify(
    payload: bytes,
    sig_header: str | None,
    secret: str,
    tolerance: int = 300,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The event as a dict, if ``sig_header`` is a valid, fresh Stripe signature of
    ``payload`` under ``secret`` and the payload is an event the store can hold; else
    :class:`InvalidWebhook` naming what is wrong.

    Fresh means signed at most ``tolerance`` seconds ago (the SDK's check) and at most
    ``tolerance`` seconds ahead of this server's clock (a signature from the future is forged
    or from a broken clock).
    """
    if not sig_header:
        raise InvalidWebhook("missing Stripe-Signature header")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidWebhook(f"payload is not UTF-8: {exc.reason} at byte {exc.start}") from exc
    try:
        stripe.WebhookSignature.verify_header(text, sig_header, secret, tolerance)
    except stripe.SignatureVerificationError as exc:
        raise InvalidWebhook(f"signature verification failed: {exc.user_message or exc}") from exc
    signed = [p.split("=", 1)[1] for p in sig_header.split(",") if p.strip().startswith("t=")]
    now = now or datetime.now(UTC)
    if signed and signed[0].strip().isdigit():
        ahead = int(signed[0]) - now.timestamp()
        if ahead > tolerance:
            raise InvalidWebhook(f"signature timestamp is {ahead:.0f} s in the future")
    try:
        event = json.loads(text)
    except ValueError as exc:
        raise InvalidWebhook(f"payload is not JSON: {exc}") from exc
    if not isinstance(event, dict):
        raise InvalidWebhook("payload is not a JSON object (a Stripe event)")
    for field, longest, required in (
        ("id", MAX_ID, True),
        ("type", MAX_TYPE, True),
        ("account", MAX_ACCOUNT, False),
    ):
        value = event.get(field)
        if value is None and not required:
            continue
        if not isinstance(value, str) or not value:
            raise InvalidWebhook(f"event {field} must be a non-empty string")
        if len(value) > longest:
            raise InvalidWebhook(f"event {field} is longer than {longest} characters")
        try:
            storable(value)
        except ValueError as exc:
            raise InvalidWebhook(f"event {field} {exc}") from exc
    return event


def receive(
    engine: Engine,
    endpoint: str,
    payload: bytes,
    sig_header: str | None,
    secret: str,
    tolerance: int = 300,
    retry_base: timedelta = RETRY_BASE,
    reader: StripeReader | None = None,
) -> Receipt:
    """Verify, store and process one webhook delivery (``reader`` reads from Stripe what an
    event lacks).

    A first delivery is processed; a repeat of an event that is stored but not yet processed
    (it failed before) is processed again, so Stripe's own redelivery is a retry too. The
    receipt's status is ``failed`` when processing failed: the caller answers non-2xx so that
    Stripe delivers it again.
    """
    if endpoint not in ENDPOINTS:
        raise ValueError(f"unknown endpoint {endpoint!r}; expected one of {ENDPOINTS}")
    event = verify(payload, sig_header, secret, tolerance)
    if endpoint == "connect" and not event.get("account"):
        raise InvalidWebhook("a Connect endpoint event must name its account")
    first = repo.record_event(
        engine,
        event_id=event["id"],
        endpoint=endpoint,
        event_type=str(event.get("type")),
        account_id=event.get("account"),
        livemode=bool(event.get("livemode")),
        payload=payload.decode(),
    )
    status = process_event(engine, event["id"], retry_base, reader)
    return Receipt(event["id"], str(event.get("type")), first, status)


class _Taken(Exception):
    """Another process is applying, or has applied, this event."""


def process_event(
    engine: Engine,
    event_id: str,
    retry_base: timedelta = RETRY_BASE,
    reader: StripeReader | None = None,
) -> str:
    """Process a stored event once; returns its status afterwards.

    Already processed or ignored events are left alone. An error while processing marks the
    event ``failed`` with the error and the time of its next try (backing off from
    ``retry_base``, doubling per try, up to :data:`RETRY_CAP`), for
    :func:`process_pending` to retry.
    """
    with engine.begin() as conn:
        row = conn.execute(
            sa.select(
                t.stripe_events.c.payload, t.stripe_events.c.status, t.stripe_events.c.tries
            ).where(t.stripe_events.c.event_id == event_id)
        ).one_or_none()
    if row is None:
        raise KeyError(f"no stored event {event_id}")
    if row.status not in TO_APPLY:
        return row.status
    with logs.bound(event_id=event_id):
        return _process(engine, event_id, row, retry_base, reader)


def _process(
    engine: Engine, event_id: str, row: Any, retry_base: timedelta, reader: StripeReader | None
) -> str:
    """:func:`process_event` for a stored event ``row`` still to apply."""
    e = t.stripe_events.c
    try:
        # what the event lacks is read from Stripe first, outside the store's transaction
        done = complete(json.loads(row.payload), reader, lambda a, oid: owner_of(engine, a, oid))
        with engine.begin() as conn:
            # Claim the event in the transaction that applies it: a second process (another
            # API worker's retrier, a redelivery) waits on this row, then finds it taken.
            claimed = conn.execute(
                sa.update(t.stripe_events)
                .where(e.event_id == event_id, e.status.in_(TO_APPLY))
                .where(e.tries == row.tries)
                .values(tries=row.tries + 1)
            ).rowcount
            if not claimed:
                raise _Taken
            woken: list[str] = []
            with logs.bound(account_id=done.account, payment_id=done.payment_id):
                status, note = _apply(conn, done, event_id, woken)
            _set_status(conn, event_id, status, note, tries=row.tries + 1)
        for waiting in woken:  # successes that arrived before this failure: applied now
            process_event(engine, waiting, retry_base, reader)
        return status
    except _Taken:
        with engine.connect() as conn:
            return str(conn.execute(sa.select(e.status).where(e.event_id == event_id)).scalar())
    except Exception as exc:  # kept and retried, never lost
        tries = row.tries + 1
        dead = tries >= MAX_TRIES
        log.exception(
            "processing event %s failed%s", event_id, " for good: set aside" if dead else ""
        )
        wait = min(retry_base * 2**row.tries, RETRY_CAP)
        with engine.begin() as conn:
            _set_status(
                conn,
                event_id,
                "dead" if dead else "failed",
                repo.describe_error(exc),
                tries=tries,
                next_try_at=None if dead else datetime.now(UTC) + wait,
            )
        if dead:
            log.error("ALERT webhook event %s set aside after %d tries", event_id, tries)
        return "dead" if dead else "failed"


def process_pending(
    engine: Engine,
    now: datetime | None = None,
    retry_base: timedelta = RETRY_BASE,
    reader: StripeReader | None = None,
) -> dict[str, int]:
    """Retry every stored event not yet processed whose next try is due (all of them with
    ``now`` far enough ahead), and give up on successes that waited too long for their
    payment (:func:`expire_waiting`, counted as ``expired``); returns the count per
    resulting status."""
    e = t.stripe_events.c
    now = now or datetime.now(UTC)
    expired = expire_waiting(engine, now)
    with engine.connect() as conn:
        ids = (
            conn.execute(
                sa.select(e.event_id)
                .where(
                    sa.or_(
                        # failed: when its backoff says; received but never processed (the
                        # process died mid-request): once it is clearly not in flight
                        sa.and_(e.status == "failed", e.next_try_at <= now),
                        sa.and_(e.status == "received", e.received_at <= now - IN_FLIGHT),
                    )
                )
                .order_by(e.received_at)
            )
            .scalars()
            .all()
        )
    counts: dict[str, int] = {"expired": expired} if expired else {}
    for event_id in ids:
        status = process_event(engine, event_id, retry_base, reader)
        counts[status] = counts.get(status, 0) + 1
    return counts


def dead_events(engine: Engine) -> int:
    """How many events are set aside after failing :data:`MAX_TRIES` times."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(t.stripe_events)
                .where(t.stripe_events.c.status == "dead")
            ).scalar()
            or 0
        )


def list_events(engine: Engine, statuses: list[str], limit: int = 100) -> list[dict[str, Any]]:
    """Stored events in ``statuses``, newest first: what an operator reads (no payloads)."""
    e = t.stripe_events.c
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(e.event_id, e.type, e.account_id, e.status, e.tries, e.received_at, e.error)
            .where(e.status.in_(statuses))
            .order_by(e.received_at.desc(), e.event_id)
            .limit(limit)
        ).mappings()
        return [dict(r) for r in rows]


def retry_events(engine: Engine, event_ids: list[str] | None = None) -> int:
    """Give set-aside events (all, or those named) a new round of tries: ``failed``, due
    now, tries from zero; the API's background retrier applies them. Returns how many."""
    e = t.stripe_events.c
    query = sa.update(t.stripe_events).where(e.status == "dead")
    if event_ids is not None:
        query = query.where(e.event_id.in_(event_ids))
    with engine.begin() as conn:
        return int(
            conn.execute(
                query.values(status="failed", tries=0, next_try_at=datetime.now(UTC))
            ).rowcount
        )


def stuck_events(engine: Engine, older_than: timedelta, now: datetime | None = None) -> int:
    """How many events arrived more than ``older_than`` ago and are still not processed."""
    e = t.stripe_events.c
    since = (now or datetime.now(UTC)) - older_than
    with engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count())
                .select_from(t.stripe_events)
                .where(e.status.in_(TO_APPLY), e.received_at < since)
            ).scalar()
            or 0
        )


def retry_in_background(
    engine: Engine,
    every_seconds: float,
    stuck_after: timedelta,
    on_round: Any = None,
    reader: StripeReader | None = None,
) -> tuple[threading.Thread, threading.Event]:
    """Start a thread that retries due events (:func:`process_pending`) every
    ``every_seconds`` (also the backoff's first wait) and counts the stuck ones, until the
    returned event is set.

    ``on_round(counts, stuck, dead)`` is called after each round (metrics: ``dead`` counts
    the events set aside); a round with stuck events logs an ALERT.
    """
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(every_seconds):
            try:
                counts = process_pending(
                    engine, retry_base=timedelta(seconds=every_seconds), reader=reader
                )
                stuck = stuck_events(engine, stuck_after)
                dead = dead_events(engine)
            except Exception:  # the store is down: try again next round
                log.exception("retrying stored webhook events failed")
                continue
            if stuck:
                log.error("ALERT %d webhook event(s) unprocessed for over %s", stuck, stuck_after)
            if on_round is not None:
                on_round(counts, stuck, dead)

    thread = threading.Thread(target=loop, name="reclaim-webhook-retry", daemon=True)
    thread.start()
    return thread, stop


def _set_status(
    conn: sa.Connection,
    event_id: str,
    status: str,
    note: str | None,
    tries: int,
    next_try_at: datetime | None = None,
) -> None:
    conn.execute(
        sa.update(t.stripe_events)
        .where(t.stripe_events.c.event_id == event_id)
        .values(
            status=status,
            error=note,
            processed_at=datetime.now(UTC),
            tries=tries,
            next_try_at=next_try_at,
        )
    )


def owner_of(engine: Engine, account: str | None, object_id: str) -> str | None:
    """The stored payment of ``account`` a Stripe object id stands for (see :func:`_owner`)."""
    with engine.connect() as conn:
        return _owner(conn, account, object_id)


def _owner(conn: sa.Connection, account: str | None, object_id: str) -> str | None:
    """The stored payment of ``account`` that ``object_id`` stands for: an alias (an
    invoice's payment intent, stored from Stripe's own events), or the payment itself; None
    when neither is stored. With ``account`` None, an alias alone, and only one that a
    single account has: a payment is never found by its id alone, which any account may
    hold."""
    alias = _alias(conn, object_id, account)
    if alias is not None:
        return alias[1]
    if account is None:
        return None
    p = t.payments.c
    stored = conn.execute(
        sa.select(p.payment_id).where(p.account_id == account, p.payment_id == object_id)
    ).scalar()
    return None if stored is None else str(stored)


def _alias_account(conn: sa.Connection, object_id: str) -> str | None:
    """The one account with a stored alias ``object_id`` (Stripe's own events stored it), or
    None: whose payment an event is about, when the event does not say."""
    alias = _alias(conn, object_id)
    return None if alias is None else alias[0]


def _alias(conn: sa.Connection, object_id: str, account: str | None = None) -> repo.Ref | None:
    """The payment ``object_id`` is a stored alias of (of ``account``, or of the one account
    that has such an alias), or None."""
    a = t.payment_aliases.c
    query = sa.select(a.account_id, a.payment_id).where(a.object_id == object_id)
    if account is not None:
        query = query.where(a.account_id == account)
    rows = conn.execute(query.limit(2)).all()
    return (str(rows[0].account_id), str(rows[0].payment_id)) if len(rows) == 1 else None


def _remember_aliases(conn: sa.Connection, event: dict[str, Any], payment: dict) -> None:
    """An invoice's payment intents stand for the invoice's payment from now on."""
    obj = sn.get_path(event, "data", "object") or {}
    if obj.get("object") != "invoice":
        return
    rows = [
        {"account_id": payment["account_id"], "object_id": oid, "payment_id": payment["payment_id"]}
        for oid in (sn.object_id(pi) for pi in sn.invoice_payment_intents(obj))
        if oid and oid != payment["payment_id"]
    ]
    repo.insert_rows_ignoring(conn, t.payment_aliases, rows)


def _apply(
    conn: sa.Connection,
    done: Completed,
    event_id: str,
    woken: list[str] | None = None,
) -> tuple[str, str | None]:
    """Write one event's rows inside ``conn``'s transaction; returns (status, note).
    ``done``: the event as :func:`complete` made it, with the connected account whose
    payment it is about and the stored payment its attempt belongs to (when its own
    object's id is not that payment's: an invoice's payment intent or charge). Every row
    read or written is that account's: another account's payment of the same id is never
    touched.

    A success for a payment not stored yet is ``waiting``: Stripe may deliver it before the
    failure. When a first failure stores its payment, the events waiting for it (by the
    payment's id or an alias) are made ready again and their ids added to ``woken`` for the
    caller to apply after this transaction."""
    event, payment_id, account = done.event, done.payment_id, done.account
    try:
        rows = sn.normalize_event(event)
    except sn.Unsupported as exc:
        return "ignored", exc.reason
    if rows.kind == "ignored":
        return "ignored", "event type not used"
    if rows.kind == "card_update":
        update = rows.card_update or {}
        if not update.get("customer_id"):
            return "ignored", "card update without a customer"
        row = {
            "event_id": event_id,
            "customer_id": update["customer_id"],
            "account_id": update.get("account_id"),
            "updated_at": as_utc(update["updated_at"]).to_pydatetime(),
        }
        repo.insert_rows_ignoring(conn, t.card_updates, [row])
        return "processed", rows.kind
    if rows.kind == "account":
        profiles.save(conn, [rows.account_profile or {}])
        return "processed", rows.kind
    if rows.kind == "deauthorized":
        block_account(conn, str(rows.deauthorized_account), "deauthorized", event_id)
        return "processed", rows.kind
    if rows.kind == "closed":
        object_id, at = rows.closed or ("", None)
        account = account or _alias_account(conn, object_id)
        closed = payment_id or _owner(conn, account, object_id)
        if closed is None or account is None:
            return "ignored", "closed payment not known"
        close_payment(conn, (account, closed), as_utc(at).to_pydatetime())
        return "processed", rows.kind
    attempt = rows.attempt
    assert attempt is not None  # failures and recoveries always carry an attempt
    if rows.payment is not None:  # a first failure says whose payment it is
        account = rows.payment["account_id"]
    account = account or _alias_account(conn, attempt["payment_id"])
    if account is None:
        # never attached by its id alone, which any account may hold; the scheduler asks
        # Stripe before acting on a payment, so a success missed here is still seen there
        return "ignored", "the event's connected account is not known"
    if payment_id is None:
        payment_id = _owner(conn, account, attempt["payment_id"])
    if payment_id is not None:
        attempt["payment_id"] = payment_id
    pid = attempt["payment_id"]
    key = (account, pid)
    a = t.attempts.c
    stored = conn.execute(
        sa.select(a.attempt_number, a.attempted_at, a.outcome).where(
            a.account_id == account, a.payment_id == pid
        )
    ).all()
    p = t.payments.c
    known = conn.execute(
        sa.select(sa.func.count())
        .select_from(t.payments)
        .where(p.account_id == account, p.payment_id == pid)
    ).scalar()
    problem = _out_of_bounds(rows.payment if not known else None, attempt)
    if problem is not None:
        return "rejected", problem
    if not known:
        if rows.payment is None:
            if rows.kind != "recovery":
                return "ignored", "payment not known yet"
            conn.execute(
                sa.update(t.stripe_events)
                .where(t.stripe_events.c.event_id == event_id)
                .values(object_id=pid)
            )
            return "waiting", "payment not known yet"
        _insert(conn, contract.PAYMENTS, t.payments, rows.payment)
        _remember_aliases(conn, event, rows.payment)
        if woken is not None:
            woken.extend(_wake(conn, key))
        stored = []
    own = stripe_actions.own_retry(event)
    if (
        own is not None
    ):  # Reclaim's own retry: its number is in the key, and the scheduler records it too
        attempt["attempt_number"] = own
        attempt["initiator"] = "merchant"
        _insert(conn, contract.ATTEMPTS, t.attempts, attempt, account)
        return "processed", "reclaim's own retry"
    if rows.kind == "recovery":
        # Not Reclaim's retry: with Stripe's own retries off (docs/operations.md), whoever
        # paid is the customer, as the export records such a payment
        attempt["initiator"] = "customer"
    at = as_utc(attempt["attempted_at"])
    if any(
        outcome == attempt["outcome"] and abs(as_utc(when) - at) <= SAME_ATTEMPT_WINDOW
        for _, when, outcome in stored
    ):
        # Stripe reports one attempt through several events (invoice, intent, charge)
        return "processed", "same attempt as one already stored"
    attempt["attempt_number"] = 1 + max((n for n, _, _ in stored), default=-1)
    _insert(conn, contract.ATTEMPTS, t.attempts, attempt, account)
    return "processed", None


_WHEN = TypeAdapter(PastTime)  # the API's bounds on a moment that has happened


def _out_of_bounds(payment: dict[str, Any] | None, attempt: dict[str, Any]) -> str | None:
    """Why an event's new payment or attempt is outside what Reclaim stores, or None: the
    bounds of the API's own input (``schemas.PaymentIn``: a positive amount within Stripe's
    largest charge for a three-letter currency, times from 2000 to a day ahead, storable
    text). The reason names the field, never the value."""
    try:
        if payment is not None:
            PaymentIn.model_validate(
                {k: v for k, v in payment.items() if k in PaymentIn.model_fields}
            )
    except ValidationError as exc:
        return _first_problem("payment", exc)
    try:
        _WHEN.validate_python(as_utc(attempt["attempted_at"]))
    except ValidationError as exc:
        return _first_problem("attempt", exc)
    return None


def _first_problem(kind: str, exc: ValidationError) -> str:
    """``kind.field: message`` of a validation's first error (pydantic's message, which
    does not quote the value)."""
    first = exc.errors()[0]
    return f"{kind}{''.join(f'.{part}' for part in first['loc'])}: {first['msg']}"


def _wake(conn: sa.Connection, key: repo.Ref) -> list[str]:
    """Make the events waiting for the payment ``key`` (or an object standing for it) ready
    to apply again; returns their ids, oldest first. An event of another account's payment
    of the same id is woken too, and waits again when applied: waking is only a hint."""
    e, a = t.stripe_events.c, t.payment_aliases.c
    ids = [key[1]] + list(
        conn.execute(
            sa.select(a.object_id).where(a.account_id == key[0], a.payment_id == key[1])
        ).scalars()
    )
    waiting = list(
        conn.execute(
            sa.select(e.event_id)
            .where(e.object_id.in_(ids), e.status == "waiting")
            .order_by(e.received_at, e.event_id)
        ).scalars()
    )
    if waiting:
        conn.execute(
            sa.update(t.stripe_events)
            .where(e.event_id.in_(waiting))
            .values(status="received", next_try_at=None)
        )
    return waiting


def expire_waiting(engine: Engine, now: datetime | None = None) -> int:
    """Successes that waited :data:`WAIT_LIMIT` for a failure that never came are about
    payments Reclaim never had (paid at the first try): ``ignored``. Returns how many."""
    e = t.stripe_events.c
    since = (now or datetime.now(UTC)) - WAIT_LIMIT
    with engine.begin() as conn:
        return int(
            conn.execute(
                sa.update(t.stripe_events)
                .where(e.status == "waiting", e.received_at < since)
                .values(status="ignored", error="no failure of its payment arrived")
            ).rowcount
        )


def close_payment(conn: sa.Connection, key: repo.Ref, at: datetime) -> None:
    """Nothing more is tried for a payment Stripe can no longer collect: its closing time
    is kept (the earliest) and its open actions are cancelled."""
    p, s = t.payments.c, t.scheduled_actions.c
    conn.execute(
        sa.update(t.payments)
        .where(p.account_id == key[0], p.payment_id == key[1])
        .where(sa.or_(p.closed_at.is_(None), p.closed_at > at))
        .values(closed_at=at)
    )
    conn.execute(
        sa.update(t.scheduled_actions)
        .where(s.account_id == key[0], s.payment_id == key[1])
        .where(t.scheduled_actions.c.status == "scheduled")
        .values(status="cancelled", outcome="payment_closed", updated_at=datetime.now(UTC))
    )


def block_account(conn: sa.Connection, account_id: str, reason: str, detail: str) -> None:
    """Stop acting for an account: mark it blocked and cancel its scheduled actions."""
    now = datetime.now(UTC)
    repo.insert_rows_ignoring(
        conn, t.account_status, [{"account_id": account_id, "blocked_at": now, "reason": reason}]
    )
    conn.execute(
        sa.update(t.scheduled_actions)
        .where(t.scheduled_actions.c.account_id == account_id)
        .where(t.scheduled_actions.c.status == "scheduled")
        .values(status="cancelled", outcome=f"account_{reason}", updated_at=now)
    )
    log.error(
        "ALERT account %s blocked (%s: %s): its actions are stopped", account_id, reason, detail
    )


def _insert(
    conn: sa.Connection,
    spec: contract.Table,
    table: sa.Table,
    row: dict,
    account: str | None = None,
) -> None:
    """Store one contract row (an attempt with its payment's ``account``)."""
    values = contract.conform_row(spec, row)
    if account is not None:
        values["account_id"] = account
    repo.insert_rows_ignoring(conn, table, [values])
