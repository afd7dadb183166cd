"""Plots logged as MLflow artifacts and used in reports (matplotlib, no display needed)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from reclaim import contract, vocab


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
    return fig
