"""The dashboard's kept experiment reports: computed once, then served at once and recomputed
in the background when stale; a failed computation is never kept; one computation for
requests arriving together; bounded."""

from __future__ import annotations

import threading

import pytest

from reclaim.serving.report_cache import MAX_VIEWS, ReportCache


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> dict:
        self.calls += 1
        return {"computed": self.calls}


def test_a_stale_view_is_served_while_it_is_recomputed_in_the_background() -> None:
    now = [100.0]
    cache, compute = ReportCache(ttl=300, clock=lambda: now[0]), Counter()
    first, at = cache.get(("exp", None), compute)
    now[0] += 299
    assert cache.get(("exp", None), compute) == (first, at) and compute.calls == 1
    now[0] += 2  # older than the ttl: served as it is, recomputed behind
    assert cache.get(("exp", None), compute) == (first, at)
    cache.wait(10)
    assert compute.calls == 2
    view, at_now = cache.get(("exp", None), compute)
    assert view == {"computed": 2} and at_now >= at and compute.calls == 2
    # another key's view (another experiment, or a key scoped to other accounts) is its own
    assert cache.get(("exp", frozenset({"acct_1"})), compute)[0] == {"computed": 3}


def test_a_failed_recomputation_keeps_the_view() -> None:
    now = [0.0]
    cache = ReportCache(ttl=300, clock=lambda: now[0])
    cache.get("k", lambda: "view")
    now[0] = 400

    def broken() -> str:
        raise RuntimeError("the store went away")

    assert cache.get("k", broken)[0] == "view"
    cache.wait(10)
    assert cache.get("k", broken)[0] == "view"  # still kept; this view tried again
    cache.wait(10)


def test_no_ttl_computes_every_time_and_errors_are_not_kept() -> None:
    compute = Counter()
    cache = ReportCache(ttl=0)
    cache.get("k", compute), cache.get("k", compute)
    assert compute.calls == 2

    kept = ReportCache(ttl=300)
    with pytest.raises(LookupError):
        kept.get("k", lambda: (_ for _ in ()).throw(LookupError("no payments")))
    assert kept.get("k", compute)[0] == {"computed": 3}


def test_requests_arriving_together_compute_once() -> None:
    cache, started, release = ReportCache(ttl=300), threading.Event(), threading.Event()
    calls = []

    def slow() -> str:
        calls.append(1)
        started.set()
        release.wait(10)
        return "view"

    results = []
    first = threading.Thread(target=lambda: results.append(cache.get("k", slow)[0]))
    first.start()
    started.wait(10)
    second = threading.Thread(target=lambda: results.append(cache.get("k", slow)[0]))
    second.start()
    # without one computation per key the second would be computing now; a busy machine can
    # only make this miss such a regression, never fail a correct cache
    second.join(0.2)
    assert len(calls) == 1
    release.set()
    first.join(10), second.join(10)
    assert results == ["view", "view"] and len(calls) == 1


def test_the_cache_is_bounded() -> None:
    cache, compute = ReportCache(ttl=300), Counter()
    for i in range(MAX_VIEWS + 10):
        cache.get(i, compute)
    assert cache.get(MAX_VIEWS + 9, compute)[0] == {"computed": MAX_VIEWS + 10}  # kept
    assert cache.get(0, compute)[0] == {"computed": MAX_VIEWS + 11}  # the oldest went
