"""LightGBM prediction without the per-call pandas conversion.

``Booster.predict`` on a DataFrame copies it and re-maps every categorical column to the
training categories on each call; for the handful of rows of an API request that costs ten
times the prediction. The feature pipeline gives every categorical column a fixed dtype
(``features.schema``), so when a column's categories are the training ones its codes already
are LightGBM's, and the frame can go in as one float matrix. Anything else takes LightGBM's
own path.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy import sparse

from reclaim.settings import get_settings


def as_matrix(frame: pd.DataFrame, trained: list[list[Any]] | None) -> np.ndarray | None:
    """``frame`` as LightGBM would see it, or None when its categorical columns' categories
    are not ``trained`` (a booster's ``pandas_categorical``), in order."""
    dtypes = frame.dtypes.to_numpy()
    is_cat = np.array([isinstance(d, pd.CategoricalDtype) for d in dtypes], dtype=bool)
    cats = dtypes[is_cat]
    trained = trained or []
    if len(cats) != len(trained) or any(
        list(d.categories) != list(t) for d, t in zip(cats, trained, strict=True)
    ):
        return None
    matrix = np.empty(frame.shape, dtype=np.float64)
    numeric = np.flatnonzero(~is_cat)
    if len(numeric):
        matrix[:, numeric] = frame.iloc[:, numeric].to_numpy(dtype=np.float64, na_value=np.nan)
    for j in np.flatnonzero(is_cat):
        codes = frame.iloc[:, j].cat.codes.to_numpy().astype(np.float64)
        codes[codes < 0] = np.nan  # a missing category is LightGBM's missing value
        matrix[:, j] = codes
    return matrix


def threads() -> int:
    """Threads per LightGBM call (``RECLAIM_LIGHTGBM_THREADS``; 0: every core)."""
    return get_settings().lightgbm_threads


def predict(booster: lgb.Booster, frame: pd.DataFrame, **kwargs: Any) -> np.ndarray:
    """``booster.predict(frame, **kwargs)``, through a float matrix where that is the same."""
    matrix = as_matrix(frame, booster.pandas_categorical)
    kwargs.setdefault("num_threads", threads())
    return booster.predict(frame if matrix is None else matrix, **kwargs)


def predict_matrix(booster: lgb.Booster, matrix: np.ndarray, **kwargs: Any) -> np.ndarray:
    """``booster.predict(matrix, **kwargs)`` of LightGBM's own float matrix: on one thread
    below 1,000 rows, on all cores above.

    This is the API's path: LightGBM's OpenMP threads spin-wait after each call, burning a
    core the event loop and the next requests need (measured: 9.8 ms of process CPU per single
    decision with LightGBM's default threads, 7.8 ms on one thread), so a few decisions' rows
    are scored on one thread. A large call (a batch's 50 decisions are 2,800 candidate rows)
    gains more than the wait costs: a 1,000-decision batch took a median 0.67 s against 0.79 s
    on one thread, in process.
    """
    x = np.asarray(matrix, dtype=np.float64)
    return booster.predict(x, num_threads=1 if len(x) < 1000 else threads(), **kwargs)


def predict_each(boosters: dict[str, lgb.Booster], frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each booster's prediction for ``frame``, converting the frame once where they agree."""
    out: dict[str, np.ndarray] = {}
    converted: dict[str, np.ndarray | None] = {}
    for name, booster in boosters.items():
        key = repr(booster.pandas_categorical)
        if key not in converted:
            converted[key] = as_matrix(frame, booster.pandas_categorical)
        matrix = converted[key]
        out[name] = booster.predict(frame if matrix is None else matrix, num_threads=threads())
    return out


@dataclass(frozen=True)
class LeafPaths:
    """Each leaf's path contributions, from a booster's dump: along the path from its tree's
    root, the change in node value at every split, credited to that split's feature (Saabas).
    A node's value is LightGBM's ``internal_value`` (the training-weighted mean of the leaves
    below it), a leaf's its ``leaf_value``; so for any row, the bias (the roots' values) plus
    the contributions of the leaves it reaches is its raw score (tested).

    With the leaves from ``Booster.predict(pred_leaf=True)``, LightGBM's native walk, a row's
    contributions are one sparse product: microseconds, where SHAP takes milliseconds.
    """

    first_leaf: np.ndarray  # per tree: the id of its leaf 0 among all leaves
    by_leaf: sparse.csr_matrix  # (leaves, features): each leaf's path contributions
    bias: float

    @classmethod
    def from_booster(cls, booster: lgb.Booster) -> LeafPaths:
        dump = booster.dump_model()
        n_features = int(dump["max_feature_idx"]) + 1
        first: list[int] = []
        rows: list[int] = []
        cols: list[int] = []
        vals: list[float] = []
        bias, n_leaves = 0.0, 0
        for tree in dump["tree_info"]:
            root = tree["tree_structure"]
            first.append(n_leaves)
            if "leaf_value" in root:  # a tree of one leaf
                bias += float(root["leaf_value"])
                n_leaves += 1
                continue
            bias += float(root["internal_value"])
            stack: list[tuple[dict[str, Any], list[tuple[int, float]]]] = [(root, [])]
            count = 0
            while stack:
                node, path = stack.pop()
                for side in ("left_child", "right_child"):
                    child = node[side]
                    value = child.get("leaf_value", child.get("internal_value"))
                    step = [*path, (int(node["split_feature"]),
                                    float(value) - float(node["internal_value"]))]  # fmt: skip
                    if "leaf_value" in child:
                        count += 1
                        for feature, change in step:
                            rows.append(n_leaves + int(child["leaf_index"]))
                            cols.append(feature)
                            vals.append(change)
                    else:
                        stack.append((child, step))
            n_leaves += count
        by_leaf = sparse.csr_matrix((vals, (rows, cols)), shape=(n_leaves, n_features))
        return cls(np.array(first, dtype=np.int64), by_leaf, bias)

    def contributions(self, leaves: np.ndarray) -> np.ndarray:
        """Per row, each feature's share of the raw score, from the leaf index each row
        reaches in each tree (``pred_leaf``, shape (rows, trees)); the last column is the
        bias. Shape (rows, features + 1)."""
        leaves = np.asarray(leaves, dtype=np.int64).reshape(len(leaves), -1)
        n, trees = leaves.shape
        reached = sparse.csr_matrix(
            (np.ones(n * trees), (leaves + self.first_leaf[None, :]).ravel(),
             np.arange(0, n * trees + 1, trees)),
            shape=(n, self.by_leaf.shape[0]),
        )  # fmt: skip
        out = np.empty((n, self.by_leaf.shape[1] + 1))
        out[:, :-1] = (reached @ self.by_leaf).toarray()
        out[:, -1] = self.bias
        return out


_PATHS: weakref.WeakKeyDictionary[lgb.Booster, LeafPaths] = weakref.WeakKeyDictionary()


def path_contributions(booster: lgb.Booster, matrix: np.ndarray) -> np.ndarray:
    """Each feature's share of the raw score for rows of LightGBM's float matrix
    (:class:`LeafPaths`, built once per booster); the last column is the bias."""
    paths = _PATHS.get(booster)
    if paths is None:
        paths = _PATHS[booster] = LeafPaths.from_booster(booster)
    return paths.contributions(predict_matrix(booster, matrix, pred_leaf=True))
