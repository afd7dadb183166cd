"""The store's tests run on SQLite and on PostgreSQL (127.0.0.1:5432, database ``test``), each
in a fresh database or schema migrated to head. PostgreSQL tests skip, saying why, only where
no server answers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from reclaim.serving.store.migrate import upgrade
from reclaim.serving.store.repository import make_engine

PG_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


def _postgres_available() -> str | None:
    try:
        with sa.create_engine(PG_URL, connect_args={"connect_timeout": 3}).connect() as conn:
            conn.execute(sa.text("select 1"))
        return None
    except Exception as exc:  # any failure to connect means: no server here
        return f"no PostgreSQL server answers at {PG_URL}: {type(exc).__name__}"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store_url(request, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'store.db'}"
        return
    reason = _postgres_available()
    if reason:
        pytest.skip(reason)
    schema = f"reclaim_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'create schema "{schema}"'))
    try:
        yield f"{PG_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'drop schema "{schema}" cascade'))
        admin.dispose()


@pytest.fixture
def engine(store_url: str):
    upgrade(store_url)
    engine = make_engine(store_url)
    yield engine
    engine.dispose()
