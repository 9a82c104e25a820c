"""The objective is scikit-learn's own: stationary at the fit, Hessian = derivative of the gradient."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from influence_helpers import data, fit, objective_gradient, objective_value
from invaudit.influence import build_objective

CASES = [
    ("binary", dict(), 2),
    ("binary no intercept", dict(fit_intercept=False), 2),
    ("binary balanced", dict(class_weight="balanced", C=0.3), 2),
    ("binary dict weights", dict(class_weight={0: 3.0, 1: 0.5}), 2),
    ("binary liblinear", dict(solver="liblinear", intercept_scaling=2.0), 2),
    ("multinomial", dict(), 3),
    ("multinomial no intercept", dict(fit_intercept=False, C=2.0), 3),
    ("multinomial balanced", dict(class_weight="balanced"), 3),
    ("multinomial no penalty", dict(C=np.inf), 3),
]


def _obj(kwargs, k, seed=0):
    X, y = data(n=90, d=4, k=k, seed=seed)
    est, form = fit(LogisticRegression(tol=1e-12, max_iter=10_000, **kwargs), X, y)
    return X, y, est, build_objective(form, X, y)


@pytest.mark.parametrize("name,kwargs,k", CASES, ids=[c[0] for c in CASES])
def test_fitted_parameters_are_stationary_for_our_objective(name, kwargs, k):
    # scikit-learn fitted with a tight tolerance: the gradient of *our* objective vanishes there,
    # so the objective (class weights, penalty, liblinear's penalised intercept) is the estimator's.
    X, y, est, obj = _obj(kwargs, k)
    theta = obj.Theta.ravel()
    g = objective_gradient(theta, obj.Z, y, obj.s, obj.lam, obj.Rcol, obj.M, obj.fit_intercept)
    assert np.max(np.abs(g)) / obj.s.sum() < 1e-7
    assert obj.stationarity < 1e-7 and obj.exact


@pytest.mark.parametrize("name,kwargs,k", CASES, ids=[c[0] for c in CASES])
def test_hessian_matches_finite_differences_of_the_gradient(name, kwargs, k):
    X, y, est, obj = _obj(kwargs, k)
    theta = obj.Theta.ravel()
    args = (obj.Z, y, obj.s, obj.lam, obj.Rcol, obj.M, obj.fit_intercept)
    # the scratch gradient is itself checked against the scratch objective (away from the
    # optimum, where it is not ~0)
    rng = np.random.default_rng(1)
    e, away = rng.standard_normal(theta.size), theta + 0.3 * rng.standard_normal(theta.size)
    h = 1e-5
    fd = (objective_value(away + h * e, *args) - objective_value(away - h * e, *args)) / (2 * h)
    assert fd == pytest.approx(objective_gradient(away, *args) @ e, rel=1e-6)
    P = theta.size
    H_fd = np.column_stack([
        (objective_gradient(theta + h * ei, *args) - objective_gradient(theta - h * ei, *args)) / (2 * h)
        for ei in np.eye(P)])
    H = obj.hessian(obj.s, obj.A, obj.Zt, augment=False)
    np.testing.assert_allclose(H, H_fd, rtol=1e-5, atol=1e-6 * np.abs(H).max())


def test_softmax_null_directions_do_not_change_solves():
    # H_hat^-1 g equals the pseudo-inverse of the (singular) Hessian on every gradient
    X, y, est, obj = _obj({}, 3)
    H = obj.hessian(obj.s, obj.A, obj.Zt, augment=False)
    assert np.linalg.matrix_rank(H) == H.shape[0] - 1  # the intercept's common shift
    G = obj.train_gradients[:7]
    np.testing.assert_allclose(obj.solve(G), G @ np.linalg.pinv(H), rtol=1e-7, atol=1e-10)


def test_conjugate_gradients_agree_with_cholesky():
    X, y = data(n=80, d=5, k=3, seed=3)
    est, form = fit(LogisticRegression(tol=1e-12, max_iter=10_000), X, y)
    direct = build_objective(form, X, y)
    cg = build_objective(form, X, y, max_direct_params=5, max_factor_params=5)
    assert cg.method == "conjugate-gradient" and direct.method == "cholesky"
    assert cg.estimates == ("first-order",) and not cg.exact
    G = direct.train_gradients[:5]
    np.testing.assert_allclose(cg.solve(G), direct.solve(G), rtol=1e-6, atol=1e-9)


def test_pipeline_features_are_what_the_final_estimator_sees():
    X, y = data(n=60, d=3, k=2, seed=4)
    est, form = fit(Pipeline([("s", StandardScaler()), ("c", LogisticRegression())]), X, y)
    obj = build_objective(form, X, y)
    np.testing.assert_allclose(obj.Z, est[:-1].transform(X))
    assert any("stays fixed" in n for n in obj.notes)


def test_singular_hessian_uses_the_pseudo_inverse():
    X, y = data(n=80, d=3, k=2, seed=5)
    X = np.column_stack([X, X[:, 0] - 2 * X[:, 1]])  # a dependent column, no penalty
    est, form = fit(LogisticRegression(C=np.inf, tol=1e-12, max_iter=10_000), X, y)
    obj = build_objective(form, X, y)
    assert obj.rank_deficient and any("pseudo-inverse" in n for n in obj.notes)
    H = obj.hessian(obj.s, obj.A, obj.Zt, augment=False)
    G = obj.train_gradients[:5]
    np.testing.assert_allclose(obj.solve(G), G @ np.linalg.pinv(H, rcond=1e-10), rtol=1e-5, atol=1e-8)
