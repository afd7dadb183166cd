"""A replay split across processes: its payments partitioned by connected account, each part
played by its own stack (API process, store, scheduler, stand-in), the stores merged after.

Every decision depends on its own payment alone (the features read the payment's own history,
and :class:`reclaim.policy.DecisionRandom` draws per payment and decision time), and a
customer belongs to one account, so a payment's fate is the same whichever part plays it: a
sharded replay gives the unsharded one's result, payment by payment, in a fraction of the time
(the loop is a conversation between two processes; one part keeps about one core busy).
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import numpy as np
import pandas as pd

from reclaim.serving.store import tables as t

# a part's own: its keys and lease; the rollups, which the merged store's triggers rebuild
NOT_MERGED = {"api_keys", "scheduler_leader", "stats_days", "stats_account_months", "stats_groups"}
# columns the database's triggers keep as attempts arrive (migrations 0007, 0008) and that the
# merged store recomputes the same way; decision ids the merged store numbers anew
KEPT_BY_THE_STORE = {
    "payments": {"recovered", "merchant_retries", "recovered_at"},
    "decision_log": {"decision_id"},
}
# the order rows are merged in: a payment before its attempts, attempts in time order (as the
# triggers saw them arrive), decisions in the order each part made them
FIRST = ("payments", "attempts")
ORDER = {"attempts": "attempted_at, attempt_number", "decision_log": "decision_id"}
# the same in every part: kept once
SHARED = {"account_config"}


def partition(accounts: pd.Series, parts: int) -> list[np.ndarray]:
    """Positions of the payments of each part: whole accounts, the busiest first, each to the
    part with the fewest payments so far (ties to the lowest part). Deterministic; parts that
    would be empty are dropped."""
    if parts < 1:
        raise ValueError(f"parts must be at least 1, got {parts}")
    counts = accounts.value_counts(sort=False)
    order = sorted(counts.index, key=lambda a: (-counts[a], str(a)))
    load = [0] * parts
    part_of: dict[object, int] = {}
    for account in order:
        k = min(range(parts), key=lambda j: (load[j], j))
        part_of[account] = k
        load[k] += int(counts[account])
    which = accounts.map(part_of).to_numpy()
    return [np.flatnonzero(which == k) for k in range(parts) if (which == k).any()]


def merge_stores(sources: list[Path], target: Path) -> None:
    """Copy every part's rows (but its keys, lease and rollups) into ``target``, an upgraded,
    empty SQLite store; the target's triggers rebuild the rollups and the payments' recovery
    columns as the attempts go in. Rows that are the same in every part (the account
    configuration) are kept once."""
    names = list(FIRST) + sorted(n for n in t.metadata.tables if n not in (*FIRST, *NOT_MERGED))
    with closing(sqlite3.connect(target)) as db:
        for source in sources:
            db.execute("ATTACH DATABASE ? AS part", (str(source),))
            for name in names:
                table = t.metadata.tables[name]
                kept = KEPT_BY_THE_STORE.get(name, set())
                columns = ", ".join(f'"{c.name}"' for c in table.columns if c.name not in kept)
                order = f" ORDER BY {ORDER[name]}" if name in ORDER else ""
                verb = "INSERT OR IGNORE" if name in SHARED else "INSERT"
                db.execute(
                    f'{verb} INTO main."{name}" ({columns}) '
                    f'SELECT {columns} FROM part."{name}"{order}'
                )
            db.commit()
            db.execute("DETACH DATABASE part")
