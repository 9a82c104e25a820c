"""Independent references for the red-team exactness tests (tests/exactness/).

Nothing here uses a model form: classes come from the estimator's own ``predict``.
"""

from __future__ import annotations

import itertools

import numpy as np


def tree_cuts(est, d):
    """Every split point (as the trees route: ``float32(x) <= float32(threshold)``) per input
    column, over the members of a tree composite (Bagging's feature subsets mapped back)."""
    from invaudit.models.trees import float32_split_point

    cuts = [[] for _ in range(d)]
    members = est.estimators_
    feats = getattr(est, "estimators_features_", [None] * len(members))
    for m, fs in zip(members, feats):
        for t in getattr(m, "estimators_", [m]):
            tr = t.tree_
            inner = tr.children_left != -1
            for f, thr in zip(tr.feature[inner], float32_split_point(tr.threshold[inner])):
                cuts[int(fs[f]) if fs is not None else int(f)].append(float(thr))
    return [np.unique(c) for c in cuts]


def cells(cuts):
    """``(points, lower, upper)``: one interior point of every cell of the product of the cut
    grids, and the cell's closed bounds."""
    per = []
    for c in cuts:
        a = np.concatenate([[-np.inf], c])
        b = np.concatenate([c, [np.inf]])
        with np.errstate(invalid="ignore"):
            mid = np.where(np.isfinite(a) & np.isfinite(b), a / 2 + b / 2,
                           np.where(np.isfinite(b), b - 1.0 - np.abs(b), a + 1.0 + np.abs(a)))
        mid[~np.isfinite(a) & ~np.isfinite(b)] = 0.0
        per.append((a, b, mid))
    combos = np.array(list(itertools.product(*[range(len(a)) for a, _, _ in per])))
    cols = range(len(cuts))
    pts = np.column_stack([per[f][2][combos[:, f]] for f in cols])
    lo = np.column_stack([per[f][0][combos[:, f]] for f in cols])
    hi = np.column_stack([per[f][1][combos[:, f]] for f in cols])
    return pts, lo, hi


def nearest_cell_distance(est, grid, x, *, other_than=None, target=None):
    """Brute force over cells: the (closed) l2 distance from ``x`` to the nearest cell the
    estimator predicts other than ``other_than`` / as ``target`` (labels); ``inf`` if none."""
    pts, lo, hi = grid
    pred = est.predict(pts)
    ok = pred != other_than if target is None else pred == target
    if not ok.any():
        return np.inf
    return float(np.linalg.norm(np.clip(x, lo[ok], hi[ok]) - x, axis=1).min())
