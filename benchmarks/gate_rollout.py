"""Why the training gate's model rollout and the simulator disagree on the timing effect.

The gate (``training.whole_policy``) values a policy by rolling it out through the retry
model on the training data's later payments. This rolls out a registered policy with and
without its timing effect (``models.timing``) there, in a model world with the timing shift
and in one without it, paired payment by payment (by decline code); then it reads the retry
model's own trend in time: the mean predicted chance of the later payments' retries at a
second or later decision, and the same rows moved ``--shift`` hours later (time since the
failure up, time left in the window down, nothing else changed). A model whose chances fall
with time alone makes any policy that waits longer look worse in its world.

With ``--monotone-world`` it also rolls both out in a world whose retry model, fitted on the
same training retries, cannot fall with time alone (``TrainConfig.world_model``: not lower
for a later retry or decision, a longer delay, or less of the window left) — the gate's
world since ``TrainConfig.gate_world`` defaults to it; the policy's own retry model is the
world of a run trained with ``--gate-world policy``.

    .venv/bin/python benchmarks/gate_rollout.py --data sim16 --tracking-uri sqlite:///sim16.db \
        [--model models:/reclaim-policy/1] [--shift 72] [--monotone-world]
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np

CODES = ("insufficient_funds", "do_not_honor", "generic_decline", "try_again_later")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the folder it was trained on")
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--model", default="models:/reclaim-policy@champion")
    parser.add_argument("--shift", type=float, default=72.0)
    parser.add_argument("--monotone-world", action="store_true")
    args = parser.parse_args()

    import mlflow

    from reclaim import contract
    from reclaim.training import whole_policy
    from reclaim.training.data import recovered_in_window, sample_payments
    from reclaim.training.prepared import TrainConfig, prepare

    mlflow.set_tracking_uri(args.tracking_uri)
    policy = mlflow.pyfunc.load_model(args.model).unwrap_python_model().policy
    if policy.timing is None:
        raise SystemExit(f"{args.model} has no timing effect to compare")
    prepared = prepare(args.data, TrainConfig())
    later = sample_payments(prepared.test_tables, 1.0)
    paid = whole_policy.customer_paid_at(later.payments, later.attempts)
    plain = copy.copy(policy)
    plain.timing, plain.name = None, "without_timing"
    code = later.payments["decline_code"].astype(object).to_numpy()
    print(f"{args.model}: model rollout on the {len(code):,} later payments of {args.data}")
    worlds = [
        ("the policy's retry model's", policy.retry_model, policy.timing),
        ("the policy's retry model's", policy.retry_model, None),
    ]
    if args.monotone_world:
        model = prepared.retry.fit(TrainConfig(), TrainConfig(gate_world="monotone").world_model())
        worlds.append(("a monotone", model, policy.timing))
    for label, world_model, world in worlds:
        value = {}
        for name, p in (("with the timing effect", policy), ("without it", plain)):
            rolled = whole_policy.rollout(
                p,
                later.payments,
                contract.empty(contract.MESSAGES),
                world_model,
                prepared.accounts,
                customer_paid=paid,
                timing=world,
            )
            value[name] = rolled.value
            print(
                f"  {label} world {'with' if world else 'without'} the shift, policy {name}: "
                f"{rolled.value.mean():.1%} recovered, {rolled.retries.mean():.2f} retries, "
                f"median {rolled.median_gap:.0f} h between them"
            )
        # the model check the gate reports: the history's own schedule rolled out in this
        # world against what the history recovered of the same payments
        logged = whole_policy.LoggedSchedule(
            later, whole_policy.fallback_delays(prepared.retry.support())
        )
        check = whole_policy.rollout(
            logged,
            later.payments,
            later.messages,
            world_model,
            prepared.accounts,
            customer_paid=paid,
            timing=world,
        )
        print(
            f"    the history's schedule here {check.value.mean():.1%}; it recovered "
            f"{recovered_in_window(later).mean():.1%}"
        )
        d = value["with the timing effect"] - value["without it"]
        by_code = ", ".join(f"{c} {100 * d[code == c].mean():+.1f}" for c in CODES)
        print(
            f"    difference {100 * d.mean():+.2f} pts (standard error "
            f"{100 * d.std() / np.sqrt(len(d)):.2f}); by code: {by_code}"
        )

    every = contract.read_tables(args.data)
    history_by_time(every.attempts, every.payments)
    x = prepared.retry.x_test
    columns = list(policy.retry_model.feature_names_in_)
    moved = x.copy()
    for column in ("retry_hours_since_failure", "hours_since_failure"):
        moved[column] = moved[column] + args.shift
    moved["hours_to_window_end"] = moved["hours_to_window_end"] - args.shift
    before = policy.retry_model.predict_proba(x[columns])[:, 1]
    after = policy.retry_model.predict_proba(moved[columns])[:, 1]
    second = (x["decision_number"].to_numpy() >= 1) & (
        x["hours_to_window_end"].to_numpy() > args.shift + 24
    )
    retry_code = x["decline_code"].astype(object).to_numpy()
    print(f"the retry model's chance at a second or later decision, {args.shift:g} h later:")
    for c in CODES:
        rows = second & (retry_code == c)
        print(
            f"  {c}: {before[rows].mean():.4f} → {after[rows].mean():.4f} "
            f"({after[rows].mean() / before[rows].mean() - 1:+.1%}; {rows.sum():,} retries)"
        )


def history_by_time(attempts, payments) -> None:
    """Print the history's own second and third merchant retries on issuer declines: the
    share that succeeded by days since the failure — whether the data, not the model, has
    a retry fare worse for being later at the same attempt number."""
    import pandas as pd

    failed = payments.set_index("payment_id")
    a = attempts[
        (attempts["initiator"] == "merchant") & attempts["attempt_number"].between(2, 3)
    ].copy()
    code = failed.loc[a["payment_id"], "decline_code"].astype(object).to_numpy()
    a = a[np.isin(code, ["do_not_honor", "generic_decline"])]
    days = (
        a["attempted_at"].to_numpy(dtype="datetime64[us]")
        - failed.loc[a["payment_id"], "failed_at"].to_numpy(dtype="datetime64[us]")
    ) / np.timedelta64(1, "D")
    a["days"] = pd.cut(days, [0, 4, 7, 10, 14, 20, 30])
    a["ok"] = (a["outcome"] == "succeeded").to_numpy()
    print(
        "the history's own retries on issuer declines (all its payments), succeeded by days "
        "since the failure:"
    )
    for number, rows in a.groupby("attempt_number"):
        said = [
            f"{b.left:g}-{b.right:g} d {g['ok'].mean():.1%} ({len(g):,})"
            for b, g in rows.groupby("days", observed=True)
            if len(g) >= 100
        ]
        print(f"  retry {number}: " + ", ".join(said))


if __name__ == "__main__":
    main()
