"""Invertible pipelines: the feature-space seed is a valid counterfactual, the refined point is
never farther than scipy SLSQP's best, its KKT residual is small, and the map's domain and the
constraints are respected."""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, PowerTransformer, QuantileTransformer, StandardScaler

from invaudit.counterfactual import Constraints
from invaudit.counterfactual._nl_invertible import feature_space_seed
from invaudit.counterfactual._nl_smooth import ScoreModel
from invaudit.counterfactual.nonlinear import (
    counterfactuals_nonlinear,
    counterfactuals_nonlinear_with_extras,
    feature_importance,
)
from invaudit.models import adapt
from test_nl_refs import slsqp_reference, target_rows, verified

TOL = 1e-6


@lru_cache(maxsize=None)
def _model(kind: str):
    rng = np.random.default_rng(7)
    X = rng.lognormal(mean=0.0, sigma=0.7, size=(160, 4))
    if kind == "power-binary":
        y = (np.log(X) @ [1.0, -1.0, 0.5, 0.2] + 0.2 * rng.normal(size=160) > 0).astype(int)
        est = Pipeline([("p", PowerTransformer()), ("c", LogisticRegression())])
    elif kind == "boxcox-softmax":
        s = np.log(X) @ np.array([[1.0, 0.0, -1.0, 0.5], [0.0, 1.0, 1.0, -0.5]]).T
        y = np.digitize(s[:, 0] - s[:, 1], [-0.7, 0.7])
        est = Pipeline([("p", PowerTransformer(method="box-cox")), ("c", LogisticRegression())])
    elif kind == "log-scaler":
        y = (np.log(X[:, 0]) + np.log(X[:, 2]) > 0.1).astype(int)
        est = Pipeline([("f", FunctionTransformer(np.log, np.exp)), ("s", StandardScaler()),
                        ("c", LogisticRegression())])
    else:  # quantile
        y = (X[:, 0] - X[:, 1] > 0).astype(int)
        est = Pipeline([("q", QuantileTransformer(n_quantiles=50, output_distribution="normal")),
                        ("c", LogisticRegression())])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    return est, X


KINDS = ["power-binary", "boxcox-softmax", "log-scaler", "quantile"]


@pytest.mark.parametrize("kind", KINDS)
def test_jacobian_of_scores_matches_finite_differences(kind):
    est, X = _model(kind)
    form = adapt(est)
    assert form.kind == "invertible-linear"
    model = ScoreModel(form)
    Xq = X[:4] * 1.0003
    S, J = model.scores_jac(Xq)
    h = 1e-6
    fd = np.stack([(model.scores(Xq + h * np.eye(4)[j]) - model.scores(Xq - h * np.eye(4)[j])) / (2 * h)
                   for j in range(4)], axis=-1)
    assert np.allclose(J, fd, rtol=1e-4, atol=1e-6)
    # and the scores are the estimator's own decision function
    dec = est.decision_function(Xq)
    assert np.allclose(S[:, 0] if S.shape[1] == 1 else S, dec, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("kind", ["power-binary", "boxcox-softmax", "log-scaler"])
def test_feature_space_seed_is_a_valid_counterfactual(kind):
    est, X = _model(kind)
    form = adapt(est)
    Xq = X[:6]
    t = (form.predict_index(Xq) + 1) % form.n_classes
    seed = feature_space_seed(form, Xq, t, None)
    for i in range(len(Xq)):
        assert verified(est, seed[i], int(t[i]))


@pytest.mark.parametrize("kind,P", [("power-binary", None), ("power-binary", 0.8),
                                    ("boxcox-softmax", None), ("boxcox-softmax", 0.6),
                                    ("log-scaler", None)])
def test_never_farther_than_slsqp_and_kkt_small(kind, P):
    est, X = _model(kind)
    form = adapt(est)
    Xq = X[5:9]
    t = (form.predict_index(Xq) + 1) % form.n_classes
    b, ex = counterfactuals_nonlinear_with_extras(form, Xq, target=t, confidence=P, X_train=X)
    dl, du = form.domain_lower, form.domain_upper
    for i in range(len(Xq)):
        assert b.status[i] == "found", b.reason[i]
        assert verified(est, b.x_cf[i], int(t[i]), P)
        assert not b.exact[i]
        assert b.method[i] == "invertible-projection+sqp"
        assert np.all(b.x_cf[i] >= np.minimum(dl, Xq[i])) and np.all(b.x_cf[i] <= np.maximum(du, Xq[i]))
        starts = [ex["seed"]["point"][i], *target_rows(est, X, int(t[i]), 2, Xq[i], P)]
        with np.errstate(invalid="ignore"):
            lo = np.where(np.isfinite(dl), dl + 1e-9 * (1 + np.abs(dl)), -np.inf)
        ref = slsqp_reference(est, Xq[i], int(t[i]), P=P, starts=starts, lower=np.minimum(lo, Xq[i]))
        assert b.distance[i] <= ref * (1 + TOL) + 1e-9, (i, b.distance[i], ref)
        assert b.kkt_residual[i] <= 1e-6
    assert ex["seed"]["verified"].all()


def test_quantile_pipeline_stays_in_the_fitted_range():
    """A quantile map is piecewise linear and saturates outside the fitted quantiles: the answer
    stays inside the range, verifies, and beats the seed and the pulled reference rows."""
    est, X = _model("quantile")
    form = adapt(est)
    Xq = X[5:8]
    t = 1 - form.predict_index(Xq)
    b, ex = counterfactuals_nonlinear_with_extras(form, Xq, target=t, X_train=X)
    q = est.named_steps["q"].quantiles_
    for i in range(len(Xq)):
        assert b.status[i] == "found" and verified(est, b.x_cf[i], int(t[i]))
        assert np.all(b.x_cf[i] >= np.minimum(q[0], Xq[i])) and np.all(b.x_cf[i] <= np.maximum(q[-1], Xq[i]))
        assert b.distance[i] <= ex["seed"]["distance"][i] + 1e-12
        for r in target_rows(est, X, int(t[i]), 3, Xq[i]):
            assert b.distance[i] <= np.linalg.norm(r - Xq[i]) + 1e-12
    ref = slsqp_reference(est, Xq[0], int(t[0]), maxiter=60)
    assert b.distance[0] <= ref * (1 + TOL) + 1e-9


def test_constraints_and_weights_are_honoured():
    est, X = _model("power-binary")
    form = adapt(est)
    Xq = X[10:14]
    t = 1 - form.predict_index(Xq)
    cons = Constraints.build(Xq, immutable=np.array([True, False, False, False]),
                             decrease_only=np.array([False, False, True, False]),
                             data_lower=X.min(0), data_upper=X.max(0), scale=X.std(0))
    b = counterfactuals_nonlinear(form, Xq, target=t, constraints=cons, X_train=X)
    for i in range(len(Xq)):
        if b.status[i] != "found":
            assert b.status[i] in ("failed", "infeasible")
            continue
        assert b.x_cf[i, 0] == Xq[i, 0]
        assert b.x_cf[i, 2] <= Xq[i, 2]
        assert np.all(b.x_cf[i] >= cons.lower[i]) and np.all(b.x_cf[i] <= cons.upper[i])
        ref = slsqp_reference(est, Xq[i], int(t[i]), lower=cons.lower[i], upper=cons.upper[i],
                              weights=cons.weights,
                              starts=[np.clip(s, cons.lower[i], cons.upper[i])
                                      for s in target_rows(est, X, int(t[i]), 2, Xq[i])])
        assert b.distance[i] <= ref * (1 + TOL) + 1e-9
        assert b.distance[i] == pytest.approx(np.linalg.norm(cons.weights * (b.x_cf[i] - Xq[i])))


def test_feature_importance_sums_to_the_first_order_change():
    est, X = _model("power-binary")
    form = adapt(est)
    Xq = X[:5]
    o = form.predict_index(Xq)
    b = counterfactuals_nonlinear(form, Xq, target=1 - o)
    imp = feature_importance(form, Xq, b.x_cf, o, b.target_index)
    sign = np.where(b.target_index == 1, 1.0, -1.0)
    h = 1e-6
    g = np.stack([(est.decision_function(Xq + h * np.eye(4)[j]) - est.decision_function(Xq - h * np.eye(4)[j])) / (2 * h)
                  for j in range(4)], axis=1)
    assert np.allclose(imp, sign[:, None] * g * (b.x_cf - Xq), rtol=1e-4, atol=1e-8)
