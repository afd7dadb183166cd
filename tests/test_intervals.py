"""How numbers are written for people (``reclaim.intervals``): one way everywhere."""

from __future__ import annotations

import math

import pytest

from reclaim.intervals import duration, interval, p_value, percent


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(0, "0 s"), (45, "45 s"), (725, "12 min 5 s"), (12_000, "3 h 20 min"),
     (86_400, "1 day"), (90_061, "1 day 1 h"), (15_892_032, "183 days 22 h"),
     (math.nan, "not known")],
)  # fmt: skip
def test_durations_read_as_people_say_them(seconds, shown):
    assert duration(seconds) == shown


def test_rates_p_values_and_intervals_never_show_nan_or_scientific_notation():
    assert percent(0.5437) == "54.4%" and percent(math.nan) == "not known"
    assert p_value(2.986e-14) == "< 0.001" and p_value(0.0251) == "0.025"
    assert p_value(math.nan) == "not known"
    assert interval(0.026, 0.023, 0.030, pts=True) == "+2.6 pts (95% CI +2.3 to +3.0)"
    assert interval(0.544, 0.528, 0.559) == "54.4% (95% CI 52.8% to 55.9%)"
