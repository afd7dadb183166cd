"""Local calendar arithmetic across mixed timezones and DST."""

from __future__ import annotations

import numpy as np
import pandas as pd

from reclaim import timeutil


def test_local_times_handle_mixed_zones_dst_and_unknown() -> None:
    utc = pd.Series(
        pd.to_datetime(
            ["2026-03-08 12:00", "2026-03-07 12:00", "2026-07-01 00:30", "2026-07-01 00:30"],
            utc=True,
        )
    )
    tz = pd.Series(["America/New_York", "America/New_York", "Asia/Kolkata", None])
    local = timeutil.local_times(utc, tz)
    assert list(local.dt.hour) == [8, 7, 6, 0]  # EDT starts on 2026-03-08
    back = timeutil.to_utc(local, tz)
    assert (back == utc).all()


def test_days_to_likely_payday() -> None:
    local = pd.Series(
        pd.to_datetime(
            [
                "2026-01-14 09:00",  # Wed: 15th tomorrow, Fri in 2
                "2026-01-16 23:00",  # a Friday
                "2026-02-25 10:00",  # Wed: Fri 27th in 2, month end 3
                "2026-03-31 08:00",
            ]
        )
    )  # month end
    assert list(timeutil.days_to_likely_payday(local)) == [1.0, 0.0, 2.0, 0.0]


def test_paydays_between_counts_each_kind_whose_day_begins_in_the_span() -> None:
    def counts(earlier: str, later: str) -> tuple[float, float, float]:
        found = timeutil.paydays_between(
            np.array([earlier], dtype="datetime64[us]"), np.array([later], dtype="datetime64[us]")
        )
        return tuple(float(found[k][0]) for k in timeutil.PAYDAY_KINDS)

    # month starts (the 1st), semi-monthly days (the 15th, the month's last day), Fridays
    assert counts("2026-01-14T10:00", "2026-01-15T01:00") == (0, 1, 0)
    assert counts("2026-01-30T23:00", "2026-02-02T00:00") == (1, 1, 0)  # 31st, 1st; Fri 30th
    assert counts("2026-01-01T00:00", "2026-01-31T23:00") == (0, 2, 5)  # 15th, 31st; 5 Fridays
    assert counts("2026-02-27T09:00", "2026-02-27T18:00") == (0, 0, 0)  # same day: nothing new
    assert counts("2026-02-26T09:00", "2026-02-28T18:00") == (0, 1, 1)  # Fri 27th, Sat 28th last
    assert counts("2026-03-05T00:00", "2026-03-01T00:00") == (0, 0, 0)  # never negative
