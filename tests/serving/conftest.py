"""The store's tests run on SQLite and on PostgreSQL (127.0.0.1:5432, database ``test``), each
in a fresh database or schema migrated to head. PostgreSQL tests skip, saying why, only where
no server answers."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from pydantic import SecretStr

from reclaim.serving.app import create_app
from reclaim.serving.auth import create_key
from reclaim.serving.store.migrate import upgrade
from reclaim.serving.store.repository import make_engine
from reclaim.settings import Settings

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


@pytest.fixture
def client(tmp_path, trained):
    """The API on SQLite serving the trained policy, called with a scheduler key."""
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'api.db'}",
        mlflow_tracking_uri=trained.tracking_uri,
        stripe_webhook_secret_platform=SecretStr("whsec_p"),
        stripe_webhook_secret_connect=SecretStr("whsec_c"),
        policy_reload_seconds=3600,
    )
    with TestClient(create_app(settings)) as c:
        _, key = create_key(c.app.state.engine, "scheduler")
        c.headers["Authorization"] = f"Bearer {key}"
        yield c


@pytest.fixture
def inline_payment(trained):
    """``inline_payment(i)``: a decision request's payment context, on the account of the
    trained marketplace's ``i``-th payment."""

    def make(i: int = 0) -> dict:
        p = trained.market.payments.iloc[i]
        return {
            "payment_id": f"in_api_{i}",
            "object": "invoice",
            "account_id": p["account_id"],
            "charge_model": p["charge_model"],
            "on_behalf_of": bool(p["on_behalf_of"]),
            "amount": 4900,
            "currency": "usd",
            "customer_id": f"cus_api_{i}",
            "customer_country": "US",
            "customer_timezone": "America/Chicago",
            "card_brand": "visa",
            "card_funding": "debit",
            "card_country": "US",
            "billing_reason": "subscription_cycle",
            "failed_at": "2026-05-20T14:00:00Z",
            "decline_code": "insufficient_funds",
            "advice_code": "try_again_later",
            "network_decline_code": "51",
        }

    return make
