"""The store's triggers as they are now: the rollups, and each payment's ``recovered``,
``merchant_retries`` and ``recovered_at``, kept by the database as payments and attempts are
inserted (every writer keeps them exact in its own transaction).

Migrations 0007 and 0008 created the first versions (a payment matched by its id); migration
0011 replaced them with these, which match a payment by its connected account and id, the
store's key. Payments and attempts are only ever inserted (an attempt's later update touches
its policy and propensity only), so inserts are all the triggers watch.
"""

from __future__ import annotations

#: The breakdowns kept per day: dimension -> its key as text ('' where unknown).
GROUPS = {
    "decline_code": "coalesce(p.decline_code, '')",
    "charge_model": "coalesce(p.charge_model, '')",
    "card_brand": "coalesce(p.card_brand, '')",
    "local_hour": "coalesce(cast(p.failed_local_hour AS TEXT), '')",
    "retries": "cast(p.merchant_retries AS TEXT)",
}

_DAY = {
    "sqlite": "strftime('%Y-%m-%d', p.failed_at)",
    "postgresql": "to_char(p.failed_at AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}
_MONTH = {
    "sqlite": "strftime('%Y-%m', p.failed_at)",
    "postgresql": "to_char(p.failed_at AT TIME ZONE 'UTC', 'YYYY-MM')",
}

#: The triggers and (PostgreSQL) functions, to drop: (name, table).
TRIGGERS = (
    ("stats_payment_added", "payments"),
    ("stats_attempt_added", "attempts"),
    ("recovered_at_payment", "payments"),
    ("recovered_at_attempt", "attempts"),
)


def _of(alias: str, acct: str, pid: str) -> str:
    """Rows of ``alias`` about the payment (``acct``, ``pid``): SQL expressions."""
    return f"{alias}.account_id = {acct} AND {alias}.payment_id = {pid}"


def _money(table: str) -> str:
    return ", ".join(
        f"{c} = {table}.{c} + excluded.{c}" for c in ("failed", "recovered", "amount", "fee")
    )


def contribute(dialect: str, sign: str, where: str) -> list[str]:
    """Statements adding ``sign`` (1 or -1) times the payments ``p`` matched by ``where`` to
    every rollup (``where`` 'true' with sign '1': the whole store, a backfill)."""
    day, month = _DAY[dialect], _MONTH[dialect]
    groups = " UNION ALL ".join(f"SELECT '{name}' AS dimension" for name in GROUPS)
    key = (
        "CASE g.dimension "
        + " ".join(f"WHEN '{name}' THEN {expr}" for name, expr in GROUPS.items())
        + " END"
    )
    sums = (
        f"sum({sign}), sum({sign} * p.recovered), sum({sign} * p.recovered * p.amount), "
        f"sum({sign} * p.recovered * coalesce(p.application_fee_amount, 0))"
    )
    return [
        f"INSERT INTO stats_days (day, currency, failed, recovered, amount, fee) "
        f"SELECT {day}, p.currency, {sums} FROM payments p WHERE {where} "
        f"GROUP BY {day}, p.currency "
        f"ON CONFLICT (day, currency) DO UPDATE SET {_money('stats_days')}",
        f"INSERT INTO stats_account_months (month, account_id, currency, failed, recovered, "
        f"amount, fee) SELECT {month}, p.account_id, p.currency, {sums} FROM payments p "
        f"WHERE {where} GROUP BY {month}, p.account_id, p.currency "
        f"ON CONFLICT (month, account_id, currency) DO UPDATE SET "
        f"{_money('stats_account_months')}",
        f"INSERT INTO stats_groups (day, dimension, key, failed, recovered) "
        f"SELECT {day}, g.dimension, {key}, sum({sign}), sum({sign} * p.recovered) "
        f"FROM payments p CROSS JOIN ({groups}) g WHERE {where} "
        f"GROUP BY {day}, g.dimension, {key} "
        f"ON CONFLICT (day, dimension, key) DO UPDATE SET "
        f"failed = stats_groups.failed + excluded.failed, "
        f"recovered = stats_groups.recovered + excluded.recovered",
    ]


def payment_state(acct: str, pid: str) -> str:
    """Sets a payment's ``recovered`` and ``merchant_retries`` from its stored attempts
    (attempts stored before their payment, as a bulk load may)."""
    of = _of("a", acct, pid)
    return (
        "UPDATE payments SET recovered = CASE WHEN EXISTS (SELECT 1 FROM attempts a WHERE "
        f"{of} AND a.outcome = 'succeeded') THEN 1 ELSE 0 END, "
        f"merchant_retries = (SELECT count(*) FROM attempts a WHERE {of} "
        "AND a.initiator = 'merchant' AND a.attempt_number > 0) "
        f"WHERE {_of('payments', acct, pid)} AND EXISTS (SELECT 1 FROM attempts a WHERE {of})"
    )


def first_success(acct: str, pid: str) -> str:
    """The time of the payment's first succeeded attempt (SQL)."""
    return (
        f"(SELECT min(a.attempted_at) FROM attempts a WHERE {_of('a', acct, pid)} "
        "AND a.outcome = 'succeeded')"
    )


_NEW = ("NEW.account_id", "NEW.payment_id")
_ATTEMPT_COUNTS = (
    "NEW.outcome = 'succeeded' OR (NEW.initiator = 'merchant' AND NEW.attempt_number > 0)"
)
_ATTEMPT_UPDATE = (
    "UPDATE payments SET "
    "recovered = CASE WHEN NEW.outcome = 'succeeded' THEN 1 ELSE recovered END, "
    "merchant_retries = merchant_retries + "
    "CASE WHEN NEW.initiator = 'merchant' AND NEW.attempt_number > 0 THEN 1 ELSE 0 END "
    f"WHERE {_of('payments', *_NEW)}"
)
_STORED = (
    f"UPDATE payments SET recovered_at = {first_success(*_NEW)} WHERE {_of('payments', *_NEW)}"
)
_SUCCEEDED = (
    f"UPDATE payments SET recovered_at = NEW.attempted_at WHERE {_of('payments', *_NEW)} "
    "AND (recovered_at IS NULL OR recovered_at > NEW.attempted_at)"
)
_HAS_SUCCESS = (
    f"EXISTS (SELECT 1 FROM attempts a WHERE {_of('a', *_NEW)} AND a.outcome = 'succeeded')"
)


def create(dialect: str) -> list[str]:
    """The statements that create the triggers (and PostgreSQL's functions)."""
    if dialect == "sqlite":
        p_new = _of("p", *_NEW)
        added = ";\n".join([payment_state(*_NEW), *contribute("sqlite", "1", p_new)])
        moved = ";\n".join(
            [*contribute("sqlite", "-1", p_new), _ATTEMPT_UPDATE, *contribute("sqlite", "1", p_new)]
        )
        return [
            f"CREATE TRIGGER stats_payment_added AFTER INSERT ON payments BEGIN {added}; END",
            f"CREATE TRIGGER stats_attempt_added AFTER INSERT ON attempts "
            f"WHEN {_ATTEMPT_COUNTS} BEGIN {moved}; END",
            "CREATE TRIGGER recovered_at_attempt AFTER INSERT ON attempts "
            f"WHEN NEW.outcome = 'succeeded' BEGIN {_SUCCEEDED}; END",
            "CREATE TRIGGER recovered_at_payment AFTER INSERT ON payments "
            f"WHEN {_HAS_SUCCESS} BEGIN {_STORED}; END",
        ]
    body = ";\n".join(contribute("postgresql", "s", _of("p", "acct", "pid")))
    out = [
        "CREATE FUNCTION stats_contribute(acct text, pid text, s bigint) RETURNS void "
        f"LANGUAGE plpgsql AS $$ BEGIN {body}; END $$",
        "CREATE FUNCTION stats_payment_added() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"{payment_state(*_NEW)}; PERFORM stats_contribute(NEW.account_id, NEW.payment_id, 1); "
        "RETURN NULL; END $$",
        "CREATE FUNCTION stats_attempt_added() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
        f"IF {_ATTEMPT_COUNTS} THEN PERFORM stats_contribute(NEW.account_id, NEW.payment_id, -1); "
        f"{_ATTEMPT_UPDATE}; PERFORM stats_contribute(NEW.account_id, NEW.payment_id, 1); "
        "END IF; RETURN NULL; END $$",
        "CREATE FUNCTION recovered_at_attempt() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN IF NEW.outcome = 'succeeded' THEN {_SUCCEEDED}; END IF; RETURN NULL; END $$",
        "CREATE FUNCTION recovered_at_payment() RETURNS trigger LANGUAGE plpgsql AS $$ "
        f"BEGIN IF {_HAS_SUCCESS} THEN {_STORED}; END IF; RETURN NULL; END $$",
    ]
    return out + [
        f"CREATE TRIGGER {name} AFTER INSERT ON {table} FOR EACH ROW EXECUTE FUNCTION {name}()"
        for name, table in TRIGGERS
    ]


def drop(dialect: str, functions: tuple[str, ...] = ()) -> list[str]:
    """The statements that drop the triggers and, on PostgreSQL, their functions
    (``functions``: the signatures of the helpers to drop as well)."""
    if dialect == "sqlite":
        return [f"DROP TRIGGER IF EXISTS {name}" for name, _ in TRIGGERS]
    return [f"DROP TRIGGER IF EXISTS {name} ON {table}" for name, table in TRIGGERS] + [
        f"DROP FUNCTION IF EXISTS {f}" for f in (*(f"{name}()" for name, _ in TRIGGERS), *functions)
    ]
