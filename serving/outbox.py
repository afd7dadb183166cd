"""The message outbox: each recovery message is written once, next to the action that asked
for it, and sent from there.

A message is stored in the same transaction as its decision point's action (key: the action's
id), so a decision is never half-recorded and a decision point planned twice still has one
message. The dispatcher marks a row ``sending`` before handing it to the channel and ``sent``
after, and records it as a contract ``messages`` row. A crash between the two leaves it
``sending``; it is sent again with the same key (the email's Message-ID, the webhook's
Idempotency-Key), so delivery is at least once and recognisably the same message.

One party per conversation: once someone (the platform or the account) has messaged a
customer about a payment, every later message about it comes from the same sender.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from reclaim import contract
from reclaim.serving.channels import Channel, ChannelError, OutgoingMessage
from reclaim.serving.store import repository as repo
from reclaim.serving.store import tables as t

log = logging.getLogger(__name__)

MAX_TRIES = 5


def enqueue(
    conn: sa.Connection,
    key: str,
    payment: Mapping[str, Any],
    channel: str,
    sender: str,
    propensity: float | None,
    branding: dict[str, Any],
    now: datetime,
    purpose: str = "payment_failed",
) -> bool:
    """Store one message to send; False if this key is already stored. ``purpose`` is one of
    ``channels.PURPOSES``."""
    o = t.outbox.c
    earlier = conn.execute(
        sa.select(o.sender)
        .where(o.account_id == payment["account_id"], o.payment_id == payment["payment_id"])
        .order_by(o.created_at)
        .limit(1)
    ).scalar()
    if earlier is not None and earlier != sender:
        log.info("payment %s: keeping sender %s (not %s)", payment["payment_id"], earlier, sender)
        sender = earlier
    row = {
        "message_key": key,
        "payment_id": payment["payment_id"],
        "account_id": payment["account_id"],
        "channel": channel,
        "sender": sender,
        "propensity": propensity,
        "payload": json.dumps(
            {
                "customer_id": payment["customer_id"],
                "amount": int(payment["amount"]),
                "currency": payment["currency"],
                "branding": branding,
                "purpose": purpose,
            }
        ),
        "status": "pending",
        "tries": 0,
        "created_at": now,
    }
    return bool(repo.insert_rows_ignoring(conn, t.outbox, [row]))


def dispatch(
    engine: Engine,
    channels: Mapping[str, Channel],
    now: Callable[[], datetime],
    recipient: Callable[[str, str, str], str | None] | None = None,
    policy: str = "reclaim",
    limit: int = 200,
    still_open: Callable[[repo.Ref], str | None] | None = None,
) -> Counter[str]:
    """Send pending messages; returns how many were sent, retried later, failed for good,
    or were cancelled.

    ``recipient(channel, account_id, customer_id)`` looks up the customer's address where a
    channel needs one (email). ``still_open((account_id, payment_id))``, asked just before
    each message, says why the payment no longer needs one (paid, closed), or None: one is
    ``cancelled`` with that reason, never sent; if it raises :class:`ChannelError` the
    message waits for the next round.
    """
    o = t.outbox.c
    with engine.connect() as conn:
        rows = (
            conn.execute(
                sa.select(t.outbox)
                .where(o.status.in_(["pending", "sending"]))
                .order_by(o.created_at)
                .limit(limit)
            )
            .mappings()
            .all()
        )
    counts: Counter[str] = Counter()
    for row in rows:
        with engine.begin() as conn:
            claimed = conn.execute(
                sa.update(t.outbox)
                .where(o.message_key == row["message_key"])
                .where(o.status.in_(["pending", "sending"]))
                .values(status="sending", tries=o.tries + 1)
            ).rowcount
        if not claimed:
            continue
        payload = json.loads(row["payload"])
        message = OutgoingMessage(
            key=row["message_key"],
            payment_id=row["payment_id"],
            account_id=row["account_id"],
            customer_id=payload["customer_id"],
            channel=row["channel"],
            sender=row["sender"],
            amount=payload["amount"],
            currency=payload["currency"],
            branding=payload["branding"],
            purpose=payload.get("purpose", "payment_failed"),
        )
        try:
            gone = still_open(repo.ref(row)) if still_open is not None else None
            if gone is not None:
                with engine.begin() as conn:
                    conn.execute(
                        sa.update(t.outbox)
                        .where(o.message_key == row["message_key"])
                        .values(status="cancelled", error=gone)
                    )
                counts["cancelled"] += 1
                continue
            channel = channels.get(row["channel"])
            if channel is None:
                raise ChannelError(f"no {row['channel']} channel is configured")
            if recipient is not None:
                address = recipient(row["channel"], row["account_id"], payload["customer_id"])
                message = OutgoingMessage(**{**message.__dict__, "recipient": address})
            channel.send(message)
        except ChannelError as exc:
            final = row["tries"] + 1 >= MAX_TRIES
            with engine.begin() as conn:
                conn.execute(
                    sa.update(t.outbox)
                    .where(o.message_key == row["message_key"])
                    .values(status="failed" if final else "pending", error=str(exc))
                )
            log.warning("message %s not sent: %s", row["message_key"], exc)
            counts["failed" if final else "retry"] += 1
            continue
        sent_at = now()
        with engine.begin() as conn:
            conn.execute(
                sa.update(t.outbox)
                .where(o.message_key == row["message_key"])
                .values(status="sent", sent_at=sent_at, error=None)
            )
            logged = contract.conform_row(
                contract.MESSAGES,
                {
                    "message_id": row["message_key"],
                    "payment_id": row["payment_id"],
                    "sent_at": repo.aware(sent_at),
                    "channel": row["channel"],
                    "sender": row["sender"],
                    "policy": policy,
                    "propensity": row["propensity"],
                },
            )
            logged["account_id"] = row["account_id"]
            repo.insert_rows_ignoring(conn, t.messages, [logged])
        counts["sent"] += 1
    return counts
