"""What a connected account's past says at any moment, computed strictly from that past.

Each aggregate counts only events that happened before the query time:

- a payment counts toward volume from its first failure;
- it counts toward the recovery rate once it is *resolved*: at its first successful attempt,
  or when its recovery window closes unrecovered — never earlier, because before then its
  outcome is not known;
- a merchant retry counts toward the retry success rate from the moment it was made.

Aggregates are taken as of the start of the query's UTC day — a nightly snapshot, as a
production system would cache it — so millions of decisions need one look-up per distinct
(account, day), and nothing from the decision's own day can leak in.

Small accounts are shrunk toward the whole platform's rate at the same moment (itself computed
from the past only), with a prior worth ``prior_strength`` payments.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from reclaim import vocab
from reclaim.timeline import Timeline

CACHED_QUERY = 64  # queries this small go through the (account, day) cache
PLATFORM = -1  # the timeline code of the whole platform
UNKNOWN = -2  # the code of an account with no events
COLUMNS = (
    "acct_prior_payments",
    "acct_payments_90d",
    "acct_recovery_rate",
    "acct_retry_success_rate",
    "acct_hard_share",
    "acct_prior_retries",
)


@dataclass
class AccountEvents:
    """The events an account's history is made of, for one set of payments (each with all its
    attempts): each payment's first failure (hard or not) and its resolution (recovered or
    not), and each merchant retry (succeeded or not), by account id.

    Computed per partition of a Dask run and joined by :meth:`AccountHistory.from_events`.
    """

    failure_account: np.ndarray  # account id per payment (object)
    failed_at: np.ndarray  # datetime64[us]
    hard: np.ndarray  # bool: a hard decline
    resolved_at: np.ndarray  # datetime64[us]: first success within the window, or its end
    recovered: np.ndarray  # bool
    retry_account: np.ndarray  # account id per merchant retry (object)
    retried_at: np.ndarray  # datetime64[us]
    retry_ok: np.ndarray  # bool

    @classmethod
    def of(
        cls, payments: pd.DataFrame, attempts: pd.DataFrame, window_days: float = 30.0
    ) -> AccountEvents:
        """The events of ``payments`` and their ``attempts`` (attempts of other payments are
        ignored)."""
        failed_at = payments["failed_at"].to_numpy(dtype="datetime64[us]")
        category = vocab.decline_categories(
            payments["decline_code"],
            payments["advice_code"],
            payments["network_decline_code"],
            payments["network_advice_code"],
        )
        succeeded = attempts[attempts["outcome"] == vocab.Outcome.SUCCEEDED]
        first_success = succeeded.groupby("payment_id")["attempted_at"].min()
        recovered_at = first_success.reindex(payments["payment_id"].astype("object")).to_numpy(
            dtype="datetime64[us]"
        )
        window_end = failed_at + np.timedelta64(int(window_days * 86400e6), "us")
        recovered = ~np.isnat(recovered_at) & (recovered_at <= window_end)

        retry = attempts[
            (attempts["initiator"] == vocab.Initiator.MERCHANT) & (attempts["attempt_number"] > 0)
        ]
        pos = pd.Index(payments["payment_id"]).get_indexer(retry["payment_id"])
        retry = retry[pos >= 0]
        account = payments["account_id"].astype("object").to_numpy()
        return cls(
            failure_account=account,
            failed_at=failed_at,
            hard=(category == vocab.DeclineCategory.HARD).to_numpy(),
            resolved_at=np.where(recovered, recovered_at, window_end),
            recovered=recovered,
            retry_account=account[pos[pos >= 0]],
            retried_at=retry["attempted_at"].to_numpy(dtype="datetime64[us]"),
            retry_ok=(retry["outcome"] == vocab.Outcome.SUCCEEDED).to_numpy(),
        )

    @classmethod
    def concat(cls, parts: list[AccountEvents]) -> AccountEvents:
        """One set of events from several (the order of the events does not matter)."""
        if len(parts) == 1:
            return parts[0]
        return cls(**{f: np.concatenate([getattr(p, f) for p in parts]) for f in _EVENT_FIELDS})


_EVENT_FIELDS = tuple(AccountEvents.__dataclass_fields__)


@dataclass
class AccountHistory:
    """Per-account timelines built once from contract tables, queried at any times.

    Build with :meth:`from_tables`; query with :meth:`at`.
    """

    accounts: pd.Index
    failures: Timeline
    resolutions: Timeline
    retries: Timeline
    prior_strength: float

    @classmethod
    def from_tables(
        cls,
        payments: pd.DataFrame,
        attempts: pd.DataFrame,
        window_days: float = 30.0,
        prior_strength: float = 20.0,
    ) -> AccountHistory:
        """Timelines of failures, resolutions and merchant retries per account.

        Every event is entered twice, under its account and under the platform (code -1), so
        the platform-wide rate used as the prior is as strictly past as the account's own.
        Accounts are integer codes inside the timelines.
        """
        return cls.from_events([AccountEvents.of(payments, attempts, window_days)], prior_strength)

    @classmethod
    def from_events(
        cls, parts: list[AccountEvents], prior_strength: float = 20.0
    ) -> AccountHistory:
        """The history of the events of several sets of payments (each payment in one set,
        with its attempts: the partitions of a Dask run), as :meth:`from_tables` of them all."""
        ev = AccountEvents.concat(parts)
        acct, accounts = pd.factorize(np.concatenate([ev.failure_account, ev.retry_account]))
        n = len(ev.failure_account)
        acct, retry_acct = acct[:n], acct[n:]

        def both(groups: np.ndarray, times: np.ndarray, **values: np.ndarray) -> Timeline:
            return Timeline(
                np.concatenate([groups, np.full(len(groups), PLATFORM)]),
                np.concatenate([times, times]),
                {k: np.concatenate([v, v]) for k, v in values.items()},
            )

        ones = np.ones(n)
        return cls(
            accounts=pd.Index(accounts),
            failures=both(acct, ev.failed_at, n=ones, hard=ev.hard.astype(float)),
            resolutions=both(acct, ev.resolved_at, n=ones, recovered=ev.recovered.astype(float)),
            retries=both(
                retry_acct,
                ev.retried_at,
                n=np.ones(len(retry_acct)),
                ok=ev.retry_ok.astype(float),
            ),
            prior_strength=prior_strength,
        )

    def at(self, account_ids: pd.Series, times: pd.Series) -> pd.DataFrame:
        """Aggregates for each (account, time), from events before the start of its UTC day.

        Returns a frame with :data:`COLUMNS`, index of ``account_ids``.
        """
        values = self.at_arrays(account_ids, times.to_numpy(dtype="datetime64[us]"))
        return pd.DataFrame(values, index=account_ids.index)

    def at_arrays(self, account_ids: object, times: np.ndarray) -> dict[str, np.ndarray]:
        """:meth:`at` on plain arrays (account ids, ``datetime64[us]`` UTC times): each of
        :data:`COLUMNS` as an array.

        A query of at most :data:`CACHED_QUERY` decisions (the API's) looks each (account,
        day) up in a cache first: the history does not change once built, and a day's
        aggregates are the same for every decision of that day.
        """
        ids = np.asarray(account_ids, dtype=object)
        day = np.asarray(times, dtype="datetime64[us]").astype("datetime64[D]").astype(np.int64)
        if len(ids) <= CACHED_QUERY:
            return self._at_cached(ids, day)
        codes = self.accounts.get_indexer(pd.Index(ids))
        codes[codes < 0] = UNKNOWN  # an account with no history: only the platform prior
        pairs = codes.astype(np.int64) * 2**20 + (day - 10**4)
        unique_pairs, back = np.unique(pairs, return_inverse=True)
        values = self._at_days(unique_pairs // 2**20, (unique_pairs % 2**20) + 10**4)
        return {k: v[back] for k, v in values.items()}

    def _at_cached(self, ids: np.ndarray, day: np.ndarray) -> dict[str, np.ndarray]:
        cache: dict[tuple[int, int], tuple[float, ...]] = self.__dict__.setdefault("_cache", {})
        index: dict[object, int] = self.__dict__.get("_index") or self.__dict__.setdefault(
            "_index", {a: i for i, a in enumerate(self.accounts)}
        )
        keys = [(index.get(a, UNKNOWN), int(d)) for a, d in zip(ids, day, strict=True)]
        missing = sorted({k for k in keys if k not in cache})
        if missing:
            found = self._at_days(
                np.array([k[0] for k in missing], dtype=np.int64),
                np.array([k[1] for k in missing], dtype=np.int64),
            )
            if len(cache) > 100_000:  # a long-running server sees new days: start afresh
                cache.clear()
            for j, k in enumerate(missing):
                cache[k] = tuple(float(found[c][j]) for c in COLUMNS)
        rows = [cache[k] for k in keys]
        return {c: np.array([r[j] for r in rows], dtype=float) for j, c in enumerate(COLUMNS)}

    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_cache", "_index")}

    def _at_days(self, acct: np.ndarray, day: np.ndarray) -> dict[str, np.ndarray]:
        """Aggregates for account codes at the start of days (days since the epoch)."""
        t = day.astype("datetime64[D]").astype("datetime64[us]")
        platform = np.full(len(acct), PLATFORM)
        m = self.prior_strength

        def shrunk(timeline: Timeline, hits: str) -> np.ndarray:
            own, _ = timeline.at(acct, t, inclusive=False)
            everyone, _ = timeline.at(platform, t, inclusive=False)
            prior = (everyone[hits] + 1.0) / (everyone["n"] + 2.0)  # Laplace on the platform
            return (own[hits] + m * prior) / (own["n"] + m)

        failures, _ = self.failures.at(acct, t, inclusive=False)
        recent = self.failures.between(acct, t - np.timedelta64(90, "D"), t)
        retries, _ = self.retries.at(acct, t, inclusive=False)
        return {
            "acct_prior_payments": failures["n"],
            "acct_payments_90d": recent["n"],
            "acct_recovery_rate": shrunk(self.resolutions, "recovered"),
            "acct_retry_success_rate": shrunk(self.retries, "ok"),
            "acct_hard_share": shrunk(self.failures, "hard"),
            "acct_prior_retries": retries["n"],
        }
