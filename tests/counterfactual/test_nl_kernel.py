"""Counterfactuals for SVC / NuSVC against independent references: a dense grid of the
estimator's own predictions and scipy.optimize from many starts, in 2-D; never farther than the
nearest training row the model assigns the target class."""

import warnings

import numpy as np
import pytest
from scipy.optimize import minimize
from sklearn.datasets import make_blobs, make_moons
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC, NuSVC

from invaudit.counterfactual import Constraints, counterfactuals
from invaudit.models import adapt


def _fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return est.fit(X, y)


SCALE = np.array([1e3, 1e-2])  # features at very different scales
W = 1.0 / SCALE                  # the metric that makes them comparable (--scale)


def _metric(X):
    return Constraints(lower=np.full(X.shape, -np.inf), upper=np.full(X.shape, np.inf), weights=W)


@pytest.fixture(scope="module")
def moons():
    X, y = make_moons(160, noise=0.25, random_state=0)
    X = X * SCALE
    est = _fit(make_pipeline(StandardScaler(), SVC(C=3.0, gamma=2.0)), X, y)
    return X, y, est


def _grid_nearest(est, X0, lo, hi, w, n=400):
    """Per row, the nearest grid point (weighted metric) the estimator predicts otherwise."""
    g0, g1 = np.linspace(lo[0], hi[0], n), np.linspace(lo[1], hi[1], n)
    G = np.stack(np.meshgrid(g0, g1), -1).reshape(-1, 2)
    pred = est.predict(G)
    out = []
    for x in X0:
        p = est.predict(x[None])[0]
        out.append(np.linalg.norm((G[pred != p] - x) * w, axis=1).min())
    return np.array(out)


def _decision_function(est, probes):
    """``x -> est.decision_function(x[None])[0]`` for one row. scikit-learn's input checks cost
    ~1 ms a call and SLSQP calls it thousands of times: for a StandardScaler + binary RBF SVC the
    same sum in numpy from the fitted attributes (sum_i dual_coef_i exp(-gamma |sv_i - x|^2) +
    intercept), used only where it equals the estimator's own decision_function on ``probes``."""
    scaler, svc = est.steps[0][1], est.steps[-1][1]
    if (len(est.steps) == 2 and type(scaler).__name__ == "StandardScaler" and type(svc).__name__ == "SVC"
            and svc.kernel == "rbf" and len(svc.classes_) == 2):
        sv, a, b, g = svc.support_vectors_, svc.dual_coef_[0], svc.intercept_[0], svc._gamma

        def fast(x):
            z = (x - scaler.mean_) / scaler.scale_
            return a @ np.exp(-g * ((sv - z) ** 2).sum(axis=1)) + b
        got = np.array([fast(x) for x in probes])
        if np.allclose(got, est.decision_function(probes), rtol=1e-12, atol=1e-12):
            return fast
    return lambda x: est.decision_function(x[None])[0]


def _scipy_nearest(est, x0, starts, w):
    """min ||w (x - x0)|| s.t. the binary decision function changes sign, SLSQP from many starts
    in scaled coordinates (numerical gradients: independent of invaudit's); only points the
    estimator confirms count."""
    p = est.predict(x0[None])[0]
    sign = 1.0 if p == est.classes_[0] else -1.0  # decision > 0 means classes_[1]
    dec = _decision_function(est, np.vstack([x0, starts]))
    best = np.inf
    for s in starts:
        res = minimize(lambda u: float(np.sum((u - x0 * w) ** 2)), s * w, method="SLSQP",
                       constraints=[{"type": "ineq",
                                     "fun": lambda u: sign * dec(u / w) - 1e-9}],
                       options={"maxiter": 60, "ftol": 1e-12})
        if est.predict((res.x / w)[None])[0] != p:
            best = min(best, float(np.linalg.norm(res.x - x0 * w)))
    return best


def test_binary_rbf_matches_grid_and_scipy_from_many_starts(moons):
    X, y, est = moons
    form = adapt(est)
    assert form.kind == "kernel"
    rows = np.arange(0, 160, 27)
    b = counterfactuals(form, X[rows], target="other", X_train=X, constraints=_metric(X[rows]))
    assert np.all(b.status == "found") and not b.exact.any()
    # verified by the estimator's own predict
    assert np.all(est.predict(b.x_cf) != est.predict(X[rows]))
    # reference 1: a dense grid (within one grid step of the optimum)
    lo, hi = X.min(axis=0) - SCALE, X.max(axis=0) + SCALE
    d_grid = _grid_nearest(est, X[rows], lo, hi, W)
    step = np.linalg.norm((hi - lo) * W / 399)
    assert np.all(b.distance <= d_grid * 1.01)
    assert np.all(b.distance >= d_grid - step)
    # reference 2: scipy SLSQP from 8 starts (training rows of the other class and random points)
    rng = np.random.default_rng(0)
    for k, i in enumerate(rows[:2]):
        other = X[est.predict(X) != est.predict(X[i:i + 1])[0]]
        near = other[np.argsort(np.linalg.norm((other - X[i]) * W, axis=1))[:5]]
        starts = np.vstack([near, X[i] + rng.normal(size=(3, 2)) * SCALE * b.distance[k]])
        ref = _scipy_nearest(est, X[i], starts, W)
        assert b.distance[k] <= ref * 1.01


def test_never_farther_than_the_nearest_training_row_of_the_target(moons):
    X, y, est = moons
    form = adapt(est)
    pred = est.predict(X)
    rows = np.arange(3, 160, 7)
    b = counterfactuals(form, X[rows], target="other", X_train=X, constraints=_metric(X[rows]))
    for k, i in enumerate(rows):
        nearest = np.linalg.norm((X[pred != pred[i]] - X[i]) * W, axis=1).min()
        assert b.status[k] == "found" and b.distance[k] <= nearest * (1 + 1e-9)


def test_multiclass_one_vs_one_is_verified_and_close_to_the_grid():
    X, y = make_blobs(200, centers=4, cluster_std=2.0, random_state=1)
    est = _fit(NuSVC(nu=0.3, gamma=0.3), X, y)
    form = adapt(est)
    rows = np.arange(0, 200, 67)
    b = counterfactuals(form, X[rows], target="other", X_train=X)
    assert np.all(b.status == "found")
    assert np.all(est.predict(b.x_cf) != est.predict(X[rows]))
    lo, hi = X.min(axis=0) - 2, X.max(axis=0) + 2
    d_grid = _grid_nearest(est, X[rows], lo, hi, np.ones(2), n=400)
    step = np.linalg.norm((hi - lo) / 399)
    # a local method on a non-convex, non-smooth problem: within 6% of the grid's answer
    assert np.all(b.distance <= 1.06 * d_grid + step)
    pred = est.predict(X)
    for k, i in enumerate(rows):  # never absurd, for every target class
        t = b.target_index[k]
        nearest = np.linalg.norm(X[pred == form.classes[t]] - X[i], axis=1).min()
        assert b.distance[k] <= nearest * (1 + 1e-9)


def test_targets_constraints_and_confidence(moons):
    X, y, est = moons
    est_p = _fit(make_pipeline(StandardScaler(), SVC(C=3.0, gamma=2.0, probability=True, random_state=0)), X, y)
    form = adapt(est_p)
    rows = np.arange(0, 160, 20)
    orig = form.predict_index(X[rows])
    tgt = 1 - orig
    cons = Constraints.build(X[rows], immutable=np.array([False, True]), scale=SCALE)
    b = counterfactuals(form, X[rows], target=tgt, constraints=cons, X_train=X)
    found = b.status == "found"
    assert found.any()
    np.testing.assert_array_equal(b.x_cf[found, 1], X[rows][found, 1])  # frozen feature untouched
    assert np.all(form.predict_index(b.x_cf[found]) == tgt[found])
    bc = counterfactuals(form, X[rows], target=tgt, confidence=0.8, X_train=X)
    ok = bc.status == "found"
    assert ok.any()
    assert np.all(est_p.predict_proba(bc.x_cf[ok])[np.arange(ok.sum()), tgt[ok]] >= 0.8)
