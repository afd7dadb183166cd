"""Customer-local calendar arithmetic, vectorised over mixed timezones.

Used by the simulator (the true effect of the local hour and of paydays), by the reference
policies, and by the feature pipeline, so that "local hour" means one thing everywhere.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

#: Fallback when a customer's timezone is unknown.
DEFAULT_TIMEZONE = "UTC"


@lru_cache(maxsize=1024)
def as_utc(value: Any) -> pd.Timestamp:
    """A time as an aware UTC timestamp; a naive one is taken to be UTC already (SQLite
    gives stored times back naive)."""
    ts = pd.Timestamp(value)
    return ts.tz_localize("UTC") if ts.tzinfo is None else ts.tz_convert("UTC")


def zone(name: str) -> ZoneInfo:
    """``ZoneInfo(name)``, kept for the process's life with its pure-Python twin.

    pandas converts to and from a ZoneInfo zone through ``zoneinfo._zoneinfo.ZoneInfo`` of
    the same key (it reads the transitions from it), a class that keeps only its 8 latest
    zones; customers in more zones than that made every conversion re-read a zone file — 0.3
    ms a call, over a third of the oracle's simulation time (measured).
    """
    from zoneinfo import _zoneinfo  # type: ignore[attr-defined]

    _PURE_PYTHON_ZONES.append(_zoneinfo.ZoneInfo(name))
    return ZoneInfo(name)


_PURE_PYTHON_ZONES: list[object] = []


@lru_cache(maxsize=4096)
def is_timezone(name: str) -> bool:
    """Whether ``name`` is an IANA timezone this machine knows."""
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return False
    return True


def local_hour(utc: datetime | None, timezone: str | None) -> int | None:
    """The hour (0–23) of the wall clock in ``timezone`` at the instant ``utc`` (naive means
    UTC); None where either is unknown or the zone is not one this machine knows."""
    if utc is None or not timezone or not is_timezone(timezone):
        return None
    if utc.tzinfo is None:
        utc = utc.replace(tzinfo=UTC)
    return utc.astimezone(zone(timezone)).hour


def hours_between(later: pd.Series, earlier: pd.Series) -> np.ndarray:
    """``later - earlier`` in hours, element-wise (NaN where either is missing)."""
    delta = later.to_numpy(dtype="datetime64[us]") - earlier.to_numpy(dtype="datetime64[us]")
    return delta / np.timedelta64(1, "h")


def local_times(utc: pd.Series, timezone: pd.Series) -> pd.Series:
    """Wall-clock times in each row's own timezone, as naive timestamps.

    Parameters
    ----------
    utc
        Timezone-aware UTC timestamps, length n.
    timezone
        IANA timezone names, length n; nulls fall back to :data:`DEFAULT_TIMEZONE`.

    Returns
    -------
    pd.Series of naive ``datetime64[us]`` wall-clock times, index of ``utc``.
    """
    tz = timezone.astype("object").where(timezone.notna(), DEFAULT_TIMEZONE).to_numpy()
    values = pd.DatetimeIndex(utc.to_numpy(dtype="datetime64[us]")).tz_localize("UTC")
    out = np.empty(len(utc), dtype="datetime64[us]")
    for name in pd.unique(tz):
        mask = tz == name
        local = values[mask].tz_convert(zone(str(name))).tz_localize(None)
        out[mask] = local.to_numpy(dtype="datetime64[us]")
    return pd.Series(out, index=utc.index)


#: Two changes of a zone's offset are never closer than this (checked columns of
#: :func:`local_grid` are at most this far apart).
_OFFSET_CHANGES_APART = np.timedelta64(7, "D")


def local_grid(utc: np.ndarray, timezone: np.ndarray) -> np.ndarray:
    """:func:`local_times` of an ``(n, k)`` array of naive UTC ``datetime64[us]`` times, row
    ``i`` in ``timezone[i]``; each row's times ascending.

    A row whose zone keeps one UTC offset over its span is shifted by that offset (checked
    at columns at most a week apart, closer than any two offset changes); the others are
    converted time by time.
    """
    n, k = utc.shape
    if n == 0 or k == 0:
        return utc.copy()
    span = utc[:, -1] - utc[:, 0]
    width = max(int(np.max(span) // _OFFSET_CHANGES_APART) + 2, 2)
    cols = np.unique(np.linspace(0, k - 1, width).round().astype(int))
    zones = pd.Series(np.repeat(timezone, len(cols)), dtype=object)
    checked = utc[:, cols].ravel()
    local = local_times(pd.Series(pd.DatetimeIndex(checked).tz_localize("UTC")), zones)
    offset = (local.to_numpy(dtype="datetime64[us]") - checked).reshape(n, len(cols))
    steady = (offset == offset[:, :1]).all(axis=1)
    out = utc + offset[:, :1]
    moving = np.flatnonzero(~steady)
    if len(moving):
        times = utc[moving].ravel()
        converted = local_times(
            pd.Series(pd.DatetimeIndex(times).tz_localize("UTC")),
            pd.Series(np.repeat(timezone[moving], k), dtype=object),
        )
        out[moving] = converted.to_numpy(dtype="datetime64[us]").reshape(len(moving), k)
    return out


def to_utc(local: pd.Series, timezone: pd.Series) -> pd.Series:
    """Inverse of :func:`local_times`: naive wall-clock times in each row's zone to UTC.

    Times that do not exist (spring-forward gaps) move forward; ambiguous ones take the
    first occurrence.
    """
    tz = timezone.astype("object").where(timezone.notna(), DEFAULT_TIMEZONE).to_numpy()
    values = pd.DatetimeIndex(local.to_numpy(dtype="datetime64[us]"))
    out = np.empty(len(local), dtype="datetime64[us]")
    for name in pd.unique(tz):
        mask = tz == name
        utc = (
            values[mask]
            .tz_localize(
                zone(str(name)),
                nonexistent="shift_forward",
                ambiguous=np.ones(mask.sum(), dtype=bool),
            )
            .tz_convert("UTC")
            .tz_localize(None)
        )
        out[mask] = utc.to_numpy(dtype="datetime64[us]")
    return pd.Series(pd.DatetimeIndex(out).tz_localize("UTC"), index=local.index)


def days_to_likely_payday(local: pd.Series) -> pd.Series:
    """Days from each local wall-clock time to the next common payday, as a float.

    Common paydays are the 1st and the 15th of a month, the month's last day and Fridays
    (monthly, semi-monthly and biweekly pay cycles). The customer's own cycle is unknown, so
    this is the nearest of them in whole local days; 0 means today is one of them.
    """
    ts = pd.DatetimeIndex(local.to_numpy(dtype="datetime64[us]"))
    dom = ts.day.to_numpy()
    dim = ts.days_in_month.to_numpy()
    to_friday = (4 - ts.day_of_week.to_numpy()) % 7
    to_15 = np.where(dom <= 15, 15 - dom, np.inf)
    to_last = dim - dom
    to_first = dim - dom + 1
    days = np.minimum.reduce([to_friday, to_15, to_last, to_first]).astype(float)
    return pd.Series(days, index=local.index)
