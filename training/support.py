"""Where the history lets a policy act: the retry timing and retry counts it shows.

Without randomized exploration the retry model has only seen what the history did; what a
shorter wait or one more retry does is extrapolation (and networks and issuers penalise
rapid and repeated retries). So a trained policy retries no sooner, and no more often per
decline category, than the history shows, with the margins below; a randomized log's
exploration range is its support and these bounds do not bind there.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reclaim.models.policy import POLICY_DELAYS_HOURS

#: The policy retries no sooner than the history did: its smallest candidate delay is the
#: history's SUPPORT_QUANTILE of logged delays, less SUPPORT_MARGIN of it.
SUPPORT_QUANTILE, SUPPORT_MARGIN = 0.005, 0.25
#: The policy retries at no later decision than the history did for the same decline
#: category: the RETRY_COUNT_QUANTILE of the decision numbers its retries followed. A
#: category with fewer than MIN_CATEGORY_RETRIES retries takes the bound of all categories.
RETRY_COUNT_QUANTILE, MIN_CATEGORY_RETRIES = 0.995, 50


def supported_delays(logged: np.ndarray) -> tuple[np.ndarray, str]:
    """The candidate delays (hours from a decision to its retry) the policy may choose, and
    a sentence saying why: those no shorter than the history shows for a retry (its
    :data:`SUPPORT_QUANTILE` of logged delays, less :data:`SUPPORT_MARGIN`)."""
    grid = POLICY_DELAYS_HOURS
    logged = logged[np.isfinite(logged)]
    if logged.size == 0:
        return grid, "retry timing: the history holds no retry; the candidate delays are kept"
    floor = float(np.quantile(logged, SUPPORT_QUANTILE)) * (1 - SUPPORT_MARGIN)
    kept = grid[grid >= floor]
    kept = kept if kept.size else grid[-1:]
    return kept, (
        f"retry timing within the history's support: no retry sooner than {kept[0]:g} h after "
        f"its decision (the history's shortest logged delays: 0.5% under "
        f"{np.quantile(logged, SUPPORT_QUANTILE):.1f} h, median {np.median(logged):.1f} h)"
    )


def supported_retry_counts(support: pd.DataFrame) -> tuple[dict[str, int] | None, str]:
    """The last decision number at which the policy may retry, per decline category
    (``"*"``: any category not named), and a sentence saying why: the
    :data:`RETRY_COUNT_QUANTILE` of the decision numbers the history's retries followed.

    ``support`` is :meth:`training.prepared.RetryRows.support`. None when the history holds
    no retry (the rules' limits apply)."""
    if support.empty:
        return None, "retry counts: the history holds no retry; the rules' limits apply"
    number = support["decision_number"].to_numpy(dtype=float)
    category = support["decline_category"].astype("object").fillna("unknown").to_numpy()

    def bound(values: np.ndarray) -> int:
        return int(np.quantile(values, RETRY_COUNT_QUANTILE, method="higher"))

    caps: dict[str, int] = {"*": bound(number)}
    for name in pd.unique(category):
        mine = number[category == name]
        if len(mine) >= MIN_CATEGORY_RETRIES:
            caps[str(name)] = bound(mine)
    named = ", ".join(f"{c} {n + 1}" for c, n in sorted(caps.items()) if c != "*")
    return caps, (
        "retry counts within the history's support: at most as many retries per payment as "
        f"the history made ({RETRY_COUNT_QUANTILE:.1%} of its retries): {caps['*'] + 1} in "
        f"all" + (f"; by decline category {named}" if named else "")
    )
