"""Network margins: verified upper bounds, sound lower bounds (sampling and an independent
optimiser never beat them), and reasonable attack quality against SLSQP."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from margin_helpers import Box, sphere_samples, weighted
from scipy.optimize import minimize
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from invaudit.margins import margins
from invaudit.models.differentiable import from_estimator

NORMS = ["l2", "l1", "linf"]


def _mlp(activation="relu", classes=3, d=3, hidden=(12,), scaler=False, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(240, d)) * (5.0 if scaler else 1.0)
    s = X / (5.0 if scaler else 1.0)
    y = (s[:, 0] + np.sin(2 * s[:, 1]) > 0).astype(int)
    if classes == 3:
        y = y + (s[:, -1] > 0.7)
    mlp = MLPClassifier(hidden_layer_sizes=hidden, activation=activation, max_iter=600, random_state=0)
    est = make_pipeline(StandardScaler(), mlp) if scaler else mlp
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    return est, X


CASES = [
    dict(activation="relu", classes=3),
    dict(activation="tanh", classes=2, hidden=(8, 8)),
    dict(activation="logistic", classes=2, scaler=True),
    dict(activation="identity", classes=3),
]


def _slsqp_attack(form, x, p, norm, w, starts=3, seed=0):
    """Independent reference: minimise the distance subject to some class beating p, from a few
    starts per class (SLSQP on the form's logits; each result verified with predict)."""
    if norm != "l2":
        return np.inf
    rng = np.random.default_rng(seed)
    K = form.n_classes
    best = np.inf

    def scores(z):
        s = form.logits(z[None, :])[0]
        return np.array([0.0, s[0]]) if form.link == "sigmoid" else s

    def grad(z, k):
        return np.zeros_like(z) if (form.link == "sigmoid" and k == 0) else form.logit_grad(z[None, :], k)[0]

    for j in range(K):
        if j == p:
            continue
        for _ in range(starts):
            d0 = rng.normal(size=x.size) * 0.5
            cons = [{"type": "ineq", "fun": lambda d, j=j: scores(x + d)[j] - scores(x + d)[p] - 1e-9,
                     "jac": lambda d, j=j: grad(x + d, j) - grad(x + d, p)}]
            res = minimize(lambda d: np.sum((w * d) ** 2), d0, jac=lambda d: 2 * w * w * d, method="SLSQP",
                           constraints=cons, options={"maxiter": 300, "ftol": 1e-12})
            if form.predict_index((x + res.x)[None, :])[0] != p:
                best = min(best, weighted(res.x, w, "l2"))
    return best


@pytest.mark.parametrize("case", CASES, ids=[c["activation"] for c in CASES])
def test_upper_bound_verified_and_lower_bound_sound(case):
    est, X = _mlp(**case)
    form = from_estimator(est)
    Xq = X[:10]
    rng = np.random.default_rng(1)
    d = X.shape[1]
    for norm in NORMS:
        batch = margins(form, Xq, norm=norm)
        assert not batch.exact.any()
        found = np.isfinite(batch.margin)
        assert found.all()
        after = form.predict_index(Xq + batch.perturbation)
        assert np.all(after != batch.predicted_index)
        assert np.array_equal(after, batch.nearest_index)
        assert np.all(np.isfinite(batch.lower_bound))
        assert np.all(batch.lower_bound > 0) and np.all(batch.lower_bound <= batch.margin)
        # soundness: no random perturbation shorter than the lower bound changes the prediction
        for i, x in enumerate(Xq):
            v = sphere_samples(rng, 4000, d, norm) * batch.lower_bound[i] * rng.uniform(0.9, 1.0, (4000, 1))
            assert np.all(form.predict_index(x + v) == batch.predicted_index[i])
        if norm == "l2":
            for i in range(4):
                ref = _slsqp_attack(form, Xq[i], batch.predicted_index[i], norm, np.ones(d))
                assert ref >= batch.lower_bound[i] * (1 - 1e-9)  # an independent optimiser agrees
                assert batch.margin[i] <= 1.2 * ref + 1e-9        # and the attack is close to it


def test_identity_network_is_nearly_exact():
    """With identity activations the network is affine: the attack must find the exact margin
    and the interval bound is exact, so the two bounds meet."""
    est, X = _mlp(activation="identity", classes=3)
    form = from_estimator(est)
    batch = margins(form, X[:10], norm="l2")
    np.testing.assert_allclose(batch.lower_bound, batch.margin, rtol=1e-6)


def test_boxes_and_frozen_features_hold():
    est, X = _mlp(activation="relu", classes=3)
    form = from_estimator(est)
    Xq = X[:8]
    lower, upper = Xq - 1.0, Xq + 1.0
    lower[:, 0] = upper[:, 0] = Xq[:, 0]
    batch = margins(form, Xq, norm="linf", constraints=Box(lower, upper, np.array([1.0, 2.0, 0.5])))
    ok = np.isfinite(batch.margin)
    Z = Xq[ok] + batch.perturbation[ok]
    assert np.all(Z >= lower[ok]) and np.all(Z <= upper[ok])
    assert np.all(batch.perturbation[ok][:, 0] == 0.0)
    assert np.all(form.predict_index(Z) != batch.predicted_index[ok])
    assert np.all(batch.lower_bound <= np.where(ok, batch.margin, np.inf))
