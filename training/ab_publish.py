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
from reclaim.training import ab_present, plots
from reclaim.training.ab_report import ExperimentReport

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;font-size:13px;margin:0.5em 0 1.5em}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
td:first-child,th:first-child{text-align:left}
th{background:#f3f3f3} caption{text-align:left;font-weight:bold;padding:4px 0}
.note{color:#555;font-size:13px}
"""


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


ARM_COLUMNS = {
    "arm": "Arm",
    "payments": "Payments",
    "recovered": "Recovered",
    "rate": "Recovery rate",
    "revenue": "Recovered revenue",
    "per_payment": "Per failed payment",
    "retries": "Retries per payment",
    "messages": "Messages per payment",
}
EFFECT_COLUMNS = {
    "effect": "Effect",
    "control": "Control",
    "treatment": "Treatment",
    "difference": "Difference",
    "p": "p",
}
GUARDRAIL_COLUMNS = {
    "guardrail": "Guardrail",
    **{k: v for k, v in EFFECT_COLUMNS.items() if k != "effect"},
}
ACCOUNT_COLUMNS = {
    "account_id": "Account",
    "payments": "Payments",
    "rates": "Recovery rate, control → treatment",
    "revenue": "Revenue per payment, treatment − control",
    "incremental": "Revenue the treatment added",
    "note": "Note",
}


def _breakdown_columns(by: str) -> dict[str, str]:
    return {
        by: by.replace("_", " ").capitalize(),
        "payments": "Payments",
        "control": "Control",
        "treatment": "Treatment",
        "difference": "Difference",
        "revenue": "Recovered revenue",
    }


def _html_table(rows: list[dict[str, str]], columns: dict[str, str], table_id: str) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns.values())
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(r[k]))}</td>" for k in columns) + "</tr>"
        for r in rows
    )
    return f'<table id="{table_id}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _section(title: str, table: str, note: str = "") -> str:
    extra = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return f"<h2>{html.escape(title)}</h2>{extra}{table}"


def _csv_link(table: pd.DataFrame, name: str, label: str) -> str:
    data = base64.b64encode(table.to_csv().encode()).decode()
    return (
        f'<p><a id="{name}" download="{name}.csv" href="data:text/csv;base64,{data}">'
        f"{html.escape(label)}</a></p>"
    )


def to_html(report: ExperimentReport) -> str:
    """The whole report as one HTML page with its plots inlined: the verdict first, then the
    arms, effects and guardrails, plots, breakdowns, the largest accounts (all of them as a
    CSV link) and the attribution; every figure written by ``training.ab_present``."""
    cur = report.currency.upper()
    effects, verdicts = ab_present.effects(report)
    accounts = ab_present.accounts(report)
    parts = [
        f"<h1>Experiment {html.escape(report.name)}</h1>",
        '<div id="verdicts">'
        + "".join(f'<p class="verdict"><strong>{html.escape(v)}</strong></p>' for v in verdicts)
        + "</div>",
        f'<p class="note">{len(report.frame):,} failed payments assigned, first failures from '
        f"{report.start:%Y-%m-%d} to {report.as_of:%Y-%m-%d}; revenue in {cur}; "
        "intervals are 95%.</p>",
        *(f'<p class="note">{html.escape(n)}</p>' for n in report.notes),
        _section("Arms", _html_table(ab_present.arms(report), ARM_COLUMNS, "arms")),
        _section(
            "Effects: treatment − control",
            _html_table(effects, EFFECT_COLUMNS, "effects"),
            "CUPED rows adjust by each account's recovery rate before the experiment (shown "
            "only where every account has one); clustered rows count each connected account "
            "as one unit of error.",
        ),
        _section(
            "Guardrails: treatment − control",
            _html_table(ab_present.guardrails(report), GUARDRAIL_COLUMNS, "guardrails"),
        ),
    ]
    for name, fig in figures(report).items():
        parts.append(f"<h2>{name[:-4].replace('_', ' ').capitalize()}</h2>")
        parts.append(f'<img alt="{name}" src="data:image/png;base64,{_png(fig)}">')
    for by in report.breakdowns:
        note = (
            "Descriptive: the channel is chosen by the policy, so arms differ in who gets "
            "which channel; only the overall effect is causal."
            if by == "channel"
            else ""
        )
        rows = ab_present.breakdown(report, by)
        parts.append(
            _section(
                f"Recovery by {by.replace('_', ' ')}",
                _html_table(rows, _breakdown_columns(by), f"by_{by}"),
                note,
            )
        )
    shown = len(accounts)
    parts.append(
        _section(
            "Uplift per connected account",
            _html_table(accounts, ACCOUNT_COLUMNS, "uplift")
            + (
                _csv_link(
                    report.accounts,
                    "per_account_uplift",
                    f"All {len(report.accounts):,} accounts (CSV)",
                )
                if len(report.accounts)
                else ""
            ),
            f"The {shown:,} accounts with the most payments of the {len(report.accounts):,} "
            "with at least 20 payments in each arm; revenue per failed payment."
            if len(report.accounts)
            else "No account has 20 payments in each arm yet.",
        )
    )
    for name, table in report.attribution.items():
        title = f"Attribution by {name.replace('_', ' ')} (each currency's major units)"
        if name == "account":
            parts.append(
                _section(
                    title,
                    _csv_link(
                        in_major_units(table),
                        "attribution_by_account",
                        f"{len(table):,} rows (CSV)",
                    ),
                )
            )
            continue
        parts.append(
            _section(
                title,
                in_major_units(table).to_html(border=0),
                "recovered = platform_fee + account_share, to the cent.",
            )
        )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(report.name)}"
        f"</title><style>{_CSS}</style></head><body>{''.join(parts)}</body></html>"
    )


def _text_table(rows: list[dict[str, str]], columns: dict[str, str]) -> str:
    """Rows of text as aligned columns (the first left, the rest right)."""
    cells = [list(columns.values())] + [[str(r[k]) for k in columns] for r in rows]
    widths = [max(len(row[j]) for row in cells) for j in range(len(columns))]
    lines = []
    for row in cells:
        first, *rest = (
            c.ljust(w) if j == 0 else c.rjust(w)
            for j, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        lines.append("  ".join([first, *rest]).rstrip())
    return "\n".join(lines)


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
    """The report for a terminal: the verdict first, then arms, effects, guardrails and the
    attribution total, written as the HTML report writes them."""
    effects, verdicts = ab_present.effects(report)
    return "\n\n".join(
        [
            *verdicts,
            f"Experiment {report.name}: {len(report.frame):,} failed payments, revenue in "
            f"{report.currency.upper()}, 95% intervals",
            *report.notes,
            "Arms\n" + _text_table(ab_present.arms(report), ARM_COLUMNS),
            "Effects (treatment - control)\n" + _text_table(effects, EFFECT_COLUMNS),
            "Guardrails (treatment - control)\n"
            + _text_table(ab_present.guardrails(report), GUARDRAIL_COLUMNS),
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
