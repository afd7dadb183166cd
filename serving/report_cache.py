"""Computed experiment reports, kept for a while: the dashboard's experiment page.

An experiment's report reads every assigned payment and computes its intervals in pandas —
seconds on a large experiment, where every other dashboard page is one query in the
database. A report changes only as payments and attempts arrive, so each API process keeps
the views it computed for ``ttl`` seconds (``RECLAIM_REPORT_CACHE_SECONDS``; 0 computes every
time) and says when a view was computed. Two requests for the same view at once compute it
once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from datetime import UTC, datetime
from typing import Any

MAX_VIEWS = 64  # bounded: the least recently computed views go first


class ReportCache:
    """Views by key (an experiment and the accounts a key sees), each with the UTC time it
    was computed, fresh for ``ttl`` seconds of ``clock``."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self._clock = clock
        self._views: dict[Hashable, tuple[float, datetime, Any]] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], Any]) -> tuple[Any, datetime]:
        """The view of ``key`` and when it was computed: the kept one while fresh, else
        ``compute()``'s (an exception it raises is not kept)."""
        if self.ttl <= 0:
            return compute(), datetime.now(UTC)
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one computation per key at a time; the others wait and take its view
            hit = self._views.get(key)
            if hit is not None and self._clock() - hit[0] <= self.ttl:
                return hit[2], hit[1]
            started = self._clock()
            view, at = compute(), datetime.now(UTC)
            with self._lock:
                self._views.pop(key, None)
                self._views[key] = (started, at, view)
                while len(self._views) > MAX_VIEWS:
                    oldest = next(iter(self._views))
                    del self._views[oldest]
                    self._locks.pop(oldest, None)
            return view, at
