"""Counterfactuals for KNN and GaussianNB / QDA through the public non-linear entry point."""

import itertools

import numpy as np
import pytest
from scipy.optimize import minimize
from sklearn.discriminant_analysis import QuadraticDiscriminantAnalysis
from sklearn.naive_bayes import GaussianNB
from sklearn.neighbors import KNeighborsClassifier

from invaudit.counterfactual import Constraints
from invaudit.counterfactual.nonlinear import counterfactuals_nonlinear
from invaudit.models import adapt


def _data(seed=3, n=200):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 2))
    y = (X[:, 0] + X[:, 1] ** 2 > 0.5).astype(int) + (X[:, 1] > 0.8)
    return X, y


def _grid_best(est, x, target_label, r, m=161, P=None):
    g = np.linspace(-r, r, m)
    G = np.array(list(itertools.product(g, g)))
    ok = est.predict(x + G) == target_label
    if P is not None:
        ok &= est.predict_proba(x + G)[:, list(est.classes_).index(target_label)] >= P
    return np.linalg.norm(G[ok], axis=1).min() if ok.any() else np.inf, 2 * r / (m - 1)


@pytest.mark.parametrize("target", [0, 2, "other"])
def test_one_nn_targets_exact(target):
    X, y = _data()
    est = KNeighborsClassifier(1).fit(X, y)
    Q = X[:5] + 0.3
    tg = "other" if target == "other" else np.full(5, target)
    b = counterfactuals_nonlinear(adapt(est), Q, target=tg)
    for i in range(5):
        if b.status[i] == "already-target":
            continue
        assert b.status[i] == "found" and b.exact[i]
        lab = est.classes_[b.target_index[i]]
        assert est.predict(b.x_cf[i][None])[0] == lab
        if target == "other":
            g = np.linspace(-b.distance[i] * 1.3, b.distance[i] * 1.3, 161)
            G = np.array(list(itertools.product(g, g)))
            other = est.predict(Q[i] + G) != est.predict(Q[i:i + 1])[0]
            best, step = np.linalg.norm(G[other], axis=1).min(), g[1] - g[0]
        else:
            best, step = _grid_best(est, Q[i], lab, b.distance[i] * 1.3)
        assert b.distance[i] <= best + 1e-9 and best <= b.distance[i] + 2 * step


def test_knn_k5_never_absurd_with_train():
    X, y = _data()
    est = KNeighborsClassifier(5).fit(X, y)
    Q = X[:6] + 0.2
    b = counterfactuals_nonlinear(adapt(est), Q, target=np.full(6, 2), X_train=X)
    tp = est.predict(X)
    for i in np.flatnonzero(b.status == "found"):
        assert not b.exact[i]
        assert est.predict(b.x_cf[i][None])[0] == 2
        assert b.distance[i] <= np.linalg.norm(X[tp == 2] - Q[i], axis=1).min() + 1e-12


@pytest.mark.parametrize("est", [GaussianNB(), QuadraticDiscriminantAnalysis()])
def test_quadratic_targets_exact_against_slsqp(est):
    X, y = _data()
    est.fit(X, y)
    form = adapt(est)
    Q = X[:6]
    from invaudit.counterfactual.nonlinear import counterfactuals_nonlinear_with_extras

    n_exact = 0
    for t in (0, 2):
        b, extras = counterfactuals_nonlinear_with_extras(form, Q, target=np.full(6, t))
        for i in np.flatnonzero(b.status == "found"):
            best, step = _grid_best(est, Q[i], t, b.distance[i] * 1.3)
            if b.exact[i]:  # the pair optimum qualified: optimal
                n_exact += 1
                assert b.distance[i] <= best + 1e-9 and best <= b.distance[i] + 2 * step
            else:  # another class won at the pair optimum: a bound and a verified point
                assert extras["lower_bound"][i] <= best + 1e-9
                assert b.distance[i] <= 1.05 * best + 2 * step
    assert n_exact >= 3


def test_binary_confidence_is_a_log_odds_level_set():
    X, y = _data()
    yb = (y == 1).astype(int)
    est = QuadraticDiscriminantAnalysis().fit(X, yb)
    form = adapt(est)
    Q = X[:4]
    b = counterfactuals_nonlinear(form, Q, target=np.full(4, 1), confidence=0.9)
    for i in np.flatnonzero(b.status == "found"):
        assert b.exact[i] and b.target_probability[i] >= 0.9
        x0 = Q[i]
        con = {"type": "ineq", "fun": lambda x: form.proba(x[None])[0, 1] - 0.9}
        ref = min(np.sqrt(r.fun) for r in (minimize(lambda x: np.sum((x - x0) ** 2), x0 + s, method="SLSQP",
                                                   constraints=con, options={"ftol": 1e-14, "maxiter": 500})
                                          for s in np.random.default_rng(i).normal(size=(4, 2)) * 2)
                  if con["fun"](r.x) > -1e-9)
        assert b.distance[i] <= ref * (1 + 1e-7) and b.distance[i] >= ref * (1 - 1e-5)


def test_multiclass_confidence_is_bounded_not_claimed():
    X, y = _data()
    est = GaussianNB().fit(X, y)
    b, extras = __import__("invaudit.counterfactual.nonlinear", fromlist=["x"]).counterfactuals_nonlinear_with_extras(
        adapt(est), X[:5], target=np.full(5, 1), confidence=0.8)
    for i in np.flatnonzero(b.status == "found"):
        assert b.target_probability[i] >= 0.8
        if not b.exact[i]:
            assert extras["lower_bound"][i] <= b.distance[i] + 1e-12


def test_immutable_feature_respected():
    X, y = _data()
    Q = X[:5]
    lower = np.c_[Q[:, 0], np.full(5, -np.inf)]
    upper = np.c_[Q[:, 0], np.full(5, np.inf)]
    cons = Constraints(lower=lower, upper=upper, weights=np.ones(2))
    for est in (KNeighborsClassifier(1).fit(X, y), QuadraticDiscriminantAnalysis().fit(X, y)):
        b = counterfactuals_nonlinear(adapt(est), Q, target="other", constraints=cons)
        have = np.all(np.isfinite(b.x_cf), axis=1)
        assert np.all(b.x_cf[have, 0] == Q[have, 0])
        assert np.all(b.exact[b.status == "found"])
