"""Decision rows: one per decision point, only the past, the same alone as in a batch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reclaim import contract, vocab
from reclaim.features import schema
from reclaim.features.accounts import AccountHistory
from reclaim.features.candidates import expand_channels, expand_retry_times, retry_features
from reclaim.features.decisions import build_decision_rows, decision_features, decision_points
from reclaim.policy import DecisionBatch
from reclaim.simulator import Rollout


@pytest.fixture(scope="module")
def rows(history: Rollout) -> tuple[pd.DataFrame, pd.DataFrame]:
    return build_decision_rows(history.tables)


def _sample(keys: pd.DataFrame, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    later = keys.index[keys["decision_number"] > 0].to_numpy()
    first = keys.index[keys["decision_number"] == 0].to_numpy()
    return np.concatenate(
        [rng.choice(later, n // 2, replace=False), rng.choice(first, n - n // 2, replace=False)]
    )


def test_one_row_per_decision_point(history: Rollout, rows) -> None:
    keys, features = rows
    logged = history.tables.decisions
    assert len(keys) == len(logged)
    got = keys.set_index(["payment_id", "decision_number"])["decided_at"].sort_index()
    want = logged.set_index(["payment_id", "decision_number"])["decided_at"].sort_index()
    pd.testing.assert_series_equal(got, want, check_names=False)
    assert list(features.columns) == list(schema.DECISION_FEATURES)
    for col, dtype in schema.CATEGORICAL.items():
        assert features[col].dtype == dtype, col
    assert all(features[c].dtype == "float64" for c in schema.NUMERIC)


def test_first_decision_has_no_history(rows) -> None:
    keys, f = rows
    first = f[keys["decision_number"] == 0]
    assert (first["n_messages"] == 0).all() and first["hours_since_last_message"].isna().all()
    assert (first["hours_since_failure"] == 0).all()
    assert (first["decline_code"] == first["first_decline_code"]).all()
    hard = first["decline_category"] == vocab.DeclineCategory.HARD
    assert (first.loc[hard, "retries_left"] == 0).all()


def _truncate(tables: contract.ContractTables, t: pd.Timestamp) -> contract.ContractTables:
    """Everything that happened after ``t`` deleted (a message at ``t`` is that decision's own)."""
    return contract.ContractTables(
        payments=tables.payments[tables.payments["failed_at"] <= t].reset_index(drop=True),
        attempts=tables.attempts[tables.attempts["attempted_at"] <= t].reset_index(drop=True),
        messages=tables.messages[tables.messages["sent_at"] < t].reset_index(drop=True),
    )


def _scramble(
    tables: contract.ContractTables, t: pd.Timestamp, seed: int
) -> contract.ContractTables:
    """Everything after ``t`` changed: outcomes flipped, channels rotated, amounts altered."""
    rng = np.random.default_rng(seed)
    a = tables.attempts.copy()
    later = (a["attempted_at"] > t).to_numpy()
    flip = {"failed": "succeeded", "succeeded": "failed"}
    a.loc[later, "outcome"] = a.loc[later, "outcome"].astype("object").map(flip).to_numpy()
    a.loc[later & (a["outcome"] == "failed").to_numpy(), "decline_code"] = "do_not_honor"
    m = tables.messages.copy()
    later_m = (m["sent_at"] >= t).to_numpy()
    m.loc[later_m, "channel"] = "sms"
    p = tables.payments.copy()
    later_p = (p["failed_at"] > t).to_numpy()
    p.loc[later_p, "amount"] = rng.integers(1, 10**6, later_p.sum())
    p.loc[later_p, "decline_code"] = "stolen_card"
    return contract.ContractTables(p, a, m)


def _features_of(tables: contract.ContractTables, payment: pd.DataFrame, t: pd.Timestamp):
    batch = DecisionBatch.from_history(payment, tables.attempts, tables.messages, pd.Series([t]))
    return decision_features(batch, AccountHistory.from_tables(tables.payments, tables.attempts))


@pytest.mark.parametrize("change", ["delete", "scramble"])
def test_nothing_after_a_decision_changes_its_features(history: Rollout, rows, change) -> None:
    keys, features = rows
    tables = history.tables
    pay = tables.payments.set_index("payment_id", drop=False)
    for i in _sample(keys, 24, seed=1):
        t = keys.at[i, "decided_at"]
        altered = _truncate(tables, t) if change == "delete" else _scramble(tables, t, int(i))
        got = _features_of(altered, pay.loc[[keys.at[i, "payment_id"]]].reset_index(drop=True), t)
        want = features.loc[[i]].reset_index(drop=True)
        pd.testing.assert_frame_equal(got, want, check_exact=True, obj=f"decision {i}")


def test_features_alone_equal_features_in_the_batch(history: Rollout, rows) -> None:
    keys, features = rows
    tables = history.tables
    accounts = AccountHistory.from_tables(tables.payments, tables.attempts)
    pay = tables.payments.set_index("payment_id", drop=False)
    sample = _sample(keys, 40, seed=2)
    for i in sample:  # one payment at a time, as the API scores it
        alone = decision_features(
            DecisionBatch.from_history(
                pay.loc[[keys.at[i, "payment_id"]]].reset_index(drop=True),
                tables.attempts,
                tables.messages,
                pd.Series([keys.at[i, "decided_at"]]),
            ),
            accounts,
        )
        pd.testing.assert_frame_equal(
            alone, features.loc[[i]].reset_index(drop=True), check_exact=True
        )
    # and a mixed sub-batch
    batch, _ = decision_points(tables)
    part = decision_features(batch.take(sample), accounts)
    pd.testing.assert_frame_equal(
        part, features.loc[sample].reset_index(drop=True), check_exact=True
    )


def test_account_aggregates_only_count_the_past(history: Rollout) -> None:
    tables = history.tables
    accounts = AccountHistory.from_tables(tables.payments, tables.attempts)
    acct = tables.payments["account_id"].value_counts().index[0]
    first = tables.payments.loc[tables.payments["account_id"] == acct, "failed_at"].min()
    at = accounts.at(
        pd.Series([acct, acct, "acct_unknown"]),
        pd.Series([first, first + pd.Timedelta(days=60), first]),
    )
    assert at.loc[0, "acct_prior_payments"] == 0 and at.loc[1, "acct_prior_payments"] > 0
    assert at.loc[2, "acct_prior_payments"] == 0
    assert 0 < at.loc[2, "acct_recovery_rate"] < 1, "unknown accounts get the platform prior"


def test_candidate_expansion_matches_logged_retry_features(history: Rollout, rows) -> None:
    keys, features = rows
    batch, _ = decision_points(history.tables)
    sample = _sample(keys, 10, seed=3)
    sub = batch.take(sample)
    grid = expand_retry_times(sub, features.loc[sample].reset_index(drop=True))
    assert len(grid) == 10 * 168
    # the candidate 30 h out equals retry_features at that time
    at = sub.now + pd.Timedelta(hours=30)
    direct = retry_features(sub, features.loc[sample].reset_index(drop=True), at)
    picked = grid[grid["delay_hours"] == 30].drop(columns=["decision", "retry_at"])
    pd.testing.assert_frame_equal(picked.reset_index(drop=True), direct, check_exact=True)
    hours = (grid["retry_local_hour"] - grid["local_hour"] - grid["delay_hours"]) % 24
    assert np.allclose(np.minimum(hours, 24 - hours), 0, atol=1.01), "local hour follows delay"
    channels = expand_channels(features.loc[sample])
    assert len(channels) == 40 and channels["channel"].dtype == schema.CHANNEL_OR_NONE


def test_a_bad_table_is_rejected_before_features(history: Rollout, tmp_path: Path) -> None:
    folder = tmp_path / "t"
    contract.write_tables(history.tables, folder)
    import pyarrow.parquet as pq

    attempts = pq.read_table(folder / "attempts.parquet").to_pandas()
    attempts["outcome"] = attempts["outcome"].astype("object").replace({"failed": "declined"})
    attempts.to_parquet(folder / "attempts.parquet")
    with pytest.raises(contract.ContractError, match=r"attempts\.parquet, column 'outcome'"):
        build_decision_rows(contract.read_tables(folder))
