"""An experiment report as people read it: every figure written out, the verdict first.

One shaping for every place the report is shown — the dashboard's experiment page, the HTML
report, ``reclaim report`` in a terminal — so they say the same thing the same way: money in
major units with its currency, rates in %, differences in points with their 95% intervals,
p-values to three decimals (``< 0.001`` below), a missing figure as "not known". Input is an
:class:`~reclaim.training.ab_report.ExperimentReport`; out come lists of dicts of strings.
"""

from __future__ import annotations

import pandas as pd

from reclaim.contract import money, signed_money
from reclaim.intervals import NOT_KNOWN, ci, interval, known, p_value, percent
from reclaim.training.ab_report import ExperimentReport
from reclaim.training.ab_stats import Difference, verdict

EFFECT_LABELS = {
    "recovery_rate": "Recovery rate",
    "revenue_per_payment": "Recovered revenue per failed payment",
    "recovery_rate_cuped": "Recovery rate, adjusted by each account's earlier rate (CUPED)",
    "revenue_per_payment_cuped": "Revenue per payment, adjusted by each account's earlier "
    "rate (CUPED)",
    "revenue_per_payment_by_account": "Revenue per payment, errors clustered by account",
}
GUARDRAIL_LABELS = {
    "retries_per_payment": "Retries per payment",
    "network_cap_hits": "Payments that reached a network's retry cap",
    "messages_per_payment": "Messages per payment",
    "opted_out_accounts": "Payments of accounts that opted out",
}
#: How many accounts the report lists (largest first); all of them are in its CSV.
TOP_ACCOUNTS = 20


def _difference(row: pd.Series) -> Difference:
    values = row.to_dict()
    return Difference(
        **{
            **values,
            "n_control": int(values["n_control"]),
            "n_treatment": int(values["n_treatment"]),
        }
    )


def _rate_effect(d: Difference) -> tuple[str, str, str]:
    return percent(d.control), percent(d.treatment), interval(d.diff, d.lo, d.hi, pts=True)


def _money_effect(d: Difference, cur: str) -> tuple[str, str, str]:
    shown = ci(*(signed_money(v, cur) for v in (d.diff, d.lo, d.hi)))
    return money(d.control, cur), money(d.treatment, cur), shown


def _count_effect(d: Difference, share: bool) -> tuple[str, str, str]:
    if share:
        return _rate_effect(d)
    return (
        f"{d.control:.2f}",
        f"{d.treatment:.2f}",
        ci(f"{d.diff:+.2f}", f"{d.lo:+.2f}", f"{d.hi:+.2f}"),
    )


def arms(report: ExperimentReport, policies: dict[str, str] | None = None) -> list[dict[str, str]]:
    """One row per arm: payments, recovered, rate, revenue, per payment, retries, messages."""
    cur, policies = report.currency, policies or {}
    return [
        {
            "arm": f"{arm} ({policies[arm]})" if arm in policies else str(arm),
            "payments": f"{int(row['payments']):,}",
            "recovered": f"{int(row['recovered']):,}",
            "rate": percent(row["recovery_rate"]),
            "revenue": money(row["recovered_revenue"], cur),
            "per_payment": money(row["revenue_per_payment"], cur),
            "retries": f"{row['retries_per_payment']:.2f}",
            "messages": f"{row['messages_per_payment']:.2f}",
        }
        for arm, row in report.arms.iterrows()
    ]


def effects(report: ExperimentReport) -> tuple[list[dict[str, str]], list[str]]:
    """The effects (treatment − control) as rows, and the verdicts on the recovery rate and
    the revenue per payment in plain words. Effects that could not be computed are left out."""
    cur = report.currency
    rows, verdicts = [], []
    for key, row in report.effects.iterrows():
        d = _difference(row)
        if not known(d.diff):
            continue
        rate = str(key).startswith("recovery_rate")
        control, treatment, shown = _rate_effect(d) if rate else _money_effect(d, cur)
        rows.append(
            {
                "effect": EFFECT_LABELS.get(str(key), str(key)),
                "control": control,
                "treatment": treatment,
                "difference": shown,
                "p": p_value(d.p_value),
            }
        )
        if key == "recovery_rate":
            verdicts.append(verdict(d, "the recovery rate", "the treatment recovered a "
                                    "larger share of failed payments", "the treatment recovered "
                                    "a smaller share of failed payments",
                                    lambda v: f"{v * 100:+.1f} pts"))  # fmt: skip
        if key == "revenue_per_payment":
            verdicts.append(verdict(d, "recovered revenue per failed payment", "the treatment "
                                    "recovered more revenue per failed payment", "the treatment "
                                    "recovered less revenue per failed payment",
                                    lambda v: f"{signed_money(v, cur)} per payment"))  # fmt: skip
    return rows, verdicts


def guardrails(report: ExperimentReport) -> list[dict[str, str]]:
    """The guardrails (treatment − control), written out; ones not computed are left out."""
    rows = []
    for key, row in report.guardrails.iterrows():
        d = _difference(row)
        if not known(d.diff):
            continue
        share = key in ("network_cap_hits", "opted_out_accounts")
        control, treatment, shown = _count_effect(d, share)
        rows.append(
            {
                "guardrail": GUARDRAIL_LABELS.get(str(key), str(key)),
                "control": control,
                "treatment": treatment,
                "difference": shown,
                "p": p_value(d.p_value),
            }
        )
    return rows


def breakdown(report: ExperimentReport, by: str) -> list[dict[str, str]]:
    """Recovery by ``by`` (a :data:`~reclaim.training.ab_report.BREAKDOWNS` name), one row
    per value that both arms reached; revenue in the reporting currency."""
    rows = []
    for value, row in report.breakdowns[by].iterrows():
        d = _difference(row.drop("revenue"))
        if not known(d.diff):
            continue
        control, treatment, shown = _rate_effect(d)
        rows.append(
            {
                by: str(value),
                "payments": f"{d.n_control + d.n_treatment:,}",
                "control": control,
                "treatment": treatment,
                "difference": shown,
                "revenue": money(row["revenue"], report.currency),
            }
        )
    return rows


def accounts(report: ExperimentReport, top: int | None = TOP_ACCOUNTS) -> list[dict[str, str]]:
    """Per-account uplift, the accounts with the most payments first (``top`` of them; None:
    all): the rates, and the revenue the treatment added with its interval — with a note
    where that interval includes zero (the account's own difference is not established)."""
    cur = report.currency
    table = report.accounts
    if table.empty:
        return []
    table = table.sort_values("payments", ascending=False, kind="stable")
    if top is not None:
        table = table.head(top)
    out = []
    for account, row in table.iterrows():
        bounded = known(row["revenue_lo"]) and known(row["revenue_hi"])
        includes_zero = not bounded or row["revenue_lo"] <= 0 <= row["revenue_hi"]
        out.append(
            {
                "account_id": str(account),
                "payments": f"{int(row['payments']):,}",
                "rates": f"{percent(row['rate_control'])} → {percent(row['rate_treatment'])}",
                "revenue": ci(
                    *(
                        signed_money(row[c], cur)
                        for c in ("revenue_diff", "revenue_lo", "revenue_hi")
                    )
                )
                if bounded
                else NOT_KNOWN,
                # what the treatment added is shown only where its interval excludes zero
                "incremental": signed_money(row["incremental_revenue"], cur)
                if not includes_zero and known(row["incremental_revenue"])
                else "—",
                "note": "interval includes zero: no difference established"
                if includes_zero
                else "",
            }
        )
    return out
