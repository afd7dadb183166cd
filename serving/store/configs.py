"""Account configuration in the store: platform defaults under ``"*"``, overrides per account.

Only the fields an account overrides are stored, so a change to a platform default reaches
every account that did not override that field.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine

from reclaim.account_config import PLATFORM, AccountConfig, effective
from reclaim.serving.store import tables as t


def stored_overrides(engine: Engine, account_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
    """The stored overrides of ``account_ids`` and of the platform (key ``"*"``), where any."""
    ids = {*account_ids, PLATFORM}
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(t.account_config.c.account_id, t.account_config.c.config).where(
                t.account_config.c.account_id.in_(ids)
            )
        ).all()
    return {account: json.loads(config) for account, config in rows}


def effective_configs(engine: Engine, account_ids: Iterable[str]) -> dict[str, AccountConfig]:
    """The effective configuration of each of ``account_ids`` (one query)."""
    ids = set(account_ids)
    stored = stored_overrides(engine, ids)
    defaults = stored.get(PLATFORM, {})
    return {a: effective(defaults, stored.get(a, {})) for a in ids}


class ConfigCache:
    """Effective configurations of recently asked accounts, trusted for ``ttl`` seconds: a
    decision's configuration without a read of the store.

    A change made through this process (:meth:`clear`, called by the API's ``PUT``) applies
    to the next decision; one made by another process (another API worker, a script) within
    ``ttl`` (``RECLAIM_CONFIG_CACHE_SECONDS``; 0 reads the store every time). Accounts without
    overrides are cached too: they follow the platform defaults, which a change also clears.
    """

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self._clock = clock
        self._seen: dict[str, tuple[float, AccountConfig]] = {}
        self._generation = 0  # moved by clear: a read begun before a change is not kept
        self._lock = threading.Lock()

    def effective(self, engine: Engine, account_ids: Iterable[str]) -> dict[str, AccountConfig]:
        """:func:`effective_configs`, from the cache where fresh (one query for the rest)."""
        ids = set(account_ids)
        if self.ttl <= 0:
            return effective_configs(engine, ids)
        now = self._clock()
        with self._lock:
            generation = self._generation
            fresh = {
                a: hit[1]
                for a in ids
                if (hit := self._seen.get(a)) is not None and now - hit[0] <= self.ttl
            }
        missing = ids - fresh.keys()
        if missing:
            read = effective_configs(engine, missing)
            with self._lock:
                if len(self._seen) + len(read) > 100_000:  # bounded: re-read as needed
                    self._seen.clear()
                if generation == self._generation:
                    self._seen.update({a: (now, c) for a, c in read.items()})
            fresh.update(read)
        return fresh

    def clear(self) -> None:
        """Forget everything (a configuration changed)."""
        with self._lock:
            self._seen.clear()
            self._generation += 1


def updated_at(engine: Engine, account_id: str) -> datetime | None:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(t.account_config.c.updated_at).where(
                t.account_config.c.account_id == account_id
            )
        ).scalar_one_or_none()


def replace_overrides(engine: Engine, account_id: str, overrides: dict[str, Any]) -> None:
    """Store ``overrides`` as the account's (or, for ``"*"``, the platform's) whole set.

    Validated first, merged with the current platform defaults, so nothing invalid is stored.
    """
    with engine.begin() as conn:
        defaults_row = conn.execute(
            sa.select(t.account_config.c.config).where(t.account_config.c.account_id == PLATFORM)
        ).scalar_one_or_none()
        defaults = {} if account_id == PLATFORM else json.loads(defaults_row or "{}")
        effective(defaults, overrides)  # raises pydantic.ValidationError if invalid
        values = {"config": json.dumps(overrides, sort_keys=True), "updated_at": datetime.now(UTC)}
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        conn.execute(
            insert(t.account_config)
            .values(account_id=account_id, **values)
            .on_conflict_do_update(index_elements=["account_id"], set_=values)
        )
