"""The data contract: round trips, and every kind of bad input rejected with a clear message."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from reclaim import contract
from reclaim.simulator import Rollout, generate


def _copy(history: Rollout) -> dict[str, pd.DataFrame]:
    return {k: v.copy() for k, v in history.tables.as_dict().items()}


def test_round_trip_keeps_every_value_and_dtype(history: Rollout, tmp_path: Path) -> None:
    written = contract.write_tables(history.tables, tmp_path / "t")
    read = contract.read_tables(tmp_path / "t")
    for name, df in written.as_dict().items():
        pd.testing.assert_frame_equal(getattr(read, name), df, check_exact=True)
    assert len(read.payments) == 2_000 and len(read.attempts) > 2_000


def _drop_column(t: dict[str, pd.DataFrame]) -> None:
    t["payments"] = t["payments"].drop(columns="currency")


def _wrong_type(t: dict[str, pd.DataFrame]) -> None:
    t["payments"]["amount"] = t["payments"]["amount"].astype(str)


def _unknown_enum(t: dict[str, pd.DataFrame]) -> None:
    cm = t["payments"]["charge_model"].astype("object")
    cm.iloc[3] = "on_behalf"
    t["payments"]["charge_model"] = cm


def _negative_amount(t: dict[str, pd.DataFrame]) -> None:
    t["payments"].loc[5, "amount"] = -100


def _attempt_before_failure(t: dict[str, pd.DataFrame]) -> None:
    a = t["attempts"]
    a.loc[0, "attempted_at"] = a.loc[0, "attempted_at"] - pd.Timedelta(days=2)


def _duplicate_payment(t: dict[str, pd.DataFrame]) -> None:
    t["payments"] = pd.concat([t["payments"], t["payments"].iloc[[7]]], ignore_index=True)


def _duplicate_attempt(t: dict[str, pd.DataFrame]) -> None:
    t["attempts"] = pd.concat([t["attempts"], t["attempts"].iloc[[0]]], ignore_index=True)


def _message_for_unknown_payment(t: dict[str, pd.DataFrame]) -> None:
    m = t["messages"]
    pid = m["payment_id"].astype("object")
    pid.iloc[0] = "in_does_not_exist"
    m["payment_id"] = pid


def _null_required(t: dict[str, pd.DataFrame]) -> None:
    cid = t["payments"]["customer_id"].astype("object")
    cid.iloc[2] = None
    t["payments"]["customer_id"] = cid


def _naive_time(t: dict[str, pd.DataFrame]) -> None:
    t["payments"]["failed_at"] = t["payments"]["failed_at"].dt.tz_localize(None)


def _bad_propensity(t: dict[str, pd.DataFrame]) -> None:
    t["messages"].loc[0, "propensity"] = 1.5


def _fractional_amount(t: dict[str, pd.DataFrame]) -> None:
    t["payments"]["amount"] = t["payments"]["amount"].astype(float) + 0.5


BAD_INPUTS: list[tuple[str, Callable[[dict[str, pd.DataFrame]], None], str]] = [
    ("missing column", _drop_column, r"payments\.parquet, column 'currency': missing column"),
    ("wrong type", _wrong_type, r"payments\.parquet, column 'amount': expected integers"),
    ("unknown enum", _unknown_enum, r"column 'charge_model': unknown value\(s\) \['on_behalf'\]"),
    ("negative amount", _negative_amount, r"column 'amount': amounts must be positive.*row 5"),
    (
        "attempt before failure",
        _attempt_before_failure,
        r"attempts\.parquet, column 'attempted_at': before the payment's first failure",
    ),
    ("duplicate payment", _duplicate_payment, r"payments\.parquet, column 'payment_id': duplicate"),
    (
        "duplicate attempt",
        _duplicate_attempt,
        r"attempts\.parquet, column 'payment_id, attempt_number': duplicate ids",
    ),
    (
        "message for unknown payment",
        _message_for_unknown_payment,
        r"messages\.parquet, column 'payment_id': messages for unknown payments.*in_does_not_exist",
    ),
    ("null in required column", _null_required, r"column 'customer_id': null values"),
    ("naive timestamps", _naive_time, r"column 'failed_at': expected timezone-aware UTC"),
    ("propensity out of range", _bad_propensity, r"column 'propensity': propensities must be"),
    ("fractional amount", _fractional_amount, r"column 'amount': expected whole numbers"),
]


@pytest.mark.parametrize(("kind", "damage", "message"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_rejected_by_name(history: Rollout, kind: str, damage, message: str) -> None:
    tables = _copy(history)
    damage(tables)
    with pytest.raises(contract.ContractError, match="(?s)" + message):
        contract.validate(tables)


def test_failed_write_leaves_existing_tables_untouched(history: Rollout, tmp_path: Path) -> None:
    folder = tmp_path / "t"
    contract.write_tables(history.tables, folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    tables = _copy(history)
    _negative_amount(tables)
    with pytest.raises(contract.ContractError):
        contract.write_tables(tables, folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["t"], "no staging folder left behind"


def test_failed_first_write_creates_nothing(history: Rollout, tmp_path: Path) -> None:
    tables = _copy(history)
    _unknown_enum(tables)
    with pytest.raises(contract.ContractError):
        contract.write_tables(tables, tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_reading_names_the_file(history: Rollout, tmp_path: Path) -> None:
    folder = tmp_path / "t"
    contract.write_tables(history.tables, folder)
    (folder / "messages.parquet").write_bytes(b"not parquet")
    with pytest.raises(contract.ContractError, match=r"messages\.parquet.*not a readable Parquet"):
        contract.read_tables(folder)
    (folder / "attempts.parquet").unlink()
    with pytest.raises(contract.ContractError, match=r"attempts\.parquet: file not found"):
        contract.read_tables(folder)


def test_bad_file_on_disk_names_file_column_and_rows(history: Rollout, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = tmp_path / "t"
    contract.write_tables(history.tables, folder)
    payments = pq.read_table(folder / "payments.parquet").to_pandas()
    payments.loc[[1, 4], "amount"] = 0
    pq.write_table(pa.Table.from_pandas(payments), folder / "payments.parquet")
    with pytest.raises(contract.ContractError) as err:
        contract.read_tables(folder)
    text = str(err.value)
    assert str(folder / "payments.parquet") in text and "'amount'" in text
    assert "row 1" in text and "row 4" in text


def test_decisions_table_is_optional(history: Rollout, tmp_path: Path) -> None:
    tables = _copy(history)
    del tables["decisions"]
    valid = contract.validate(tables)
    assert len(valid.decisions) == 0
    assert list(valid.decisions.columns) == contract.DECISIONS.column_names


def test_every_column_is_documented() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "data-contract.md").read_text()
    for table in contract.TABLES:
        assert f"`{table.file}`" in doc
        for column in table.columns:
            assert f"`{column.name}`" in doc, f"{table.name}.{column.name} is not documented"


def test_extra_columns_are_dropped_not_fatal(history: Rollout) -> None:
    tables = _copy(history)
    tables["payments"]["internal_note"] = np.arange(len(tables["payments"]))
    assert "internal_note" not in contract.validate(tables).payments.columns


def test_empty_tables_are_valid() -> None:
    valid = contract.validate({t.name: contract.empty(t) for t in contract.TABLES})
    assert all(len(df) == 0 for df in valid.as_dict().values())


def test_one_row_conforms_as_its_table_does(history):
    """The row path (webhooks) and the frame path (exports) agree, value for value."""
    for table, frame in (
        (contract.PAYMENTS, history.tables.payments.head(300)),
        (contract.ATTEMPTS, history.tables.attempts.head(300)),
    ):
        want = contract.conform(table, frame)
        records = frame.astype(object).where(frame.notna(), None).to_dict(orient="records")
        rows = [contract.conform_row(table, r) for r in records]
        for name in table.column_names:
            expected = want[name].astype(object).where(want[name].notna(), None).tolist()
            got = [r[name] for r in rows]
            if name in ("failed_at", "attempted_at"):
                expected = [None if v is None else v.to_pydatetime() for v in expected]
            assert got == expected, name


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("currency", 5, "expected text"),
        ("card_brand", "diners_club_x", "unknown value"),
        ("amount", 12.5, "whole numbers"),
        ("amount", True, "expected integers"),
        ("failed_at", "2026-01-01 10:00", "with an offset"),
        ("failed_at", datetime(2026, 1, 1, 10), "timezone-aware"),
        ("account_id", None, "required column"),
    ],
)
def test_a_bad_row_names_its_column(history, column, value, message):
    row = history.tables.payments.head(1).astype(object).to_dict(orient="records")[0]
    with pytest.raises(contract.ContractError, match=message) as found:
        contract.conform_row(contract.PAYMENTS, {**row, column: value})
    assert column in str(found.value)


def test_a_frame_indexed_from_elsewhere_keeps_its_values(history):
    """A slice of a table (its index not 0..n-1) conforms to the same values, not to nulls."""
    part = history.tables.payments.iloc[100:103]
    got = contract.conform(contract.PAYMENTS, part)
    assert list(got["payment_id"]) == list(part["payment_id"])
    assert got.notna().sum().sum() == part.reset_index(drop=True).notna().sum().sum()


@pytest.mark.parametrize(
    ("change", "column", "words"),
    [
        ({"amount": 10**12}, "amount", "largest charge"),
        ({"currency": "xyz"}, "currency", "ISO 4217"),
        ({"failed_at": pd.Timestamp("1999-12-31", tz="UTC")}, "failed_at", "from 2000-01-01"),
        ({"failed_at": pd.Timestamp("2999-01-01", tz="UTC")}, "failed_at", "a day from now"),
        ({"customer_id": "cus_\x00"}, "customer_id", "NUL or a lone surrogate"),
        ({"customer_id": "cus_\ud800"}, "customer_id", "NUL or a lone surrogate"),
        ({"decline_code": "x" * 256}, "decline_code", "at most 255 characters"),
    ],
)
def test_the_contract_has_the_bounds_of_every_other_way_in(change, column, words) -> None:
    """A backfill or a bulk load is held to the API's and the webhooks' bounds
    (reclaim.fields): what one way in refuses, none stores."""
    market = generate(2, 20, seed=3)
    payments = market.payments.astype({c: object for c, v in change.items() if isinstance(v, str)})
    for name, value in change.items():
        payments.loc[payments.index[1], name] = value
    with pytest.raises(contract.ContractError) as raised:
        contract.validate(
            {
                "payments": payments,
                "attempts": contract.first_failures(market.payments),
                "messages": contract.empty(contract.MESSAGES),
            }
        )
    assert column in str(raised.value) and words in str(raised.value)
