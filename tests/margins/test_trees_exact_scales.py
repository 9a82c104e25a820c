"""Issue 12: ``exact: true`` means exact at every scale, for tree-ensemble margins.

The reference is independent of the solver: the split points of every tree cut each feature into
cells ``(a, b]`` (the float64 cut-offs of scikit-learn's float32 comparison, ``x <= t`` going
left); the ensemble is constant on each product of cells, so the estimator's own ``predict`` at
one point inside a product decides it, and the margin is the smallest closed distance from the
row to a product predicted otherwise. Models are refitted on data rescaled by ``10**k``
(``k = -5..5``) and with features of mixed scales, and rows are also moved onto and next to
split points.
"""

from __future__ import annotations

import itertools
import warnings
from functools import lru_cache

import numpy as np
import pytest
from sklearn.ensemble import ExtraTreesClassifier, GradientBoostingClassifier, RandomForestClassifier

from invaudit.margins import margins
from invaudit.models.trees import float32_split_point, from_estimator

ORD = {"l2": 2, "l1": 1, "linf": np.inf}
MAKERS = {
    "forest": lambda: RandomForestClassifier(n_estimators=4, max_depth=3, random_state=0),
    "extra": lambda: ExtraTreesClassifier(n_estimators=4, max_depth=3, random_state=0),
    "gboost": lambda: GradientBoostingClassifier(n_estimators=5, max_depth=2, random_state=0),
}


def _cuts(est, d):
    """Per feature, the sorted float64 split points (an independent walk of ``tree_``)."""
    cuts = [[] for _ in range(d)]
    for te in np.asarray(est.estimators_, dtype=object).ravel():
        tr = te.tree_
        inner = tr.children_left != -1
        for f, t in zip(tr.feature[inner], float32_split_point(tr.threshold[inner])):
            cuts[int(f)].append(float(t))
    return [np.unique(c) for c in cuts]


@lru_cache(maxsize=None)
def _fitted(name, k, scales, d, seed):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(160, d))
    y = (X[:, 0] + 0.7 * X[:, 1] ** 2 - 0.5 > 0).astype(int)
    if k == 3:
        y = y + (X[:, d - 1] > 0.8)
    X = X * np.asarray(scales)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = MAKERS[name]().fit(X, y)
    return est, X, _cuts(est, d)


def _cells(cuts):
    """Per feature: cell bounds (a, b] and an interior point of each cell."""
    out = []
    for c in cuts:
        edges = np.concatenate([[-np.inf], c, [np.inf]])
        a, b = edges[:-1], edges[1:]
        fa = np.where(np.isfinite(a), a, 0.0)
        inside = np.where(np.isfinite(b), b, np.where(np.isfinite(a), 2 * np.abs(fa) + 1.0, 0.0))
        out.append((a, b, inside))
    return out


def reference(est, cells, x, w, norm, pred=None, target=None):
    """Brute force: ``(distance, nearest point)`` to the nearest product of cells predicted other
    than ``pred`` (or as ``target``)."""
    d = len(x)
    combos = np.array(list(itertools.product(*[range(len(a)) for a, _, _ in cells])))
    pts = np.column_stack([cells[f][2][combos[:, f]] for f in range(d)])
    lo = np.column_stack([cells[f][0][combos[:, f]] for f in range(d)])
    hi = np.column_stack([cells[f][1][combos[:, f]] for f in range(d)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cls = np.searchsorted(est.classes_, est.predict(pts))
    ok = cls != pred if target is None else cls == target
    if not ok.any():
        return np.inf, None
    closed = np.clip(x, lo[ok], hi[ok])  # the closed cell's nearest point
    dist = np.linalg.norm(w * (closed - x), ord=ORD[norm], axis=1)
    m = int(np.argmin(dist))
    return float(dist[m]), closed[m]


def slack(x, pts, w, norm):
    """What float64 representation adds on the features that move (in any of ``pts``): the
    open side of a cell and ulp pushes."""
    moved = np.zeros(len(x), dtype=bool)
    z = np.abs(x)
    for pt in pts:
        if pt is not None and np.all(np.isfinite(pt)):
            moved |= pt != x
            z = np.maximum(z, np.abs(pt))
    return float(np.linalg.norm(np.where(moved, w * 64 * np.spacing(2 * z), 0.0), ord=ORD[norm]))


def query_rows(X, cuts, rng, n_data=4):
    """Data rows, and rows moved exactly onto, one ulp beside and a hair beside split points."""
    rows = [X[i] for i in rng.choice(len(X), n_data, replace=False)]
    for mode in ("on", "above", "below", "near"):
        x = X[rng.integers(len(X))].copy()
        for f, c in enumerate(cuts):
            if len(c) == 0 or rng.random() < 0.4:
                continue
            t = c[rng.integers(len(c))]
            x[f] = {"on": t, "above": np.nextafter(t, np.inf), "below": np.nextafter(t, -np.inf),
                    "near": t + 1e-9 * (abs(t) + 1e-300)}[mode]
        rows.append(x)
    return np.array(rows)


def check_margins(est, X, cuts, Xq, norm, w=None):
    form = from_estimator(est)
    d = X.shape[1]
    w = np.ones(d) if w is None else w
    cons = None if np.all(w == 1) else _Weights(w)
    cells = _cells(cuts)
    batch = margins(form, Xq, norm=norm, constraints=cons, time_limit=20)
    pred = form.predict_index(Xq)
    for i, x in enumerate(Xq):
        ref, ref_pt = reference(est, cells, x, w, norm, pred=pred[i])
        m = batch.margin[i]
        tol = slack(x, [x + batch.perturbation[i], ref_pt], w, norm)
        if not np.isfinite(ref):
            assert m == np.inf, (i, m)
            continue
        assert np.isfinite(m), (i, "no verified point although the reference has one", batch.method[i])
        after = form.predict_index((x + batch.perturbation[i])[None, :])[0]
        assert after != pred[i] and after == batch.nearest_index[i]
        assert m >= ref - tol, (i, m, ref)  # never below the optimum
        assert batch.lower_bound[i] <= ref * (1 + 1e-9) + tol, (i, batch.lower_bound[i], ref)
        if batch.exact[i]:
            assert abs(m - ref) <= 1e-6 * ref + tol, (i, norm, m, ref, batch.method[i])
    return batch


class _Weights:
    def __init__(self, w):
        self.weights = w
        self.lower = None
        self.upper = None


MODELS = [("forest", 2), ("gboost", 2), ("gboost", 3), ("extra", 3)]
CASES = [(*MODELS[s % 4], s) for s in range(-5, 6)] + [("forest", 2, -3), ("gboost", 2, 5)]


@pytest.mark.parametrize("name,k,s", CASES)
def test_exact_margins_at_every_scale(name, k, s):
    d = 2 + (s % 3 == 0)
    est, X, cuts = _fitted(name, k, (10.0 ** s,) * d, d, 7 + s)
    rng = np.random.default_rng(100 + s)
    Xq = query_rows(X, cuts, rng)
    for norm in ("l2", "l1", "linf"):
        batch = check_margins(est, X, cuts, Xq, norm)
        assert batch.exact.mean() >= 0.9, (norm, batch.method)


@pytest.mark.parametrize("name,k", [("forest", 3), ("gboost", 2), ("gboost", 3)])
def test_exact_margins_with_mixed_feature_scales(name, k):
    scales = (1e-5, 1e5, 1.0, 1e2)
    est, X, cuts = _fitted(name, k, scales, 4, 3)
    rng = np.random.default_rng(5)
    Xq = query_rows(X, cuts, rng, n_data=5)
    for norm in ("l2", "l1", "linf"):
        check_margins(est, X, cuts, Xq, norm)
    # metric weights that undo the scales, and weights that exaggerate them
    for w in (1.0 / np.asarray(scales), np.asarray([1e3, 1e-3, 1.0, 1.0])):
        check_margins(est, X, cuts, Xq, "l2", w=w)


@pytest.mark.parametrize("name,k,s", [("forest", 2, -5), ("gboost", 3, -5), ("gboost", 2, 4)])
def test_a_row_alone_gets_its_batch_answer(name, k, s):
    est, X, cuts = _fitted(name, k, (10.0 ** s,) * 3, 3, 11)
    form = from_estimator(est)
    Xq = query_rows(X, cuts, np.random.default_rng(1), n_data=6)
    for norm in ("l2", "linf"):
        batch = margins(form, Xq, norm=norm)
        for i in (0, 3, len(Xq) - 1):
            alone = margins(form, Xq[i:i + 1], norm=norm)
            assert alone.margin[0] == batch.margin[i]
            assert alone.exact[0] == batch.exact[i]
            assert alone.lower_bound[0] == batch.lower_bound[i]
