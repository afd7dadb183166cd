"""Connected accounts' display names, as Stripe tells them (``account_profiles``).

Names arrive with Connect's ``account.updated`` events and from a sweep of the platform's
accounts (``reclaim accounts names``); the newest by Stripe's own time wins whatever order
they arrive in. The dashboard shows a name beside the account id, never instead of it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from reclaim.features import stripe_normalize as sn
from reclaim.features.stripe_backfill import Backoff, connected_accounts
from reclaim.serving.store import tables as t


def save(conn: sa.Connection, rows: Iterable[dict[str, Any]]) -> None:
    """Store ``rows`` (``account_id``, ``display_name`` or None, ``updated_at``), each
    replacing the stored one unless that one is newer."""
    rows = [r for r in rows if r.get("account_id")]
    if not rows:
        return
    insert = (postgresql if conn.dialect.name == "postgresql" else sqlite).insert
    c = t.account_profiles.c
    for row in rows:  # one statement per row: a batch may name an account twice
        stmt = insert(t.account_profiles).values(**row)
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[c.account_id],
                set_={
                    "display_name": stmt.excluded.display_name,
                    "updated_at": stmt.excluded.updated_at,
                },
                where=c.updated_at <= stmt.excluded.updated_at,
            )  # fmt: skip
        )


#: Ids per query: a CSV of every account names up to 100,000, over the 65,535 parameters a
#: PostgreSQL statement takes.
CHUNK = 1_000


def names(engine: Engine, account_ids: Collection[str]) -> dict[str, str]:
    """The known display names of ``account_ids`` (an account without one is left out)."""
    ids = sorted(set(account_ids))
    c = t.account_profiles.c
    out: dict[str, str] = {}
    with engine.connect() as conn:
        for start in range(0, len(ids), CHUNK):
            found = conn.execute(
                sa.select(c.account_id, c.display_name).where(
                    c.account_id.in_(ids[start : start + CHUNK]), c.display_name.is_not(None)
                )
            ).all()
            out.update({str(a): str(n) for a, n in found})
    return out


def sweep(
    engine: Engine,
    client: Any,
    backoff: Backoff | None = None,
    on_account: Callable[[int], None] | None = None,
    now: datetime | None = None,
) -> tuple[int, int]:
    """Read every connected account from Stripe (``client``: a ``stripe.StripeClient`` with the
    platform's key) and store its display name as of ``now`` (default: the wall clock); an
    ``account.updated`` event newer than that still wins. ``on_account(n)`` is called with
    the number read so far. Returns (accounts read, accounts with a name)."""
    at = now or datetime.now(UTC)
    read = named = 0
    batch: list[dict[str, Any]] = []
    for account in connected_accounts(client, backoff):
        row = sn.account_profile(account, at)
        batch.append(row)
        read += 1
        named += row["display_name"] is not None
        if len(batch) == 100:
            with engine.begin() as conn:
                save(conn, batch)
            batch = []
        if on_account is not None:
            on_account(read)
    with engine.begin() as conn:
        save(conn, batch)
    return read, named
