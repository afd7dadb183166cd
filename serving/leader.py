"""One scheduler acts at a time: a lease in the operational database.

The leader holds a row of ``scheduler_leader`` until ``expires_at`` and renews it well before
then; anyone else may take it over only once it has expired. Taking or renewing is one
conditional ``UPDATE``, which PostgreSQL and SQLite both apply atomically, so two schedulers
started at once cannot both win. A leader that cannot renew in time (it stalled, or lost the
database) stops acting before its lease runs out.
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from reclaim.serving.store import repository as repo
from reclaim.serving.store import tables as t

LOCK = "scheduler"


def holder_id() -> str:
    """A name for this process: host, pid and a random part (pids are reused)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class Lease:
    """The scheduler's leadership, held by ``holder`` for ``ttl`` seconds at a time."""

    def __init__(self, engine: Engine, holder: str, ttl: float = 15.0, name: str = LOCK):
        self.engine, self.holder, self.ttl, self.name = engine, holder, ttl, name
        self.valid_until: datetime | None = None

    def acquire(self) -> bool:
        """Take or renew the lease; True if this holder now leads."""
        now = datetime.now(UTC)
        until = now + timedelta(seconds=self.ttl)
        row = {"name": self.name, "holder": self.holder, "expires_at": until}
        with self.engine.begin() as conn:
            if repo.insert_rows_ignoring(conn, t.scheduler_leader, [row]):
                won = True
            else:
                lead = t.scheduler_leader.c
                won = (
                    conn.execute(
                        sa.update(t.scheduler_leader)
                        .where(lead.name == self.name)
                        .where((lead.holder == self.holder) | (lead.expires_at < now))
                        .values(holder=self.holder, expires_at=until)
                    ).rowcount
                    == 1
                )
        # Act only until a safety margin before the lease ends, measured on this clock.
        self.valid_until = now + timedelta(seconds=self.ttl * 0.8) if won else None
        return won

    def held(self) -> bool:
        """Whether this holder may still act."""
        return self.valid_until is not None and datetime.now(UTC) < self.valid_until

    def release(self) -> None:
        """Give the lease up (on a clean shutdown), so a standby takes over at once."""
        with self.engine.begin() as conn:
            conn.execute(
                sa.delete(t.scheduler_leader).where(
                    (t.scheduler_leader.c.name == self.name)
                    & (t.scheduler_leader.c.holder == self.holder)
                )
            )
        self.valid_until = None
