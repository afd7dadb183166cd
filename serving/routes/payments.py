"""``GET /v1/payments/{payment_id}``: a payment's state, attempts, messages and decisions."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import sqlalchemy as sa
from fastapi import APIRouter, HTTPException, Path
from pydantic import BaseModel

from reclaim.fields import Identifier
from reclaim.serving.deps import EngineDep, ReaderDep
from reclaim.serving.store import repository as repo
from reclaim.serving.store import tables as t

router = APIRouter(prefix="/v1/payments", tags=["payments"])

PaymentId = Annotated[Identifier, Path(description="The payment's id (`in_…` or `pi_…`).")]


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
    },
)
def get_payment(payment_id: PaymentId, engine: EngineDep, principal: ReaderDep) -> PaymentView:
    tables = repo.load_contract(engine, [payment_id])
    if tables.payments.empty or not principal.sees(tables.payments["account_id"].iloc[0]):
        raise HTTPException(404, f"no payment {payment_id!r}")
    with engine.connect() as conn:
        decisions = [
            dict(r._mapping)
            for r in conn.execute(
                sa.select(t.decision_log)
                .where(t.decision_log.c.payment_id == payment_id)
                .order_by(t.decision_log.c.decided_at, t.decision_log.c.decision_id)
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
