"""Many classes (issue 19): pruned-loo-loss refits the model without its suspects by
Newton-chord steps from the kept rows' Hessian (the removed rows' blocks subtracted), with
Anderson acceleration, instead of a scikit-learn refit. Checked against scikit-learn's own
refit (Newton-Cholesky, tight tolerance, from scratch) and against the ranking that refit
gives."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from invaudit.influence import build_objective
from invaudit.influence._objective import LogisticObjective
from invaudit.models import adapt
from invaudit.triage import rank_mislabels
from invaudit.triage._rank import _suspects


def _data(n, d, k, seed, flip=0.1):
    rng = np.random.default_rng(seed)
    y = np.arange(n) % k
    centres = rng.standard_normal((k, d)) * 1.5
    X = centres[y] + rng.standard_normal((n, d))
    wrong = rng.random(n) < flip
    noisy = np.where(wrong, (y + rng.integers(1, k, n)) % k, y)
    return X * np.logspace(-5, 5, d), noisy, wrong


def _fit(est, X, y):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est.fit(X, y)
    return est


def _sklearn_refit(obj, keep):
    """scikit-learn's own fit of the final estimator on the kept rows (features fixed)."""
    est = clone(obj.estimator).set_params(solver="newton-cholesky", tol=1e-12, max_iter=500)
    return _fit(est, obj.Z[keep], obj.classes[obj.y[keep]])


CASES = [("multinomial", {}, 6, "few"), ("balanced", {"class_weight": "balanced", "C": 0.3}, 5, "few"),
         ("no intercept", {"fit_intercept": False}, 4, "few"), ("binary", {}, 2, "few"),
         ("most rows removed", {}, 5, "most")]


@pytest.mark.parametrize("name,kwargs,k,removed", CASES, ids=[c[0] for c in CASES])
def test_chord_refit_reaches_scikit_learns_optimum(name, kwargs, k, removed):
    X, y, _ = _data(n=400, d=6, k=k, seed=k)
    lr = LogisticRegression(tol=1e-10, max_iter=5000, **kwargs)
    model = _fit(make_pipeline(StandardScaler(), lr), X, y)
    obj = build_objective(adapt(model), X, y)
    rng = np.random.default_rng(1)
    keep = np.ones(len(y), dtype=bool)
    if removed == "few":
        keep[rng.choice(len(y), 40, replace=False)] = False
    else:  # the kept rows' Hessian is summed afresh instead of subtracted
        keep[:] = False
        keep[rng.choice(len(y), 150, replace=False)] = True
    chord = obj._refit_by_chord(keep)
    assert chord is not None
    ref = _sklearn_refit(obj, keep)
    P_ref = ref.predict_proba(obj.Z)
    np.testing.assert_allclose(chord.predict_proba(obj.Z), P_ref, rtol=1e-7, atol=1e-10)
    # the chord answer is a stationary point of the kept rows' objective, written out here
    s = obj.s[keep] if not kwargs.get("class_weight") else (
        keep.sum() / (k * np.bincount(y[keep], minlength=k)))[y[keep]]
    Zt = obj._aug(obj.Z[keep])
    Theta = np.column_stack([chord.coef_, chord.intercept_]) if obj.fit_intercept else chord.coef_
    eta = Zt @ Theta.T
    if obj.M == 1:
        r = (1 / (1 + np.exp(-eta[:, 0])) - (y[keep] == 1))[:, None]
    else:
        r = np.exp(eta - eta.max(axis=1, keepdims=True))
        r /= r.sum(axis=1, keepdims=True)
        r[np.arange(keep.sum()), y[keep]] -= 1.0
    grad = (s[:, None] * r).T @ Zt + obj.lam * obj.Rcol * Theta
    assert np.abs(grad).max() / s.sum() < 1e-10


@pytest.mark.parametrize("k", [3, 7])
def test_pruned_ranking_equals_the_ranking_built_on_a_scikit_learn_refit(k):
    X, y, wrong = _data(n=500, d=5, k=k, seed=10 + k, flip=0.1)
    model = _fit(make_pipeline(StandardScaler(), LogisticRegression(tol=1e-10, max_iter=5000)), X, y)
    form = adapt(model)
    ranking = rank_mislabels(form, X, y, method="pruned-loo-loss")
    # the same steps with scikit-learn's refit in place of the Newton-chord refit
    obj = build_objective(form, X, y)
    sus = _suspects(obj.loo_proba(), y, obj.loo_losses())
    assert sus.size > 0
    keep = np.ones(len(y), dtype=bool)
    keep[sus] = False
    clean = LogisticObjective(form, X[keep], y[keep], final=_sklearn_refit(obj, keep))
    want = np.empty(len(y))
    want[keep] = clean.loo_losses("leverage-corrected")
    want[sus] = clean.losses(X[sus], y[sus])
    np.testing.assert_allclose(ranking.score, want, rtol=1e-6, atol=1e-9)
    # and it finds the flipped labels: most of them in the first tenth checked
    top = ranking.order[: len(y) // 10]
    assert wrong[top].sum() >= 0.5 * wrong.sum()
