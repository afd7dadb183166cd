"""Local calendar arithmetic across mixed timezones and DST."""

from __future__ import annotations

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
