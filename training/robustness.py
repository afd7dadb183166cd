"""How much a trained policy's retry choice swings when a field is missing at decision time.

Stripe's network codes are recent and a real history lacks them for older charges (training
hides a share of them: ``TrainConfig.network_code_dropout``). :func:`network_code_swing` scores
every candidate retry time of a sample of decisions with the codes and with them hidden.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from reclaim import contract
from reclaim.features.candidates import expand_retry_times
from reclaim.features.decisions import decision_features, decision_points

NETWORK_CODES = ("network_decline_code", "network_advice_code")


def network_code_swing(policy, tables: contract.ContractTables, decisions: int = 2000) -> dict:
    """For about ``decisions`` decisions of ``tables`` (evenly spaced): ``mean_change``, the
    mean |change| of the predicted success of every candidate time when the codes are hidden;
    ``regret``, per decision, the success the model with the codes gives up by taking the
    time chosen without them (flat curves let the argmax move far for little); and
    ``present``, the share of decisions that had a network decline code."""
    batch, _ = decision_points(tables)
    batch = batch.take(np.arange(0, len(batch), max(len(batch) // decisions, 1)))
    with_codes = decision_features(batch, policy.accounts, policy.network_rules)
    hidden = with_codes.copy()
    for name in NETWORK_CODES:
        hidden[name] = hidden[name].where(pd.Series(False, index=hidden.index))
    names = list(policy.retry_model.feature_names_in_)
    k = len(policy.delays_hours)
    p = {}
    for label, frame in (("with", with_codes), ("without", hidden)):
        grid = expand_retry_times(batch, frame.reset_index(drop=True), policy.delays_hours)
        p[label] = policy.retry_model.predict_proba(grid[names])[:, 1].reshape(len(batch), k)
    chosen = p["without"].argmax(axis=1)
    regret = p["with"].max(axis=1) - p["with"][np.arange(len(batch)), chosen]
    return {
        "mean_change": float(np.abs(p["with"] - p["without"]).mean()),
        "regret": regret,
        "present": float(with_codes["network_decline_code"].notna().mean()),
    }
