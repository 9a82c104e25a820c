"""Tree margins: single trees and MILP ensembles against brute force on a dense 2-D grid, leaf
enumeration, sampling, and the bounds of the fallback path."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from margin_helpers import Box, sphere_samples, weighted
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier, RandomForestClassifier
from sklearn.tree import DecisionTreeClassifier

from invaudit.margins import margins
from invaudit.margins._trees import leaf_exit_bounds, score_table
from invaudit.margins._common import Problem
from invaudit.models.trees import from_estimator

NORMS = ["l2", "l1", "linf"]
H = 0.01
_G = np.arange(-2.5, 2.5, H)
GRID = np.stack(np.meshgrid(_G, _G), axis=-1).reshape(-1, 2)


def _data(seed=0, n=200, d=2, classes=3):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-2, 2, size=(n, d))
    y = (X[:, 0] + 0.5 * X[:, 1] ** 2 > 0.3).astype(int)
    if classes == 3:
        y = y + (X[:, 1] > 0.9)
    return X, y


def _dist(P, x, norm, w=None):
    u = np.abs(P - x) * (1.0 if w is None else w)
    return {"l2": np.sqrt((u * u).sum(1)), "l1": u.sum(1), "linf": u.max(1)}[norm]


def _grid_check(form, X, batch, norm):
    """No grid point nearer than the margin is predicted otherwise; one is within a grid cell."""
    gp = form.predict_index(GRID)
    for i, x in enumerate(X):
        d = _dist(GRID, x, norm)
        other = gp != batch.predicted_index[i]
        nearest = d[other].min()
        assert nearest >= batch.margin[i] - 1e-9, (i, nearest, batch.margin[i])
        assert nearest <= batch.margin[i] + 2 * H, (i, nearest, batch.margin[i])


def _verified(form, X, batch):
    ok = np.isfinite(batch.margin) & np.all(np.isfinite(batch.perturbation), axis=1)
    after = form.predict_index(X[ok] + batch.perturbation[ok])
    assert np.all(after != batch.predicted_index[ok])
    assert np.array_equal(after, batch.nearest_index[ok])


@pytest.mark.parametrize("norm", NORMS)
def test_single_tree_on_a_dense_grid(norm):
    X, y = _data()
    est = DecisionTreeClassifier(max_depth=6, random_state=0).fit(X, y)
    form = from_estimator(est)
    Xq = X[:12]
    batch = margins(form, Xq, norm=norm)
    assert batch.exact.all()
    _verified(form, Xq, batch)
    _grid_check(form, Xq, batch, norm)


def test_single_tree_by_leaf_enumeration_in_five_dimensions():
    """Brute force over the tree's own node arrays (an independent walk): for every leaf of
    another class, the nearest point of its box; plus sampling inside the margin."""
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 5))
    y = (X[:, 0] * X[:, 1] + X[:, 2] > 0).astype(int) + (X[:, 3] > 1)
    est = DecisionTreeClassifier(max_depth=7, random_state=0).fit(X, y)
    form = from_estimator(est)
    t = est.tree_
    boxes = []
    stack = [(0, np.full(5, -np.inf), np.full(5, np.inf))]
    while stack:
        node, lo, hi = stack.pop()
        if t.children_left[node] == -1:
            boxes.append((lo, hi, int(np.argmax(t.value[node, 0]))))
            continue
        f, thr = t.feature[node], t.threshold[node]
        hl = hi.copy(); hl[f] = min(hi[f], thr)
        lr = lo.copy(); lr[f] = max(lo[f], thr)
        stack += [(t.children_left[node], lo, hl), (t.children_right[node], lr, hi)]
    Xq = X[:15]
    w = rng.uniform(0.5, 2, size=5)
    for norm in NORMS:
        batch = margins(form, Xq, norm=norm, constraints=Box(None, None, w))
        assert batch.exact.all()
        _verified(form, Xq, batch)
        for i, x in enumerate(Xq):
            p = batch.predicted_index[i]
            ref = min(weighted(np.clip(x, lo, hi) - x, w, norm) for lo, hi, c in boxes if c != p)
            # float32 split points move a box side by at most ~1e-7 relative
            assert batch.margin[i] == pytest.approx(ref, rel=1e-6, abs=1e-6)
        # no random point strictly inside the margin is predicted otherwise
        for i, x in enumerate(Xq):
            v = sphere_samples(rng, 3000, 5, norm) / w * (batch.margin[i] * 0.999) * rng.uniform(0, 1, (3000, 1))
            assert np.all(form.predict_index(x + v) == batch.predicted_index[i])


@pytest.mark.parametrize("make", [
    lambda: RandomForestClassifier(n_estimators=6, max_depth=3, random_state=0),
    lambda: GradientBoostingClassifier(n_estimators=8, max_depth=2, random_state=0),
    lambda: HistGradientBoostingClassifier(max_iter=5, max_depth=2, random_state=0),
], ids=["forest", "boosting", "hist-boosting"])
def test_ensemble_milp_on_a_dense_grid(make):
    X, y = _data(2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = make().fit(X, y)
    form = from_estimator(est)
    Xq = X[:6]
    for norm in NORMS:
        batch = margins(form, Xq, norm=norm, time_limit=20)
        assert batch.exact.all(), batch.method
        assert np.all(batch.method == "tree-ensemble-milp")
        _verified(form, Xq, batch)
        _grid_check(form, Xq, batch, norm)
        np.testing.assert_allclose(batch.lower_bound, batch.margin, rtol=1e-7)  # bounds allow for solver tolerances


def test_binary_boosting_and_leaf_exit_bound_below_the_exact_margin():
    X, y = _data(3, classes=2)
    est = GradientBoostingClassifier(n_estimators=10, max_depth=2, random_state=0).fit(X, y)
    form = from_estimator(est)
    Xq = X[:8]
    batch = margins(form, Xq, norm="l2")
    assert batch.exact.all()
    _grid_check(form, Xq, batch, "l2")
    Sc, s0, off = score_table(form)
    prob = Problem(X=Xq, pred=batch.predicted_index, norm="l2", weights=np.ones(2), lo=None, hi=None)
    lb, scores = leaf_exit_bounds(form, prob, Sc, s0, off)
    np.testing.assert_allclose(scores[:, 1] - scores[:, 0], est.decision_function(Xq), rtol=1e-9, atol=1e-12)
    assert np.all(lb.min(axis=1) <= batch.margin * (1 + 1e-12))


def test_fallback_bounds_bracket_the_exact_margin():
    X, y = _data(4)
    est = RandomForestClassifier(n_estimators=6, max_depth=3, random_state=0).fit(X, y)
    form = from_estimator(est)
    Xq = X[:8]
    exact = margins(form, Xq, norm="linf")
    bounded = margins(form, Xq, norm="linf", X_train=X, max_milp_binaries=0)
    assert exact.exact.all()
    _verified(form, Xq, bounded)
    assert np.all(bounded.margin >= exact.margin * (1 - 1e-9))
    assert np.all(bounded.lower_bound <= exact.margin * (1 + 1e-9))
    # without the program, exact only where the verified point meets the leaf-exit bound
    assert np.all(bounded.margin[bounded.exact] <= bounded.lower_bound[bounded.exact] * (1 + 1e-7) + 1e-12)
    assert np.all(np.char.startswith(bounded.method.astype(str), "tree-ensemble-anytime ("))
    assert np.all((bounded.method == "tree-ensemble-anytime (meets the leaf-exit lower bound)") == bounded.exact)


def test_constraints_are_respected_by_tree_solvers():
    X, y = _data(5, d=3)
    for est in (DecisionTreeClassifier(max_depth=5, random_state=0),
                RandomForestClassifier(n_estimators=4, max_depth=3, random_state=0)):
        est.fit(X, y)
        form = from_estimator(est)
        Xq = X[:6]
        lower = Xq - 0.7
        upper = Xq + 0.7
        lower[:, 2] = upper[:, 2] = Xq[:, 2]  # frozen
        batch = margins(form, Xq, norm="l1", constraints=Box(lower, upper, np.ones(3)))
        assert batch.exact.all()
        _verified(form, Xq, batch)
        ok = np.isfinite(batch.margin)
        Z = Xq[ok] + batch.perturbation[ok]
        assert np.all(Z >= lower[ok]) and np.all(Z <= upper[ok])
        assert np.all(batch.perturbation[ok][:, 2] == 0.0)
        free = margins(form, Xq, norm="l1")
        assert np.all(batch.margin >= free.margin * (1 - 1e-12))
