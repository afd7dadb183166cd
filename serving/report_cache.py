"""Computed experiment reports, kept and refreshed in the background: the dashboard's
experiment page.

An experiment's report reads every assigned payment and computes its intervals in pandas —
seconds on a large experiment (~10 s for 82,000 payments), where every other dashboard page is
one query in the database. A report changes only as payments and attempts arrive, so each API
process keeps the views it computed. The first view of a report computes it (requests for the
same view meanwhile wait for that one computation); every later view is the kept one, at once,
and a view of one older than ``ttl`` seconds (``RECLAIM_REPORT_CACHE_SECONDS``) starts one
recomputation in the background, which replaces it when done. The page says when its view was
computed. ``ttl`` 0 computes on every view.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Hashable
from datetime import UTC, datetime
from typing import Any

log = logging.getLogger(__name__)

MAX_VIEWS = 64  # bounded: the least recently computed views go first


class ReportCache:
    """Views by key (an experiment and the accounts a key sees), each with the UTC time it
    was computed, recomputed in the background once older than ``ttl`` seconds of ``clock``."""

    def __init__(self, ttl: float, clock: Callable[[], float] = time.monotonic):
        self.ttl = ttl
        self._clock = clock
        self._views: dict[Hashable, tuple[float, datetime, Any]] = {}
        self._locks: dict[Hashable, threading.Lock] = {}
        self._refreshing: dict[Hashable, threading.Thread] = {}
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], Any]) -> tuple[Any, datetime]:
        """The view of ``key`` and when it was computed: the kept one if there is one
        (starting its recomputation in the background when it is older than ``ttl``), else
        ``compute()``'s (an exception it raises is not kept)."""
        if self.ttl <= 0:
            return compute(), datetime.now(UTC)
        with self._lock:
            hit = self._views.get(key)
            if hit is not None:
                if self._clock() - hit[0] > self.ttl and key not in self._refreshing:
                    worker = threading.Thread(
                        target=self._refresh, args=(key, compute), name="report-refresh",
                        daemon=True,
                    )  # fmt: skip
                    self._refreshing[key] = worker
                    worker.start()
                return hit[2], hit[1]
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:  # one computation per key at a time; the others wait and take its view
            with self._lock:
                hit = self._views.get(key)
            if hit is not None:
                return hit[2], hit[1]
            return self._compute(key, compute)

    def computed_at(self, key: Hashable) -> datetime | None:
        """When the kept view of ``key`` was computed; None if none is kept."""
        with self._lock:
            hit = self._views.get(key)
        return None if hit is None else hit[1]

    def wait(self, timeout: float | None = None) -> None:
        """Until the background recomputations started so far have ended."""
        with self._lock:
            workers = list(self._refreshing.values())
        for worker in workers:
            worker.join(timeout)

    def _compute(self, key: Hashable, compute: Callable[[], Any]) -> tuple[Any, datetime]:
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

    def _refresh(self, key: Hashable, compute: Callable[[], Any]) -> None:
        try:
            self._compute(key, compute)
        except Exception:  # the kept view stays; the next stale view tries again
            log.exception("recomputing the kept report %r failed", key)
        finally:
            with self._lock:
                self._refreshing.pop(key, None)
