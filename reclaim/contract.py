"""The data contract: the tables a platform exports, the simulator writes and the service stores.

Four Parquet tables live in one folder (``docs/data-contract.md`` documents every column):

- ``payments.parquet``: one row per failed payment to recover;
- ``attempts.parquet``: one row per charge attempt, the original failure (attempt 0) included;
- ``messages.parquet``: one row per customer message;
- ``decisions.parquet`` (optional): one row per decision a logging policy made, with the
  probability of the whole action, for off-policy evaluation.

:func:`validate` checks a set of tables and raises :class:`ContractError` naming the table,
the column and example rows; :func:`read_tables` and :func:`write_tables` validate on the
way in and out, and a failed write leaves the target folder untouched.
"""

from __future__ import annotations

import difflib
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from functools import cache, cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from reclaim import fields, timeutil, vocab

TIMESTAMP_DTYPE = pd.DatetimeTZDtype(unit="us", tz="UTC")


def utc(values: object, index: pd.Index | None = None) -> pd.Series:
    """Times as a contract UTC timestamp series; naive values are taken to be UTC already."""
    s = pd.Series(values, index=index) if not isinstance(values, pd.Series) else values
    if index is not None and isinstance(values, pd.Series):
        s = pd.Series(values.array, index=index)  # .array keeps tz-aware values vectorised
    if not isinstance(s.dtype, pd.DatetimeTZDtype):
        # naive values are UTC; aware ones (of any tzinfo class) are converted
        s = pd.to_datetime(s, utc=True)
    return s.dt.tz_convert("UTC").astype(TIMESTAMP_DTYPE)


@dataclass(frozen=True)
class Column:
    """One contract column.

    ``kind`` is one of ``str``, ``int``, ``float``, ``bool``, ``timestamp``, ``category``;
    a ``category`` column takes only the values of ``enum``. A column with a ``default`` may
    be left out of a table, or left empty in some rows: those rows then have the default
    (columns added to the contract later keep older exports valid).
    """

    name: str
    kind: str
    nullable: bool = False
    enum: type[StrEnum] | None = None
    doc: str = ""
    default: object = None

    @cached_property
    def dtype(self) -> object:
        """The pandas dtype this column has after loading."""
        if self.kind == "category":
            assert self.enum is not None  # guaranteed by the table definitions below
            return pd.CategoricalDtype([m.value for m in self.enum])
        return {
            "str": pd.StringDtype(na_value=np.nan),
            "int": "int64",
            "float": "float64",
            "bool": "bool",
            "timestamp": TIMESTAMP_DTYPE,
        }[self.kind]

    @property
    def arrow_type(self) -> pa.DataType:
        return {
            "str": pa.string(),
            "category": pa.string(),
            "int": pa.int64(),
            "float": pa.float64(),
            "bool": pa.bool_(),
            "timestamp": pa.timestamp("us", tz="UTC"),
        }[self.kind]


@dataclass(frozen=True)
class Table:
    """One contract table: its columns and the columns that identify a row."""

    name: str
    columns: tuple[Column, ...]
    key: tuple[str, ...]
    required: bool = True

    @property
    def file(self) -> str:
        return f"{self.name}.parquet"

    @property
    def column_names(self) -> list[str]:
        return [c.name for c in self.columns]

    def arrow_schema(self) -> pa.Schema:
        return pa.schema(
            [pa.field(c.name, c.arrow_type, nullable=c.nullable) for c in self.columns]
        )


PAYMENTS = Table(
    "payments",
    (
        Column("payment_id", "str", doc="Invoice (`in_…`) or payment intent (`pi_…`) id."),
        Column(
            "object", "category", enum=vocab.PaymentObject, doc="`invoice` or `payment_intent`."
        ),
        Column("account_id", "str", doc="Connected account (`acct_…`) whose revenue this is."),
        Column("charge_model", "category", enum=vocab.ChargeModel, doc="How the charge is made."),
        Column("on_behalf_of", "bool", doc="The charge is made `on_behalf_of` the account."),
        Column("amount", "int", doc="Amount due in the currency's minor unit, > 0."),
        Column("currency", "str", doc="Three-letter ISO code, lower case."),
        Column(
            "application_fee_amount",
            "int",
            nullable=True,
            doc="The platform's fee in minor units (null if unknown).",
        ),
        Column("customer_id", "str", doc="Stripe customer id."),
        Column("customer_country", "str", nullable=True, doc="ISO 3166-1 alpha-2."),
        Column("customer_timezone", "str", nullable=True, doc="IANA timezone, if known."),
        Column("card_brand", "category", enum=vocab.CardBrand),
        Column("card_funding", "category", enum=vocab.Funding),
        Column("card_country", "str", nullable=True, doc="ISO 3166-1 alpha-2 of the issuer."),
        Column("billing_reason", "category", enum=vocab.BillingReason),
        Column("failed_at", "timestamp", doc="Time of the first failure, UTC."),
        Column("decline_code", "str", doc="Stripe decline code of the first failure."),
        Column("advice_code", "category", nullable=True, enum=vocab.AdviceCode),
        Column("network_decline_code", "str", nullable=True),
        Column("network_advice_code", "str", nullable=True),
        Column(
            "reachable_email",
            "bool",
            default=True,
            doc="The customer can be emailed (an address, not unsubscribed). Default true.",
        ),
        Column(
            "reachable_sms",
            "bool",
            default=True,
            doc="The customer has a phone number that takes SMS and consented. Default true.",
        ),
        Column(
            "reachable_in_app",
            "bool",
            default=True,
            doc="The customer has the platform's app with notifications on. Default true.",
        ),
    ),
    key=("payment_id",),
)

ATTEMPTS = Table(
    "attempts",
    (
        Column("payment_id", "str"),
        Column("attempt_number", "int", doc="0 for the original failure, then 1, 2, …"),
        Column("attempted_at", "timestamp", doc="UTC."),
        Column(
            "initiator", "category", enum=vocab.Initiator, doc="`merchant` retry or `customer`."
        ),
        Column("outcome", "category", enum=vocab.Outcome),
        Column("decline_code", "str", nullable=True, doc="Set when the outcome is `failed`."),
        Column("advice_code", "category", nullable=True, enum=vocab.AdviceCode),
        Column("network_decline_code", "str", nullable=True),
        Column("network_advice_code", "str", nullable=True),
        Column(
            "policy", "str", nullable=True, doc="Logging policy that chose this attempt's time."
        ),
        Column("propensity", "float", nullable=True, doc="Its probability of that choice, (0, 1]."),
    ),
    key=("payment_id", "attempt_number"),
)

MESSAGES = Table(
    "messages",
    (
        Column("message_id", "str"),
        Column("payment_id", "str"),
        Column("sent_at", "timestamp", doc="UTC."),
        Column("channel", "category", enum=vocab.Channel),
        Column("sender", "category", enum=vocab.Sender),
        Column("policy", "str", nullable=True),
        Column("propensity", "float", nullable=True, doc="Probability of this channel, (0, 1]."),
    ),
    key=("message_id",),
)

DECISIONS = Table(
    "decisions",
    (
        Column("payment_id", "str"),
        Column("decision_number", "int", doc="0 right after the failure, k after retry k failed."),
        Column("decided_at", "timestamp", doc="UTC."),
        Column("policy", "str"),
        Column("retry_at", "timestamp", nullable=True, doc="Chosen retry time; null: no retry."),
        Column("channel", "category", nullable=True, enum=vocab.Channel, doc="Null: no message."),
        Column("sender", "category", nullable=True, enum=vocab.Sender),
        Column(
            "propensity",
            "float",
            doc="Probability of the whole action, (0, 1]: the product of the three parts.",
        ),
        Column("retry_propensity", "float", doc="Probability of the retry part (time or none)."),
        Column(
            "channel_propensity", "float", doc="Probability of the message part (channel or none)."
        ),
        Column(
            "sender_propensity",
            "float",
            default=1.0,
            doc="Probability of the sender, given the channel (1: not randomized, or no message).",
        ),
    ),
    key=("payment_id", "decision_number"),
    required=False,
)

TABLES: tuple[Table, ...] = (PAYMENTS, ATTEMPTS, MESSAGES, DECISIONS)
TABLES_BY_NAME: dict[str, Table] = {t.name: t for t in TABLES}


class ContractError(ValueError):
    """A table breaks the data contract.

    The message names the table (or file), the column and up to five example rows.
    """

    def __init__(self, table: str, column: str | None, problem: str, examples: object = None):
        self.table = table
        self.column = column
        self.problem = problem
        self.examples = examples
        where = f"{table}" + (f", column '{column}'" if column else "")
        text = f"{where}: {problem}"
        if examples is not None:
            text += f"\n  e.g. {examples}"
        super().__init__(text)


class ContractProblems(ContractError):
    """Several problems at once: :attr:`problems` holds each, the message lists them all,
    then the :attr:`warnings` (valid but probably wrong) found beside them."""

    def __init__(self, problems: list[ContractError], warnings: list[str] | None = None):
        self.problems = problems
        self.warnings = list(warnings or [])
        first = problems[0]
        self.table, self.column, self.problem = first.table, first.column, first.problem
        self.examples = first.examples
        head = "" if len(problems) == 1 else f"{len(problems)} problems:\n"
        tail = "".join(f"\nwarning: {w}" for w in self.warnings)
        ValueError.__init__(self, head + "\n".join(str(p) for p in problems) + tail)

    def located(self, folder: Path) -> ContractProblems:
        """The same problems with each table named by its path under ``folder``."""
        return ContractProblems(
            [
                ContractError(str(folder / p.table), p.column, p.problem, p.examples)
                for p in self.problems
            ],
            self.warnings,
        )


@dataclass
class ContractTables:
    """A validated set of contract tables (``decisions`` may be empty), and the warnings its
    validation raised (valid, but probably not what was meant)."""

    payments: pd.DataFrame
    attempts: pd.DataFrame
    messages: pd.DataFrame
    decisions: pd.DataFrame = field(default_factory=lambda: empty(DECISIONS))
    warnings: list[str] = field(default_factory=list, compare=False)

    def as_dict(self) -> dict[str, pd.DataFrame]:
        return {t.name: getattr(self, t.name) for t in TABLES}


def empty(table: Table) -> pd.DataFrame:
    """An empty frame with the table's columns and dtypes (a new copy each call)."""
    return _empty_template(table).copy()


@cache
def _empty_template(table: Table) -> pd.DataFrame:
    return pd.DataFrame({c.name: pd.Series([], dtype=c.dtype) for c in table.columns})


def _examples(df: pd.DataFrame, mask: pd.Series | np.ndarray, columns: list[str]) -> str:
    """How many rows offend, and up to five of them: ``3 rows: row 4 {column: value, …}, …``."""
    mask = np.asarray(mask, dtype=bool)
    rows = df.loc[mask, [c for c in columns if c in df.columns]].head(5)
    n = int(mask.sum())
    return f"{n:,} row{'s' if n != 1 else ''}: " + ", ".join(
        f"row {i} {row}" for i, row in zip(rows.index, rows.to_dict("records"), strict=True)
    )


#: Money columns: amounts in the currency's minor unit.
MONEY_COLUMNS = frozenset({"amount", "application_fee_amount"})


def _whole_numbers(column: str) -> str:
    """What a whole-number column with fractions in it is told (a hint for money)."""
    if column in MONEY_COLUMNS:
        return (
            "expected whole numbers: amounts are in the currency's minor unit; multiply "
            "major units by 100 (49.99 → 4999; zero-decimal currencies such as jpy by 1)"
        )
    return "expected whole numbers"


def _coerce(table: Table, col: Column, s: pd.Series) -> pd.Series:
    """Cast ``s`` to the column's dtype, or raise naming what does not fit."""
    label = table.file
    if not col.nullable and s.isna().any():
        raise ContractError(
            label,
            col.name,
            "null values in a required column",
            _examples(s.to_frame(), s.isna(), [col.name]),
        )
    if s.dtype == col.dtype:  # already conformed: the dtype guarantees the values
        return s
    if col.kind == "category":
        allowed = {m.value for m in col.enum or ()}
        values = s.astype("object")
        # membership by hash (pandas' isin on text goes value by value through pyarrow)
        known = pd.Index(sorted(allowed)).get_indexer(values) >= 0
        bad = values.notna() & ~known
        if bad.any():
            unknown = sorted({str(v) for v in values[bad]})[:5]
            raise ContractError(
                label,
                col.name,
                f"unknown value(s) {unknown}; allowed: {sorted(allowed)}",
                _examples(s.to_frame(), bad, [col.name]),
            )
        return values.astype(col.dtype)
    if col.kind == "str":
        if not (
            pd.api.types.is_string_dtype(s)
            or pd.api.types.is_object_dtype(s)
            or isinstance(s.dtype, pd.CategoricalDtype)
        ):
            raise ContractError(label, col.name, f"expected text, got {s.dtype}")
        values = s.astype("object")
        if pd.api.types.infer_dtype(values, skipna=True) not in ("string", "empty"):
            bad = values.notna() & ~values.map(lambda v: isinstance(v, str))
            raise ContractError(
                label, col.name, "expected text values", _examples(s.to_frame(), bad, [col.name])
            )
        # one scan of the column's text joined (every validation of a large table passes
        # here); row by row only to name the rows of a column that holds such a character
        if not fields.is_storable("\n".join(values.dropna())):
            unstorable = values.notna() & ~values.map(
                lambda v: isinstance(v, str) and fields.is_storable(v)
            )
            rows = [int(i) for i in np.flatnonzero(unstorable.to_numpy())[:5]]
            raise ContractError(  # the value is not shown: it may not even print
                label, col.name,
                f"{int(unstorable.sum())} value(s) hold a NUL or a lone surrogate, which no "
                f"store can hold (rows {rows})",
            )  # fmt: skip
        return values.astype(col.dtype)
    if col.kind == "int":
        if col.nullable and s.isna().any():
            numeric = pd.to_numeric(s, errors="coerce")
            if not (pd.api.types.is_numeric_dtype(s) or s.isna().all()):
                raise ContractError(label, col.name, f"expected integers, got {s.dtype}")
            frac = numeric.notna() & (numeric % 1 != 0)
            if frac.any():
                raise ContractError(
                    label,
                    col.name,
                    _whole_numbers(col.name),
                    _examples(s.to_frame(), frac, [col.name]),
                )
            return numeric.astype("Int64")
        if pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s):
            raise ContractError(label, col.name, f"expected integers, got {s.dtype}")
        if pd.api.types.is_float_dtype(s):
            frac = s % 1 != 0
            if frac.any():
                raise ContractError(
                    label,
                    col.name,
                    _whole_numbers(col.name),
                    _examples(s.to_frame(), frac, [col.name]),
                )
        return s.astype("int64")
    if col.kind == "float":
        if pd.api.types.is_bool_dtype(s) or not (
            pd.api.types.is_numeric_dtype(s) or s.isna().all()
        ):
            raise ContractError(label, col.name, f"expected numbers, got {s.dtype}")
        return s.astype("float64")
    if col.kind == "bool":
        if not pd.api.types.is_bool_dtype(s):
            raise ContractError(label, col.name, f"expected true/false, got {s.dtype}")
        return s.astype("bool")
    if col.kind == "timestamp":
        if col.nullable and s.isna().all():
            return pd.Series(pd.NaT, index=s.index, dtype=TIMESTAMP_DTYPE)
        if pd.api.types.is_string_dtype(s) or pd.api.types.is_object_dtype(s):
            return _parse_iso(label, col.name, s)
        if not isinstance(s.dtype, pd.DatetimeTZDtype):
            naive = s.notna()
            raise ContractError(
                label,
                col.name,
                f"expected timezone-aware UTC timestamps, got {s.dtype} (naive times): write "
                "them with their offset (ISO 8601 such as 2026-03-01T14:00:00Z, or "
                "Series.dt.tz_localize('UTC') if they are UTC)",
                _examples(s.to_frame(), naive, [col.name]),
            )
        return s.dt.tz_convert("UTC").astype(TIMESTAMP_DTYPE)
    raise AssertionError(f"unknown column kind {col.kind}")  # pragma: no cover


#: ISO 8601 with an explicit offset: ``2026-03-01T14:00:00Z``, ``…+05:30``, fractions allowed.
_ISO_WITH_OFFSET = r"\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})"


def _parse_iso(label: str, column: str, s: pd.Series) -> pd.Series:
    """Text times (a CSV export, JSON) as UTC timestamps: ISO 8601 with an offset, each."""
    s = s.rename(column)
    text = s.astype("object")
    present = text.notna()
    is_text = text.map(lambda v: isinstance(v, str))
    if not (is_text | ~present).all():
        raise ContractError(
            label,
            column,
            "expected timestamps",
            _examples(s.to_frame(), present & ~is_text, [column]),
        )
    ok = text.where(present, "").astype(str).str.fullmatch(_ISO_WITH_OFFSET)
    bad = present & ~ok
    if bad.any():
        raise ContractError(
            label,
            column,
            f"{int(bad.sum()):,} value(s) are not ISO 8601 times with an offset; write them as "
            "2026-03-01T14:00:00Z (UTC) or 2026-03-01T09:00:00-05:00",
            _examples(s.to_frame(), bad, [column]),
        )
    try:
        parsed = pd.to_datetime(text, utc=True, format="ISO8601")
    except (ValueError, OverflowError) as exc:
        raise ContractError(label, column, f"times that do not exist ({exc})") from exc
    return parsed.astype(TIMESTAMP_DTYPE)


def conform(table: Table, df: pd.DataFrame) -> pd.DataFrame:
    """Check one table's columns and types and return it with the contract's dtypes.

    Extra columns are dropped; a missing column, a null in a required column, a value of the
    wrong type or an unknown enum value raises :class:`ContractError` (naming every such
    problem of the table).
    """
    frame, problems = _conform(table, df)
    if problems:
        raise ContractProblems(problems)
    assert frame is not None
    return frame


def conform_row(table: Table, row: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`conform` for one row of plain values (a webhook's, the API's), without pandas:
    the same defaults and rules, the same errors; returns the row with only the contract's
    columns, timestamps as aware UTC datetimes and missing values as None."""
    out: dict[str, Any] = {}
    for c in table.columns:
        value = row.get(c.name, c.default)
        if is_null(value):
            value = c.default
        if is_null(value):
            if not c.nullable:
                raise ContractError(table.file, c.name, "null values in a required column")
            out[c.name] = None
            continue
        out[c.name] = _coerce_value(table, c, value)
    return out


def is_null(value: Any) -> bool:
    """A missing value as rows of plain values hold it: None, NaT or a float NaN."""
    return value is None or value is pd.NaT or (isinstance(value, float) and np.isnan(value))


def _coerce_value(table: Table, col: Column, value: Any) -> Any:
    """One value as :func:`_coerce` would have it, or :class:`ContractError`."""
    label = table.file
    if col.kind == "category":
        allowed = {m.value for m in col.enum or ()}
        text = value.value if isinstance(value, StrEnum) else value
        if text not in allowed:
            raise ContractError(
                label, col.name, f"unknown value(s) {[str(text)]}; allowed: {sorted(allowed)}"
            )
        return str(text)
    if col.kind == "str":
        if not isinstance(value, str):
            raise ContractError(label, col.name, "expected text values")
        return value
    if col.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise ContractError(label, col.name, f"expected integers, got {type(value).__name__}")
        if float(value) % 1 != 0:
            raise ContractError(label, col.name, "expected whole numbers")
        return int(value)
    if col.kind == "float":
        if isinstance(value, bool) or not isinstance(value, int | float | np.integer | np.floating):
            raise ContractError(label, col.name, f"expected numbers, got {type(value).__name__}")
        return float(value)
    if col.kind == "bool":
        if not isinstance(value, bool | np.bool_):
            raise ContractError(label, col.name, f"expected true/false, got {type(value).__name__}")
        return bool(value)
    if col.kind == "timestamp":
        if isinstance(value, str):
            value = _parse_iso(label, col.name, pd.Series([value])).iloc[0]
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ContractError(
                label, col.name, "expected timezone-aware UTC timestamps (naive times)"
            )
        return pd.Timestamp(value).tz_convert("UTC").to_pydatetime()
    raise AssertionError(f"unknown column kind {col.kind}")  # pragma: no cover


def _did_you_mean(missing: list[str], extra: list[str]) -> str:
    """`` (did you mean 'customer' for 'customer_id'?)`` for each missing column that a
    column the table has but the contract does not looks like; "" when none does."""
    found = []
    for name in missing:
        close = difflib.get_close_matches(name, extra, n=1, cutoff=0.6)
        near = [e for e in extra if e and (e in name or name in e)]
        match = close or near[:1]
        if match:
            found.append(f"'{match[0]}' for '{name}'")
    return f" (did you mean {', '.join(found)}?)" if found else ""


def _conform(table: Table, df: pd.DataFrame) -> tuple[pd.DataFrame | None, list[ContractError]]:
    """:func:`conform`, returning the problems of every column instead of raising."""
    defaulted = {c.name: c.default for c in table.columns if c.default is not None}
    if any(name not in df.columns or df[name].isna().any() for name in defaulted):
        # a defaulted column may be left out, or left empty where unknown
        def filled(name: str, value: object) -> object:
            if name not in df.columns:
                return value
            column = df[name].astype("object").where(df[name].notna(), value)
            return column.astype(bool) if isinstance(value, bool) else column

        df = df.assign(**{k: filled(k, v) for k, v in defaulted.items()})
    missing = [c for c in table.column_names if c not in df.columns]
    hints = _did_you_mean(missing, [str(c) for c in df.columns if c not in table.column_names])
    problems = [
        ContractError(
            table.file,
            name,
            f"missing column(s) {missing}{hints}; the table needs {table.column_names}",
        )
        for name in missing[:1]
    ]
    out = {}
    for c in table.columns:
        if c.name in missing:
            continue
        try:
            # positions, not labels: a frame whose index is not 0..n-1 keeps its rows
            out[c.name] = _coerce(table, c, df[c.name]).reset_index(drop=True)
        except ContractError as exc:
            problems.append(exc)
    if problems:
        return None, problems
    return pd.DataFrame(out, index=pd.RangeIndex(len(df))), []


def _problem(
    problems: list[ContractError],
    table: Table,
    column: str,
    text: str,
    df: pd.DataFrame,
    mask: pd.Series | np.ndarray,
    columns: list[str],
) -> None:
    """Record a row-level problem where ``mask`` holds, with its count and examples."""
    mask = np.asarray(mask, dtype=bool)
    if mask.any():
        problems.append(ContractError(table.file, column, text, _examples(df, mask, columns)))


def _check_rows(tables: ContractTables, broken: set[str] | None = None) -> list[ContractError]:
    """Row-level rules across tables (keys, amounts, times, references): every problem.
    Tables named in ``broken`` (their columns did not conform; they stand here empty) are
    not checked, nor is anything checked against them."""
    broken = broken or set()
    p, a, m, d = tables.payments, tables.attempts, tables.messages, tables.decisions
    out: list[ContractError] = []
    for table in TABLES:
        df = getattr(tables, table.name)
        key = list(table.key)
        repeated = df.duplicated(key, keep=False)
        if repeated.any():
            # a row repeated whole (an export written twice) is told from two different rows
            # under one id (which of them is right, only the platform can say)
            rows = df[repeated].astype("object")
            distinct = rows.drop_duplicates().groupby(key, dropna=False).size()
            differing = pd.MultiIndex.from_frame(distinct[distinct > 1].reset_index()[key])
            conflicting = repeated & pd.MultiIndex.from_frame(df[key].astype("object")).isin(
                differing
            )
            exact = repeated & ~conflicting
            _problem(
                out, table, ", ".join(key),
                "duplicate ids: rows repeated exactly (drop the copies)",
                df, exact, key,
            )  # fmt: skip
            _problem(
                out, table, ", ".join(key),
                "duplicate ids with different values (keep the right row of each)",
                df, conflicting, key,
            )  # fmt: skip
    _problem(
        out, PAYMENTS, "amount", "amounts must be positive (minor units)",
        p, p["amount"] <= 0, ["payment_id", "amount"],
    )  # fmt: skip
    fee = p["application_fee_amount"]
    _problem(
        out, PAYMENTS, "application_fee_amount", "the fee must be between 0 and the amount",
        p, fee.notna() & ((fee < 0) | (fee > p["amount"])),
        ["payment_id", "amount", "application_fee_amount"],
    )  # fmt: skip
    _problem(
        out, PAYMENTS, "currency", "expected a lower-case ISO 4217 code",
        p, ~p["currency"].isin(fields.CURRENCIES), ["payment_id", "currency"],
    )  # fmt: skip
    # the bounds the API's and the webhooks' input share (reclaim.fields): every way in has them
    largest = (
        p["currency"].astype(object).map(fields.MAX_AMOUNT_BY_CURRENCY).fillna(fields.MAX_AMOUNT)
    ).to_numpy(dtype=np.int64)
    _problem(
        out, PAYMENTS, "amount", "above the largest charge Stripe takes in the currency",
        p, p["amount"] > largest, ["payment_id", "amount", "currency"],
    )  # fmt: skip
    latest = pd.Timestamp.now(tz="UTC") + fields.FUTURE_SLACK
    for table, df, col in ((PAYMENTS, p, "failed_at"), (ATTEMPTS, a, "attempted_at"),
                           (MESSAGES, m, "sent_at")):  # fmt: skip
        times = df[col]
        _problem(
            out, table, col, f"times must be from {fields.EARLIEST:%Y-%m-%d} to a day from now",
            df, times.notna() & ((times < fields.EARLIEST) | (times > latest)),
            ["payment_id", col],
        )  # fmt: skip
    for table in (PAYMENTS, ATTEMPTS, MESSAGES):
        df = getattr(tables, table.name)
        for c in table.columns:
            if c.kind != "str":
                continue
            _problem(
                out, table, c.name, f"text must be at most {fields.MAX_TEXT} characters",
                df, df[c.name].str.len() > fields.MAX_TEXT, [c.name],
            )  # fmt: skip
    zones = p["customer_timezone"].dropna().unique()
    unknown = [z for z in zones if not timeutil.is_timezone(z)]
    _problem(
        out, PAYMENTS, "customer_timezone", f"unknown IANA timezone(s) {sorted(unknown)[:5]}",
        p, p["customer_timezone"].isin(unknown), ["payment_id", "customer_timezone"],
    )  # fmt: skip
    failed_at = p.drop_duplicates("payment_id").set_index("payment_id")["failed_at"]
    for table, df, time_col in (
        (ATTEMPTS, a, "attempted_at"),
        (MESSAGES, m, "sent_at"),
        (DECISIONS, d, "decided_at"),
    ):
        if PAYMENTS.name in broken:
            break  # nothing to check them against
        pos = failed_at.index.get_indexer(df["payment_id"])
        known = pos >= 0
        _problem(
            out, table, "payment_id", f"{table.name} for unknown payments (not in payments)",
            df, ~known, ["payment_id"],
        )  # fmt: skip
        first = failed_at.to_numpy(dtype="datetime64[us]")[np.maximum(pos, 0)]
        early = known & (df[time_col].to_numpy(dtype="datetime64[us]") < first)
        _problem(
            out, table, time_col, "before the payment's first failure",
            df, early, ["payment_id", time_col],
        )  # fmt: skip
    _problem(
        out, ATTEMPTS, "attempt_number", "attempt numbers start at 0",
        a, a["attempt_number"] < 0, ["payment_id", "attempt_number"],
    )  # fmt: skip
    _problem(
        out, ATTEMPTS, "decline_code", "a failed attempt needs a decline code",
        a, (a["outcome"] == vocab.Outcome.FAILED) & a["decline_code"].isna(),
        ["payment_id", "attempt_number"],
    )  # fmt: skip
    for table, df, col in (
        (ATTEMPTS, a, "propensity"),
        (MESSAGES, m, "propensity"),
        (DECISIONS, d, "propensity"),
        (DECISIONS, d, "retry_propensity"),
        (DECISIONS, d, "channel_propensity"),
        (DECISIONS, d, "sender_propensity"),
    ):
        prop = df[col]
        _problem(
            out, table, col, "propensities must be in (0, 1]",
            df, prop.notna() & ((prop <= 0) | (prop > 1)), ["payment_id", col],
        )  # fmt: skip
    return out


#: Currencies whose minor unit is the major unit (Stripe's zero-decimal currencies).
ZERO_DECIMAL = frozenset("bif clp djf gnf jpy kmf krw mga pyg rwf ugx vnd vuv xaf xof xpf".split())


def decimals(currency: str) -> int:
    """Digits after the point in ``currency``'s major units: 0 for zero-decimal currencies."""
    return 0 if currency.lower() in ZERO_DECIMAL else 2


def major(minor: Any, currency: str) -> float:
    """An amount in minor units (an int, or PostgreSQL's NUMERIC sum; None is 0) as the
    currency's major units: cents to dollars, yen stay yen."""
    return 0.0 if minor is None else int(minor) / 10 ** decimals(currency)


SYMBOLS = {"usd": "$", "eur": "€", "gbp": "£", "jpy": "¥", "inr": "₹", "aud": "A$", "cad": "C$",
           "brl": "R$"}  # fmt: skip


def money(amount: float, currency: str) -> str:
    """``$1,146.93``, ``¥4,900``, ``CHF 12.00``: major units with the currency's symbol."""
    number = f"{amount:,.{decimals(currency)}f}"
    symbol = SYMBOLS.get(currency.lower())
    return f"{symbol}{number}" if symbol else f"{currency.upper()} {number}"


def signed_money(amount: float, currency: str) -> str:
    """``+$2.48``, ``-€0.10``: a difference of money, signed as every interval is (ASCII)."""
    return f"{'+' if amount >= 0 else '-'}{money(abs(amount), currency)}"


def _warnings(tables: ContractTables, raw: Mapping[str, pd.DataFrame]) -> list[str]:
    """What is valid but probably wrong: amounts that look like major units, decline codes
    Reclaim does not know (treated as hard declines: docs/decisions.md)."""
    out = []
    p = tables.payments
    source = raw.get("payments")
    two_decimal = ~p["currency"].isin(ZERO_DECIMAL)
    if source is not None and "amount" in source and pd.api.types.is_float_dtype(source["amount"]):
        out.append(
            "payments, column 'amount': given as decimal numbers (e.g. 49.0); amounts are in "
            "the currency's minor unit (4900 for $49.00): check they are not major units"
        )
    small = p[two_decimal].groupby("currency")["amount"].median()
    small = small[small < 100]
    if len(small):
        out.append(
            "payments, column 'amount': the median amount is below 100 minor units (1.00) in "
            + ", ".join(f"{c} ({v:,.0f})" for c, v in small.items())
            + ": these look like major units; amounts are minor units (4900 for $49.00)"
        )
    for name, df, col in (
        ("payments", p, "decline_code"),
        ("attempts", tables.attempts, "decline_code"),
    ):
        codes = df[col].dropna()
        unknown = codes[~codes.isin(list(vocab.DECLINE_CODES))].value_counts()
        if len(unknown):
            shown = ", ".join(f"{c} ({n:,})" for c, n in unknown.head(8).items())
            out.append(
                f"{name}, column '{col}': {int(unknown.sum()):,} row(s) with "
                f"{len(unknown)} decline code(s) Reclaim does not know: {shown}; they are "
                "treated as hard declines (no merchant retry; messages may still go out)"
            )
    return out


def validate(tables: Mapping[str, pd.DataFrame] | ContractTables) -> ContractTables:
    """Validate a set of tables and return them with the contract's dtypes.

    Parameters
    ----------
    tables
        ``payments``, ``attempts`` and ``messages`` frames, and optionally ``decisions``.

    Returns
    -------
    ContractTables
        With :attr:`ContractTables.warnings`: what is valid but probably wrong.

    Raises
    ------
    ContractError
        Naming every problem found (each with its table, column, count and example rows):
        all column problems of all tables, then, when the columns are sound, all row problems.
    """
    raw = tables.as_dict() if isinstance(tables, ContractTables) else dict(tables)
    conformed: dict[str, pd.DataFrame] = {}
    problems: list[ContractError] = []
    broken: set[str] = set()
    for table in TABLES:
        if table.name not in raw or raw[table.name] is None:
            if table.required:
                problems.append(ContractError(table.file, None, "table is missing"))
                broken.add(table.name)
            conformed[table.name] = empty(table)
            continue
        frame, found = _conform(table, raw[table.name])
        problems += found
        if frame is None:
            broken.add(table.name)
        conformed[table.name] = frame if frame is not None else empty(table)
    result = ContractTables(**conformed)
    # one run tells everything: the rows of the tables whose columns are sound are checked
    # too (against another table only when that one is sound), and the warnings are given
    problems += _check_rows(result, broken)
    warnings = _warnings(result, {k: v for k, v in raw.items() if k not in broken})
    if problems:
        raise ContractProblems(problems, warnings)
    result.warnings = warnings
    return result


def major_to_minor(payments: pd.DataFrame) -> pd.DataFrame:
    """``payments`` with its money columns given in major units (49.99) turned into the
    contract's minor units (4999; a zero-decimal currency's yen stay yen). Values that are
    not numbers, or rows without a currency, are left for validation to name."""
    out = payments.copy()
    if "currency" not in out:
        return out
    scale = 10.0 ** out["currency"].astype("string").str.lower().map(
        lambda c: decimals(c) if isinstance(c, str) else 0
    ).astype(float)
    for column in MONEY_COLUMNS & set(out.columns):
        values = pd.to_numeric(out[column], errors="coerce")
        converted = (values * scale).round()
        if (values.isna() == out[column].isna()).all():  # every value a number or missing
            out[column] = converted.astype("Int64")
        else:
            out[column] = converted.astype(object).where(values.notna(), out[column])
    return out


def read_tables(
    folder: str | os.PathLike[str], amounts: Literal["minor", "major"] = "minor"
) -> ContractTables:
    """Read and validate the contract tables in ``folder``: ``<table>.parquet``, or
    ``<table>.csv`` (a header row; times as ISO 8601 text with an offset; empty cells null).
    ``amounts="major"``: the payments' money columns are in major units (49.99), turned into
    minor units before validation (:func:`major_to_minor`).

    Raises :class:`ContractError` naming every problem with its file: a missing or unreadable
    table, then what :func:`validate` finds.
    """
    folder = Path(folder)
    raw: dict[str, pd.DataFrame] = {}
    problems: list[ContractError] = []
    files: dict[str, str] = {}
    for table in TABLES:
        parquet, csv = folder / table.file, folder / f"{table.name}.csv"
        path = parquet if parquet.exists() or not csv.exists() else csv
        files[table.file] = path.name
        if not path.exists():
            if table.required:
                problems.append(
                    ContractError(str(parquet), None, f"file not found (nor {csv.name})")
                )
            continue
        try:
            raw[table.name] = _read_csv(table, path) if path == csv else _read_parquet(path)
        except (pa.ArrowException, OSError, ValueError, UnicodeDecodeError) as exc:
            kind = "CSV" if path == csv else "Parquet"
            problems.append(ContractError(str(path), None, f"not a readable {kind} file ({exc})"))
    if amounts == "major" and "payments" in raw:
        raw["payments"] = major_to_minor(raw["payments"])
    try:
        tables = validate(raw)
    except ContractProblems as exc:
        # the files that could not be read are told once (not again as missing tables)
        found = [p for p in exc.problems if not (problems and p.problem == "table is missing")]
        for p in found:
            p.table = files.get(p.table, p.table)
        located = ContractProblems(found).located(folder).problems if found else []
        raise ContractProblems(problems + located, exc.warnings) from exc
    if problems:
        raise ContractProblems(problems, tables.warnings)
    return tables


def _read_parquet(path: Path) -> pd.DataFrame:
    return pq.read_table(path).to_pandas()


def _read_csv(table: Table, path: Path) -> pd.DataFrame:
    """A CSV table with text columns kept as text (``"05"`` stays ``"05"``) and the rest
    typed by pandas; :func:`validate` checks and converts from there."""
    text = {c.name: "string" for c in table.columns if c.kind in ("str", "category", "timestamp")}
    return pd.read_csv(path, dtype=text, keep_default_na=True, na_values=[""])


def write_tables(
    tables: Mapping[str, pd.DataFrame] | ContractTables, folder: str | os.PathLike[str]
) -> ContractTables:
    """Validate ``tables`` and write them to ``folder`` as Parquet, all or nothing.

    The tables are written to a temporary folder beside ``folder`` and moved into place only
    after every one is written; on a validation error nothing in ``folder`` changes.
    """
    valid = validate(tables)
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    try:
        for table in TABLES:
            df = getattr(valid, table.name)
            arrow = pa.Table.from_pandas(df, schema=table.arrow_schema(), preserve_index=False)
            pq.write_table(arrow, staging / table.file)
        folder.mkdir(exist_ok=True)
        for table in TABLES:
            os.replace(staging / table.file, folder / table.file)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return valid


def first_failures(payments: pd.DataFrame) -> pd.DataFrame:
    """The attempt-0 rows that payment rows imply: each payment's first failure, as logged by
    nobody's policy. Contract attempt dtypes, one row per payment, index 0..n-1."""
    rows = pd.DataFrame(
        {
            "payment_id": payments["payment_id"].to_numpy(),
            "attempt_number": 0,
            "attempted_at": payments["failed_at"].array,
            "initiator": "merchant",
            "outcome": "failed",
            "decline_code": payments["decline_code"].to_numpy(),
            "advice_code": payments["advice_code"].astype("object").to_numpy(),
            "network_decline_code": payments["network_decline_code"].to_numpy(),
            "network_advice_code": payments["network_advice_code"].to_numpy(),
            "policy": None,
            "propensity": np.nan,
        }
    )
    return conform(ATTEMPTS, rows)


def concat(frames: Iterable[pd.DataFrame], table: Table) -> pd.DataFrame:
    """Concatenate frames of one table, keeping the contract's dtypes even when empty."""
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty(table)
    return pd.concat(frames, ignore_index=True)
