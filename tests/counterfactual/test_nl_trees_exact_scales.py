"""Issue 12: ``exact: true`` means exact at every scale, for tree-ensemble counterfactuals.

Independent reference: the split points of every tree (the float64 cut-offs of scikit-learn's
float32 comparison, ``x <= t`` going left) cut each feature into cells ``(a, b]``; the ensemble is
constant on each product of cells, so the estimator's own ``predict`` at one point inside it
decides the product, and the counterfactual distance is the smallest closed distance from the
row to a product of the target class inside the constraint box. Models are refitted on data
rescaled by ``10**k`` and with features of mixed scales; rows are also moved onto and beside
split points.
"""

from __future__ import annotations

import itertools
import warnings
from functools import lru_cache

import numpy as np
import pytest
from sklearn.ensemble import ExtraTreesClassifier, GradientBoostingClassifier, RandomForestClassifier

from invaudit.counterfactual import Constraints
from invaudit.counterfactual.nonlinear import counterfactuals_nonlinear_with_extras
from invaudit.models import adapt
from invaudit.models.trees import float32_split_point

ORD = {"l2": 2, "l1": 1, "linf": np.inf}
MAKERS = {
    "forest": lambda: RandomForestClassifier(n_estimators=4, max_depth=3, random_state=0),
    "extra": lambda: ExtraTreesClassifier(n_estimators=4, max_depth=3, random_state=0),
    "gboost": lambda: GradientBoostingClassifier(n_estimators=5, max_depth=2, random_state=0),
}


@lru_cache(maxsize=None)
def _fitted(name, k, scales, seed):
    d = len(scales)
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(160, d))
    y = (X[:, 0] - 0.6 * X[:, 1] ** 2 + 0.3 > 0).astype(int)
    if k == 3:
        y = y + (X[:, d - 1] > 0.7)
    X = X * np.asarray(scales)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = MAKERS[name]().fit(X, y)
    cuts = [[] for _ in range(d)]
    for te in np.asarray(est.estimators_, dtype=object).ravel():
        tr = te.tree_
        inner = tr.children_left != -1
        for f, t in zip(tr.feature[inner], float32_split_point(tr.threshold[inner])):
            cuts[int(f)].append(float(t))
    return est, X, [np.unique(c) for c in cuts]


def _grid(est, cuts):
    """Every product of cells: bounds ``(lo, hi]`` and the estimator's class on it."""
    per = []
    for c in cuts:
        edges = np.concatenate([[-np.inf], c, [np.inf]])
        a, b = edges[:-1], edges[1:]
        fa = np.where(np.isfinite(a), a, 0.0)
        inside = np.where(np.isfinite(b), b, np.where(np.isfinite(a), 2 * np.abs(fa) + 1.0, 0.0))
        per.append((a, b, inside))
    combos = np.array(list(itertools.product(*[range(len(a)) for a, _, _ in per])))
    cols = range(len(cuts))
    lo = np.column_stack([per[f][0][combos[:, f]] for f in cols])
    hi = np.column_stack([per[f][1][combos[:, f]] for f in cols])
    pts = np.column_stack([per[f][2][combos[:, f]] for f in cols])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cls = np.searchsorted(est.classes_, est.predict(pts))
    return lo, hi, cls


def reference(grid, x, t, lower, upper, w, norm):
    """Nearest closed product of cells of class ``t`` meeting the box: ``(distance, point)``."""
    lo, hi, cls = grid
    lo = np.maximum(lo, lower)  # a cell (a, b] meets [lower, upper] iff max(a, l) < ... <= min(b, u)
    hi = np.minimum(hi, upper)
    ok = (cls == t) & np.all(np.nextafter(np.maximum(lo, np.nextafter(lower, -np.inf)), np.inf) <= hi,
                              axis=1)
    if not ok.any():
        return np.inf, None
    closed = np.clip(x, lo[ok], hi[ok])
    dist = np.linalg.norm(w * (closed - x), ord=ORD[norm], axis=1)
    m = int(np.argmin(dist))
    return float(dist[m]), closed[m]


def slack(x, pts, w, norm):
    """What float64 adds on the features that move: open cell sides, ulp pushes."""
    moved = np.zeros(len(x), dtype=bool)
    z = np.abs(x)
    for pt in pts:
        if pt is not None and np.all(np.isfinite(pt)):
            moved |= pt != x
            z = np.maximum(z, np.abs(pt))
    return float(np.linalg.norm(np.where(moved, w * 64 * np.spacing(2 * z), 0.0), ord=ORD[norm]))


def query_rows(X, cuts, rng, n_data=4):
    rows = [X[i] for i in rng.choice(len(X), n_data, replace=False)]
    for mode in ("on", "above", "near"):
        x = X[rng.integers(len(X))].copy()
        for f, c in enumerate(cuts):
            if len(c) and rng.random() < 0.7:
                t = c[rng.integers(len(c))]
                x[f] = {"on": t, "above": np.nextafter(t, np.inf), "near": t - 1e-9 * abs(t)}[mode]
        rows.append(x)
    return np.array(rows)


def check(est, X, cuts, Xq, norm, *, cons=None, target=None):
    form = adapt(est)
    K = form.n_classes
    orig = form.predict_index(Xq)
    t = (orig + 1) % K if target is None else target
    cons = Constraints.none(Xq) if cons is None else cons
    b, ex = counterfactuals_nonlinear_with_extras(form, Xq, target=t, norm=norm, constraints=cons,
                                                  time_limit=20)
    grid = _grid(est, cuts)
    for i, x in enumerate(Xq):
        ref, ref_pt = reference(grid, x, t[i], cons.lower[i], cons.upper[i], cons.weights, norm)
        if not np.isfinite(ref):
            assert b.status[i] == "infeasible", (i, b.status[i], b.reason[i])
            continue
        assert b.status[i] == "found", (i, b.status[i], b.reason[i], ref)
        tol = slack(x, [b.x_cf[i], ref_pt], cons.weights, norm)
        assert b.predicted_index[i] == t[i]
        assert np.all(b.x_cf[i] >= cons.lower[i]) and np.all(b.x_cf[i] <= cons.upper[i])
        assert b.distance[i] >= ref - tol, (i, b.distance[i], ref)
        lb = ex["lower_bound"][i]
        assert not lb > ref * (1 + 1e-9) + tol, (i, lb, ref)
        if b.exact[i]:
            assert abs(b.distance[i] - ref) <= 1e-6 * ref + tol, (i, norm, b.distance[i], ref, b.method[i])
    return b


MODELS = [("forest", 2), ("gboost", 2), ("gboost", 3), ("extra", 3)]
CASES = [(s, MODELS[s % 4]) for s in range(-5, 6)]


@pytest.mark.parametrize("s,model", CASES, ids=[f"1e{s}-{m[0]}{m[1]}" for s, m in CASES])
def test_exact_counterfactuals_at_every_scale(s, model):
    name, k = model
    scales = (10.0 ** s,) * (2 + (s % 2 == 0))
    est, X, cuts = _fitted(name, k, scales, 20 + s)
    Xq = query_rows(X, cuts, np.random.default_rng(s + 50))
    for norm in ("l2", "l1"):
        b = check(est, X, cuts, Xq, norm)
        assert b.exact[b.status == "found"].all(), b.method


@pytest.mark.parametrize("name,k", [("forest", 3), ("gboost", 2), ("gboost", 3)])
def test_exact_counterfactuals_with_mixed_scales_and_boxes(name, k):
    scales = (1e-5, 1e5, 1.0, 1e2)
    est, X, cuts = _fitted(name, k, scales, 4)
    Xq = query_rows(X, cuts, np.random.default_rng(9), n_data=5)
    for norm in ("l2", "l1", "linf"):
        check(est, X, cuts, Xq, norm)
    cons = Constraints.build(Xq, increase_only=np.array([False, True, False, False]),
                             data_lower=X.min(0), data_upper=X.max(0), scale=X.std(0))
    check(est, X, cuts, Xq, "l2", cons=cons)
    check(est, X, cuts, Xq, "l1", cons=cons)


@pytest.mark.parametrize("name,k,s", [("forest", 2, -5), ("gboost", 3, 3)])
def test_a_row_alone_gets_its_batch_answer(name, k, s):
    est, X, cuts = _fitted(name, k, (10.0 ** s,) * 3, 31)
    form = adapt(est)
    Xq = query_rows(X, cuts, np.random.default_rng(2), n_data=5)
    t = (form.predict_index(Xq) + 1) % k
    for norm in ("l2", "l1"):
        b, ex = counterfactuals_nonlinear_with_extras(form, Xq, target=t, norm=norm)
        for i in (0, 2, len(Xq) - 1):
            a, ea = counterfactuals_nonlinear_with_extras(form, Xq[i:i + 1], target=t[i:i + 1], norm=norm)
            assert a.status[0] == b.status[i]
            assert a.distance[0] == b.distance[i] or (np.isnan(a.distance[0]) and np.isnan(b.distance[i]))
            assert a.exact[0] == b.exact[i]
            assert ea["lower_bound"][0] == ex["lower_bound"][i] or np.isnan(ex["lower_bound"][i])
