"""The operational store on SQLite and PostgreSQL: migrations, contract round trip,
idempotent writes, events stored once."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pandas as pd
import pytest
import sqlalchemy as sa

from reclaim import contract
from reclaim.reference import RandomizedLogging
from reclaim.serving.store import repository as repo
from reclaim.serving.store import tables as t
from reclaim.serving.store.migrate import upgrade
from reclaim.serving.store.repository import make_engine
from reclaim.serving.store.tables import metadata
from reclaim.simulator import generate, rollout


@pytest.fixture(scope="module")
def history() -> contract.ContractTables:
    return rollout(generate(5, 200, seed=4), RandomizedLogging(), seed=4).tables


def test_migrations_create_every_table(engine) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    from reclaim.serving.store.migrate import alembic_config

    names = set(sa.inspect(engine).get_table_names())
    assert set(metadata.tables) <= names
    head = ScriptDirectory.from_config(alembic_config(str(engine.url))).get_current_head()
    with engine.connect() as conn:
        assert conn.execute(sa.text("select version_num from alembic_version")).scalar() == head
        # the migrations build exactly the tables the code declares
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []


def test_the_tenancy_migration_keys_every_stored_row_by_its_account(store_url, history) -> None:
    """A store written at revision 0010 (ids one namespace) upgraded to 0011: attempts,
    messages and decisions take their payment's account, planned actions and outbox
    messages their account in the key, nothing is lost, and the rebuilt triggers still keep
    a payment's recovery when a success arrives after the upgrade."""
    from reclaim.serving.store import stats
    from reclaim.serving.store import tables as t
    from reclaim.serving.store.migrate import upgrade

    upgrade(store_url, "0010")
    engine = make_engine(store_url)
    payments = history.payments.head(30).reset_index(drop=True)
    attempts = history.attempts[history.attempts["payment_id"].isin(payments["payment_id"])]
    messages = history.messages[history.messages["payment_id"].isin(payments["payment_id"])]
    first = payments.iloc[0]

    def old(name: str, columns: list[str]) -> sa.TableClause:
        return sa.table(name, *[sa.column(c) for c in columns])

    now = datetime.now(UTC)
    with engine.begin() as conn:
        known = [c.name for c in contract.PAYMENTS.columns]
        conn.execute(sa.insert(old("payments", known)), repo._records(payments))
        conn.execute(
            sa.insert(old("attempts", contract.ATTEMPTS.column_names)), repo._records(attempts)
        )
        conn.execute(
            sa.insert(old("messages", contract.MESSAGES.column_names)), repo._records(messages)
        )
        conn.execute(
            sa.insert(old("decision_log", ["payment_id", "decided_at", "model_version",
                                           "policy", "propensity"])),
            [{"payment_id": first["payment_id"], "decided_at": now, "model_version": "1",
              "policy": "learned", "propensity": 0.5}],
        )  # fmt: skip
        action = {"action_id": f"{first['payment_id']}:0:0", "payment_id": first["payment_id"],
                  "account_id": first["account_id"], "after_attempt": 0, "decided_at": now,
                  "status": "scheduled", "tries": 0, "updated_at": now}  # fmt: skip
        conn.execute(sa.insert(old("scheduled_actions", list(action))), [action])
    before = stats.overview(engine, *_whole_period(payments))
    upgrade(store_url)
    back = repo.load_contract(engine)
    assert len(back.payments) == 30 and len(back.attempts) == len(attempts)
    assert len(back.messages) == len(messages)
    owner = dict(zip(payments["payment_id"], payments["account_id"], strict=True))
    with engine.connect() as conn:
        for table in (t.attempts, t.messages, t.decision_log):
            rows = conn.execute(sa.select(table.c.account_id, table.c.payment_id)).all()
            assert rows and all(a == owner[pid] for a, pid in rows), table.name
        ids = conn.execute(sa.select(t.scheduled_actions.c.action_id)).scalars().all()
    assert ids == [f"{first['account_id']}:{first['payment_id']}:0:0"]
    assert stats.overview(engine, *_whole_period(payments)) == before
    won = back.attempts.loc[back.attempts["outcome"] == "succeeded", "payment_id"]
    lost = back.payments[~back.payments["payment_id"].isin(won)].iloc[0]
    with engine.begin() as conn:
        repo.insert_rows_ignoring(conn, t.attempts, [{
            "account_id": lost["account_id"], "payment_id": lost["payment_id"],
            "attempt_number": 99, "attempted_at": lost["failed_at"] + pd.Timedelta(days=1),
            "initiator": "customer", "outcome": "succeeded"}])  # fmt: skip
    key = (lost["account_id"], lost["payment_id"])
    assert repo.load_payments(engine, [key])[key]["recovered"] == 1
    engine.dispose()


def _whole_period(payments: pd.DataFrame) -> tuple:
    return (payments["failed_at"].min() - pd.Timedelta(days=1)).to_pydatetime(), (
        payments["failed_at"].max() + pd.Timedelta(days=1)
    ).to_pydatetime()


def test_the_local_hour_migration_fills_payments_stored_before_it(store_url, history) -> None:
    """Payments stored at revision 0005 get their customer's local hour of the first failure
    when the store is upgraded; payments inserted later get it on insert."""
    from reclaim.serving.store import tables as t
    from reclaim.serving.store.migrate import upgrade

    upgrade(store_url, "0005")
    engine = make_engine(store_url)
    payments = history.payments.head(60).copy()
    payments.loc[payments.index[:5], "customer_timezone"] = None
    before = sa.table(
        "payments",
        *[sa.column(c.name, t.payments.c[c.name].type) for c in contract.PAYMENTS.columns],
    )
    with engine.begin() as conn:
        conn.execute(sa.insert(before), repo._records(payments.iloc[:40]))
    upgrade(store_url)
    later = payments.iloc[40:].reset_index(drop=True)
    repo.save_contract(
        engine,
        {
            "payments": later,
            "attempts": contract.first_failures(later),
            "messages": contract.empty(contract.MESSAGES),
        },
    )
    with engine.connect() as conn:
        query = sa.select(t.payments.c.payment_id, t.payments.c.failed_local_hour)
        got = {pid: hour for pid, hour in conn.execute(query)}
    engine.dispose()
    want = {
        pid: None if tz is None or pd.isna(tz) else at.tz_convert(tz).hour
        for pid, at, tz in payments[["payment_id", "failed_at", "customer_timezone"]].itertuples(
            index=False
        )
    }
    assert got == want and len({h for h in want.values() if h is not None}) > 10


def test_contract_rows_round_trip(engine, history) -> None:
    counts = repo.save_contract(engine, history)
    assert counts == {
        "payments": 200,
        "attempts": len(history.attempts),
        "messages": len(history.messages),
    }
    back = repo.load_contract(engine)
    key = {
        "payments": ["payment_id"],
        "attempts": ["payment_id", "attempt_number"],
        "messages": ["message_id"],
    }
    for name, cols in key.items():
        got = getattr(back, name).sort_values(cols).reset_index(drop=True)
        want = getattr(history, name).sort_values(cols).reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12)


def test_writes_are_idempotent_and_keep_the_first_failure(engine, history) -> None:
    repo.save_contract(engine, history)
    later = history.payments.copy()
    later["failed_at"] = later["failed_at"] + pd.Timedelta(days=1)
    again = repo.save_contract(
        engine,
        {
            "payments": later,
            "attempts": history.attempts.iloc[:0],
            "messages": history.messages.iloc[:0],
        },
    )
    assert again == {"payments": 0, "attempts": 0, "messages": 0}
    back = repo.load_contract(engine, [repo.ref(history.payments.iloc[0])])
    assert back.payments["failed_at"].iloc[0] == history.payments["failed_at"].iloc[0]


def test_bad_rows_write_nothing(engine, history) -> None:
    bad = history.payments.copy()
    bad.loc[3, "amount"] = -5
    with pytest.raises(contract.ContractError, match="'amount'"):
        repo.save_contract(
            engine, {"payments": bad, "attempts": history.attempts, "messages": history.messages}
        )
    assert len(repo.load_contract(engine).payments) == 0


def test_an_event_is_stored_once_however_often_it_arrives(engine) -> None:
    body = json.dumps({"id": "evt_1", "type": "invoice.payment_failed"})
    kwargs = dict(
        event_id="evt_1",
        endpoint="platform",
        event_type="invoice.payment_failed",
        account_id=None,
        livemode=False,
        payload=body,
    )
    assert repo.record_event(engine, **kwargs) is True
    assert repo.record_event(engine, **kwargs) is False
    assert repo.record_event(engine, **kwargs) is False
    with engine.connect() as conn:
        rows = conn.execute(sa.text("select deliveries, status from stripe_events")).all()
    assert rows == [(3, "received")]


def test_account_configuration_is_upserted_and_validated(engine) -> None:
    from pydantic import ValidationError

    from reclaim.serving.store import configs

    configs.replace_overrides(engine, "*", {"max_messages": 1})
    configs.replace_overrides(engine, "acct_1", {"opted_out": True})
    configs.replace_overrides(engine, "acct_1", {"max_retries": 2})  # replaces, not merges
    with pytest.raises(ValidationError, match="max_retries"):
        configs.replace_overrides(engine, "acct_1", {"max_retries": "many"})
    got = configs.effective_configs(engine, ["acct_1", "acct_2"])
    assert got["acct_1"].max_retries == 2 and not got["acct_1"].opted_out
    assert got["acct_1"].max_messages == got["acct_2"].max_messages == 1
    assert got["acct_2"].max_retries is None


def test_configuration_cache_trusts_a_read_for_its_ttl_and_forgets_on_clear(
    engine, monkeypatch
) -> None:
    """A change made elsewhere shows once the entry is older than ``ttl``; one made through
    this process (``clear``) at once; a read begun before a clear is not kept."""
    from reclaim.serving.store import configs

    now = [0.0]
    cache = configs.ConfigCache(ttl=5.0, clock=lambda: now[0])
    assert cache.effective(engine, ["acct_1"])["acct_1"].max_retries is None
    configs.replace_overrides(engine, "acct_1", {"max_retries": 2})  # another process
    now[0] = 4.0
    assert cache.effective(engine, ["acct_1"])["acct_1"].max_retries is None  # trusted
    now[0] = 5.5
    assert cache.effective(engine, ["acct_1"])["acct_1"].max_retries == 2  # expired, re-read
    configs.replace_overrides(engine, "*", {"max_messages": 1})  # this process: clear
    cache.clear()
    assert cache.effective(engine, ["acct_1"])["acct_1"].max_messages == 1

    read = configs.effective_configs

    def racing(engine, ids):  # a PUT lands while this read is in flight
        found = read(engine, ids)
        configs.replace_overrides(engine, "acct_1", {"max_retries": 1})
        cache.clear()
        return found

    cache.clear()
    monkeypatch.setattr(configs, "effective_configs", racing)
    assert cache.effective(engine, ["acct_1", "acct_2"])["acct_1"].max_retries == 2
    monkeypatch.setattr(configs, "effective_configs", read)
    assert cache.effective(engine, ["acct_1"])["acct_1"].max_retries == 1  # not the old read
    assert configs.ConfigCache(ttl=0).effective(engine, ["acct_1"])["acct_1"].max_retries == 1


def test_a_store_that_takes_no_writes_is_reported_and_one_that_does_is_not(store_url):
    """What /readyz asks: a probe that waits a moment for the write lock and writes nothing."""
    from reclaim.serving.store.repository import writes_blocked

    upgrade(store_url)
    engine = make_engine(store_url)
    blocker = make_engine(store_url)
    try:
        assert writes_blocked(engine, 0.2) is None
        with blocker.connect() as conn:
            if engine.dialect.name == "sqlite":
                conn.exec_driver_sql("BEGIN IMMEDIATE")  # another writer holds the lock
            else:
                conn.exec_driver_sql("LOCK TABLE stripe_events IN ACCESS EXCLUSIVE MODE")
            blocked = writes_blocked(engine, 0.2)
            assert blocked is not None and blocked.startswith("writes blocked"), blocked
            conn.rollback()
        assert writes_blocked(engine, 0.2) is None
        with engine.connect() as conn:  # the probe left nothing behind
            assert (
                conn.execute(sa.select(sa.func.count()).select_from(t.stripe_events)).scalar() == 0
            )
    finally:
        blocker.dispose()
        engine.dispose()


def test_a_store_error_names_no_customer_data(store_url):
    """A failed write's error (logged, and kept with a failed webhook event) holds the
    statement but not its values (PostgreSQL's detail quotes the key: not kept either)."""
    upgrade(store_url)
    engine = make_engine(store_url)
    row = {  # the key (account, object) is quoted by PostgreSQL's detail; the rest is not
        "account_id": "acct_1",
        "object_id": "pi_secret_1",
        "payment_id": "in_cus_private_42",
    }
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(t.payment_aliases), [row])
        with pytest.raises(sa.exc.IntegrityError) as raised:
            with engine.begin() as conn:
                conn.execute(sa.insert(t.payment_aliases), [row])
    finally:
        engine.dispose()
    assert "in_cus_private_42" not in str(raised.value)  # hide_parameters
    kept = repo.describe_error(raised.value)  # what a failed event keeps
    assert kept.startswith("IntegrityError") and "payment_aliases" in kept, kept
    assert "in_cus_private_42" not in kept and "pi_secret_1" not in kept, kept
