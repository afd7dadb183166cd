"""The ``reclaim`` command line.

Each command translates its options into one call of domain code and shows progress; the
work itself lives in the packages (``reclaim.simulator``, ``reclaim.contract``, …).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn

import pandas as pd
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from reclaim import contract, logs
from reclaim.intervals import ci, interval
from reclaim.settings import get_settings, sqlite_file

app = typer.Typer(
    help="Reclaim: recover failed payments on Stripe Connect marketplaces.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    # help is plain text: "[default: …]" in an option's help is shown, not read as markup
    rich_markup_mode=None,
)
# Tables are wide; when output is not a terminal (CI logs, pipes) do not fold them to 80 columns.
console = Console(width=None if Console().is_terminal else 160)


@app.callback()
def main(
    verbose: Annotated[
        bool,
        typer.Option("--verbose", "-v", help="Log debug messages."),
    ] = False,
) -> None:
    """Reclaim's commands. Settings come from RECLAIM_* environment variables or .env."""
    settings = get_settings()
    logs.configure("DEBUG" if verbose else settings.log_level, settings.log_format)


@contextmanager
def _progress() -> Iterator[Progress]:
    with Progress(
        TextColumn("{task.description:<22}"),
        BarColumn(),
        TextColumn("{task.completed:>9,.0f}/{task.total:,.0f}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        yield progress


def _rollout_task(progress: Progress, total: int) -> Callable[[str], Callable[[int, int], None]]:
    """A factory of per-policy step callbacks that advance a progress bar."""

    def for_policy(name: str) -> Callable[[int, int], None]:
        task = progress.add_task(f"{name} (settled)", total=total)

        def on_step(step: int, active: int) -> None:
            progress.update(task, completed=total - active)

        return on_step

    return for_policy


DaskWorkers = Annotated[
    int, typer.Option(min=1, help="Worker processes of --dask local (one thread each).")
]
DaskMemory = Annotated[
    str, typer.Option(help="Memory limit per worker of --dask local (Dask's own units).")
]
DaskRollouts = Annotated[
    str | None,
    typer.Option(
        help="Spread the rollouts over a Dask cluster (same results for the same seed): a "
        "scheduler's address (tcp://host:8786), or 'local' for a LocalCluster on this machine."
    ),
]

JsonOut = Annotated[
    Path | None,
    typer.Option("--json", help="Also write the results to this file as JSON (for scripts, CI)."),
]


def _dask_client(address: str | None, workers: int, memory: str) -> Any | None:
    """A ``distributed.Client`` for ``--dask ADDRESS`` (None without it); exit 1 if the
    cluster cannot be reached or started."""
    if address is None:
        return None
    from reclaim.cluster import connect

    try:
        return connect(address, workers, memory)
    except (OSError, ValueError) as exc:
        console.print(f"[red]cannot reach Dask at {address}:[/red] {exc}", highlight=False)
        raise typer.Exit(code=1) from exc


def _money(value: float) -> str:
    """Compact dollars: $812, $45.3k, $2.41M."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"${value / scale:,.2f}{suffix}" if scale == 1e6 else f"${value / scale:,.1f}k"
    return f"${value:,.0f}"


def _policy_table(table: pd.DataFrame, title: str) -> Table:
    out = Table(title=title, title_justify="left")
    out.add_column("policy")
    out.add_column("recovered revenue", justify="right")
    out.add_column("recovery rate", justify="right")
    out.add_column("cost", justify="right")
    out.add_column("net of cost", justify="right")
    out.add_column("retries/pmt", justify="right")
    out.add_column("msgs/pmt", justify="right")
    for name, r in table.iterrows():
        out.add_row(
            str(name),
            ci(_money(r.recovered_usd), _money(r.recovered_usd_lo), _money(r.recovered_usd_hi)),
            interval(r.recovery_rate, r.recovery_rate_lo, r.recovery_rate_hi),
            ci(_money(r.cost_usd), _money(r.cost_usd_lo), _money(r.cost_usd_hi)),
            _money(r.net_usd),
            f"{r.retries_per_payment:.2f}",
            f"{r.messages_per_payment:.2f}",
        )
    return out


def _kind_table(table: pd.DataFrame) -> Table:
    """Net revenue as a share of the failed amount, per decline kind (rows) and policy."""
    kinds = [c for c in table.columns if str(c).startswith("net_share")]
    out = Table(
        title="Net revenue (recovered less fees) as a share of the failed amount, by decline",
        title_justify="left",
    )
    out.add_column("decline kind")
    for name in table.index:
        out.add_column(str(name), justify="right")
    for column in kinds:
        label = "all" if column == "net_share" else column.removeprefix("net_share_")
        out.add_row(label.replace("_", " "), *(f"{v:.1%}" for v in table[column]))
    return out


@app.command()
def simulate(
    accounts: Annotated[int, typer.Option(min=1, help="Connected accounts.")] = 200,
    payments: Annotated[int, typer.Option(min=1, help="Failed payments.")] = 20_000,
    seed: Annotated[int, typer.Option(help="Random seed: same seed, same tables.")] = 0,
    out: Annotated[
        Path | None, typer.Option(help="Folder for the contract tables [default: DATA_DIR/sim].")
    ] = None,
    evaluate: Annotated[
        bool, typer.Option("--evaluate", help="Also compare the reference policies.")
    ] = False,
    history_policy: Annotated[
        str,
        typer.Option(
            help="The policy whose history is written: randomized_logging (its propensities "
            "recorded) or a reference policy (no_retry, fixed_schedule, stripe_like, rules)."
        ),
    ] = "randomized_logging",
    plain: Annotated[
        bool,
        typer.Option(
            "--plain",
            help="Write the history as a platform's own export: no decisions table, no "
            "policy or propensity on attempts and messages.",
        ),
    ] = False,
    dask: DaskRollouts = None,
    dask_workers: DaskWorkers = 2,
    dask_memory: DaskMemory = "4GiB",
) -> None:
    """Simulate a marketplace's failed payments and write their history as contract tables.

    By default the history is logged by a randomized policy whose propensities are recorded;
    --history-policy makes it a reference policy's (deterministic ones included), and
    --plain writes it as a platform's own export. With --evaluate, the reference policies are
    also rolled out on the same payments with common random numbers and their recovered
    revenue, recovery rate and cost printed with 95% confidence intervals.
    """
    from reclaim.reference import REFERENCE_POLICIES, RandomizedLogging
    from reclaim.simulator import compare, generate, platform_export, reference_policies

    makers = {"randomized_logging": RandomizedLogging, **REFERENCE_POLICIES}
    if history_policy not in makers:
        raise typer.BadParameter(
            f"unknown policy {history_policy!r}; choose one of {', '.join(makers)}",
            param_hint="--history-policy",
        )
    out = out or get_settings().data_dir / "sim"
    with console.status(f"Drawing {payments:,} failed payments over {accounts:,} accounts…"):
        market = generate(accounts, payments, seed)
    client = _dask_client(dask, dask_workers, dask_memory)
    with client or nullcontext():
        with _progress() as progress:
            logging_policy = {f"{history_policy} history": makers[history_policy]()}
            _, rollouts = compare(
                market, logging_policy, seed, _rollout_task(progress, payments), client
            )
        t = rollouts[f"{history_policy} history"].tables
        t = contract.write_tables(platform_export(t) if plain else t, out)
        # Lets `reclaim evaluate --simulator` re-create this marketplace later.
        (out / "simulation.json").write_text(
            json.dumps(
                {
                    "accounts": accounts,
                    "payments": payments,
                    "seed": seed,
                    "history_policy": history_policy,
                    "plain": plain,
                }
            )  # fmt: skip
        )
        console.print(
            f"Wrote {len(t.payments):,} payments, {len(t.attempts):,} attempts, "
            f"{len(t.messages):,} messages and {len(t.decisions):,} decisions to {out}/"
        )
        if not evaluate:
            return
        with _progress() as progress:
            table, _ = compare(
                market, reference_policies(market), seed, _rollout_task(progress, payments), client
            )
    title = f"Reference policies on {payments:,} simulated failed payments (seed {seed})"
    console.print(_policy_table(table, title))
    console.print(_kind_table(table))


class GateWorld(StrEnum):
    """The retry model of the whole-policy gate's world (``TrainConfig.gate_world``)."""

    monotone = "monotone"
    policy = "policy"


class AmountUnit(StrEnum):
    """The unit of a table's amounts."""

    minor = "minor"
    major = "major"


Amounts = Annotated[
    AmountUnit,
    typer.Option(
        help="The unit of the payments' amounts: minor (4999 for $49.99, the contract's) or "
        "major (49.99), turned into minor units as they are read.",
    ),
]


@app.command()
def train(
    data: Annotated[Path, typer.Option(help="Folder of contract tables (Parquet or CSV).")],
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI. Default: RECLAIM_MLFLOW_TRACKING_URI.")
    ] = None,
    artifact_uri: Annotated[
        str | None,
        typer.Option(
            help="Where a new experiment keeps its artifacts. Default: "
            "RECLAIM_MLFLOW_ARTIFACT_URI, else MLflow's own (./mlruns)."
        ),
    ] = None,
    experiment: Annotated[str, typer.Option(help="MLflow experiment.")] = "reclaim",
    exploration: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=1.0,
            help="Probability of a random allowed option per decision, so the policy's own "
            "logs stay usable for off-policy evaluation.",
        ),
    ] = 0.05,
    test_share: Annotated[
        float,
        typer.Option(
            min=0.05, max=0.5, help="Share of payments, the latest by failure, held out for tests."
        ),
    ] = 0.2,
    dask: Annotated[
        str | None,
        typer.Option(
            help="Build the rows and train the retry-time model on a Dask cluster: a "
            "scheduler's address (tcp://host:8786), or 'local' for a LocalCluster on this "
            "machine. Reads Parquet tables only.",
        ),
    ] = None,
    accept_warnings: Annotated[
        bool,
        typer.Option(
            "--accept-warnings",
            help="Train on data that `reclaim validate` warns about (amounts that look like "
            "major units, unknown decline codes); the warnings become the run's caveats.",
        ),
    ] = False,
    amounts: Amounts = AmountUnit.minor,
    gate_payments: Annotated[
        int,
        typer.Option(
            min=100,
            help="Later payments (at most) the gate rolls the whole policy and the history's "
            "schedule out on; more narrows its interval and takes longer.",
        ),
    ] = 5_000,
    gate_world: Annotated[
        GateWorld,
        typer.Option(
            help="The retry model the gate rolls policies out through: monotone (fitted on "
            "the same rows, its chance cannot fall with time alone) or the policy's own.",
        ),
    ] = GateWorld.monotone,
    dask_workers: DaskWorkers = 2,
    dask_memory: DaskMemory = "4GiB",
) -> None:
    """Train the retry-time and channel models, evaluate them on a later time split, log
    everything to MLflow and register the policy as reclaim-policy. Data that validation
    warns about is refused unless --accept-warnings."""
    from reclaim.training.pipeline import STAGES, TrainConfig
    from reclaim.training.pipeline import train as run_training

    settings = get_settings()
    uri = _tracking_store(tracking_uri)
    config = TrainConfig(
        exploration=exploration,
        test_share=test_share,
        experiment=experiment,
        accept_warnings=accept_warnings,
        max_rollout_payments=gate_payments,
        amounts=amounts.value,
        gate_world=gate_world.value,
    )
    if dask and amounts is AmountUnit.major:
        console.print(
            "[red]error:[/red] --amounts major reads the tables in this process; with --dask, "
            "the workers read the Parquet files as they are: write the amounts in minor units "
            "first (`reclaim validate --amounts major` shows what they become)"
        )
        raise typer.Exit(code=2)
    client = _dask_client(dask, dask_workers, dask_memory)
    with _progress() as progress, client or nullcontext():
        task = progress.add_task("training", total=len(STAGES))

        def on_stage(name: str) -> None:
            done = progress.tasks[task].description != "training"
            progress.update(task, description=name[:40], advance=1 if done else 0)

        try:
            result = run_training(
                data, uri, config, on_stage, artifact_uri or settings.mlflow_artifact_uri, client
            )
        except ValueError as exc:  # ContractError included: bad or insufficient data
            console.print(f"[red]cannot train:[/red] {exc}", markup=True, highlight=False)
            raise typer.Exit(code=1) from exc
        progress.update(task, description="done", completed=len(STAGES))
    m = result.metrics
    table = Table(
        title=f"Run {result.run_id} — reclaim-policy v{result.model_version}", title_justify="left"
    )
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key in ("retry_auc", "retry_log_loss", "retry_brier", "retry_ece"):
        table.add_row(key, f"{m[key]:.4f}")
    for ch in ("email", "sms", "in_app"):
        if f"uplift_{ch}" in m:
            table.add_row(
                f"{ch} uplift (training, cross-fitted)",
                interval(m[f"uplift_{ch}"], m[f"uplift_{ch}_lo"], m[f"uplift_{ch}_hi"], pts=True),
            )
        if f"channel_{ch}_qini" in m:
            table.add_row(
                f"{ch} Qini / AUUC",
                f"{m[f'channel_{ch}_qini']:.4f} / {m[f'channel_{ch}_auuc']:.4f}",
            )
    for est in ("logging", "ips", "snips", "dr"):
        table.add_row(
            f"first-message value, {est}",
            interval(m[f"ope_{est}"], m[f"ope_{est}_lo"], m[f"ope_{est}_hi"]),
        )
    table.add_row("effective sample size", f"{m['ope_ess']:,.0f} of {m['ope_decisions']:,.0f}")
    table.add_row(
        "whole policy (model rollout)",
        f"{m['whole_policy']:.1%}, the history's schedule {m['whole_history']:.1%}",
    )
    table.add_row(
        "… uplift over the history's schedule",
        interval(m["whole_uplift"], m["whole_uplift_lo"], m["whole_uplift_hi"], pts=True),
    )
    table.add_row(
        "… median hours between retries",
        f"{m['whole_median_gap_hours']:.0f} (history {m['history_median_gap_hours']:.0f})",
    )
    table.add_row(
        "… retries per payment",
        f"{m['whole_retries_per_payment']:.2f} (history {m['history_retries_per_payment']:.2f})",
    )
    console.print(table)
    for caveat in result.caveats:
        console.print(f"caveat: {caveat}", markup=False, highlight=False)
    console.print(f"gate: {result.gate} — {result.reason}", markup=False, highlight=False)
    console.print(f"tracking: {uri}", markup=False)


@app.command()
def evaluate(
    model: Annotated[
        str | None,
        typer.Option(
            help="Model URI of the policy to evaluate (the baseline of --data). Default: the "
            "champion, else the challenger, else the newest version of reclaim-policy.",
            show_default=False,
        ),
    ] = None,
    simulator: Annotated[
        bool,
        typer.Option("--simulator", help="Roll the policy out against the simulator's truth."),
    ] = False,
    data: Annotated[
        Path | None,
        typer.Option(
            help="Folder of contract tables (a platform's own export): compare off-policy on its "
            "later period."
        ),
    ] = None,
    candidate: Annotated[
        str | None,
        typer.Option(
            help="With --data: a second model URI, compared with --model row by row. Default: "
            "the newest version of reclaim-policy when it is not --model's."
        ),
    ] = None,
    test_share: Annotated[
        float, typer.Option(min=0.05, max=0.5, help="With --data: the later share evaluated on.")
    ] = 0.2,
    min_ess: Annotated[
        float,
        typer.Option(min=1, help="With --data: refuse estimates with fewer effective decisions."),
    ] = 200.0,
    payments: Annotated[
        int, typer.Option(min=100, help="With --simulator: fresh payments to roll out.")
    ] = 50_000,
    seed: Annotated[int, typer.Option(help="With --simulator: seed of the fresh payments.")] = 1,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI. Default: RECLAIM_MLFLOW_TRACKING_URI.")
    ] = None,
    dask: DaskRollouts = None,
    dask_workers: DaskWorkers = 2,
    dask_memory: DaskMemory = "4GiB",
    json_out: JsonOut = None,
) -> None:
    """Evaluate a registered policy: against the simulator's truth (--simulator), or off-policy
    on a platform's own history with the reference policies and a candidate (--data)."""
    if simulator == (data is not None):
        console.print("[red]error:[/red] give exactly one of --simulator and --data DIR")
        raise typer.Exit(code=2)
    if dask is not None and not simulator:
        console.print("[red]error:[/red] --dask spreads --simulator's rollouts only")
        raise typer.Exit(code=2)
    uri = _existing_store(tracking_uri)
    if model is None:
        model, why = _default_model(uri)
        console.print(f"evaluating {model}: {why}", markup=False, highlight=False)
    if data is not None:
        _evaluate_on_data(data, model, candidate, uri, test_share, min_ess, json_out)
        return
    from mlflow.exceptions import MlflowException

    from reclaim.training.evaluate import evaluate_in_simulator

    client = _dask_client(dask, dask_workers, dask_memory)
    try:
        with _progress() as progress, client or nullcontext():
            found = evaluate_in_simulator(
                model, uri, payments, seed, _rollout_task(progress, payments), client
            )
    except (ValueError, MlflowException) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        console.print(f"[red]error:[/red] {model} in {uri}: {first}", markup=True, highlight=False)
        raise typer.Exit(code=2) from exc
    table, run_id, gap = found.table, found.run_id, found.gap_closed
    console.print(
        _policy_table(
            table, f"{model} vs reference policies on {payments:,} fresh payments (seed {seed})"
        )
    )
    console.print(_kind_table(table))
    console.print(
        f"learned policy closes {gap:.1%} of the net-revenue gap between fixed_schedule and "
        f"the oracle, the simulator's ceiling (logged as run {run_id})"
    )
    if json_out is not None:
        rows = {
            str(name): {
                "payments": int(r["payments"]),
                "recovery_rate": float(r["recovery_rate"]),
                "recovery_rate_lo": float(r["recovery_rate_lo"]),
                "recovery_rate_hi": float(r["recovery_rate_hi"]),
                "usd_per_payment": float(r["recovered_usd"] / r["payments"]),
                "net_usd_per_payment": float(r["net_usd"] / r["payments"]),
                "net_revenue": {
                    "usd": float(r["net_usd"]),
                    "usd_lo": float(r["net_usd_lo"]),
                    "usd_hi": float(r["net_usd_hi"]),
                    "share_of_failed": float(r["net_share"]),
                    "share_of_failed_by_decline_kind": {
                        k.removeprefix("net_share_"): float(v)
                        for k, v in r.items()
                        if str(k).startswith("net_share_") and pd.notna(v)
                    },
                },
                "retries_per_payment": float(r["retries_per_payment"]),
                "messages_per_payment": float(r["messages_per_payment"]),
            }
            for name, r in table.iterrows()
        }
        _write_json(
            json_out,
            {"policies": rows, "gap_closed": gap, "ceiling": "oracle",
             "gap_from": "fixed_schedule", "payments": payments, "seed": seed,
             "failed_usd": float(table["failed_usd"].iloc[0]),
             "model": model, "run_id": run_id, "currency": "USD"},
        )  # fmt: skip


def _default_model(uri: str) -> tuple[str, str]:
    """The policy to evaluate when none is named, and why: the champion, else the
    challenger, else the newest version of reclaim-policy. Exits 2 when none is registered."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from reclaim.training.registry import CHALLENGER, CHAMPION, MODEL_NAME

    client = MlflowClient(uri)
    for alias in (CHAMPION, CHALLENGER):
        try:
            version = client.get_model_version_by_alias(MODEL_NAME, alias).version
        except MlflowException:
            continue
        return f"models:/{MODEL_NAME}@{alias}", f"the {alias} (version {version})"
    try:
        versions = list(client.search_model_versions(f"name='{MODEL_NAME}'"))
    except MlflowException:
        versions = []
    if versions:
        newest = max(int(v.version) for v in versions)
        return f"models:/{MODEL_NAME}/{newest}", "no champion or challenger: the newest version"
    console.print(
        f"[red]error:[/red] no {MODEL_NAME} is registered in {uri}: run `reclaim train` first, "
        "or name one with --model"
    )
    raise typer.Exit(code=2)


def _newest_version(uri: str, model: str) -> str | None:
    """``models:/reclaim-policy/<newest>`` when that is not the version ``model`` names."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient(uri)
    try:
        versions = client.search_model_versions("name='reclaim-policy'")
        champion = client.get_model_version_by_alias("reclaim-policy", "champion").version
    except MlflowException:
        return None
    if not versions:
        return None
    newest = max(int(v.version) for v in versions)
    named = champion if model.endswith("@champion") else model.rsplit("/", 1)[-1]
    return None if str(newest) == str(named) else f"models:/reclaim-policy/{newest}"


def _evaluate_on_data(
    data: Path,
    model: str,
    candidate: str | None,
    uri: str,
    test_share: float,
    min_ess: float,
    json_out: Path | None = None,
) -> None:
    from mlflow.exceptions import MlflowException

    from reclaim.reference import REFERENCE_POLICIES
    from reclaim.training.offline import evaluate_on_data

    candidate = candidate or _newest_version(uri, model)
    models = {"champion" if model.endswith("@champion") else "model": model}
    if candidate:
        models["candidate"] = candidate
    try:
        with _progress() as progress:
            steps = 3 + len(models) + len(REFERENCE_POLICIES)
            task = progress.add_task("evaluating", total=steps)

            def on_stage(name: str) -> None:
                done = progress.tasks[task].description != "evaluating"
                progress.update(task, description=name[:40], advance=1 if done else 0)

            result = evaluate_on_data(data, uri, models, test_share, min_ess, on_stage)
            progress.update(task, description="done", completed=steps)
    except (ValueError, MlflowException) as exc:  # ContractError included
        console.print(f"[red]cannot evaluate:[/red] {exc}", markup=True, highlight=False)
        raise typer.Exit(code=1) from exc
    t = result.table
    baseline = t.attrs["baseline"]
    out = Table(
        title=f"First-message value on {data}'s later {test_share:.0%} ({result.decisions:,} "
        f"first decisions from {result.cutoff:%Y-%m-%d}); logging policy "
        f"{t.attrs['logging']:.1%}",
        title_justify="left",
    )
    for column in ("policy", "DR", "SNIPS", "ESS", "vs logging", f"vs {baseline}"):
        out.add_column(column, justify="left" if column == "policy" else "right")
    for name, r in t.iterrows():
        if r["refused"]:
            out.add_row(str(name), f"refused: {r['refused']}", "", f"{r['ess']:,.0f}", "", "")
            continue
        out.add_row(
            f"{name} ({models[name]})" if name in models else str(name),
            interval(r["dr"], r["dr_lo"], r["dr_hi"]),
            interval(r["snips"], r["snips_lo"], r["snips_hi"]),
            f"{r['ess']:,.0f}",
            interval(r["vs_logging"], r["vs_logging_lo"], r["vs_logging_hi"], pts=True),
            "" if name == baseline else
            interval(r["vs_baseline"], r["vs_baseline_lo"], r["vs_baseline_hi"], pts=True),
        )  # fmt: skip
    console.print(out)
    for caveat in result.caveats:
        console.print(f"caveat: {caveat}", markup=False, highlight=False)
    console.print(f"logged as run {result.run_id}", markup=False)
    if json_out is not None:
        rows = {}
        for name, r in t.iterrows():
            rows[str(name)] = (
                {"refused": str(r["refused"]), "ess": float(r["ess"])}
                if r["refused"]
                else {
                    # the off-policy (doubly robust) value of the first message
                    "recovery_rate": float(r["dr"]),
                    "recovery_rate_lo": float(r["dr_lo"]),
                    "recovery_rate_hi": float(r["dr_hi"]),
                    "snips": float(r["snips"]),
                    "ess": float(r["ess"]),
                    "vs_logging_pts": float(r["vs_logging"]),
                }
            )
        _write_json(
            json_out,
            {"policies": rows, "logging_recovery_rate": float(t.attrs["logging"]),
             "decisions": int(result.decisions), "run_id": result.run_id,
             "caveats": list(result.caveats)},
        )  # fmt: skip


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Port to listen on.")] = 8000,
    workers: Annotated[
        int,
        typer.Option(
            min=1,
            help="Worker processes sharing the store (PostgreSQL for more than one, or "
            "SQLite's single writer); /metrics sums them all.",
        ),
    ] = 1,
) -> None:
    """Run the scoring API under uvicorn (settings from RECLAIM_* variables or .env)."""
    import shutil
    import tempfile

    import uvicorn

    from reclaim.serving.metrics import MULTIPROCESS_DIR

    if workers > 1 and get_settings().dashboard_session_secret is None:
        # each worker would sign dashboard sessions with its own random secret: a session
        # made by one would be refused by the others
        console.print(
            "[red]error:[/red] --workers above 1 needs RECLAIM_DASHBOARD_SESSION_SECRET (a "
            "long random string), so that every worker accepts the dashboard's sessions"
        )
        raise typer.Exit(code=2)
    _say_stores(tracking=True)
    made = None
    if workers > 1:
        # every worker writes its metrics here; a folder left by an earlier run would be
        # summed in, so its files go
        folder = os.environ.get(MULTIPROCESS_DIR) or (made := tempfile.mkdtemp("-metrics"))
        Path(folder).mkdir(parents=True, exist_ok=True)
        for old in Path(folder).glob("*.db"):
            old.unlink()
        os.environ[MULTIPROCESS_DIR] = folder
    try:
        uvicorn.run(
            "reclaim.serving.app:create_app",
            factory=True,
            host=host,
            port=port,
            workers=workers,
            log_level=get_settings().log_level.lower(),
            # the app's own logging (reclaim.logs, set by create_app in each worker) writes
            # uvicorn's lines too, and one access line per request with its request id
            log_config=None,
            access_log=False,
        )
    finally:
        if made:
            shutil.rmtree(made, ignore_errors=True)


PAYMENTS_PER_SHARD = 500
"""A part of a replay gets at least this many payments by default: enough for its API's skew
monitor (which waits for 200 first decisions) to judge."""


def default_shards(payments: int) -> int:
    """One part per available core, each with at least :data:`PAYMENTS_PER_SHARD` payments."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, payments // PAYMENTS_PER_SHARD))


@app.command()
def replay(
    model: Annotated[str, typer.Option(help="Model URI.")] = "models:/reclaim-policy@champion",
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI; default RECLAIM_MLFLOW_TRACKING_URI.")
    ] = None,
    payments: Annotated[int, typer.Option(min=10, help="New failed payments.")] = 300,
    messages: Annotated[
        bool,
        typer.Option(help="Let the policies message customers (the simulated customer answers)."),
    ] = True,
    control: Annotated[str, typer.Option(help="The control arm's reference policy.")] = (
        "stripe_like"
    ),
    seed: Annotated[int, typer.Option(help="Seed of the replayed payments and their truth.")] = 8,
    control_share: Annotated[
        float,
        typer.Option(
            min=0.0, max=1.0, help="Share of customers in the control arm (0: no experiment)."
        ),
    ] = 0.5,
    out: Annotated[Path | None, typer.Option(help="Folder for the replay's store.")] = None,
    shards: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Play the payments in this many parts at once, split by connected account "
            "(same result; one core each). Default: the cores available, at most one per "
            f"{PAYMENTS_PER_SHARD} payments.",
        ),
    ] = None,
    json_out: JsonOut = None,
) -> None:
    """Replay a month of new failures through the API, the scheduler and the Stripe stand-in,
    in simulated time, as an A/B test; print recovered revenue per arm and the verdict."""
    import mlflow

    from reclaim.replay import ReplayConfig, run_replay
    from reclaim.training.ab_stats import difference
    from reclaim.training.evaluate import simulated_market

    tracking_uri = _existing_store(tracking_uri)
    mlflow.set_tracking_uri(tracking_uri)
    try:
        market = simulated_market(mlflow.pyfunc.load_model(model), model)
    except (ValueError, mlflow.exceptions.MlflowException) as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        console.print(f"[red]cannot replay:[/red] {model} in {tracking_uri}: {first}")
        raise typer.Exit(code=2) from exc
    config = ReplayConfig(
        payments=payments,
        messages=messages,
        control=control,
        seed=seed,
        control_share=control_share,
        shards=shards or default_shards(payments),
    )
    with _progress() as progress:
        task = progress.add_task("replaying a month", total=100)

        def on_progress(share: float, note: str) -> None:
            progress.update(task, completed=100 * share, description=note)

        try:
            table = run_replay(
                market, tracking_uri, out or get_settings().data_dir / "replay", config, on_progress
            )
        except ValueError as exc:
            console.print(f"[red]cannot replay:[/red] {exc}")
            raise typer.Exit(code=2) from exc
    shown = table.copy()
    shown["recovery_rate"] = [
        interval(r, r - c, r + c)
        for r, c in zip(table["recovery_rate"], table["rate_ci95"], strict=True)
    ]
    shown["usd_per_payment"] = [
        ci(f"${v:,.2f}", f"${v - c:,.2f}", f"${v + c:,.2f}")
        for v, c in zip(table["usd_per_payment"], table["usd_per_payment_ci95"], strict=True)
    ]
    shown["recovered_usd"] = table["recovered_usd"].map(_money)
    shown = shown.drop(columns=["rate_ci95", "usd_per_payment_ci95"]).reset_index()
    out_table = Table(title="A/B replay: recovered revenue per arm")
    for column in shown.columns:
        out_table.add_column(str(column))
    for row in shown.itertuples(index=False):
        out_table.add_row(*(str(v) for v in row))
    console.print(out_table)
    per = table.attrs["per_payment"]
    arms_run = table[table["payments"] > 0]
    diff_json: dict[str, Any] = {}
    if len(arms_run) == 2:
        rate = difference(per["recovered"].to_numpy(), per["treated"].to_numpy())
        usd = difference(per["usd"].to_numpy(), per["treated"].to_numpy())
        console.print(
            f"learned − {control}: recovery {interval(rate.diff, rate.lo, rate.hi, pts=True)}; "
            "recovered revenue per failed payment "
            + ci(_signed_usd(usd.diff), _signed_usd(usd.lo), _signed_usd(usd.hi))
        )
        console.print(replay_verdict(usd, control))
        diff_json = {
            "recovery_rate_pts": [100 * rate.diff, 100 * rate.lo, 100 * rate.hi],
            "usd_per_payment": [usd.diff, usd.lo, usd.hi],
        }
    console.print(
        f"merchant retries after a decline the simulator's truth calls hard: "
        f"{table.attrs['hard_retries']:,}"
    )
    mix = table.attrs["data_path"]
    off = (mix["simulated"] - mix["stored"]).abs().max(skipna=True)
    console.print(
        "what reached the store against what the simulator drew (declines, card brands, "
        f"network codes): largest difference in a share {off:.1%}"
    )
    alerts = table.attrs.get("skew_alerts", [])
    console.print(
        "features drifting from training (the API's skew monitor): "
        + (", ".join(alerts) if alerts else "none")
    )
    console.print(
        f"charges executed by the Stripe stand-in: {table.attrs['charges']:,}; "
        f"most for one idempotency key: {table.attrs['most_per_key']}; messages sent: "
        f"{table.attrs['messages']:,}; customers who cancelled: {table.attrs['cancelled']:,}"
    )
    if table.attrs["undecided"]:
        console.print(
            f"{table.attrs['undecided']} payment(s) were paid by their customers before any "
            "decision and are in neither arm"
        )
    if json_out is not None:
        arms = {
            str(arm): {
                "payments": int(r["payments"]),
                "recovery_rate": float(r["recovery_rate"]),
                "recovery_rate_lo": float(r["recovery_rate"] - r["rate_ci95"]),
                "recovery_rate_hi": float(r["recovery_rate"] + r["rate_ci95"]),
                "usd_per_payment": float(r["usd_per_payment"]),
                "retries_per_payment": float(r["retries"] / r["payments"]),
                "messages_per_payment": float(r["messages"] / r["payments"]),
            }
            for arm, r in arms_run.iterrows()
        }
        _write_json(
            json_out,
            {"arms": arms, "difference": diff_json, "seed": seed,
             "hard_retries": int(table.attrs["hard_retries"]),
             "charges": int(table.attrs["charges"]),
             "skew_alerts": list(table.attrs.get("skew_alerts", [])),
             "most_charges_per_key": int(table.attrs["most_per_key"]),
             "data_path": mix.to_dict(orient="records")},
        )  # fmt: skip


def _shown(url: str) -> str:
    """A store's URL as a console may show it: any password replaced by ***."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL: whatever uses it refuses it with the reason
        return url if "@" not in url else "(not a URL)"


def _say_stores(tracking: bool) -> None:
    """Log which stores a long-running service will use before it starts (a JSON line where
    logs are JSON): the operational store, and with ``tracking`` the MLflow store and the
    policy it serves."""
    import logging

    settings = get_settings()
    said = f"store: {_shown(settings.database_url)} (RECLAIM_DATABASE_URL)"
    if tracking:
        said += f"; tracking: {_shown(settings.mlflow_tracking_uri)}; serving {settings.policy_uri}"
    logging.getLogger("reclaim.cli").info(said)


def _operational_store(creates: bool = False) -> str:
    """The store at RECLAIM_DATABASE_URL, said on the console (without a password) before
    a command reads or writes it: no one writes keys into a store they did not mean. A URL
    that is not SQLite's or PostgreSQL's, or a store that cannot be opened, ends the command
    with one line naming the store and the fix (exit 2), never a traceback. A SQLite store
    that does not exist is made only by a command that ``creates`` (its folder too); any
    other says so and makes nothing."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url
    from sqlalchemy.pool import NullPool

    url = get_settings().database_url
    file = sqlite_file(url)
    if file is not None and not file.exists():
        if not creates:
            console.print(
                f"[red]error:[/red] no store at {file} (RECLAIM_DATABASE_URL): the API, the "
                "scheduler and `reclaim migrate` make it; or set RECLAIM_DATABASE_URL to the "
                "store you mean.",
                highlight=False,
            )
            raise typer.Exit(code=2)
        get_settings().make_data_folder(url)
        if not file.parent.is_dir():
            console.print(
                f"[red]error:[/red] no folder {file.parent} for the store {file.name}: make it, "
                "or set RECLAIM_DATABASE_URL to the store you mean.",
                highlight=False,
            )
            raise typer.Exit(code=2)

    def refuse(why: str) -> NoReturn:
        console.print(f"[red]error:[/red] {why}", highlight=False)
        raise typer.Exit(code=2)

    try:
        parsed = make_url(url)
    except Exception:
        refuse(
            f"RECLAIM_DATABASE_URL is not a database URL: {url!r} (sqlite:///path/reclaim.db, "
            "or postgresql+psycopg://user@host:5432/db)"
        )
    shown = _shown(url)
    console.print(f"store: {shown} (RECLAIM_DATABASE_URL)", markup=False, highlight=False)
    if parsed.drivername == "postgres":
        refuse(f"{shown}: write postgresql+psycopg://… (SQLAlchemy does not take postgres://)")
    if parsed.get_backend_name() not in ("sqlite", "postgresql"):
        refuse(f"{shown}: the store is SQLite or PostgreSQL, not {parsed.get_backend_name()}")
    timeout = {"connect_timeout": 10} if parsed.get_backend_name() == "postgresql" else {}
    engine = sa.create_engine(url, poolclass=NullPool, connect_args=timeout)
    try:
        with engine.connect():
            pass
    except Exception as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        refuse(f"cannot open the store {shown}: {reason}. Check the address, or set "
               "RECLAIM_DATABASE_URL")  # fmt: skip
    finally:
        engine.dispose()
    return url


def _existing_store(tracking_uri: str | None) -> str:
    """The MLflow tracking store a command that reads models uses, said on the console: the
    option's, else ``RECLAIM_MLFLOW_TRACKING_URI``'s. A SQLite store that does not exist is a
    short error naming it and how to choose another, never an empty store created in the
    working folder (MLflow creates one when asked for a model in it)."""
    uri = tracking_uri or get_settings().mlflow_tracking_uri
    where = "--tracking-uri" if tracking_uri else "RECLAIM_MLFLOW_TRACKING_URI (default)"
    if (path := sqlite_file(uri)) is not None:
        if not path.exists():
            console.print(
                f"[red]error:[/red] no MLflow store at {path} ({where}). Train first, or name "
                "the store with --tracking-uri or RECLAIM_MLFLOW_TRACKING_URI (`make demo` "
                "writes sqlite:///data/demo/mlflow.db).",
                highlight=False,
            )
            raise typer.Exit(code=2)
    console.print(f"tracking: {_shown(uri)}", markup=False, highlight=False)
    return uri


def _tracking_store(tracking_uri: str | None) -> str:
    """The MLflow tracking store a command writes runs to, said on the console: the option's,
    else ``RECLAIM_MLFLOW_TRACKING_URI``'s (by default in the data folder, made if missing)."""
    uri = tracking_uri or get_settings().mlflow_tracking_uri
    get_settings().make_data_folder(uri)
    console.print(f"tracking: {_shown(uri)}", markup=False, highlight=False)
    return uri


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    """Results for scripts and CI: NaN written as null."""
    import math

    def clean(value: Any) -> Any:
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [clean(v) for v in value]
        return value

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(clean(payload), indent=2) + "\n")
    console.print(f"results written to {path}", markup=False, highlight=False)


def _signed_usd(value: float) -> str:
    return contract.signed_money(value, "usd")


def replay_verdict(usd, control: str) -> str:
    """The replay's verdict on recovered revenue per failed payment, in plain words."""
    from reclaim.training.ab_stats import verdict

    return verdict(
        usd,
        "revenue per failed payment",
        f"the learned policy recovered more revenue per failed payment than {control}",
        f"the learned policy recovered less revenue per failed payment than {control}",
        lambda v: f"{_signed_usd(v)} per payment",
    )


@app.command()
def scheduler() -> None:
    """Carry out decisions: retries through Stripe, messages through the outbox.

    Only one scheduler acts at a time; start a second one as a standby. Settings come from
    RECLAIM_* variables (database, Stripe key, scoring API URL and key, SMTP, message webhook).
    """
    import signal
    import threading

    from reclaim.serving.scheduler import from_settings

    _say_stores(tracking=False)
    try:
        runner = from_settings(get_settings())
    except ValueError as exc:
        console.print(f"[red]cannot start the scheduler:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    port = get_settings().scheduler_metrics_port
    if port:
        from prometheus_client import start_http_server

        start_http_server(
            port, addr=get_settings().scheduler_metrics_host, registry=runner.metrics.registry
        )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    runner.run(stop)


def _parse_fx(value: str | None) -> dict[str, float]:
    """``--fx``: ``simulator`` (the simulator's fixed rates), ``eur=1.08,gbp=1.27``, or unset
    (``RECLAIM_REPORT_FX``)."""
    if value is None:
        return dict(get_settings().report_fx)
    if value == "simulator":
        from reclaim.simulator.config import SimulatorConfig

        return dict(SimulatorConfig().usd_per_unit)
    try:
        pairs = [item.split("=", 1) for item in value.split(",") if item]
        return {k.strip().lower(): float(v) for k, v in pairs}
    except ValueError as exc:
        raise typer.BadParameter(
            f"expected CUR=RATE,CUR=RATE or 'simulator', got {value!r}"
        ) from exc


@app.command()
def report(
    experiment: Annotated[str, typer.Option(help="The experiment's name.")],
    tables: Annotated[
        Path | None,
        typer.Option(
            help="A folder of contract tables with assignments.parquet or .csv; "
            "default: the operational store (RECLAIM_DATABASE_URL)."
        ),
    ] = None,
    fx: Annotated[
        str | None,
        typer.Option(help="Rates to the report currency: CUR=RATE,… or 'simulator'."),
    ] = None,
    currency: Annotated[str | None, typer.Option(help="The report currency.")] = None,
    html: Annotated[Path | None, typer.Option(help="Write the HTML report here.")] = None,
    mlflow: Annotated[bool, typer.Option(help="Log the report to MLflow.")] = True,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI. Default: RECLAIM_MLFLOW_TRACKING_URI.")
    ] = None,
) -> None:
    """An experiment's report: recovery and recovered revenue per arm with 95% intervals,
    CUPED, per-account uplift, breakdowns, guardrails and attribution."""
    from reclaim.training import ab_publish
    from reclaim.training.ab_report import ReportError, build_report, read_assignments

    settings = get_settings()
    rates = _parse_fx(fx)
    try:
        with console.status("reading the experiment ..."):
            if tables is not None:
                data, assignments, opted_out, pre = (
                    contract.read_tables(tables),
                    read_assignments(tables),
                    set(),
                    None,
                )
            else:
                from reclaim.serving.store.experiments import report_inputs
                from reclaim.serving.store.repository import make_engine

                data, assignments, opted_out, pre = report_inputs(
                    make_engine(_operational_store()), experiment
                )
        with console.status("computing the report ..."):
            result = build_report(
                experiment,
                data,
                assignments,
                rates,
                currency or settings.report_currency,
                opted_out=opted_out,
                pre=pre,
            )
    except (ReportError, LookupError, contract.ContractError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    console.print(ab_publish.to_text(result), markup=False, highlight=False)
    if html is not None:
        html.parent.mkdir(parents=True, exist_ok=True)
        html.write_text(ab_publish.to_html(result))
        console.print(f"HTML report: {html}")
    if mlflow:
        run_id = ab_publish.log_to_mlflow(
            result,
            _tracking_store(tracking_uri),
            f"ab-{experiment}",
            settings.mlflow_artifact_uri,
        )
        console.print(f"logged to MLflow as run {run_id}")


@app.command()
def migrate() -> None:
    """Bring the store at RECLAIM_DATABASE_URL to the latest migration, once, before the API
    and the schedulers start (with RECLAIM_MIGRATE_ON_START=false they only check it)."""
    from reclaim.serving.store.migrate import current, head, upgrade

    url = _operational_store(creates=True)
    before = current(url)
    upgrade(url)
    latest = head()
    console.print(
        f"the store was already at migration {latest}"
        if before == latest
        else f"migrated the store from {before or 'an empty database'} to {latest}"
    )


models_app = typer.Typer(help="The policy's versions in the MLflow registry.", no_args_is_help=True)
app.add_typer(models_app, name="models")
TrackingUri = Annotated[
    str | None,
    typer.Option(help="MLflow tracking store (default: RECLAIM_MLFLOW_TRACKING_URI)."),
]


def _registry(tracking_uri: str | None) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(_existing_store(tracking_uri))


@models_app.command("list")
def models_list(tracking_uri: TrackingUri = None) -> None:
    """Every version of the policy, newest first: its aliases, its gate and its whole-policy
    uplift as training measured them."""
    from reclaim.training import registry

    table = Table(title=f"{registry.MODEL_NAME} versions")
    for column in ("version", "aliases", "gate", "whole-policy uplift", "registered (UTC)"):
        table.add_column(column)
    for v in registry.versions(_registry(tracking_uri)):
        when = datetime.fromtimestamp(v.created_ms / 1000, UTC) if v.created_ms else None
        table.add_row(v.version, ", ".join(v.aliases), v.gate, v.whole_uplift,
                      f"{when:%Y-%m-%d %H:%M}" if when else "")  # fmt: skip
    console.print(table)


@models_app.command("promote")
def models_promote(
    version: Annotated[str, typer.Argument(help="The version to make champion.")],
    tracking_uri: TrackingUri = None,
) -> None:
    """Make a version the champion by hand (the API follows within
    RECLAIM_POLICY_RELOAD_SECONDS); `reclaim models rollback` undoes it."""
    from reclaim.training import registry

    try:
        before = registry.promote(_registry(tracking_uri), version)
    except LookupError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    console.print(f"champion: version {version} (was {before or 'none'})")


@models_app.command("rollback")
def models_rollback(tracking_uri: TrackingUri = None) -> None:
    """Move the champion back to the version it replaced (the API follows within
    RECLAIM_POLICY_RELOAD_SECONDS)."""
    from reclaim.training import registry

    try:
        was, now = registry.rollback(_registry(tracking_uri))
    except LookupError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    console.print(f"champion rolled back: version {now} (was {was})")


keys_app = typer.Typer(help="API keys of the scoring API.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option(help="scheduler, analyst or admin.")],
    account: Annotated[
        list[str] | None, typer.Option(help="Scope to this connected account (repeatable).")
    ] = None,
) -> None:
    """Create an API key in the store at RECLAIM_DATABASE_URL and print it once."""
    from reclaim.serving.auth import Role, create_key
    from reclaim.serving.store.migrate import upgrade
    from reclaim.serving.store.repository import make_engine

    if role not in {r.value for r in Role}:
        console.print(f"[red]error:[/red] --role must be one of {[r.value for r in Role]}")
        raise typer.Exit(code=2)
    url = _operational_store(creates=True)
    upgrade(url)
    key_id, key = create_key(make_engine(url), role, account)
    console.print(f"{key_id} ({role}{', accounts ' + ', '.join(account) if account else ''}):")
    console.print(key, highlight=False)


@keys_app.command("list")
def keys_list() -> None:
    """List the keys in the store at RECLAIM_DATABASE_URL (ids, roles, scopes; never keys)."""
    from reclaim.serving.auth import list_keys
    from reclaim.serving.store.migrate import upgrade
    from reclaim.serving.store.repository import make_engine

    url = _operational_store()
    upgrade(url)
    table = Table(title="API keys")
    for column in ("key id", "role", "accounts", "created (UTC)", "revoked (UTC)"):
        table.add_column(column)
    for key in list_keys(make_engine(url)):
        table.add_row(
            key.key_id,
            key.role,
            ", ".join(key.accounts) if key.accounts else "all",
            f"{key.created_at:%Y-%m-%d %H:%M}",
            f"{key.revoked_at:%Y-%m-%d %H:%M}" if key.revoked_at else "",
        )
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key's id (key_…).")]) -> None:
    """Revoke a key: requests with it are refused within RECLAIM_AUTH_CACHE_SECONDS, and the
    dashboard sessions signed in with it end."""
    from reclaim.serving.auth import revoke_key
    from reclaim.serving.store.migrate import upgrade
    from reclaim.serving.store.repository import make_engine

    url = _operational_store()
    upgrade(url)
    if not revoke_key(make_engine(url), key_id):
        console.print(f"[red]error:[/red] no unrevoked key {key_id!r} in the store")
        raise typer.Exit(code=2)
    console.print(f"revoked {key_id}")


accounts_app = typer.Typer(help="The platform's connected accounts.", no_args_is_help=True)
app.add_typer(accounts_app, name="accounts")


@accounts_app.command("names")
def accounts_names() -> None:
    """Read every connected account's display name from Stripe into the store at
    RECLAIM_DATABASE_URL, for the dashboard (needs RECLAIM_STRIPE_API_KEY). Connect's
    account.updated events keep them current afterwards."""
    from reclaim.serving.store import profiles
    from reclaim.serving.store.migrate import upgrade
    from reclaim.serving.store.repository import make_engine

    try:
        client = get_settings().stripe_client()
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    url = _operational_store(creates=True)
    upgrade(url)
    with _progress() as progress:
        task = progress.add_task("accounts read", total=0)  # Stripe does not say how many
        read, named = profiles.sweep(
            make_engine(url), client,
            on_account=lambda n: progress.update(task, completed=n, total=n),
        )  # fmt: skip
    console.print(f"read {read:,} connected accounts; {named:,} have a display name")


events_app = typer.Typer(help="Stripe webhook events the API stored.", no_args_is_help=True)
app.add_typer(events_app, name="events")


@events_app.command("list")
def events_list(
    status: Annotated[
        list[str] | None,
        typer.Option(help="dead, failed, waiting, received, ignored or processed (repeatable)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=10_000, help="At most this many.")] = 100,
) -> None:
    """List stored events (newest first; default: set aside and failing), without payloads."""
    from reclaim.serving.store.migrate import upgrade
    from reclaim.serving.store.repository import make_engine
    from reclaim.serving.webhooks import EVENT_STATUSES, list_events

    wanted = status or ["dead", "failed"]
    unknown = sorted(set(wanted) - set(EVENT_STATUSES))
    if unknown:
        console.print(f"[red]error:[/red] --status {unknown[0]!r}: one of {list(EVENT_STATUSES)}")
        raise typer.Exit(code=2)
    url = _operational_store()
    upgrade(url)
    table = Table(title=f"Stripe events: {', '.join(wanted)}")
    for column in ("event", "type", "account", "status", "tries", "received (UTC)", "error"):
        table.add_column(column)
    for e in list_events(make_engine(url), wanted, limit):
        table.add_row(
            e["event_id"], e["type"], e["account_id"] or "platform", e["status"],
            str(e["tries"]), f"{e['received_at']:%Y-%m-%d %H:%M}", e["error"] or "",
        )  # fmt: skip
    console.print(table)


@events_app.command("retry")
def events_retry(
    event_ids: Annotated[
        list[str] | None, typer.Argument(help="Event ids (evt_…); none: every set-aside event.")
    ] = None,
) -> None:
    """Give set-aside events a new round of tries: the running API applies them within
    RECLAIM_WEBHOOK_RETRY_SECONDS."""
    from reclaim.serving.store.migrate import upgrade
    from reclaim.serving.store.repository import make_engine
    from reclaim.serving.webhooks import retry_events

    url = _operational_store()
    upgrade(url)
    n = retry_events(make_engine(url), event_ids or None)
    console.print(f"{n:,} set-aside event(s) will be tried again")
    if event_ids and n < len(set(event_ids)):
        console.print("[yellow]some ids named no set-aside event[/yellow]")


ingest_app = typer.Typer(
    help="Bring a platform's history into contract tables.", no_args_is_help=True
)
app.add_typer(ingest_app, name="ingest")


@ingest_app.command("stripe")
def ingest_stripe(
    since: Annotated[datetime, typer.Option(formats=["%Y-%m-%d"], help="First day (UTC).")],
    out: Annotated[Path, typer.Option(help="Folder for the contract tables.")],
) -> None:
    """Backfill the platform's Stripe history since a date, its own and every connected
    account's, into contract tables (needs RECLAIM_STRIPE_API_KEY)."""
    from reclaim.features.stripe_backfill import backfill

    try:
        client = get_settings().stripe_client()
    except ValueError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    with _progress() as progress:
        task = progress.add_task("accounts read", total=1)

        def on_scope(scope: str | None, done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        tables, report = backfill(client, since.replace(tzinfo=UTC), on_scope=on_scope)
    contract.write_tables(tables, out)
    console.print(
        f"Read {report.scopes:,} scopes ({dict(report.objects)}); wrote "
        f"{len(tables.payments):,} payments and {len(tables.attempts):,} attempts to {out}/"
    )
    if report.skipped:
        console.print(f"skipped: {dict(report.skipped)}")


@app.command()
def validate(
    folder: Annotated[
        Path, typer.Argument(help="Folder of contract tables: <table>.parquet or <table>.csv.")
    ],
    amounts: Amounts = AmountUnit.minor,
) -> None:
    """Check a folder of contract tables (for example a platform's own export): every problem
    at once, with counts and example rows; then what is valid but looks wrong."""
    try:
        tables = contract.read_tables(folder, amounts.value)
    except contract.ContractError as exc:
        problems = getattr(exc, "problems", [exc])
        console.print(
            f"[red]invalid:[/red] {len(problems)} problem{'s' if len(problems) != 1 else ''}"
        )
        for p in problems:
            console.print(f"- {p}", markup=False, highlight=False)
        for warning in getattr(exc, "warnings", []):
            console.print(f"warning: {warning}", markup=False, highlight=False)
        raise typer.Exit(code=1) from exc
    console.print(
        f"valid: {len(tables.payments):,} payments, {len(tables.attempts):,} attempts, "
        f"{len(tables.messages):,} messages, {len(tables.decisions):,} decisions"
    )
    if tables.decisions.empty:
        console.print(
            "note: no decisions table (no randomized log): `reclaim train` estimates message "
            "propensities from the history and says what that means for its numbers",
            markup=False,
        )
    for warning in tables.warnings:
        console.print(f"warning: {warning}", markup=False, highlight=False)
