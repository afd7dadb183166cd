"""The dashboard: server-rendered pages over the ``/v1/stats`` queries, behind the API keys.

Sign-in takes an analyst or admin key once and gives a session cookie (HTTP-only,
``SameSite=Strict``, ``Secure`` unless ``RECLAIM_DASHBOARD_SECURE_COOKIES=false``) holding the
key's id and an expiry, signed with HMAC-SHA256; every page looks the key up again, so revoking
it ends its sessions. Forms that change anything (sign-in, sign-out) carry a CSRF token that
must match a cookie set with the form (double submit). Charts are SVG drawn here: the pages
load nothing from the internet and run no script.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import hmac
import io
import json
import logging
import secrets
import threading
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlencode

import jinja2
from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from reclaim.account_config import PLATFORM, effective
from reclaim.contract import ContractError, is_null, major, money
from reclaim.intervals import duration, percent
from reclaim.serving.auth import Principal, Role, Unauthorized, authenticate, principal_of
from reclaim.serving.routes.payments import (
    PAYMENT_STATUSES,
    find_payments,
    holding,
    list_payments,
    payment_view,
)
from reclaim.serving.routes.stats import MAX_PERIOD_DAYS, period
from reclaim.serving.store import configs, experiments, profiles, stats
from reclaim.timeutil import as_utc

log = logging.getLogger(__name__)
router = APIRouter(include_in_schema=False)
SESSION, CSRF = "reclaim_session", "reclaim_csrf"
_templates = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
    autoescape=True,
    undefined=jinja2.StrictUndefined,
)


_templates.filters["money"] = money
_templates.filters["percent"] = percent
_templates.filters["duration"] = duration
_templates.globals["major"] = major


def _secret(request: Request) -> bytes:
    settings = request.app.state.settings
    if settings.dashboard_session_secret is not None:
        return settings.dashboard_session_secret.get_secret_value().encode()
    state = request.app.state
    if not hasattr(state, "dashboard_secret"):
        state.dashboard_secret = secrets.token_bytes(32)
    return state.dashboard_secret


def _sign(request: Request, payload: dict[str, Any]) -> str:
    body = base64.urlsafe_b64encode(json.dumps(payload, separators=(",", ":")).encode()).decode()
    mac = hmac.new(_secret(request), body.encode(), hashlib.sha256).hexdigest()
    return f"{body}.{mac}"


def _unsign(request: Request, token: str | None) -> dict[str, Any] | None:
    if not token or token.count(".") != 1:
        return None
    body, mac = token.split(".")
    want = hmac.new(_secret(request), body.encode(), hashlib.sha256).hexdigest()
    if not hmac.compare_digest(mac, want):
        return None
    try:
        payload = json.loads(base64.urlsafe_b64decode(body.encode()))
    except ValueError:
        return None
    if not isinstance(payload, dict) or payload.get("exp", 0) < time.time():
        return None
    return payload


async def _principal(request: Request) -> Principal | None:
    payload = _unsign(request, request.cookies.get(SESSION))
    if payload is None or not isinstance(payload.get("key"), str):
        return None
    found = await run_in_threadpool(principal_of, request.app.state.engine, payload["key"])
    return found if found is not None and found.role in (Role.ANALYST, Role.ADMIN) else None


async def _page(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A rendered page, rendered off the event loop (three years of daily bars make a page
    of megabytes: other requests, ``/healthz`` among them, go on meanwhile)."""
    return await run_in_threadpool(_render, request, template, status, **context)


def _render(request: Request, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A rendered page; a signed-in one gets its sign-out form's token."""
    if "principal" in context:
        context.setdefault("csrf", _logout_token(request))
    context.setdefault("error", None)
    context.setdefault("note", None)
    html = _templates.get_template(template).render(request=request, **context)
    return HTMLResponse(html, status_code=status, headers={"Cache-Control": "no-store"})


async def _login_page(
    request: Request, error: str | None = None, status: int = 200
) -> HTMLResponse:
    token = secrets.token_urlsafe(32)
    response = await _page(request, "login.html", status, csrf=token, error=error)
    response.set_cookie(
        CSRF, token, httponly=True, samesite="strict", path="/dashboard",
        secure=request.app.state.settings.dashboard_secure_cookies,
    )  # fmt: skip
    return response


async def _form(request: Request) -> dict[str, str]:
    body = await request.body()
    if len(body) > 4096:
        return {}
    try:
        fields = parse_qs(body.decode("utf-8"), max_num_fields=10)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in fields.items()}


def _csrf_ok(request: Request, form: dict[str, str]) -> bool:
    cookie, sent = request.cookies.get(CSRF), form.get("csrf")
    return bool(cookie and sent and hmac.compare_digest(cookie, sent))


@router.get("/")
async def root() -> RedirectResponse:
    return RedirectResponse("/dashboard", status_code=303)


@router.get("/dashboard/login")
async def login_form(request: Request) -> HTMLResponse:
    return await _login_page(request)


@router.post("/dashboard/login")
async def login(request: Request) -> Response:
    form = await _form(request)
    if not _csrf_ok(request, form):
        return await _login_page(request, "The form expired: sign in again.", 403)
    try:
        principal = await run_in_threadpool(
            authenticate, request.app.state.engine, form.get("key", "").strip()
        )
    except Unauthorized:
        return await _login_page(request, "Unknown or revoked key.", 401)
    if principal.role not in (Role.ANALYST, Role.ADMIN):
        return await _login_page(request, "The dashboard takes an analyst or admin key.", 403)
    hours = request.app.state.settings.dashboard_session_hours
    token = _sign(request, {"key": principal.key_id, "exp": time.time() + hours * 3600})
    response = RedirectResponse("/dashboard", status_code=303)
    response.set_cookie(
        SESSION, token, httponly=True, samesite="strict", path="/",
        secure=request.app.state.settings.dashboard_secure_cookies, max_age=int(hours * 3600),
    )  # fmt: skip
    response.delete_cookie(CSRF, path="/dashboard")
    return response


@router.post("/dashboard/logout")
async def logout(request: Request) -> Response:
    form = await _form(request)
    if not _csrf_logout_ok(request, form):
        return RedirectResponse("/dashboard", status_code=303)
    response = RedirectResponse("/dashboard/login", status_code=303)
    response.delete_cookie(SESSION, path="/")
    return response


def _dates(request: Request) -> tuple[date | None, date | None, str | None]:
    def parse(name: str) -> date | None:
        value = request.query_params.get(name)
        if not value:
            return None
        day = date.fromisoformat(value)
        if not date(2000, 1, 1) <= day <= date(2999, 12, 31):
            raise ValueError(f"{name} must be between 2000 and 2999")
        return day

    try:
        return parse("start"), parse("end"), None
    except ValueError as exc:
        return None, None, f"Dates as YYYY-MM-DD: {exc}"


async def _chosen_period(
    request: Request, principal: Principal, within: list[str] | None = None
) -> tuple[datetime, datetime, date, date, str | None, str | None]:
    """The page's period from ``start`` and ``end``; where they are not dates or run
    backwards, the default with a note. By default the period is the 30 days up to the
    newest failed payment the key sees (today, when there is one today or none at all), with
    a note when that is not today: a store of past data opens on its data, not on an empty
    month (``within``: the accounts a page shows, when fewer than the key sees). Returns the
    period as datetimes and dates, the error, and the note."""
    start, end, error = _dates(request)
    if start is not None and end is not None and start > end:
        start, end, error = None, None, "The start was after the end: the default period."
    today, note = datetime.now(UTC).date(), None
    if end is None:
        newest = await run_in_threadpool(
            stats.newest_failure, request.app.state.engine, within or principal.accounts
        )
        if newest is not None and newest < today:
            end = newest
            if start is None:
                note = (
                    f"The newest failed payment is from {newest:%Y-%m-%d}: the 30 days up to "
                    "it (choose other dates above)."
                )
    last = end or today
    if start is not None and (last - start).days + 1 > MAX_PERIOD_DAYS:
        start = last - timedelta(days=MAX_PERIOD_DAYS - 1)
        n = f"{MAX_PERIOD_DAYS:,}"
        error = f"Periods are at most {n} days: the {n} days ending {last}."
        end = last
    return (*period(start, end), error, note)


def _storable(text: str, limit: int) -> bool:
    """Whether an id from a page's path could be stored (at most ``limit`` printable
    characters): anything else is not found without asking the store."""
    return len(text) <= limit and text.isprintable()


def _signed_out() -> RedirectResponse:
    return RedirectResponse("/dashboard/login", status_code=303)


@router.get("/dashboard")
async def overview(request: Request) -> Response:
    principal = await _principal(request)
    if principal is None:
        return _signed_out()
    lo, hi, first, last, error, note = await _chosen_period(request, principal)
    engine = request.app.state.engine
    found = await run_in_threadpool(stats.overview, engine, lo, hi, principal.accounts)
    shown = await run_in_threadpool(
        _recovery, found, first, last, request.query_params.get("currency"),
        request.app.state.settings,
    )  # fmt: skip
    shown.update(await _how_they_ended(engine, lo, hi, principal.accounts, shown["rows"]))
    shown["where"] = await _where_the_data_is(request, shown["rows"], principal.accounts)
    if request.query_params.get("format") == "csv":
        return _overview_csv(request, shown, f"{first}_{last}")
    return await _page(
        request, "overview.html", principal=principal, first=first, last=last, error=error,
        note=note,
        **shown,
    )  # fmt: skip


async def _where_the_data_is(
    request: Request, rows: list[dict[str, Any]], accounts: Any
) -> date | None:
    """For an empty period: the day of the newest failed payment ``accounts`` hold (the page
    offers the 30 days up to it), or None (the period has data, or there is none at all)."""
    if rows:
        return None
    return await run_in_threadpool(stats.newest_failure, request.app.state.engine, accounts)


def _csv(rows: list[dict[str, Any]], name: str) -> Response:
    """Rows as a CSV download (a header from the first row's keys)."""
    buffer = io.StringIO()
    if rows:
        writer = csv.DictWriter(buffer, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return Response(
        buffer.getvalue(),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )


#: The overview's tables besides the currency table, by the ``table`` a CSV link asks for.
OVERVIEW_TABLES = ("paths", "endings", "times")


def _overview_csv(request: Request, shown: dict[str, Any], name: str) -> Response:
    """One of the overview's (or an account page's) tables as CSV: ``table`` names it (one of
    :data:`OVERVIEW_TABLES`), else the currency table."""
    table = request.query_params.get("table")
    if table in OVERVIEW_TABLES:
        rows = [{k: (round(v, 6) if k == "share" else v) for k, v in row.items()}
                for row in shown[table]]  # fmt: skip
        return _csv(rows, f"{table}_{name}.csv")
    return _csv(_currency_rows(shown), f"recovery_{name}.csv")


def _currency_rows(shown: dict[str, Any]) -> list[dict[str, Any]]:
    """The overview's table as CSV rows: money in each currency's major units."""
    out = [
        {
            "currency": row["currency"], "failed": row["failed"], "recovered": row["recovered"],
            "recovery_rate": round(row["recovery_rate"], 6),
            "recovered_amount": row["recovered_amount"], "platform_fee": row["platform_fee"],
            "account_share": row["account_share"],
        }
        for row in shown["rows"]
    ]  # fmt: skip
    total = shown["total"]
    if total is not None:
        out.append(
            {"currency": f"all, in {total['currency']} at RECLAIM_REPORT_FX",
             "failed": total["failed"], "recovered": total["recovered"],
             "recovery_rate": round(total["recovery_rate"], 6),
             "recovered_amount": round(total["recovered_amount"], 2),
             "platform_fee": round(total["platform_fee"], 2),
             "account_share": round(total["account_share"], 2)}
        )  # fmt: skip
    return out


async def _how_they_ended(
    engine: Any, lo: datetime, hi: datetime, accounts: Any, rows: list[dict[str, Any]]
) -> dict[str, Any]:
    """What the overview and an account page show below the currency table: how recovered
    payments came back (``paths``), how every failed payment stands (``endings``, each with
    its share of its currency's failed payments), how long recoveries took (``times``, each
    with its share of the recovered) and their median (``median_days``)."""
    paths = await run_in_threadpool(stats.recovery_paths, engine, lo, hi, accounts)
    ended = await run_in_threadpool(stats.endings, engine, lo, hi, accounts)
    failed = {r["currency"]: r["failed"] for r in rows}
    order = list(failed)
    endings = sorted(
        ({**e, "share": e["payments"] / failed[e["currency"]]}
         for e in ended["endings"] if failed.get(e["currency"])),
        key=lambda e: order.index(e["currency"]),
    )  # fmt: skip
    recovered = sum(t["payments"] for t in ended["times"])
    times = [{**t, "share": t["payments"] / recovered if recovered else 0.0}
             for t in ended["times"]]  # fmt: skip
    return {"paths": _paths(paths, rows), "endings": endings, "times": times if recovered else [],
            "median_days": ended["median_days"]}  # fmt: skip


def _paths(paths: list[dict[str, Any]], rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """:func:`stats.recovery_paths` with each way's share of its currency's recovered
    payments, the currencies in the order of ``rows``."""
    recovered = {r["currency"]: r["recovered"] for r in rows}
    order = list(recovered)
    out = [
        {**p, "share": p["payments"] / recovered[p["currency"]] if recovered.get(p["currency"])
         else 0.0}
        for p in paths
        if p["currency"] in recovered
    ]  # fmt: skip
    return sorted(out, key=lambda p: order.index(p["currency"]))


def _total(rows: list[dict[str, Any]], settings: Any) -> tuple[dict[str, Any] | None, list[str]]:
    """All currencies together in the reporting currency, at ``RECLAIM_REPORT_FX``'s stated
    rates (its amount per major unit of each currency), and the currencies it has no rate
    for (then no total: currencies are never summed without a stated rate)."""
    fx, cur = settings.report_fx, settings.report_currency
    missing = sorted({r["currency"] for r in rows} - set(fx))
    if missing or len(rows) < 2:
        return None, missing
    failed, recovered = sum(r["failed"] for r in rows), sum(r["recovered"] for r in rows)
    total = {"currency": cur, "failed": failed, "recovered": recovered,
             "recovery_rate": recovered / failed if failed else 0.0}  # fmt: skip
    for key in ("recovered_amount", "platform_fee", "account_share"):
        total[key] = sum(r[key] * fx[r["currency"]] for r in rows)
    return total, []


def _recovery(
    found: dict[str, Any],
    first: date,
    last: date,
    currency: str | None = None,
    settings: Any = None,
) -> dict[str, Any]:
    """What ``_recovery.html`` shows of :func:`stats.overview`: rows per currency (the most
    failed payments first), the previous period's by currency, the total in the reporting
    currency where every currency has a stated rate, and one daily chart: of ``currency``
    where it has payments, else of the currency with the most."""
    rows = sorted(found["currencies"], key=lambda r: (-r["failed"], r["currency"]))
    names = [row["currency"] for row in rows]
    chosen = currency if currency in names else (names[0] if names else None)
    total, unrated = _total(rows, settings) if settings is not None else (None, [])
    chart = None
    if chosen is not None:
        chart = _bars(
            chosen,
            [d for d in found["by_day"] if d["currency"] == chosen],
            [d for d in found["previous_by_day"] if d["currency"] == chosen],
            first,
            last,
        )
    return {
        "rows": rows, "previous": {row["currency"]: row for row in found["previous"]},
        "currencies": names, "chosen": chosen, "charts": [chart] if chart else [],
        "total": total, "unrated": unrated,
        "report_currency": settings.report_currency if settings is not None else "usd",
    }  # fmt: skip


SETTING_LABELS = {
    "opted_out": "Opted out of Reclaim",
    "max_retries": "Retries per payment at most",
    "allowed_channels": "Channels allowed",
    "max_messages": "Messages per payment at most",
    "sender": "Who messages customers",
    "orchestration": "Stripe Orchestration",
    "branding": "Branding of messages",
}


def _settings_table(overrides: dict[str, dict[str, Any]], account_id: str) -> list[dict]:
    """Each setting of the account: its effective value in words and where it comes from
    (this account's override, the platform's default, or Reclaim's default)."""
    own, platform = overrides.get(account_id, {}), overrides.get(PLATFORM, {})
    config = effective(platform, own).model_dump(mode="json")

    def shown(name: str, value: Any) -> str:
        if name == "max_retries" and value is None:
            return "the card networks' limits only"
        if name == "sender" and value is None:
            return "the merchant of record"
        if name == "allowed_channels":
            return ", ".join(value) or "none"
        if name == "branding":
            return ", ".join(f"{k}: {v}" for k, v in value.items() if v) or "Reclaim's defaults"
        if isinstance(value, bool):
            return "yes" if value else "no"
        return str(value)

    return [
        {
            "label": label,
            "value": shown(name, config[name]),
            "source": "this account"
            if name in own
            else "platform default"
            if name in platform
            else "Reclaim's default",
        }
        for name, label in SETTING_LABELS.items()
    ]


@router.get("/dashboard/accounts/{account_id}")
async def account(request: Request, account_id: str) -> Response:
    principal = await _principal(request)
    if principal is None:
        return _signed_out()
    lo, hi, first, last, error, note = await _chosen_period(request, principal, [account_id])
    engine = request.app.state.engine
    known = (
        _storable(account_id, 255)
        and principal.sees(account_id)
        and await run_in_threadpool(stats.account_known, engine, account_id)
    )
    if not known:  # another key's account reads exactly as one that does not exist
        return await _page(
            request, "account.html", status=404, principal=principal, account_id=account_id,
            error=f"No account {account_id!r}.", first=first, last=last, missing=True,
        )  # fmt: skip
    found = await run_in_threadpool(stats.overview, engine, lo, hi, [account_id])
    shown = _recovery(
        found, first, last, request.query_params.get("currency"), request.app.state.settings
    )
    shown.update(await _how_they_ended(engine, lo, hi, [account_id], shown["rows"]))
    shown["where"] = await _where_the_data_is(request, shown["rows"], [account_id])
    if request.query_params.get("format") == "csv":
        return _overview_csv(request, shown, f"{account_id}_{first}_{last}")
    codes = await run_in_threadpool(stats.breakdown, engine, lo, hi, "decline_code", [account_id])
    overrides = await run_in_threadpool(configs.stored_overrides, engine, [account_id])
    name = (await run_in_threadpool(profiles.names, engine, [account_id])).get(account_id)
    return await _page(
        request, "account.html", principal=principal, account_id=account_id, name=name,
        first=first,
        last=last, error=error, note=note, missing=False, categories=stats.by_category(codes),
        settings=_settings_table(overrides, account_id), **shown,
    )  # fmt: skip


@router.get("/dashboard/accounts")
async def accounts(request: Request) -> Response:
    principal = await _principal(request)
    if principal is None:
        return _signed_out()
    lo, hi, first, last, error, note = await _chosen_period(request, principal)
    q = request.query_params
    sort = q.get("sort", "failed")
    sort = sort if sort in stats.ACCOUNT_SORTS else "failed"
    descending = q.get("order", "desc") != "asc"
    search = "".join(c for c in q.get("search", "")[:100] if c.isalnum() or c in "_- .'&")
    page, size = _page_number(request), PAGE_SIZE
    if q.get("format") == "csv":  # every row, not a page of them
        rows, _ = await run_in_threadpool(
            stats.account_rows, request.app.state.engine, lo, hi, principal.accounts,
            search or None, sort, descending, CSV_ROWS, 0,
        )  # fmt: skip
        rows = await _named(request, rows)
        return _csv([dict(r) for r in rows], f"accounts_{first}_{last}.csv")
    rows, total = await run_in_threadpool(
        stats.account_rows, request.app.state.engine, lo, hi, principal.accounts, search or None,
        sort, descending, size, page * size,
    )  # fmt: skip
    rows = await _named(request, rows)
    base = {"start": first.isoformat(), "end": last.isoformat(), "search": search}

    def link(**changes: Any) -> str:
        return "/dashboard/accounts?" + urlencode({**base, "sort": sort,
                                                  "order": "desc" if descending else "asc",
                                                  "page": page, **changes})  # fmt: skip

    return await _page(
        request, "accounts.html", principal=principal, rows=rows, total=total, page=page,
        pages=max(1, -(-total // size)), sort=sort, descending=descending, search=search,
        first=first, last=last, link=link, sorts=stats.ACCOUNT_SORTS, error=error, note=note,
    )  # fmt: skip


async def _named(request: Request, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` (each with an ``account_id``) with the account's ``display_name`` from Stripe
    where the store knows it, else an empty one."""
    known = await run_in_threadpool(
        profiles.names, request.app.state.engine, {r["account_id"] for r in rows}
    )
    return [
        {"account_id": r["account_id"], "display_name": known.get(r["account_id"], ""),
         **{k: v for k, v in r.items() if k != "account_id"}}
        for r in rows
    ]  # fmt: skip


PAGE_SIZE = 50  # rows of a long table per page
CSV_ROWS = 100_000  # at most this many rows in a table's CSV


def _page_number(request: Request) -> int:
    """The ``page`` a long table is asked for: 0 (the first) where it is not a number."""
    try:
        return max(0, min(int(request.query_params.get("page", "0")), 100_000))
    except ValueError:
        return 0


#: Why there was no retry, for people (``reclaim.rules.NO_RETRY_REASONS``).
NO_RETRY = {
    "already_recovered": "the payment was already recovered",
    "hard_decline": "the issuer will never approve this card for it",
    "customer_action": "only the customer can complete 3D Secure: they were sent a reminder",
    "network_cap": "the card network's limit on retries was reached",
    "window_closed": "the 30-day recovery window had closed",
    "opted_out": "the account has opted out of Reclaim",
    "account_max_retries": "the account's own limit on retries was reached",
    "policy": "the policy judged a retry not worth it yet",
}


def plain_reason(reason: str) -> str:
    """``days_to_payday=0 (+0.41)`` → ``days to payday = 0 raised the chance (+0.41)``; a
    missing value says so: ``network decline code not known raised the chance (+1.42)``."""
    feature, _, rest = reason.partition("=")
    value, _, effect = rest.rpartition(" (")
    direction = "raised" if effect.startswith("+") else "lowered"
    name = feature.replace("_", " ")
    shown = f"{name} not known" if value in ("nan", "None", "", "<NA>") else f"{name} = {value}"
    return f"{shown} {direction} the chance ({effect}"


def when(value: Any) -> str:
    """A time as every dashboard page writes it: ``2026-05-01 10:00:00`` (UTC, to the
    second); "—" where there is none."""
    if is_null(value):
        return "—"
    return as_utc(value).strftime("%Y-%m-%d %H:%M:%S")


_templates.filters["when"] = when

#: Within one second, the timeline reads: the attempt, the decision it led to, its message.
_EVENT_ORDER = {"attempt": 0, "decision": 1, "message": 2}


def timeline(view: Any) -> list[dict[str, Any]]:
    """A payment's attempts, decisions and messages in the order they happened; a decision
    whose planned retry a later decision replaced before it was due says by which
    (``replaced_at``)."""
    events = (
        [{"at": a["attempted_at"], "kind": "attempt", "row": a} for a in view.attempts]
        + [{"at": m["sent_at"], "kind": "message", "row": m} for m in view.messages]
        + [{"at": d["decided_at"], "kind": "decision", "row": d} for d in view.decisions]
    )
    events.sort(key=lambda e: (as_utc(e["at"]), _EVENT_ORDER[e["kind"]]))
    decisions = [e for e in events if e["kind"] == "decision"]
    for i, e in enumerate(decisions):
        planned = e["row"].get("retry_at")
        later = [d for d in decisions[i + 1 :] if planned is not None]
        replaced = [d for d in later if as_utc(d["at"]) < as_utc(planned)]
        e["replaced_at"] = replaced[0]["at"] if replaced else None
    return events


@router.get("/dashboard/payments")
async def payments(request: Request) -> Response:
    principal = await _principal(request)
    if principal is None:
        return _signed_out()
    text = request.query_params.get("q", "")[:255].strip()
    text = "".join(c for c in text if c.isprintable() and c != "\x00")
    engine = request.app.state.engine
    if text:
        found = await run_in_threadpool(find_payments, engine, text, principal)
        return await _page(request, "payments.html", principal=principal, q=text, found=found)
    # no search: the period's payments, newest first, filtered and paged
    lo, hi, first, last, error, note = await _chosen_period(request, principal)
    q = request.query_params
    status = q.get("status", "all")
    status = status if status in PAYMENT_STATUSES else "all"
    currency = q.get("currency", "").lower()[:3]
    currency = currency if currency.isalpha() else ""
    account = q.get("account", "")[:255]
    account = account if _storable(account, 255) else ""
    page = _page_number(request)
    if q.get("format") == "csv":  # every payment of the filter, money in major units
        rows, _ = await run_in_threadpool(
            list_payments, engine, lo, hi, principal, status, currency or None,
            account or None, CSV_ROWS, 0,
        )  # fmt: skip
        return _csv(
            [{**r, "amount": major(r["amount"], r["currency"]), "failed_at": when(r["failed_at"]),
              "recovered": bool(r["recovered"])} for r in rows],
            f"payments_{first}_{last}.csv",
        )  # fmt: skip
    rows, total = await run_in_threadpool(
        list_payments, engine, lo, hi, principal, status, currency or None, account or None,
        PAGE_SIZE, page * PAGE_SIZE,
    )  # fmt: skip
    base = {"start": first.isoformat(), "end": last.isoformat(), "status": status,
            "currency": currency, "account": account}  # fmt: skip

    def link(**changes: Any) -> str:
        return "/dashboard/payments?" + urlencode({**base, "page": page, **changes})

    return await _page(
        request, "payments.html", principal=principal, q="", found=[], listed=rows,
        total=total, page=page, pages=max(1, -(-total // PAGE_SIZE)), link=link, first=first,
        last=last, error=error, note=note, chosen_status=status, statuses=PAYMENT_STATUSES,
        currency=currency, account=account,
    )  # fmt: skip


@router.get("/dashboard/payments/{payment_id}")
async def payment(request: Request, payment_id: str, account: str | None = None) -> Response:
    principal = await _principal(request)
    if principal is None:
        return _signed_out()
    engine = request.app.state.engine
    view = None
    if _storable(payment_id, 255) and (account is None or _storable(account, 255)):
        accounts = await run_in_threadpool(holding, engine, payment_id, principal, account)
        if len(accounts) > 1:  # held by several of the key's accounts: let the user choose
            found = await run_in_threadpool(find_payments, engine, payment_id, principal)
            return await _page(
                request, "payments.html", principal=principal, q=payment_id, found=found
            )
        if accounts:
            view = await run_in_threadpool(payment_view, engine, (accounts[0], payment_id))
    if view is None:
        return await _page(
            request, "payments.html", status=404, principal=principal, q=payment_id, found=[],
            error=f"No payment {payment_id!r}.",
        )  # fmt: skip
    events = timeline(view)
    (named,) = await _named(request, [{"account_id": view.payment["account_id"]}])
    return await _page(
        request, "payment.html", principal=principal, view=view, events=events,
        no_retry=NO_RETRY, plain=plain_reason, account_name=named["display_name"],
    )  # fmt: skip


class ReportUnavailable(ValueError):
    """The experiment's report cannot be computed from what is stored and set."""


def experiment_view(engine, name: str, principal: Principal, settings) -> dict[str, Any]:
    """What the experiment page shows: ``reclaim report``'s numbers (the same
    ``build_report`` on the same store and settings); for a key scoped to accounts, the
    experiment as it ran on those accounts alone (nothing of another account is read).
    LookupError where the key sees no payment of the experiment."""
    from reclaim.training import ab_present
    from reclaim.training.ab_report import ReportError, build_report

    inputs = experiments.report_inputs(engine, name, accounts=principal.accounts)
    tables, assignments, opted_out, pre = inputs
    cur = settings.report_currency
    try:
        report = build_report(
            name, tables, assignments, settings.report_fx, cur, opted_out, pre=pre
        )
    except (ReportError, ContractError) as exc:  # e.g. a currency without a stated rate
        raise ReportUnavailable(str(exc)) from exc
    policies = experiments.arm_policies(engine, name)
    arms = ab_present.arms(report, policies)
    effects, verdicts = ab_present.effects(report)
    accounts = ab_present.accounts(report, top=None)
    return {
        "report": report, "arms": arms, "effects": effects, "verdicts": verdicts,
        "accounts": accounts, "rates": sorted(settings.report_fx.items()), "currency": cur,
    }  # fmt: skip


def warm_reports(app: Any) -> threading.Thread | None:
    """Compute the platform-wide report of every stored experiment into the app's report
    cache, in a background thread (so the first analyst's view does not wait for it); None
    where reports are not kept (``RECLAIM_REPORT_CACHE_SECONDS`` 0)."""
    cache, engine, settings = app.state.reports, app.state.engine, app.state.settings
    if cache.ttl <= 0:
        return None
    platform = Principal("report-warm-up", Role.ANALYST, None)

    def warm() -> None:
        try:
            names = experiments.experiments(engine)
        except Exception:  # the store went away (the app is stopping)
            log.exception("listing the experiments to warm their reports failed")
            return
        for name in names:
            try:
                cache.get(
                    (name, None), lambda n=name: experiment_view(engine, n, platform, settings)
                )
            except Exception:  # an experiment whose report cannot be made: its page says why
                log.warning("the report of experiment %r could not be warmed", name, exc_info=True)

    worker = threading.Thread(target=warm, name="report-warm-up", daemon=True)
    worker.start()
    return worker


@router.get("/dashboard/experiments")
async def experiment_list(request: Request) -> Response:
    principal = await _principal(request)
    if principal is None:
        return _signed_out()
    found = await run_in_threadpool(experiments.experiments, request.app.state.engine)
    return await _page(request, "experiments.html", principal=principal, experiments=found)


@router.get("/dashboard/experiments/{name}")
async def experiment(request: Request, name: str) -> Response:
    principal = await _principal(request)
    if principal is None:
        return _signed_out()
    engine, settings = request.app.state.engine, request.app.state.settings
    view = None
    if _storable(name, 100):
        try:
            view, computed_at = await run_in_threadpool(
                request.app.state.reports.get,
                (name, principal.accounts),
                lambda: experiment_view(engine, name, principal, settings),
            )
            kept = request.app.state.reports.ttl
            view = {**view, "computed_at": computed_at, "kept_seconds": kept}
        except LookupError:
            view = None
        except ReportUnavailable as exc:
            return await _page(
                request, "experiment.html", principal=principal, name=name, view=None,
                error=f"This experiment's report cannot be computed: {exc}",
            )  # fmt: skip
    if view is None:
        return await _page(
            request, "experiment.html", status=404, principal=principal, name=name, view=None,
            error=f"No experiment {name!r} with payments this key can see.",
        )  # fmt: skip
    page, rows = _page_number(request), view["accounts"]
    pages = max(1, -(-len(rows) // PAGE_SIZE))
    page = min(page, pages - 1)
    view = {**view, "accounts": rows[page * PAGE_SIZE : (page + 1) * PAGE_SIZE]}
    return await _page(
        request, "experiment.html", principal=principal, name=name, view=view, page=page,
        pages=pages, uplift_accounts=len(rows),
        link=lambda **c: f"/dashboard/experiments/{quote(name)}?" + urlencode(c),
    )  # fmt: skip


BREAKDOWN_TITLES = {
    "decline_category": "Decline category",
    "decline_code": "Decline code",
    "charge_model": "Charge model",
    "card_brand": "Card brand",
    "retries": "Merchant retries made",
    "local_hour": "Customer's local hour at the first failure",
}


@router.get("/dashboard/declines")
async def declines(request: Request) -> Response:
    principal = await _principal(request)
    if principal is None:
        return _signed_out()
    lo, hi, first, last, error, note = await _chosen_period(request, principal)
    engine = request.app.state.engine
    tables = {
        title: await run_in_threadpool(stats.breakdown, engine, lo, hi, by, principal.accounts)
        for by, title in BREAKDOWN_TITLES.items()
        if by != "decline_category"
    }
    codes = tables[BREAKDOWN_TITLES["decline_code"]]
    tables = {BREAKDOWN_TITLES["decline_category"]: stats.by_category(codes), **tables}
    found = await run_in_threadpool(stats.decline_money, engine, lo, hi, principal.accounts)
    money_rows, money_currency = _decline_money(found, request.app.state.settings)
    if request.query_params.get("format") == "csv":
        flat = [{"breakdown": title, **dict(row)} for title, rows in tables.items() for row in rows]
        if request.query_params.get("table") == "money":
            return _csv(found, f"declines_money_{first}_{last}.csv")
        return _csv(flat, f"declines_{first}_{last}.csv")
    return await _page(
        request, "declines.html", principal=principal, tables=tables, first=first, last=last,
        error=error, note=note, money_rows=money_rows, money_currency=money_currency,
    )  # fmt: skip


def _decline_money(
    rows: list[dict[str, Any]], settings: Any
) -> tuple[list[dict[str, Any]], str | None]:
    """:func:`stats.decline_money`'s rows as the declines page shows them: one row per decline
    category in the reporting currency (the second value) when there are several currencies
    and ``RECLAIM_REPORT_FX`` states a rate for each, else the rows per currency (None).
    Each row gains ``recovered_share``: the share of the failed amount recovered."""
    currencies = {r["currency"] for r in rows}
    fx, reporting = settings.report_fx, settings.report_currency
    if len(currencies) > 1 and currencies <= set(fx):
        merged: dict[str, dict[str, Any]] = {}
        for r in rows:
            rate = fx[r["currency"]]
            m = merged.setdefault(r["category"], {"category": r["category"],
                                  "currency": reporting, "failed": 0, "recovered": 0,
                                  "failed_amount": 0.0, "recovered_amount": 0.0})  # fmt: skip
            m["failed"] += r["failed"]
            m["recovered"] += r["recovered"]
            m["failed_amount"] += r["failed_amount"] * rate
            m["recovered_amount"] += r["recovered_amount"] * rate
        rows = sorted(merged.values(), key=lambda r: (-r["failed_amount"], r["category"]))
        chosen: str | None = reporting
    else:
        chosen = None
    out = [
        {**r, "recovered_share": r["recovered_amount"] / r["failed_amount"]
         if r["failed_amount"] else 0.0}
        for r in rows
    ]  # fmt: skip
    return out, chosen


@router.get("/dashboard/operations")
async def operations(request: Request) -> Response:
    principal = await _principal(request)
    if principal is None:
        return _signed_out()
    settings = request.app.state.settings
    found = await run_in_threadpool(
        stats.operations, request.app.state.engine, datetime.now(UTC),
        settings.webhook_stuck_seconds, principal.accounts,
    )  # fmt: skip
    # this process's view of train/serve skew (serving.skew): the features it compares
    drift = sorted(request.app.state.skew.state(), key=lambda d: (d.alert is None, -d.psi))
    return await _page(
        request, "operations.html", principal=principal, ops=found,
        stuck_after=settings.webhook_stuck_seconds, drift=drift,
    )  # fmt: skip


def _csrf_logout_ok(request: Request, form: dict[str, str]) -> bool:
    sent = form.get("csrf", "")
    return bool(sent) and hmac.compare_digest(sent, _logout_token(request))


def _logout_token(request: Request) -> str:
    """The sign-out form's CSRF token: bound to the session cookie, so no second cookie."""
    session = request.cookies.get(SESSION, "")
    return hmac.new(_secret(request), b"logout:" + session.encode(), hashlib.sha256).hexdigest()


def _bars(
    currency: str,
    days: list[dict[str, Any]],
    before: list[dict[str, Any]],
    first: date,
    last: date,
) -> dict[str, Any]:
    """An SVG bar chart of failed (light) and recovered (dark) payments per day, with the
    previous period's recovered per day as a line (its first day drawn above ``first``), and
    its axes: payments per day up the left, dates along the bottom."""
    by_day = {d["day"]: d for d in days}
    earlier = {d["day"]: d for d in before}
    n = (last - first).days + 1
    width, height = 720, 190
    left, right, top_pad, bottom = 48, 12, 12, 34
    plot_h = height - top_pad - bottom
    base_y = height - bottom
    step = (width - left - right) / max(n, 1)
    top = max([d["failed"] for d in days] + [d["recovered"] for d in before] + [1])
    empty = {"failed": 0, "recovered": 0, "recovered_amount": 0.0}

    def tall(count: int) -> float:
        return plot_h * count / top

    bars, points = [], []
    for i in range(n):
        day = (first + timedelta(days=i)).isoformat()
        d = by_day.get(day, empty)
        x = left + i * step
        for key, cls in (("failed", "failed"), ("recovered", "recovered")):
            h = tall(d[key])
            bars.append(
                {
                    "x": round(x, 1), "y": round(base_y - h, 1),
                    "w": round(max(step - 1, 1), 1), "h": round(h, 1), "cls": cls,
                    "title": f"{day}: {d['failed']:,} failed, {d['recovered']:,} recovered "
                    f"({money(d['recovered_amount'], currency)})",
                }
            )  # fmt: skip
        was = (first - timedelta(days=n - i)).isoformat()
        then = earlier.get(was, empty)
        points.append(
            {"x": round(x + step / 2, 1), "y": round(base_y - tall(then["recovered"]), 1),
             "title": f"{was}: {then['recovered']:,} recovered of {then['failed']:,} failed "
                      f"({money(then['recovered_amount'], currency)})"}
        )  # fmt: skip
    yticks = [
        {"y": round(base_y - tall(v), 1), "label": f"{v:,}"} for v in sorted({0, top // 2, top})
    ]
    marks = sorted({0, (n - 1) // 2, n - 1})
    xticks = [
        {"x": round(left + (i + 0.5) * step, 1),
         "label": (first + timedelta(days=i)).strftime("%b %-d"),
         "anchor": "start" if i == 0 and n > 1 else "end" if i == n - 1 and n > 1 else "middle"}
        for i in marks
    ]  # fmt: skip
    return {"currency": currency, "bars": bars, "width": width, "height": height, "top": top,
            "days": sum(1 for d in days if d["failed"]),
            "previous": " ".join(f"{p['x']},{p['y']}" for p in points),
            "previous_points": points, "yticks": yticks, "xticks": xticks,
            "left": left, "right": width - right, "base_y": base_y, "top_y": top_pad}  # fmt: skip
