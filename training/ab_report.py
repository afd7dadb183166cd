"""An experiment's report: recovery and recovered revenue per arm, with honest intervals.

Input: contract tables (payments, attempts, messages — from the operational store or a folder)
and the experiment's stored assignments (``payment_id``, ``unit_id``, ``segment``, ``arm``,
arms named ``control`` and ``treatment``). Payments failed before the first assigned one are
the pre-period, which gives each connected account the CUPED covariate: its recovery rate then
(from the tables, or counted by the store: ``pre``).

Every interval comes from :func:`reclaim.training.ab_stats.difference`, clustered by the
randomization unit wherever a unit holds several payments. Revenue is in one reporting
currency (``fx``: its amount per major unit of each currency); attribution stays in each
currency's minor units, so its parts add up to the total to the cent.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from reclaim import contract, vocab
from reclaim.features.decisions import major_units
from reclaim.rules import NetworkRules
from reclaim.training.ab_stats import Difference, cuped, difference
from reclaim.training.data import recovered_in_window

ARMS = ("control", "treatment")
BREAKDOWNS = ("charge_model", "decline_category", "channel")


class ReportError(ValueError):
    """The inputs cannot make a report; the message says what is wrong."""


@dataclass
class ExperimentReport:
    """What ``reclaim report`` prints, logs to MLflow and writes as HTML."""

    name: str
    currency: str
    start: pd.Timestamp
    as_of: pd.Timestamp
    frame: pd.DataFrame  # one row per assigned payment (see :func:`experiment_frame`)
    arms: pd.DataFrame
    effects: pd.DataFrame
    accounts: pd.DataFrame
    breakdowns: dict[str, pd.DataFrame]
    guardrails: pd.DataFrame
    attribution: dict[str, pd.DataFrame]
    notes: list[str] = field(default_factory=list)

    def metrics(self) -> dict[str, float]:
        """Flat figures for MLflow: ``<effect>_<field>`` and ``<arm>_<figure>``."""
        out: dict[str, float] = {}
        for name, row in self.effects.iterrows():
            for col in ("control", "treatment", "diff", "lo", "hi", "p_value"):
                out[f"{name}_{col}"] = float(row[col])
        for arm, row in self.arms.iterrows():
            for col, value in row.items():
                out[f"{arm}_{col}"] = float(value)
        for name, row in self.guardrails.iterrows():
            out[f"guardrail_{name}_diff"] = float(row["diff"])
        return out


def pre_period_counts(
    tables: contract.ContractTables, start: pd.Timestamp, window_days: float
) -> pd.DataFrame:
    """The pre-period of an experiment whose first assigned payment failed at ``start``: per
    connected account (index ``account_id``), its ``payments`` that failed before ``start``
    and how many of them were ``recovered`` within ``window_days`` of their failure.
    ``serving.store.experiments.pre_period_counts`` computes the same in the database."""
    pay = tables.payments.astype({"payment_id": "object", "account_id": "object"})
    before = pay[pay["failed_at"] < start]
    won = recovered_in_window(tables, window_days).reindex(before["payment_id"]).to_numpy()
    counts = pd.DataFrame({"account_id": before["account_id"].to_numpy(), "recovered": won})
    return counts.groupby("account_id").agg(
        payments=("recovered", "size"), recovered=("recovered", "sum")
    )


def experiment_frame(
    tables: contract.ContractTables,
    assignments: pd.DataFrame,
    fx: Mapping[str, float],
    rules: NetworkRules | None = None,
    pre: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """One row per assigned payment with what every table of the report needs.

    ``pre`` (:func:`pre_period_counts`) gives each account's CUPED covariate, its recovery
    rate before the experiment (the rate over every account where it has none); without it,
    it is computed from ``tables``, which must then hold the pre-period's payments too.

    Columns: ``payment_id``, ``account_id``, ``unit_id``, ``segment``, ``arm``, ``treated``,
    ``charge_model``, ``decline_category``, ``channel`` (first message, or ``none``),
    ``last_channel`` (last message before recovery, or ``none``), ``currency``, ``amount``,
    ``fee`` (minor units; 0 where unknown), ``fee_known``, ``recovered``, ``recovered_at``,
    ``revenue`` (reporting currency), ``retries``, ``messages``, ``cap_hit``, ``pre_rate``.

    Raises :class:`ReportError` naming assigned payments that are not stored, an arm other
    than control/treatment, or a currency without an exchange rate.
    """
    rules = rules or NetworkRules()
    need = {"payment_id", "unit_id", "arm"}
    if missing := need - set(assignments.columns):
        raise ReportError(f"assignments lack column(s) {sorted(missing)}")
    if assignments.empty:
        raise ReportError("the experiment has no assigned payments")
    if bad := set(assignments["arm"]) - set(ARMS):
        raise ReportError(f"unknown arm(s) {sorted(bad)}: arms are {ARMS}")
    pay = tables.payments.astype({"payment_id": "object", "account_id": "object"})
    pay = pay.set_index("payment_id", drop=False)
    missing_ids = set(assignments["payment_id"]) - set(pay.index)
    if missing_ids:
        raise ReportError(
            f"{len(missing_ids)} assigned payment(s) are not stored, e.g. {sorted(missing_ids)[:3]}"
        )
    currencies = set(pay.loc[assignments["payment_id"], "currency"].astype("object"))
    if no_rate := currencies - set(fx):
        raise ReportError(f"no exchange rate for {sorted(no_rate)}: pass them in fx")

    attempts = tables.attempts.astype({"payment_id": "object"})
    recovered_all = recovered_in_window(tables, rules.window_days).reindex(pay.index)
    ok = attempts[attempts["outcome"] == vocab.Outcome.SUCCEEDED]
    first_ok = ok.groupby("payment_id")["attempted_at"].min().reindex(pay.index)

    a = assignments.astype({"payment_id": "object"}).set_index("payment_id")
    p = pay.loc[a.index]
    ids = a.index
    merchant = attempts[
        (attempts["initiator"] == vocab.Initiator.MERCHANT) & (attempts["attempt_number"] > 0)
    ]
    retries = merchant.groupby("payment_id").size().reindex(ids, fill_value=0).to_numpy()
    msgs = tables.messages.astype({"payment_id": "object", "channel": "object"})
    msgs = msgs.sort_values("sent_at", kind="stable")
    n_msgs = msgs.groupby("payment_id").size().reindex(ids, fill_value=0).to_numpy()
    first_channel = msgs.groupby("payment_id")["channel"].first().reindex(ids).fillna("none")
    rec_at = first_ok.reindex(ids).where(recovered_all.reindex(ids))
    before = msgs.assign(rec_at=msgs["payment_id"].map(rec_at))
    before = before[before["rec_at"].notna() & (before["sent_at"] <= before["rec_at"])]
    last_channel = before.groupby("payment_id")["channel"].last().reindex(ids).fillna("none")

    currency = p["currency"].astype("object").to_numpy()
    amount = p["amount"].to_numpy(dtype="int64")
    fee_raw = p["application_fee_amount"]
    recovered = recovered_all.reindex(ids).to_numpy(dtype=bool)
    rate_fx = np.array([fx[c] for c in currency], dtype=float)
    category = vocab.decline_categories(
        p["decline_code"], p["advice_code"], p["network_decline_code"], p["network_advice_code"]
    )

    if pre is None:
        pre = pre_period_counts(tables, pay.loc[ids, "failed_at"].min(), rules.window_days)
    pre_rates = pre["recovered"] / pre["payments"]
    total = int(pre["payments"].sum())
    overall_pre = int(pre["recovered"].sum()) / total if total else np.nan
    pre_rate = p["account_id"].map(pre_rates).astype(float).fillna(overall_pre).to_numpy()

    return pd.DataFrame(
        {
            "payment_id": ids.to_numpy(),
            "account_id": p["account_id"].to_numpy(),
            "unit_id": a["unit_id"].astype("object").to_numpy(),
            "segment": (a["segment"] if "segment" in a else pd.Series("all", index=ids))
            .astype("object")
            .to_numpy(),
            "arm": a["arm"].to_numpy(),
            "treated": (a["arm"] == "treatment").to_numpy(),
            "charge_model": p["charge_model"].astype("object").to_numpy(),
            "decline_category": category.astype("object").to_numpy(),
            "channel": first_channel.to_numpy(),
            "last_channel": last_channel.to_numpy(),
            "failed_at": p["failed_at"].to_numpy(),
            "currency": currency,
            "amount": amount,
            "fee": fee_raw.fillna(0).to_numpy(dtype="int64"),
            "fee_known": fee_raw.notna().to_numpy(),
            "recovered": recovered,
            "recovered_at": rec_at.to_numpy(),
            "revenue": np.where(recovered, major_units(amount, currency) * rate_fx, 0.0),
            "retries": retries,
            "messages": n_msgs,
            "cap_hit": retries >= rules.max_retries(p["card_brand"]),
            "pre_rate": pre_rate,
        }
    )


def _effect_rows(frame: pd.DataFrame, cluster: str) -> dict[str, Difference]:
    t = frame["treated"].to_numpy()
    units = frame[cluster].to_numpy()
    y_rate = frame["recovered"].to_numpy(dtype=float)
    y_rev = frame["revenue"].to_numpy()
    rows = {
        "recovery_rate": difference(y_rate, t, units),
        "revenue_per_payment": difference(y_rev, t, units),
    }
    x = frame["pre_rate"].to_numpy()
    if np.isfinite(x).all():
        rows["recovery_rate_cuped"] = difference(cuped(y_rate, x), t, units)
        rows["revenue_per_payment_cuped"] = difference(cuped(y_rev, x), t, units)
    rows["revenue_per_payment_by_account"] = difference(y_rev, t, frame["account_id"].to_numpy())
    return rows


def _table(rows: Mapping[str, Difference], index_name: str) -> pd.DataFrame:
    out = pd.DataFrame({k: v.as_dict() for k, v in rows.items()}).T
    out.index.name = index_name
    numeric = [c for c in out.columns if c != "method"]
    return out.astype(dict.fromkeys(numeric, float))


def _per_account(frame: pd.DataFrame, cluster: str, min_per_arm: int) -> pd.DataFrame:
    # the frame split by account with numpy: thousands of small accounts cost a pandas group
    # each, and most have too few payments to be reported at all
    accounts = frame["account_id"].astype("object").to_numpy()
    order = np.argsort(accounts, kind="stable")
    names, starts = np.unique(accounts[order], return_index=True)
    ends = np.append(starts[1:], len(order))
    treated_all = frame["treated"].to_numpy(dtype=bool)[order]
    revenue_all = frame["revenue"].to_numpy()[order]
    recovered_all = frame["recovered"].to_numpy(dtype=float)[order]
    units_all = frame[cluster].to_numpy()[order]
    rows = {}
    for account, lo, hi in zip(names, starts, ends, strict=True):
        treated = treated_all[lo:hi]
        n1 = int(treated.sum())
        n0 = len(treated) - n1
        if min(n0, n1) < min_per_arm:
            continue
        units = units_all[lo:hi]
        d = difference(revenue_all[lo:hi], treated, units)
        r = difference(recovered_all[lo:hi], treated, units)
        rows[account] = {
            "payments": int(hi - lo),
            "rate_control": r.control,
            "rate_treatment": r.treatment,
            "rate_diff": r.diff,
            "revenue_control": d.control,
            "revenue_treatment": d.treatment,
            "revenue_diff": d.diff,
            "revenue_lo": d.lo,
            "revenue_hi": d.hi,
            "p_value": d.p_value,
            # recovered revenue the treatment added on this account: per payment × its treated
            "incremental_revenue": d.diff * n1 if np.isfinite(d.diff) else np.nan,
        }
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = "account_id"
    return out


def _breakdown(frame: pd.DataFrame, by: str, cluster: str) -> pd.DataFrame:
    rows = {}
    for value, g in frame.groupby(by, sort=True):
        d = difference(
            g["recovered"].to_numpy(dtype=float), g["treated"].to_numpy(), g[cluster].to_numpy()
        )
        rows[value] = {**d.as_dict(), "revenue": float(g["revenue"].sum())}
    out = pd.DataFrame.from_dict(rows, orient="index")
    out.index.name = by
    return out


def _guardrails(frame: pd.DataFrame, cluster: str, opted_out: set[str]) -> pd.DataFrame:
    t, units = frame["treated"].to_numpy(), frame[cluster].to_numpy()
    rows = {
        "retries_per_payment": difference(frame["retries"].to_numpy(float), t, units),
        "network_cap_hits": difference(frame["cap_hit"].to_numpy(float), t, units),
        "messages_per_payment": difference(frame["messages"].to_numpy(float), t, units),
        "opted_out_accounts": difference(
            frame["account_id"].isin(opted_out).to_numpy(float), t, units
        ),
    }
    return _table(rows, "guardrail")


def attribution(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Recovered revenue split into the platform's fee and the connected account's share, in
    each currency's minor units, by arm and account / charge model / channel (the last message
    before the recovery, or ``none``). Integer sums: every table adds up to ``total``."""
    rec = frame[frame["recovered"]].assign(
        platform_fee=lambda f: f["fee"], account_share=lambda f: f["amount"] - f["fee"]
    )
    out = {}
    for name, by in (
        ("total", []),
        ("account", ["account_id"]),
        ("charge_model", ["charge_model"]),
        ("channel", ["last_channel"]),
    ):
        keys = ["arm", "currency", *by]
        g = rec.groupby(keys, sort=True)[["amount", "platform_fee", "account_share"]].sum()
        g["payments"] = rec.groupby(keys, sort=True).size()
        out[name] = g.rename(columns={"amount": "recovered"}).astype("int64")
    return out


def build_report(
    name: str,
    tables: contract.ContractTables,
    assignments: pd.DataFrame,
    fx: Mapping[str, float],
    currency: str = "usd",
    opted_out: set[str] | None = None,
    min_per_arm: int = 20,
    pre: pd.DataFrame | None = None,
) -> ExperimentReport:
    """Everything the report shows, from contract tables and assignments (see the module);
    ``pre`` as :func:`experiment_frame` takes it."""
    frame = experiment_frame(tables, assignments, fx, pre=pre)
    cluster = "unit_id"
    arms = (
        frame.groupby("arm")
        .agg(
            payments=("payment_id", "size"),
            recovered=("recovered", "sum"),
            recovery_rate=("recovered", "mean"),
            recovered_revenue=("revenue", "sum"),
            revenue_per_payment=("revenue", "mean"),
            retries_per_payment=("retries", "mean"),
            messages_per_payment=("messages", "mean"),
        )
        .reindex(list(ARMS))
    )
    notes = []
    if not frame["fee_known"].all():
        notes.append(
            f"{int((~frame['fee_known']).sum())} payment(s) have no application fee stored: "
            "their whole amount is attributed to the connected account."
        )
    units_per = frame.groupby("unit_id").size()
    if (units_per > 1).any():
        notes.append(
            f"Randomized by unit with up to {int(units_per.max())} payments each: intervals "
            "are clustered by unit."
        )
    return ExperimentReport(
        name=name,
        currency=currency,
        start=pd.Timestamp(frame["failed_at"].min()),
        as_of=pd.Timestamp(frame["failed_at"].max()),
        frame=frame,
        arms=arms,
        effects=_table(_effect_rows(frame, cluster), "effect"),
        accounts=_per_account(frame, cluster, min_per_arm),
        breakdowns={by: _breakdown(frame, by, cluster) for by in BREAKDOWNS},
        guardrails=_guardrails(frame, cluster, opted_out or set()),
        attribution=attribution(frame),
        notes=notes,
    )


def read_assignments(folder: Path) -> pd.DataFrame:
    """An experiment's assignments beside contract tables: ``assignments.parquet`` or
    ``assignments.csv`` in ``folder``. Raises :class:`ReportError` naming the files sought."""
    for name, reader in (
        ("assignments.parquet", pd.read_parquet),
        ("assignments.csv", pd.read_csv),
    ):
        path = folder / name
        if path.exists():
            return reader(path)
    raise ReportError(f"no assignments.parquet or assignments.csv in {folder}")
