"""Apply the store's Alembic migrations to a database URL.

Several processes may start at once against one PostgreSQL store (API workers, two
schedulers): each upgrade holds a PostgreSQL advisory lock, so one migrates and the others wait
for it and then find the store at head. A deployment may also migrate once, before starting
anything (``reclaim migrate``, with ``RECLAIM_MIGRATE_ON_START=false`` for the services).
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.pool import NullPool

MIGRATIONS = Path(__file__).resolve().parents[1] / "migrations"
#: The advisory lock key the store's upgrades share (any constant of Reclaim's own).
MIGRATION_LOCK = 0x5EC1A1


def alembic_config(url: str) -> Config:
    """An Alembic config for ``url`` (no alembic.ini needed)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str, revision: str = "head") -> None:
    """Bring the database at ``url`` to ``revision`` (default: the latest); on PostgreSQL,
    one process at a time."""
    cfg = alembic_config(url)
    if not url.startswith("postgres"):
        command.upgrade(cfg, revision)
        return
    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT pg_advisory_lock(:key)"), {"key": MIGRATION_LOCK})
            conn.commit()  # the lock is the session's: it outlives this transaction
            try:
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
                conn.commit()
            finally:
                conn.rollback()
                conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": MIGRATION_LOCK})
                conn.commit()
    finally:
        engine.dispose()


def current(url: str) -> str | None:
    """The revision the database at ``url`` is at (None: not migrated)."""
    from alembic.runtime.migration import MigrationContext

    engine = sa.create_engine(url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def head() -> str:
    """The latest revision of the store's migrations."""
    from alembic.script import ScriptDirectory

    return str(ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head())


def ready(url: str, migrate: bool) -> None:
    """Make sure the store at ``url`` is at the latest migration before a service uses it:
    migrate it (``migrate``), else raise RuntimeError naming what to run."""
    if migrate:
        upgrade(url)
        return
    at, latest = current(url), head()
    if at != latest:
        raise RuntimeError(
            f"the store is at migration {at or 'none'}, not {latest}, and "
            "RECLAIM_MIGRATE_ON_START is false: run `reclaim migrate` first"
        )
