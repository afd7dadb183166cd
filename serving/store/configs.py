"""Account configuration in the store: platform defaults under ``"*"``, overrides per account.

Only the fields an account overrides are stored, so a change to a platform default reaches
every account that did not override that field.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
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
