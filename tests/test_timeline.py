"""The as-of timeline against a brute-force count, for any events and queries."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from reclaim.timeline import Timeline

T0 = np.datetime64("2026-01-01T00:00:00", "us")
events = st.lists(st.tuples(st.integers(0, 4), st.integers(0, 50), st.floats(-5, 5)), max_size=40)
queries = st.lists(st.tuples(st.integers(0, 6), st.integers(-2, 55)), min_size=1, max_size=20)


@settings(max_examples=200, deadline=None)
@given(events, queries, st.booleans())
def test_at_and_between_match_brute_force(ev, qs, inclusive) -> None:
    g = np.array([f"g{e[0]}" for e in ev], dtype=object)
    t = T0 + np.array([e[1] for e in ev], dtype="timedelta64[h]")
    v = np.array([e[2] for e in ev], dtype=float)
    timeline = Timeline(g, t, {"v": v})
    qg = np.array([f"g{q[0]}" for q in qs], dtype=object)
    qt = T0 + np.array([q[1] for q in qs], dtype="timedelta64[h]")
    sums, last = timeline.at(qg, qt, inclusive=inclusive)
    window = timeline.between(qg, qt - np.timedelta64(10, "h"), qt)
    for i in range(len(qs)):
        before = (g == qg[i]) & ((t <= qt[i]) if inclusive else (t < qt[i]))
        assert np.isclose(sums["v"][i], v[before].sum())
        if before.any():
            assert t[last[i]] == t[before].max() and g[last[i]] == qg[i]
        else:
            assert last[i] == -1
        inside = (g == qg[i]) & (t >= qt[i] - np.timedelta64(10, "h")) & (t < qt[i])
        assert np.isclose(window["v"][i], v[inside].sum())
