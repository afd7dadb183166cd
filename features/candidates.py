"""Expand decision rows over candidate actions, for the models to score.

- :func:`retry_features` adds the features of a retry at given times (its delay, the
  customer's local hour, weekday, day of month and payday closeness then). Training calls it on
  the logged retry times; :func:`expand_retry_times` calls it on a grid of delays — the same
  function, so a candidate is scored on exactly the features the model learned from.
- :func:`expand_channels` adds each channel, or none.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reclaim import timeutil
from reclaim.features import schema
from reclaim.features.decisions import calendar_features
from reclaim.policy import DecisionBatch

#: Candidate retry delays: every whole hour for a week, fine enough to pick a local hour and
#: the support of the simulator's logging policy.
DEFAULT_DELAYS_HOURS = np.arange(1, 169)


def retry_features(
    batch: DecisionBatch, features: pd.DataFrame, retry_at: pd.Series
) -> pd.DataFrame:
    """``features`` with :data:`schema.RETRY_FEATURES` of a retry at ``retry_at`` (UTC).

    All three inputs share one index (one retry per decision row).
    """
    p = batch.payments
    local = timeutil.local_times(retry_at, p["customer_timezone"])
    cal = calendar_features(local, "retry_")
    extra = pd.DataFrame(
        {
            "delay_hours": timeutil.hours_between(retry_at, batch.now),
            "retry_local_hour": cal["retry_local_hour"],
            "retry_local_dow": cal["retry_local_dow"],
            "retry_local_dom": cal["retry_local_dom"],
            "retry_days_to_payday": cal["retry_days_to_payday"],
            "retry_hours_since_failure": timeutil.hours_between(retry_at, p["failed_at"]),
            "retry_is_weekend": (cal["retry_local_dow"] >= 5).astype(float),
        },
        index=features.index,
    )
    return pd.concat([features, extra], axis=1)


def expand_retry_times(
    batch: DecisionBatch,
    features: pd.DataFrame,
    delays_hours: np.ndarray = DEFAULT_DELAYS_HOURS,
) -> pd.DataFrame:
    """One row per (decision, candidate delay): n × len(delays) rows.

    Adds ``decision`` (the position of the decision in ``batch``) and ``retry_at``.
    """
    n, k = len(batch), len(delays_hours)
    rows = np.repeat(np.arange(n), k)
    sub = batch.take(rows)
    retry_at = sub.now + pd.to_timedelta(np.tile(delays_hours, n), unit="h")
    expanded = retry_features(sub, features.iloc[rows].reset_index(drop=True), retry_at)
    expanded.insert(0, "decision", rows)
    expanded["retry_at"] = retry_at.array  # tz-aware as it is (to_numpy() boxes every time)
    return expanded


def expand_channels(features: pd.DataFrame) -> pd.DataFrame:
    """One row per (decision, channel or none): n × 4 rows, with ``decision`` and ``channel``."""
    options = schema.CHANNEL_OR_NONE.categories
    n = len(features)
    rows = np.repeat(np.arange(n), len(options))
    expanded = features.iloc[rows].reset_index(drop=True)
    expanded.insert(0, "decision", rows)
    expanded["channel"] = pd.Categorical(np.tile(options, n), dtype=schema.CHANNEL_OR_NONE)
    return expanded


def channel_or_none(channel: pd.Series) -> pd.Series:
    """A message channel column (null = none) as :data:`schema.CHANNEL_OR_NONE`."""
    values = channel.astype("object").where(channel.notna(), "none")
    return values.astype(schema.CHANNEL_OR_NONE)
