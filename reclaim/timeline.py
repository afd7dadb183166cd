"""As-of look-ups over grouped event timelines, vectorised.

Both the per-payment history summary (attempts and messages up to a decision) and the
per-account aggregates (what an account's past says at a decision) ask one question: for each
query (group, time), what do the events of that group at or before that time add up to? One
implementation answers it for a single payment in the API and for millions of decisions in
training, which is what keeps features identical in both.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd


class Timeline:
    """Events keyed by group and time, with cumulative sums of their value columns.

    Parameters
    ----------
    groups
        Group label per event (a payment id, an account id), length m. Integer codes are
        fastest; strings work too.
    times
        Event times as ``datetime64[us]`` (naive UTC), length m.
    values
        Numeric columns to sum, each of length m.

    Events are sorted by (group, time) once; a query is two binary searches on one int64 key
    that packs the group's code with the rank of the time among all event times.
    """

    def __init__(
        self,
        groups: np.ndarray | pd.Series,
        times: np.ndarray,
        values: Mapping[str, np.ndarray] | None = None,
    ):
        codes, uniques = pd.factorize(groups, sort=False)
        t = np.asarray(times, dtype="datetime64[us]").astype("int64")
        self._groups = pd.Index(uniques)
        # Integer group labels (the fast path) are looked up through a dense array.
        self._int_lookup: tuple[int, np.ndarray] | None = None
        if len(uniques) and pd.api.types.is_integer_dtype(self._groups.dtype):
            lo = int(self._groups.min())
            lookup = np.full(int(self._groups.max()) - lo + 1, -1, dtype=np.int64)
            lookup[self._groups.to_numpy() - lo] = np.arange(len(uniques))
            self._int_lookup = (lo, lookup)
        # Rank every event time among the distinct times by sorting (np.unique hashes and
        # searchsorted on unsorted needles are both many times slower on millions of rows).
        by_time = np.argsort(t, kind="stable")
        sorted_t = t[by_time]
        new = np.r_[True, sorted_t[1:] != sorted_t[:-1]] if len(t) else np.zeros(0, dtype=bool)
        self._times = sorted_t[new]
        rank = np.empty(len(t), dtype=np.int64)
        rank[by_time] = np.cumsum(new) - 1
        self._width = len(self._times) + 1
        key = codes.astype(np.int64) * self._width + rank
        self.order = np.argsort(key, kind="stable")
        self._keys = key[self.order]
        # Where each group's events start in sorted order (plus one past the last group).
        bounds = np.arange(len(self._groups) + 1, dtype=np.int64) * self._width
        self._group_start = np.searchsorted(self._keys, bounds)
        self.cumsum = {
            name: np.concatenate([[0.0], np.cumsum(np.asarray(v, dtype=float)[self.order])])
            for name, v in (values or {}).items()
        }

    def _codes(self, groups: np.ndarray | pd.Series) -> np.ndarray:
        """The position of each query's group among this timeline's groups, -1 if absent."""
        if self._int_lookup is not None and pd.api.types.is_integer_dtype(np.asarray(groups)):
            lo, lookup = self._int_lookup
            g = np.asarray(groups, dtype=np.int64) - lo
            inside = (g >= 0) & (g < len(lookup))
            return np.where(inside, lookup[np.clip(g, 0, len(lookup) - 1)], -1)
        return self._groups.get_indexer(groups).astype(np.int64)

    def __len__(self) -> int:
        return len(self._keys)

    def _stop(
        self, groups: np.ndarray | pd.Series, times: np.ndarray, inclusive: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per query: [start, stop) positions of its group's events before (or at) its time."""
        code = self._codes(groups)
        q = np.asarray(times, dtype="datetime64[us]").astype("int64")
        unknown = code < 0
        code[unknown] = 0
        # Sorted needles let each binary search start from the previous hit (~10x faster).
        order = np.argsort(q)
        rank = np.empty(len(q), dtype=np.int64)
        rank[order] = np.searchsorted(self._times, q[order], side="right" if inclusive else "left")
        key = code * self._width + rank
        order = np.argsort(key)
        stop = np.empty(len(q), dtype=np.int64)
        stop[order] = np.searchsorted(self._keys, key[order], side="left")
        start = self._group_start[code]
        return np.where(unknown, 0, start), np.where(unknown, 0, stop)

    def at(
        self, groups: np.ndarray | pd.Series, times: np.ndarray, inclusive: bool = True
    ) -> tuple[dict[str, np.ndarray], np.ndarray]:
        """Sums of each value column over each query's group's events up to its time.

        Returns ``(sums, last)``: sums by column name, and the position (in the original event
        order) of the latest such event, or -1 where there is none. ``inclusive`` counts events
        at exactly the query time. A group with no events sums to 0.
        """
        start, stop = self._stop(groups, times, inclusive)
        sums = {name: c[stop] - c[start] for name, c in self.cumsum.items()}
        if len(self.order) == 0:
            return sums, np.full(len(start), -1)
        last = np.where(stop > start, self.order[np.maximum(stop - 1, 0)], -1)
        return sums, last

    def between(
        self, groups: np.ndarray | pd.Series, since: np.ndarray, until: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Sums over each query's group's events with ``since <= time < until``."""
        _, a = self._stop(groups, since, inclusive=False)
        _, b = self._stop(groups, until, inclusive=False)
        b = np.maximum(a, b)
        return {name: c[b] - c[a] for name, c in self.cumsum.items()}
