"""An experiment report as text for the terminal, as one self-contained HTML file, and as an
MLflow run (metrics, the per-account table, plots and the HTML)."""

from __future__ import annotations

import base64
import html
import io
import tempfile
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from reclaim import contract
from reclaim.training import plots
from reclaim.training.ab_report import ExperimentReport

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
th{background:#f3f3f3} caption{text-align:left;font-weight:bold;padding:4px 0}
.note{color:#555;font-size:13px}
"""

EFFECT_COLUMNS = ["control", "treatment", "diff", "lo", "hi", "p_value", "method"]


def figures(report: ExperimentReport) -> dict[str, Figure]:
    """The report's plots by file name."""
    out = {"recovered_over_time.png": plots.recovered_over_time(report.frame, report.currency)}
    if not report.accounts.empty:
        out["account_uplift.png"] = plots.account_uplift(report.accounts, report.currency)
    return out


def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode()


def _section(title: str, table: pd.DataFrame, note: str = "") -> str:
    body = table.to_html(float_format=lambda v: f"{v:,.4g}", border=0)
    extra = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return f"<h2>{html.escape(title)}</h2>{extra}{body}"


def to_html(report: ExperimentReport) -> str:
    """The whole report as one HTML page with its plots inlined."""
    cur = report.currency.upper()
    parts = [
        f"<h1>Experiment {html.escape(report.name)}</h1>",
        f'<p class="note">{len(report.frame):,} failed payments assigned from '
        f"{report.start:%Y-%m-%d} to {report.as_of:%Y-%m-%d}; revenue in {cur}; "
        "intervals are 95%.</p>",
        *(f'<p class="note">{html.escape(n)}</p>' for n in report.notes),
        _section("Arms", report.arms),
        _section(
            "Effects (treatment − control)",
            report.effects[EFFECT_COLUMNS],
            "cuped: adjusted by each account's pre-period recovery rate; by_account: "
            "errors clustered by connected account.",
        ),
        _section("Guardrails", report.guardrails[EFFECT_COLUMNS]),
    ]
    for name, fig in figures(report).items():
        parts.append(f"<h2>{name[:-4].replace('_', ' ').capitalize()}</h2>")
        parts.append(f'<img alt="{name}" src="data:image/png;base64,{_png(fig)}">')
    for by, table in report.breakdowns.items():
        note = (
            "Descriptive: the channel is chosen by the policy, so arms differ in who gets "
            "which channel; only the overall effect is causal."
            if by == "channel"
            else ""
        )
        parts.append(_section(f"Recovery by {by.replace('_', ' ')}", table, note))
    parts.append(_section("Per-account uplift", report.accounts))
    for name, table in report.attribution.items():
        parts.append(
            _section(
                f"Attribution by {name.replace('_', ' ')} (each currency's major units)",
                in_major_units(table),
                "recovered = platform_fee + account_share, to the cent.",
            )
        )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report.name)}"
        f"</title><style>{_CSS}</style></head><body>{''.join(parts)}</body></html>"
    )


def in_major_units(table: pd.DataFrame) -> pd.DataFrame:
    """An attribution table (integer minor units, a ``currency`` index level) for people: its
    money columns in each row's currency's major units, written to the cent (``1,146.93``;
    zero-decimal currencies whole)."""
    out = table.copy()
    currency = out.index.get_level_values("currency")
    for column in ("recovered", "platform_fee", "account_share"):
        out[column] = [
            f"{contract.major(v, c):,.{contract.decimals(c)}f}"
            for v, c in zip(out[column], currency, strict=True)
        ]
    return out


def to_text(report: ExperimentReport) -> str:
    """The headline tables for a terminal."""
    with pd.option_context("display.width", 160, "display.max_columns", 20):
        return "\n\n".join(
            [
                f"Experiment {report.name}: {len(report.frame):,} failed payments, "
                f"revenue in {report.currency.upper()}, 95% intervals",
                *report.notes,
                f"Arms\n{report.arms.round(4)}",
                f"Effects (treatment - control)\n{report.effects[EFFECT_COLUMNS].round(4)}",
                f"Guardrails\n{report.guardrails[EFFECT_COLUMNS].round(4)}",
                "Attribution (each currency's major units)\n"
                f"{in_major_units(report.attribution['total'])}",
            ]
        )


def log_to_mlflow(
    report: ExperimentReport, tracking_uri: str, experiment: str, artifact_uri: str | None = None
) -> str:
    """Log the report as a run of MLflow experiment ``experiment`` (a new one keeps its
    artifacts at ``artifact_uri``); returns the run id."""
    import mlflow

    from reclaim.training.tracking import use_experiment

    mlflow.set_tracking_uri(tracking_uri)
    use_experiment(experiment, artifact_uri)
    with (
        mlflow.start_run(run_name=f"report-{report.name}") as run,
        tempfile.TemporaryDirectory() as tmp,
    ):
        mlflow.set_tags({"reclaim.kind": "ab_report", "reclaim.experiment": report.name})
        mlflow.log_params({"currency": report.currency, "payments": len(report.frame)})
        mlflow.log_metrics(report.metrics())
        mlflow.log_table(report.accounts.reset_index(), "per_account_uplift.json")
        for name, fig in figures(report).items():
            mlflow.log_figure(fig, name)
        page = Path(tmp) / "report.html"
        page.write_text(to_html(report))
        mlflow.log_artifact(str(page))
        for name, table in report.attribution.items():
            path = Path(tmp) / f"attribution_{name}.csv"
            table.to_csv(path)
            mlflow.log_artifact(str(path), "attribution")
        return run.info.run_id
