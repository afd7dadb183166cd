"""``GET /v1/stats/...``: recovery statistics for people and dashboards, computed in the
database (``serving.store.stats``), each limited to the accounts the key may see."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from reclaim.fields import Identifier
from reclaim.serving.auth import Principal, Role
from reclaim.serving.deps import EngineDep, require
from reclaim.serving.store import stats

router = APIRouter(prefix="/v1/stats", tags=["stats"])

AnalystDep = Annotated[Principal, Depends(require(Role.ANALYST))]
RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"description": "Missing or invalid API key"},
    403: {"description": "Not an analyst or admin key"},
    404: {"description": "An account this key does not see"},
    422: {"description": "Bad dates or parameters"},
}


class CurrencyTotals(BaseModel):
    currency: str
    failed: int
    recovered: int
    recovery_rate: float = Field(ge=0, le=1)
    recovered_amount: float = Field(description="Major units of `currency`.")
    platform_fee: float = Field(description="The platform's application fees recovered.")
    account_share: float = Field(description="What the connected accounts recovered.")


class DayTotals(BaseModel):
    day: str = Field(description="UTC day of the first failure, YYYY-MM-DD.")
    currency: str
    failed: int
    recovered: int
    recovered_amount: float


class Overview(BaseModel):
    start: date
    end: date = Field(description="Last day included.")
    currencies: list[CurrencyTotals]
    previous: list[CurrencyTotals] = Field(
        description="The same totals for the period of the same length just before."
    )
    by_day: list[DayTotals]
    previous_by_day: list[DayTotals] = Field(
        description="The previous period's days (its first day is compared with `start`)."
    )


class AccountTotals(CurrencyTotals):
    account_id: str


class AccountPage(BaseModel):
    total: int = Field(description="Rows (account and currency) in all pages.")
    rows: list[AccountTotals]


MAX_PERIOD_DAYS = 1096
"""The longest period a page or a stats query covers: three years (a day per row of a chart,
so a request cannot ask the server for centuries of days)."""


def period(start: date | None, end: date | None) -> tuple[datetime, datetime, date, date]:
    """``[start, end]`` as UTC datetimes, ``end`` inclusive; by default the last 30 days. A
    period longer than :data:`MAX_PERIOD_DAYS` is a 422 naming the limit."""
    last = end or datetime.now(UTC).date()
    first = start or last - timedelta(days=29)
    if first > last:
        raise HTTPException(422, f"start {first} is after end {last}")
    if (last - first).days + 1 > MAX_PERIOD_DAYS:
        raise HTTPException(
            422,
            f"the period {first} to {last} is {(last - first).days + 1:,} days; at most "
            f"{MAX_PERIOD_DAYS:,} (three years)",
        )
    lo = datetime.combine(first, time(), tzinfo=UTC)
    return lo, datetime.combine(last + timedelta(days=1), time(), tzinfo=UTC), first, last


def _visible(principal: Principal, account_id: str | None) -> frozenset[str] | None:
    if account_id is None:
        return principal.accounts
    if not principal.sees(account_id):
        raise HTTPException(404, f"no account {account_id!r}")
    return frozenset({account_id})


Day = Annotated[date | None, Query(ge=date(2000, 1, 1), le=date(2999, 12, 31))]


@router.get("/overview", summary="Failed and recovered payments per currency", responses=RESPONSES)
async def get_overview(
    engine: EngineDep,
    principal: AnalystDep,
    start: Day = None,
    end: Day = None,
    account_id: Annotated[Identifier | None, Query()] = None,
) -> Overview:
    lo, hi, first, last = period(start, end)
    found = await run_in_threadpool(stats.overview, engine, lo, hi, _visible(principal, account_id))
    return Overview(start=first, end=last, **found)


@router.get("/accounts", summary="Recovery per connected account", responses=RESPONSES)
async def get_accounts(
    engine: EngineDep,
    principal: AnalystDep,
    start: Day = None,
    end: Day = None,
    search: Annotated[str | None, Query(max_length=100, pattern=r"^[\w\-]*$")] = None,
    sort: Literal["failed", "recovered", "recovery_rate", "recovered_amount", "account_id"] = (
        "failed"
    ),
    order: Literal["asc", "desc"] = "desc",
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> AccountPage:
    lo, hi, _, _ = period(start, end)
    rows, total = await run_in_threadpool(
        stats.account_rows,
        engine,
        lo,
        hi,
        principal.accounts,
        search,
        sort,
        order == "desc",
        limit,
        offset,
    )
    return AccountPage(total=total, rows=rows)


class GroupTotals(BaseModel):
    key: str = Field(description="The group: a decline code or category, a charge model, ….")
    failed: int
    recovered: int
    recovery_rate: float = Field(ge=0, le=1)


class Operations(BaseModel):
    due: int = Field(description="Retries due and not yet made.")
    oldest_due_seconds: float = Field(description="How late the oldest of them is.")
    in_flight: int
    webhooks_stuck: int | None = Field(
        description="Webhook events unprocessed past RECLAIM_WEBHOOK_STUCK_SECONDS "
        "(platform-wide keys only: an event names no account until processed)."
    )
    webhooks_dead: int | None = Field(
        description="Webhook events set aside after failing every try (platform-wide keys "
        "only; `reclaim events list --status dead`, `reclaim events retry`)."
    )
    webhooks_rejected_30d: int | None = Field(
        description="Webhook events of the last 30 days refused as outside the bounds Reclaim "
        "stores (an amount, a currency, a time), kept with the reason (platform-wide keys only)."
    )
    network_cap_hits_30d: int


@router.get("/breakdown", summary="Recovery by decline, charge model, brand, retries or local hour",
            responses=RESPONSES)  # fmt: skip
async def get_breakdown(
    engine: EngineDep,
    principal: AnalystDep,
    by: Literal[
        "decline_category", "decline_code", "charge_model", "card_brand", "retries", "local_hour"
    ],
    start: Day = None,
    end: Day = None,
) -> list[GroupTotals]:
    lo, hi, _, _ = period(start, end)
    rows = await run_in_threadpool(stats.breakdown, engine, lo, hi, by, principal.accounts)
    return [GroupTotals(**r) for r in rows]


@router.get("/operations", summary="How the scheduler and webhooks keep up", responses=RESPONSES)
async def get_operations(request: Request, engine: EngineDep, principal: AnalystDep) -> Operations:
    found = await run_in_threadpool(
        stats.operations,
        engine,
        datetime.now(UTC),
        request.app.state.settings.webhook_stuck_seconds,
        principal.accounts,
    )
    return Operations(**found)
