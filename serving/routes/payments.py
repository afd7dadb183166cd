"""``GET /v1/payments/{payment_id}``: a payment's state, attempts, messages and decisions."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Path, Query
from pydantic import BaseModel
from sqlalchemy.engine import Engine

from reclaim.fields import Identifier
from reclaim.serving.auth import Principal
from reclaim.serving.deps import EngineDep, ReaderDep
from reclaim.serving.store import repository as repo
from reclaim.serving.store import tables as t

router = APIRouter(prefix="/v1/payments", tags=["payments"])

PaymentId = Annotated[Identifier, Path(description="The payment's id (`in_…` or `pi_…`).")]
AccountId = Annotated[
    Identifier | None,
    Query(
        description="The connected account holding it: needed only when more than one of "
        "the key's accounts holds this id (Stripe ids are unique within an account)."
    ),
]


class PaymentView(BaseModel):
    payment: dict[str, Any]
    state: str  # recovered | open
    attempts: list[dict[str, Any]]
    messages: list[dict[str, Any]]
    decisions: list[dict[str, Any]]


def _rows(df) -> list[dict[str, Any]]:
    out = df.astype(object).where(df.notna(), None).to_dict("records")
    return [
        {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in r.items()} for r in out
    ]


@router.get(
    "/{payment_id}",
    summary="A payment's state, attempts, messages and decisions",
    responses={
        401: {"description": "Missing or invalid API key"},
        404: {"description": "Not held, or not visible to this key"},
        409: {"description": "Held by several of the key's accounts: name `account_id`"},
    },
)
def get_payment(
    payment_id: PaymentId, engine: EngineDep, principal: ReaderDep, account_id: AccountId = None
) -> PaymentView:
    accounts = holding(engine, payment_id, principal, account_id)
    if len(accounts) > 1:
        raise HTTPException(
            409,
            f"account_id: payment {payment_id!r} is held by more than one of this key's "
            "connected accounts; name the account",
        )
    view = payment_view(engine, (accounts[0], payment_id)) if accounts else None
    if view is None:
        raise HTTPException(404, f"no payment {payment_id!r}")
    return view


def holding(
    engine: Engine, payment_id: str, principal: Principal, account_id: str | None = None
) -> list[str]:
    """The accounts ``principal`` sees that hold ``payment_id`` (``account_id`` only, if
    given): what a key may know of an id; another account's copy is never counted."""
    held = repo.accounts_holding(engine, [payment_id], principal.accounts).get(payment_id, [])
    return [a for a in held if principal.sees(a) and account_id in (None, a)]


def payment_view(engine: Engine, key: repo.Ref) -> PaymentView | None:
    """A held payment with its history and decisions, or None when it is not held (the
    caller has checked that its key may see the account: :func:`holding`)."""
    tables = repo.load_contract(engine, [key])
    if tables.payments.empty:
        return None
    d = t.decision_log.c
    with engine.connect() as conn:
        decisions = [
            dict(r._mapping)
            for r in conn.execute(
                sa.select(t.decision_log)
                .where(d.account_id == key[0], d.payment_id == key[1])
                .order_by(d.decided_at, d.decision_id)
            )
        ]
    for d in decisions:
        d["explanation"] = json.loads(d["explanation"]) if d["explanation"] else []
        for k, v in d.items():
            if isinstance(v, datetime):
                d[k] = v.isoformat()
    recovered = (tables.attempts["outcome"] == "succeeded").any()
    return PaymentView(
        payment=_rows(tables.payments)[0],
        state="recovered" if recovered else "open",
        attempts=_rows(tables.attempts),
        messages=_rows(tables.messages),
        decisions=decisions,
    )


#: The payment list's status filter: every payment, the recovered ones, the ones not (yet).
PAYMENT_STATUSES = ("all", "recovered", "unrecovered")


def list_payments(
    engine: Engine,
    start: datetime,
    end: datetime,
    principal: Principal,
    status: str = "all",
    currency: str | None = None,
    account: str | None = None,
    limit: int = 50,
    offset: int = 0,
) -> tuple[list[dict[str, Any]], int]:
    """The payments whose first failure fell in ``[start, end)`` within the key's accounts,
    newest first, filtered by ``status`` (:data:`PAYMENT_STATUSES`), ``currency`` and
    ``account`` (its id); a page of them and how many there are in all."""
    if status not in PAYMENT_STATUSES:
        raise ValueError(f"status must be one of {PAYMENT_STATUSES}, got {status!r}")
    p = t.payments.c
    where = [p.failed_at >= start, p.failed_at < end]
    if status != "all":
        where.append(p.recovered.is_(status == "recovered"))
    if currency:
        where.append(p.currency == currency)
    if account:
        where.append(p.account_id == account)
    if principal.accounts is not None:
        where.append(p.account_id.in_(sorted(principal.accounts)))
    columns = (p.payment_id, p.account_id, p.customer_id, p.amount, p.currency, p.failed_at,
               p.decline_code, p.recovered, p.merchant_retries)  # fmt: skip
    query = (
        sa.select(*columns)
        .where(*where)
        .order_by(p.failed_at.desc(), p.account_id, p.payment_id)
        .limit(limit)
        .offset(offset)
    )
    with engine.connect() as conn:
        rows = [dict(r._mapping) for r in conn.execute(query)]
        total = int(conn.execute(sa.select(sa.func.count()).where(*where)).scalar() or 0)
    return rows, total


def find_payments(
    engine: Engine, text: str, principal: Principal, limit: int = 50
) -> list[dict[str, Any]]:
    """Held payments whose id or customer id is ``text``, within the key's accounts."""
    p = t.payments.c
    query = (
        sa.select(
            p.payment_id,
            p.account_id,
            p.customer_id,
            p.amount,
            p.currency,
            p.failed_at,
            p.decline_code,
        )  # fmt: skip
        .where(sa.or_(p.payment_id == text, p.customer_id == text))
        .order_by(p.failed_at.desc())
        .limit(limit)
    )
    if principal.accounts is not None:
        query = query.where(p.account_id.in_(sorted(principal.accounts)))
    with engine.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]
