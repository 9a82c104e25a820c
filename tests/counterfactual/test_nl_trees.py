"""Tree models against brute force: single trees against an enumeration of the leaves built
from ``tree_`` directly, ensembles against an enumeration of every cell of the split grid
(the ensemble is constant on each cell, so the nearest point of each cell decides)."""

from __future__ import annotations

import itertools
import warnings
from functools import lru_cache

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import (
    GradientBoostingClassifier,
    HistGradientBoostingClassifier,
    RandomForestClassifier,
)
from sklearn.tree import DecisionTreeClassifier

from invaudit.counterfactual import Constraints
from invaudit.counterfactual.nonlinear import (
    counterfactuals_nonlinear,
    counterfactuals_nonlinear_with_extras,
)
from invaudit.models import adapt
from invaudit.models.trees import float32_split_point
from test_nl_refs import verified

ORD = {"l2": 2, "l1": 1, "linf": np.inf}


def _data(seed, n=120, d=3, k=3):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, d)
    y = np.digitize(X @ rng.normal(size=d) + 0.5 * rng.normal(size=n), np.linspace(-1, 1, k - 1))
    return X, y


def _nearest_in_interval(x, lo_open, hi_closed):
    """Nearest float64 to x in (lo_open, hi_closed]; None when empty."""
    lo_in = np.nextafter(lo_open, np.inf)
    if lo_in > hi_closed:
        return None
    return min(max(x, lo_in), hi_closed)


def _leaf_boxes(tree, d):
    """(lower, upper, value) of every leaf, by walking ``tree_`` (x <= t64 goes left)."""
    out = []
    stack = [(0, np.full(d, -np.inf), np.full(d, np.inf))]
    while stack:
        node, lo, hi = stack.pop()
        left, right = tree.children_left[node], tree.children_right[node]
        if left == -1:
            v = tree.value[node, 0]
            out.append((lo, hi, v / v.sum()))
            continue
        f = tree.feature[node]
        t = float(float32_split_point(np.array([tree.threshold[node]]))[0])
        hl, lr = hi.copy(), lo.copy()
        hl[f] = min(hl[f], t)
        lr[f] = max(lr[f], t)
        stack.append((left, lo, hl))
        stack.append((right, lr, hi))
    return out


def _tree_reference(est, x, t, P, lower, upper, w, norm):
    best = np.inf
    for lo, hi, v in _leaf_boxes(est.tree_, len(x)):
        if np.argmax(v) != t or (P is not None and v[t] < P):
            continue
        pt = []
        for j in range(len(x)):  # test-only loops
            c = _nearest_in_interval(x[j], max(lo[j], np.nextafter(lower[j], -np.inf)), min(hi[j], upper[j]))
            if c is None:
                break
            pt.append(c)
        else:
            best = min(best, float(np.linalg.norm(w * (np.array(pt) - x), ord=ORD[norm])))
    return best


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000), norm=st.sampled_from(["l2", "l1", "linf"]),
       boxed=st.booleans(), use_p=st.booleans())
def test_single_tree_is_the_leaf_enumeration(seed, norm, boxed, use_p):
    X, y = _data(seed % 50)
    est = DecisionTreeClassifier(max_depth=4, random_state=seed % 7).fit(X, y)
    form = adapt(est)
    rng = np.random.default_rng(seed)
    Xq = X[rng.choice(len(X), 4, replace=False)]
    K = form.n_classes
    t = (form.predict_index(Xq) + rng.integers(1, K, size=4)) % K
    P = 0.6 if use_p else None
    if boxed:
        cons = Constraints.build(Xq, immutable=np.array([False, True, False]),
                                 data_lower=X.min(0), data_upper=X.max(0), scale=X.std(0))
    else:
        cons = Constraints.none(Xq)
    b = counterfactuals_nonlinear(form, Xq, target=t, confidence=P, norm=norm, constraints=cons)
    for i in range(4):
        ref = _tree_reference(est, Xq[i], int(t[i]), P, cons.lower[i], cons.upper[i], cons.weights, norm)
        if not np.isfinite(ref):
            assert b.status[i] == "infeasible"
            continue
        assert b.status[i] == "found" and b.exact[i]
        assert verified(est, b.x_cf[i], int(t[i]), P)
        assert b.distance[i] == pytest.approx(ref, rel=1e-12, abs=1e-300)
        assert b.kkt_residual[i] <= 1e-9
        assert np.all(b.x_cf[i] >= cons.lower[i]) and np.all(b.x_cf[i] <= cons.upper[i])


def test_single_tree_all_frozen_is_infeasible():
    X, y = _data(1)
    est = DecisionTreeClassifier(max_depth=3, random_state=0).fit(X, y)
    form = adapt(est)
    Xq = X[:3]
    t = (form.predict_index(Xq) + 1) % 3
    cons = Constraints.build(Xq, immutable=np.ones(3, dtype=bool))
    b = counterfactuals_nonlinear(form, Xq, target=t, constraints=cons)
    assert list(b.status) == ["infeasible"] * 3
    assert all("frozen" in r for r in b.reason)
    # one free feature in a tiny box: no target leaf is reachable, certified by enumeration
    cons = Constraints.build(Xq, immutable=np.array([True, True, False]),
                             data_lower=Xq.min(0) - 1e-9, data_upper=Xq.max(0) + 1e-9)
    b = counterfactuals_nonlinear(form, Xq[:1], target=t[:1],
                                  constraints=Constraints(cons.lower[:1], cons.upper[:1], cons.weights))
    if b.status[0] == "infeasible":
        assert "intersects" in b.reason[0]


# --- ensembles ----------------------------------------------------------------------------------

def _thresholds(est, d):
    """Per feature, the sorted float64 cut-offs at which the ensemble can change."""
    cuts = [[] for _ in range(d)]
    if isinstance(est, HistGradientBoostingClassifier):
        for it in est._predictors:
            for p in it:
                nodes = p.nodes[~p.nodes["is_leaf"].astype(bool)]
                for f, thr in zip(nodes["feature_idx"], nodes["num_threshold"]):
                    cuts[int(f)].append(float(thr))
    else:
        trees = np.asarray(est.estimators_, dtype=object).ravel() if hasattr(est, "estimators_") else [est]
        for te in trees:
            tr = te.tree_
            inner = tr.children_left != -1
            for f, thr in zip(tr.feature[inner], float32_split_point(tr.threshold[inner])):
                cuts[int(f)].append(float(thr))
    return [np.unique(c) for c in cuts]


def _grid_reference(est, x, t, P, lower, upper, w, norm):
    """Nearest target point over every cell of the split grid."""
    d = len(x)
    per_feature = []
    for j, c in enumerate(_thresholds(est, d)):
        edges = np.concatenate([[-np.inf], c, [np.inf]])
        pts = []
        for a, b in zip(edges[:-1], edges[1:]):  # cells (a, b]
            v = _nearest_in_interval(x[j], max(a, np.nextafter(lower[j], -np.inf)), min(b, upper[j]))
            if v is not None:
                pts.append(v)
        per_feature.append(pts)
    cand = np.array(list(itertools.product(*per_feature)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pred = np.searchsorted(est.classes_, est.predict(cand))
        ok = pred == t
        if P is not None:
            ok &= est.predict_proba(cand)[:, t] >= P
    if not np.any(ok):
        return np.inf
    return float(np.min(np.linalg.norm(w * (cand[ok] - x), ord=ORD[norm], axis=1)))


@lru_cache(maxsize=None)
def _ensemble(name, k):
    X, y = _data(11, n=150, d=3, k=k)
    est = {
        "forest": RandomForestClassifier(n_estimators=4, max_depth=3, random_state=0),
        "gboost": GradientBoostingClassifier(n_estimators=4, max_depth=2, random_state=0),
        "hist": HistGradientBoostingClassifier(max_iter=3, max_leaf_nodes=5, random_state=0),
    }[name]
    return est.fit(X, y), X


ENSEMBLES = [("forest", 2), ("forest", 3), ("gboost", 2), ("gboost", 3), ("hist", 2)]


@pytest.mark.parametrize("name,k", ENSEMBLES)
@pytest.mark.parametrize("norm", ["l2", "l1", "linf"])
def test_ensemble_milp_is_the_cell_enumeration(name, k, norm):
    est, X = _ensemble(name, k)
    form = adapt(est)
    Xq = X[:3]
    t = (form.predict_index(Xq) + 1) % k
    b = counterfactuals_nonlinear(form, Xq, target=t, norm=norm)
    for i in range(3):
        ref = _grid_reference(est, Xq[i], int(t[i]), None, np.full(3, -np.inf), np.full(3, np.inf),
                              np.ones(3), norm)
        if not np.isfinite(ref):
            assert b.status[i] == "infeasible" and b.exact[i] is not None
            continue
        assert b.status[i] == "found"
        assert b.exact[i] and b.method[i] == "tree-ensemble-milp"
        assert verified(est, b.x_cf[i], int(t[i]))
        assert b.distance[i] == pytest.approx(ref, rel=1e-9, abs=1e-12)


@pytest.mark.parametrize("name,k,P", [("forest", 3, 0.5), ("gboost", 2, 0.7)])
def test_ensemble_with_constraints_and_confidence(name, k, P):
    est, X = _ensemble(name, k)
    form = adapt(est)
    Xq = X[5:8]
    t = (form.predict_index(Xq) + 1) % k
    cons = Constraints.build(Xq, increase_only=np.array([True, False, False]),
                             data_lower=X.min(0), data_upper=X.max(0), scale=X.std(0))
    b = counterfactuals_nonlinear(form, Xq, target=t, confidence=P, norm="l1", constraints=cons)
    for i in range(3):
        ref = _grid_reference(est, Xq[i], int(t[i]), P, cons.lower[i], cons.upper[i],
                              cons.weights, "l1")
        if not np.isfinite(ref):
            assert b.status[i] in ("infeasible", "already-target")
            continue
        if b.status[i] == "already-target":
            continue
        assert b.status[i] == "found" and b.exact[i]
        assert b.x_cf[i, 0] >= Xq[i, 0]
        assert np.all(b.x_cf[i] >= cons.lower[i]) and np.all(b.x_cf[i] <= cons.upper[i])
        assert b.distance[i] == pytest.approx(ref, rel=1e-9, abs=1e-12)


def test_live_regions_when_the_milp_is_not_affordable():
    est, X = _ensemble("forest", 3)
    form = adapt(est)
    Xq = X[:4]
    t = (form.predict_index(Xq) + 1) % 3
    b, ex = counterfactuals_nonlinear_with_extras(form, Xq, target=t, X_train=X, max_milp_binaries=0)
    exact = counterfactuals_nonlinear(form, Xq, target=t)
    for i in range(4):
        if b.status[i] != "found":
            continue
        assert not b.exact[i] and b.method[i].startswith(("tree-ensemble-anytime", "tree-live-regions"))
        assert verified(est, b.x_cf[i], int(t[i]))
        assert b.distance[i] >= exact.distance[i] * (1 - 1e-12)
        assert "MILP not used" in ex["backing"][i]
    assert np.sum(b.status == "found") >= 3


def test_multiclass_boosting_with_confidence_falls_back_honestly():
    est, X = _ensemble("gboost", 3)
    form = adapt(est)
    Xq = X[:3]
    t = (form.predict_index(Xq) + 1) % 3
    b = counterfactuals_nonlinear(form, Xq, target=t, confidence=0.5, X_train=X)
    assert not np.any(b.exact[b.status == "found"])
    for i in np.flatnonzero(b.status == "found"):
        assert verified(est, b.x_cf[i], int(t[i]), 0.5)


def test_other_is_the_minimum_over_classes():
    X, y = _data(5)
    est = DecisionTreeClassifier(max_depth=4, random_state=0).fit(X, y)
    form = adapt(est)
    Xq = X[:6]
    o = form.predict_index(Xq)
    b = counterfactuals_nonlinear(form, Xq, target="other", norm="l1")
    for i in range(6):
        per = [counterfactuals_nonlinear(form, Xq[i:i + 1], target=np.array([k]), norm="l1").distance[0]
               for k in range(3) if k != o[i]]
        assert b.distance[i] == pytest.approx(np.nanmin(per), rel=1e-12)
        assert b.exact[i] and b.target_index[i] != o[i]


@pytest.mark.parametrize("name,k", [("forest", 3), ("gboost", 3)])
@pytest.mark.parametrize("with_train", [False, True])
def test_fallback_row_alone_equals_the_row_in_a_batch(name, k, with_train):
    """Too large for the MILP (``max_milp_binaries`` forces the fallback): a row's answer depends
    on the row, the model and --train, never on the other rows of the batch."""
    est, X = _ensemble(name, k)
    form = adapt(est)
    Xq = X[10:14]
    t = (form.predict_index(Xq) + 1) % k
    kw = dict(norm="l2", max_milp_binaries=0, X_train=X if with_train else None)
    b, ex = counterfactuals_nonlinear_with_extras(form, Xq, target=t, **kw)
    assert np.sum(b.status == "found") >= 3
    for i in range(len(Xq)):
        if b.status[i] == "found":
            assert not b.exact[i] and b.method[i].startswith(("tree-ensemble-anytime", "tree-live-regions"))
            assert verified(est, b.x_cf[i], int(t[i]))
    for i in (0, 3):
        for rows in ([i], [(i + 1) % len(Xq), i]):  # alone, and in another small batch
            a, ea = counterfactuals_nonlinear_with_extras(form, Xq[rows], target=t[rows], **kw)
            j = rows.index(i)
            assert a.status[j] == b.status[i]
            np.testing.assert_array_equal(a.x_cf[j], b.x_cf[i])
            assert a.distance[j] == b.distance[i] or (np.isnan(a.distance[j]) and np.isnan(b.distance[i]))
            assert a.method[j] == b.method[i]
