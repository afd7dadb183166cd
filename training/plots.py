"""Plots logged as MLflow artifacts, used in reports, and shown inline in notebooks.

Each function returns a closed figure: nothing accumulates in pyplot over a long training run,
and a notebook shows the returned figure once (its inline backend renders what a cell
returns). No backend is forced: matplotlib picks Agg where there is no display."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from reclaim import contract, vocab
from reclaim.contract import money, signed_money


def calibration_curve(table: pd.DataFrame) -> Figure:
    """Predicted against observed retry success, per equal-count bin."""
    fig, ax = plt.subplots(figsize=(5, 5))
    top = max(table["predicted"].max(), table["observed"].max()) * 1.05
    ax.plot([0, top], [0, top], ls="--", color="grey", lw=1, label="perfect")
    ax.plot(table["predicted"], table["observed"], "o-", label="retry-time model")
    ax.set(
        xlabel="predicted success",
        ylabel="observed success",
        title="Calibration on the later split",
    )
    ax.legend()
    fig.tight_layout()
    plt.close(fig)
    return fig


def qini_curves(curves: dict[str, pd.DataFrame]) -> Figure:
    """Each channel's Qini curve against random targeting."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, curve in curves.items():
        line = ax.plot(curve["fraction"], curve["qini"], label=name)[0]
        ax.plot(curve["fraction"], curve["random"], ls=":", color=line.get_color())
    ax.set(
        xlabel="share of decisions targeted (by predicted uplift)",
        ylabel="extra recoveries (weighted)",
        title="Qini curves per channel vs no message",
    )
    ax.legend()
    fig.tight_layout()
    plt.close(fig)
    return fig


def recovery_by_day(tables: contract.ContractTables, window_days: int = 30) -> Figure:
    """Cumulative share of payments recovered by day since the first failure, by initiator."""
    ok = tables.attempts[tables.attempts["outcome"] == vocab.Outcome.SUCCEEDED]
    first = ok.sort_values("attempted_at").drop_duplicates("payment_id")
    failed = tables.payments.set_index("payment_id")["failed_at"]
    days = first["attempted_at"].to_numpy() - failed.reindex(first["payment_id"]).to_numpy()
    days = days / np.timedelta64(1, "D")
    grid = np.arange(window_days + 1)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for who in (vocab.Initiator.MERCHANT, vocab.Initiator.CUSTOMER):
        mask = (first["initiator"] == who).to_numpy()
        share = [(days[mask] <= d).sum() / max(len(failed), 1) for d in grid]
        ax.plot(grid, share, label=f"by {who.value}")
    total = [(days <= d).sum() / max(len(failed), 1) for d in grid]
    ax.plot(grid, total, color="black", label="all")
    ax.set(
        xlabel="days since first failure",
        ylabel="share of payments recovered",
        title="Recovery by day since failure",
    )
    ax.legend()
    fig.tight_layout()
    plt.close(fig)
    return fig


def recovered_over_time(frame: pd.DataFrame, currency: str) -> Figure:
    """Cumulative recovered revenue per failed payment of each arm, by recovery date
    (``frame``: :func:`reclaim.training.ab_report.experiment_frame`)."""
    fig, ax = plt.subplots(figsize=(7, 4))
    for arm, g in frame.groupby("arm", sort=True):
        rec = g[g["recovered"]].sort_values("recovered_at")
        ax.step(
            pd.to_datetime(rec["recovered_at"], utc=True),
            rec["revenue"].cumsum() / len(g),
            where="post",
            label=f"{arm} ({len(g):,} failed payments)",
        )
    ax.set(
        xlabel="recovered on",
        ylabel=f"{currency.upper()} per failed payment",
        title="Recovered revenue per failed payment, cumulative, per arm",
    )
    ax.yaxis.set_major_formatter(lambda v, _: money(v, currency))
    ax.legend()
    fig.autofmt_xdate()
    fig.tight_layout()
    plt.close(fig)
    return fig


def account_uplift(accounts: pd.DataFrame, currency: str, top: int = 40) -> Figure:
    """Per connected account: the treatment's uplift in recovered revenue per failed payment
    with its 95% interval, for the ``top`` accounts by payments."""
    shown = accounts.nlargest(top, "payments").sort_values("revenue_diff")
    fig, ax = plt.subplots(figsize=(7, 0.25 * len(shown) + 1.5))
    y = np.arange(len(shown))
    ax.errorbar(
        shown["revenue_diff"],
        y,
        xerr=[
            shown["revenue_diff"] - shown["revenue_lo"],
            shown["revenue_hi"] - shown["revenue_diff"],
        ],
        fmt="o",
        ms=3,
        capsize=2,
    )
    ax.axvline(0, color="grey", lw=1, ls="--")
    ax.set_yticks(y, shown.index, fontsize=7)
    ax.set(
        xlabel=f"treatment − control, {currency.upper()} per failed payment (95% interval)",
        title=f"Per-account uplift, the {len(shown)} accounts with the most payments",
    )
    ax.xaxis.set_major_formatter(lambda v, _: signed_money(round(v, 6) + 0.0, currency))
    fig.tight_layout()
    plt.close(fig)
    return fig
