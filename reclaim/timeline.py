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
        Group label per event (a payment id, an account id), length m.
    times
        Event times as ``datetime64[us]`` (naive UTC), length m.
    values
        Numeric columns to sum, each of length m.

    Events are sorted by (group, time) once; a query is two binary searches on one int64 key
    that packs the group's code with the rank of the time among all event times.
    """

    def __init__(
        self,
        groups: np.ndarray,
        times: np.ndarray,
        values: Mapping[str, np.ndarray] | None = None,
    ):
        codes, uniques = pd.factorize(np.asarray(groups, dtype=object), sort=False)
        t = np.asarray(times, dtype="datetime64[us]").astype("int64")
        self._groups = pd.Index(uniques)
        self._times = np.unique(t)
        self._width = len(self._times) + 1
        rank = np.searchsorted(self._times, t)
        key = codes.astype(np.int64) * self._width + rank
        self.order = np.argsort(key, kind="stable")
        self._keys = key[self.order]
        self.cumsum = {
            name: np.concatenate([[0.0], np.cumsum(np.asarray(v, dtype=float)[self.order])])
            for name, v in (values or {}).items()
        }

    def __len__(self) -> int:
        return len(self._keys)

    def _stop(
        self, groups: np.ndarray, times: np.ndarray, inclusive: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per query: [start, stop) positions of its group's events before (or at) its time."""
        code = self._groups.get_indexer(np.asarray(groups, dtype=object)).astype(np.int64)
        q = np.asarray(times, dtype="datetime64[us]").astype("int64")
        rank = np.searchsorted(self._times, q, side="right" if inclusive else "left")
        base = code * self._width
        start = np.searchsorted(self._keys, base, side="left")
        stop = np.searchsorted(self._keys, base + rank, side="left")
        unknown = code < 0
        return np.where(unknown, 0, start), np.where(unknown, 0, stop)

    def at(
        self, groups: np.ndarray, times: np.ndarray, inclusive: bool = True
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
        self, groups: np.ndarray, since: np.ndarray, until: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Sums over each query's group's events with ``since <= time < until``."""
        _, a = self._stop(groups, since, inclusive=False)
        _, b = self._stop(groups, until, inclusive=False)
        b = np.maximum(a, b)
        return {name: c[b] - c[a] for name, c in self.cumsum.items()}
