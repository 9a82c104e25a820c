"""Networks (the differentiable form): gradients by finite differences, and the closest verified
counterfactual never farther than scipy SLSQP's best from several starts."""

from __future__ import annotations

import warnings
from functools import lru_cache

import numpy as np
import pytest
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from invaudit.counterfactual import Constraints
from invaudit.counterfactual._nl_smooth import ScoreModel, score_tau, target_constraints
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
    rng = np.random.default_rng(3)
    if kind == "tanh3":
        X = rng.normal(size=(150, 4))
        y = np.argmax(X[:, :3] + 0.3 * np.sin(2 * X[:, 1:4]), axis=1)
        est = MLPClassifier(hidden_layer_sizes=(8,), activation="tanh", max_iter=600, random_state=0)
    elif kind == "relu2":
        X = rng.normal(size=(150, 3))
        y = (X[:, 0] ** 2 + X[:, 1] - 0.5 * X[:, 2] > 0.5).astype(int)
        est = MLPClassifier(hidden_layer_sizes=(10,), activation="relu", max_iter=600, random_state=0)
    else:  # logistic hidden units after a scaler, 3 classes
        X = rng.normal(size=(150, 3)) * [1.0, 10.0, 0.1] + [0.0, 5.0, 0.0]
        y = np.digitize(X[:, 0] + 0.1 * X[:, 1] + 5 * X[:, 2], [-0.3, 0.8])
        est = Pipeline([("s", StandardScaler()),
                        ("m", MLPClassifier(hidden_layer_sizes=(6,), activation="logistic",
                                            max_iter=800, random_state=0))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    return est, X


def _fd_jac(f, X, h=1e-6):
    n, D = X.shape
    out = []
    for j in range(D):  # test-only finite differences
        e = np.zeros(D)
        e[j] = h
        out.append((f(X + e) - f(X - e)) / (2 * h))
    return np.stack(out, axis=-1)


@pytest.mark.parametrize("kind", ["tanh3", "relu2", "logistic-pipe"])
def test_score_and_constraint_gradients_match_finite_differences(kind):
    est, X = _model(kind)
    form = adapt(est)
    assert form.kind == "differentiable"
    model = ScoreModel(form)
    Xq = X[:5] + 0.013  # off the ReLU kinks
    S, J = model.scores_jac(Xq)
    assert np.allclose(J, _fd_jac(model.scores, Xq), rtol=1e-5, atol=1e-6)
    K = form.n_classes
    t = (form.predict_index(Xq) + 1) % K
    tau = score_tau(S)
    for P in (None, 0.4, 0.8):
        C, G = target_constraints(model, S, J, t, P, tau)
        fd = _fd_jac(lambda Z: target_constraints(model, model.scores(Z), None, t, P, tau)[0], Xq)
        assert np.allclose(G, fd, rtol=1e-5, atol=1e-6)
        # the constraints hold exactly where the estimator says the target holds
        ok = np.all(C >= -1e-6, axis=1)
        for i in range(len(Xq)):
            if abs(C[i]).min() > 1e-4:
                assert ok[i] == verified(est, Xq[i], int(t[i]), P)


def test_feature_importance_is_the_first_order_taylor_term():
    est, X = _model("tanh3")
    form = adapt(est)
    Xq = X[:4]
    o = form.predict_index(Xq)
    t = (o + 1) % 3
    b = counterfactuals_nonlinear(form, Xq, target=t)
    imp = feature_importance(form, Xq, b.x_cf, o, b.target_index)
    # d/dx (s_t - s_o) by finite differences of the network's own probabilities
    def margin(Z):
        lp = np.log(est.predict_proba(Z))
        return lp[np.arange(len(Z)), t] - lp[np.arange(len(Z)), o]
    g = _fd_jac(lambda Z: margin(Z)[:, None], Xq)[:, 0, :]
    assert np.allclose(imp, g * (b.x_cf - Xq), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("kind,P", [("tanh3", None), ("tanh3", 0.7), ("relu2", None),
                                    ("relu2", 0.9), ("logistic-pipe", None)])
def test_never_farther_than_slsqp(kind, P):
    est, X = _model(kind)
    form = adapt(est)
    K = form.n_classes
    Xq = X[10:14]
    t = (form.predict_index(Xq) + 1) % K
    b = counterfactuals_nonlinear(form, Xq, target=t, confidence=P, X_train=X)
    for i in range(len(Xq)):
        starts = list(target_rows(est, X, int(t[i]), 3, Xq[i], P))
        ref = slsqp_reference(est, Xq[i], int(t[i]), P=P, starts=starts)
        assert b.status[i] == "found"
        assert verified(est, b.x_cf[i], int(t[i]), P)
        assert not b.exact[i]
        assert b.distance[i] <= ref * (1 + TOL) + 1e-9, (i, b.distance[i], ref)
        assert b.method[i] == "mlp-boundary-search+sqp"


def test_constraints_are_honoured_exactly_and_still_competitive():
    est, X = _model("tanh3")
    form = adapt(est)
    Xq = X[20:23]
    t = (form.predict_index(Xq) + 2) % 3
    imm = np.array([False, True, False, False])
    lo, hi = X.min(0), X.max(0)
    scale = X.std(0) * np.array([1.0, 1.0, 2.0, 0.5])
    cons = Constraints.build(Xq, immutable=imm, data_lower=lo, data_upper=hi, scale=scale)
    b = counterfactuals_nonlinear(form, Xq, target=t, constraints=cons, X_train=X)
    for i in range(len(Xq)):
        if b.status[i] != "found":
            continue
        assert b.x_cf[i, 1] == Xq[i, 1]
        assert np.all(b.x_cf[i] >= cons.lower[i]) and np.all(b.x_cf[i] <= cons.upper[i])
        starts = [np.clip(s, cons.lower[i], cons.upper[i]) for s in target_rows(est, X, int(t[i]), 3, Xq[i])]
        ref = slsqp_reference(est, Xq[i], int(t[i]), starts=starts, lower=cons.lower[i],
                              upper=cons.upper[i], weights=cons.weights)
        assert b.distance[i] <= ref * (1 + TOL) + 1e-9
    assert np.sum(b.status == "found") >= 2


@pytest.mark.parametrize("norm", ["l1", "linf"])
def test_l1_linf_never_farther_than_slsqp(norm):
    est, X = _model("tanh3")
    form = adapt(est)
    Xq = X[30:32]
    t = (form.predict_index(Xq) + 1) % 3
    b = counterfactuals_nonlinear(form, Xq, target=t, norm=norm, X_train=X)
    for i in range(len(Xq)):
        starts = list(target_rows(est, X, int(t[i]), 2, Xq[i]))
        ref = slsqp_reference(est, Xq[i], int(t[i]), starts=starts, norm=norm)
        assert b.status[i] == "found" and verified(est, b.x_cf[i], int(t[i]))
        assert b.distance[i] <= ref * (1 + 1e-5) + 1e-9


def test_other_is_the_closest_of_the_classes_tried():
    est, X = _model("tanh3")
    form = adapt(est)
    Xq = X[40:43]
    o = form.predict_index(Xq)
    b, ex = counterfactuals_nonlinear_with_extras(form, Xq, target="other", n_other=2)
    assert np.all(b.target_index != o)
    for i in range(len(Xq)):
        per = [counterfactuals_nonlinear(form, Xq[i:i + 1], target=np.array([k])).distance[0]
               for k in range(3) if k != o[i]]
        assert b.distance[i] <= min(per) * (1 + 1e-6) + 1e-9
    assert ex["feature_importance"].shape == Xq.shape
    assert all(isinstance(s, str) for s in ex["backing"])


def test_already_target_and_progress():
    est, X = _model("relu2")
    form = adapt(est)
    Xq = X[:6]
    o = form.predict_index(Xq)
    t = o.copy()
    t[:3] = 1 - o[:3]
    calls = []
    b = counterfactuals_nonlinear(form, Xq, target=t, progress=lambda d, n: calls.append((d, n)))
    assert list(b.status[3:]) == ["already-target"] * 3
    assert np.array_equal(b.x_cf[3:], Xq[3:]) and np.all(b.distance[3:] == 0)
    assert calls and calls[-1][0] == calls[-1][1]
