"""Model metrics: discrimination and calibration of the retry-time model, Qini and AUUC of the
channel model on randomized data."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import brier_score_loss, log_loss, roc_auc_score


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = 20) -> pd.DataFrame:
    """Mean prediction and observed rate in equal-count bins of ``p``."""
    order = np.argsort(p, kind="stable")
    groups = np.array_split(order, bins)
    return pd.DataFrame(
        {
            "predicted": [p[g].mean() for g in groups if len(g)],
            "observed": [y[g].mean() for g in groups if len(g)],
            "n": [len(g) for g in groups if len(g)],
        }
    )


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = 20) -> float:
    """Σ_bins (n_b / n) · |mean prediction − observed rate| over equal-count bins."""
    table = calibration_table(y, p, bins)
    return float(
        (table["n"] * (table["predicted"] - table["observed"]).abs()).sum() / table["n"].sum()
    )


def classifier_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """AUC, log loss, Brier score and expected calibration error."""
    return {
        "auc": float(roc_auc_score(y, p)),
        "log_loss": float(log_loss(y, np.clip(p, 1e-6, 1 - 1e-6), labels=[0, 1])),
        "brier": float(brier_score_loss(y, p)),
        "ece": expected_calibration_error(y, p),
    }


def qini_curve(
    uplift: np.ndarray, treated: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None
) -> pd.DataFrame:
    """The Qini curve of an uplift score on randomized data.

    Rows are ranked by predicted uplift, highest first. At each cut-off the curve is the extra
    recoveries among the targeted: ``Y_t − Y_c · N_t / N_c`` (weighted counts). Returns
    ``fraction`` targeted and ``qini``, plus the ``random`` line to the same end point.
    """
    w = np.ones(len(y)) if weight is None else weight
    order = np.argsort(-uplift, kind="stable")
    t, yy, ww = treated[order], y[order], w[order]
    n_t = np.cumsum(ww * t)
    n_c = np.cumsum(ww * (1 - t))
    y_t = np.cumsum(ww * t * yy)
    y_c = np.cumsum(ww * (1 - t) * yy)
    qini = y_t - np.divide(y_c * n_t, n_c, out=np.zeros_like(y_c), where=n_c > 0)
    fraction = np.arange(1, len(y) + 1) / len(y)
    return pd.DataFrame(
        {
            "fraction": np.r_[0, fraction],
            "qini": np.r_[0, qini],
            "random": np.r_[0, fraction * qini[-1]],
        }
    )


def qini_metrics(
    uplift: np.ndarray, treated: np.ndarray, y: np.ndarray, weight: np.ndarray | None = None
) -> dict[str, float]:
    """Qini coefficient (area between the Qini curve and random, per row) and AUUC (area
    under the Qini curve, per row)."""
    curve = qini_curve(uplift, treated, y, weight)
    x = curve["fraction"].to_numpy()
    area = np.trapezoid(curve["qini"], x)
    random = np.trapezoid(curve["random"], x)
    n = len(y)
    return {"qini": float((area - random) / n), "auuc": float(area / n)}
